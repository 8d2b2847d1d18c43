"""The database: engine with safe SQLite settings, sessions, and the schema check.

SQLite runs with WAL, synchronous=FULL and foreign keys on, and the transactions of one
process take turns (`SqliteTurns`); PostgreSQL through psycopg 3. `check_schema()` refuses to
run on a database that is not at the newest migration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, Connection, Engine, Insert, create_engine, event, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from care.errors import DatabaseUnavailable, SchemaOutdated

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
POOL_SIZE = 20
"""Connections kept open: more than the threads of one process that use them (the turns, the
outbox's claim and commit threads, the scheduler), so that none is opened and closed again
under load. (SQLAlchemy's default of 5 made every connection above five a new one, opened
and closed for each transaction: a PostgreSQL log-in, or on SQLite the pragmas again.)"""

WARM_CONNECTIONS = 8
"""Connections opened at start: the turns' threads and the outbox's."""
PING_AFTER_IDLE_SECONDS = 10.0
"""A PostgreSQL connection idle for longer is checked before use (the server may have
restarted or dropped it); one in use a moment ago is not, which saves a round trip on
every transaction under load."""
_LAST_USED = "aftercare_last_used"

log = logging.getLogger(__name__)


class SqliteTurns:
    """The transactions of this process take turns on a SQLite file.

    SQLite lets one transaction write at a time. A second writer waits in SQLite's busy
    handler, which sleeps in growing steps (up to 100 ms each) and checks again, so under
    load a turn of a few milliseconds could wait a hundred. Here a transaction waits for its
    turn on a lock instead, from BEGIN until its connection goes back to the pool, and starts
    the moment the previous one ends. A transaction opened inside another in the same thread
    goes ahead (waiting would wait for itself); other processes (an admin command, a second
    `aftercare run`) still meet SQLite's busy timeout. If a turn is not free within
    `patience` seconds the transaction goes ahead without it and a warning is logged.
    """

    KEY = "aftercare.sqlite_turn"

    def __init__(self, patience: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self.patience = patience

    def take(self, connection: Connection) -> None:
        """At BEGIN: wait for the turn (once per connection checkout). A connection in
        autocommit mode reads one statement at a time and never upgrades to a writer, so it
        does not wait."""
        info = connection.info
        if info.get(self.KEY) or self._owner == threading.get_ident():
            return
        if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return
        if not self._lock.acquire(timeout=self.patience):
            log.warning("db.sqlite_turn_not_free waited=%ss", self.patience)
            return
        self._owner = threading.get_ident()
        info[self.KEY] = True

    def give_back(self, info: dict[Any, Any]) -> None:
        """When the connection goes back to the pool: the next transaction may start."""
        if info.pop(self.KEY, False):
            self._owner = None
            self._lock.release()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(malformed URL)"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite files get their folder created and the safe pragmas."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(
            "the database URL is malformed; use sqlite:///path/file.db or "
            "postgresql+psycopg://user@host/dbname (AFTERCARE_DATABASE_URL or database.url)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        if parsed.database and parsed.database != ":memory:":
            kwargs.setdefault("pool_size", POOL_SIZE)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        turns = SqliteTurns()
        event.listen(engine, "begin", turns.take)
        event.listen(engine.pool, "checkin", lambda _dbapi, record: turns.give_back(record.info))
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    kwargs.setdefault("pool_size", POOL_SIZE)
    try:
        engine = create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise DatabaseUnavailable(
            f"unsupported database {describe_url(url)}: use sqlite or postgresql+psycopg"
        ) from None
    _ping_when_idle(engine)
    return engine


def open_connections(engine: Engine, count: int = WARM_CONNECTIONS) -> None:
    """Open `count` pooled connections now (at start), so that the first burst of turns does
    not wait for each to be opened (a PostgreSQL log-in, or SQLite's pragmas)."""
    opened = []
    try:
        for _ in range(count):
            opened.append(engine.connect())
    finally:
        for connection in opened:
            connection.close()


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use when it has been idle for a while (SQLAlchemy's
    `pool_pre_ping` checks before every use). A dead one is replaced: the pool tries again
    with a new connection. A connection that dies while in use fails that transaction, and
    SQLAlchemy then renews the whole pool."""

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get(_LAST_USED)
        if used is not None and time.monotonic() - used < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("an idle database connection was gone") from exc

    def checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)


BEFORE_SAVEPOINT = "aftercare.before_savepoint"
"""`session.info` key: what must run before a savepoint begins (`care.outbox.carry_riders`)."""


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """`session.begin_nested()`, once the writes this transaction holds back have run
    (`care.outbox.ride_along`): a write inside the savepoint must not overtake them, and a
    rollback to it must not take them back. Use it instead of `begin_nested` in our code.
    Objects added to the session before it are flushed before it begins (SQLAlchemy does so):
    add inside it what its rollback must take back, or their failure ends the whole
    transaction."""
    run = session.info.get(BEFORE_SAVEPOINT)
    if run is not None:
        run(session)
    with session.begin_nested():
        yield


def one_of(
    column: ColumnElement[Any] | InstrumentedAttribute[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """`column IN (values)` for a few fixed values, written as `column = a OR column = b`:
    SQLAlchemy renders an IN list anew at every execution (its parameters "expand"), while
    this statement is compiled once and then taken from the cache as it is. For statements of
    every turn; the planner reads both alike."""
    return or_(*(column == value for value in values))


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory that keeps loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


_INSERT_NEW: dict[tuple[str, Any], Insert] = {}


def insert_new(session: Session, model: type[Any], **values: Any) -> None:
    """Insert a row unless one with the same unique key is there already (one statement, no
    savepoint: ON CONFLICT DO NOTHING on both SQLite and PostgreSQL)."""
    insert_new_rows(session, model, [values])


def insert_new_rows(session: Session, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """`insert_new` for several rows, in one statement (one round trip); nothing for none."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    stmt = _INSERT_NEW.get((dialect, model))
    if stmt is None:
        table = model.__table__
        if dialect == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported (make_engine)
            raise DatabaseUnavailable(f"unsupported database dialect {dialect}")
        _INSERT_NEW[(dialect, model)] = stmt
    # On the session's connection: a plain statement needs none of the session's bookkeeping
    # (it would not flush anything first either way).
    session.connection().execute(stmt, rows[0] if len(rows) == 1 else rows)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> AlembicConfig:
    """The Alembic configuration for our migrations folder and this database."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest migration in the code."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None when it has none."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database {describe_url(str(engine.url))}: "
            f"{type(exc.orig).__name__ if exc.orig else 'error'}; check that it runs and "
            "that AFTERCARE_DATABASE_URL is right"
        ) from None


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutdated unless the database is at the newest migration."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        state = "empty" if current is None else f"at migration {current}"
        raise SchemaOutdated(
            f"the database is {state}, the code needs {head}; run `aftercare db upgrade`"
        )


def upgrade(url: str) -> None:
    """Bring the database to the newest migration."""
    from alembic import command

    try:
        command.upgrade(alembic_config(url), "head")
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database {describe_url(url)}: "
            f"{type(exc.orig).__name__ if exc.orig else 'error'}; check that it runs"
        ) from None
