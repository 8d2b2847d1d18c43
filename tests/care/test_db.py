"""The database: pragmas, unreachable server and outdated schema each explained."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from care.context import Care
from care.db import (
    check_schema,
    insert_new,
    make_engine,
    open_connections,
)
from care.errors import DatabaseUnavailable, SchemaOutdated
from care.models import ProcessedUpdate, utcnow


def test_sqlite_runs_with_wal_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'a.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_empty_database_asks_for_upgrade(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaOutdated, match="run `aftercare db upgrade`"):
        check_schema(engine)
    engine.dispose()


def test_unreachable_database_says_so_without_password() -> None:
    engine = make_engine("postgresql+psycopg://care:hunter2@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailable) as info:
        check_schema(engine)
    assert "hunter2" not in str(info.value)
    assert "AFTERCARE_DATABASE_URL" in str(info.value)


def test_malformed_url_is_explained() -> None:
    with pytest.raises(DatabaseUnavailable, match="malformed"):
        make_engine("not a url")


def test_migrated_database_passes(care_ctx: object, database_url: str) -> None:
    engine = make_engine(database_url)
    check_schema(engine)
    engine.dispose()


def test_sqlite_transactions_of_one_process_take_turns(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    first_in = threading.Event()
    order: list[str] = []

    def first() -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            first_in.set()
            time.sleep(0.3)
            order.append("first done")

    def second() -> None:
        first_in.wait(5)
        with engine.begin() as connection:  # waits for its turn, not in SQLite's busy sleep
            order.append("second in")
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert order == ["first done", "second in"]
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2
    engine.dispose()


def test_an_autocommit_read_does_not_wait_for_a_writers_turn(tmp_path: Path) -> None:
    """The first look at a text (who wrote it) must not queue behind other girls' turns."""
    engine = make_engine(f"sqlite:///{tmp_path / 'look.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    writing = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def writer() -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            writing.set()
            release.wait(10)

    def reader() -> None:
        writing.wait(5)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            seen.append(connection.exec_driver_sql("SELECT count(*) FROM t").scalar_one())

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    threads[1].join(5)
    done_while_writing = not threads[1].is_alive()
    release.set()
    for thread in threads:
        thread.join(10)
    assert done_while_writing, "the read waited for the writer's turn"
    assert seen == [1], "it saw what was committed, not the write in progress"
    with engine.begin() as connection:  # and the turns still work after it
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2
    engine.dispose()


def test_sqlite_many_writers_at_once_all_land(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'many.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER)")

    def write(n: int) -> None:
        with engine.connect() as connection:  # read first, then write: the risky shape
            connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
            connection.exec_driver_sql(f"INSERT INTO t VALUES ({n})")
            connection.commit()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(write, range(200)))
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 200
    engine.dispose()


def test_a_transaction_inside_another_in_the_same_thread_does_not_wait_for_itself(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested.db'}")
    with engine.begin() as outer:
        outer.exec_driver_sql("SELECT 1").scalar()
        with engine.connect() as inner:  # read-only, beside the outer one
            assert inner.exec_driver_sql("SELECT 2").scalar() == 2
    with engine.begin() as again:  # and the turn was given back
        assert again.exec_driver_sql("SELECT 3").scalar() == 3
    engine.dispose()


def test_insert_new_leaves_a_row_that_is_there_and_the_transaction_goes_on(care_ctx: Care) -> None:
    with care_ctx.sessions.begin() as session:
        insert_new(session, ProcessedUpdate, update_id=7, processed_at=utcnow())
        insert_new(session, ProcessedUpdate, update_id=7, processed_at=utcnow())
        insert_new(session, ProcessedUpdate, update_id=8, processed_at=utcnow())
    with care_ctx.sessions() as session:
        ids = session.scalars(select(ProcessedUpdate.update_id).order_by(ProcessedUpdate.update_id))
        assert list(ids) == [7, 8]


@pytest.mark.postgres
def test_a_postgres_connection_that_died_while_idle_is_replaced_before_use(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from care import db
    from tests.conftest import PG_ADMIN_DSN

    engine = make_engine(pg_database)
    try:
        with engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid, (
                "used a moment ago: the same connection, not checked again"
            )
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # the server dropped it
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # ... and it has been idle
        with engine.connect() as connection:
            fresh = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert fresh != pid, "a new connection, and no error"
    finally:
        engine.dispose()


def test_connections_opened_at_start_wait_in_the_pool(care_ctx: Care) -> None:
    care_ctx.engine.dispose()
    open_connections(care_ctx.engine, 3)
    pool = care_ctx.engine.pool
    assert pool.checkedin() == 3, "open, and ready for the first turns"  # type: ignore[attr-defined]
