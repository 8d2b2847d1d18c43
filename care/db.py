"""The database: engine with safe SQLite settings, sessions, and the schema check.

SQLite runs with WAL, synchronous=FULL and foreign keys on; PostgreSQL through psycopg 3.
`check_schema()` refuses to run on a database that is not at the newest migration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from care.errors import DatabaseUnavailable, SchemaOutdated

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


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
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        return create_engine(url, pool_pre_ping=True, **kwargs)
    except NoSuchModuleError:
        raise DatabaseUnavailable(
            f"unsupported database {describe_url(url)}: use sqlite or postgresql+psycopg"
        ) from None


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory that keeps loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


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
