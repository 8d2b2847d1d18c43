"""The database: pragmas, unreachable server and outdated schema each explained."""

from __future__ import annotations

from pathlib import Path

import pytest

from care.db import check_schema, make_engine
from care.errors import DatabaseUnavailable, SchemaOutdated


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
