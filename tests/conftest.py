"""Shared fixtures: settings, keys and a migrated database on SQLite and on PostgreSQL.

Every test that uses `care_ctx` or `db_session` runs twice: once on a SQLite file and once on
the PostgreSQL server at 127.0.0.1:5432 (database per test run, tables emptied per test).
PostgreSQL being down is a failure, not a skip: `.ci/run` starts it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from care.context import Care
from care.crypto import KeyRing, keyring_from_set, new_key_set
from care.db import make_engine, make_sessionmaker, upgrade
from care.models import Base
from care.settings import DEFAULT_CONFIG, Settings, load_settings
from care.vault import Vault

PG_ADMIN_DSN = os.environ.get(
    "AFTERCARE_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_TEMPLATE = os.environ.get(
    "AFTERCARE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
)
BACKENDS = ["sqlite", "postgres"]

# python-telegram-bot 22 warns (an error under filterwarnings=error) when retry_after is read as
# an int; with this set it is a timedelta everywhere, as the application sets it too.
os.environ.setdefault("PTB_TIMEDELTA", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the PostgreSQL lane so that `-m "not postgres"` can leave it out locally."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "postgres":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated once, dropped at the end."""
    name = f"aftercare_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({exc.__class__.__name__})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL_TEMPLATE.format(db=name)
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database lane this test runs in."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database for one test."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "aftercare.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def keyring() -> KeyRing:
    """A fresh key ring (never the developer's real keys)."""
    return keyring_from_set(new_key_set(), "test keys")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The shipped config.yml, with paths pointing into the test's temporary folder."""
    base = load_settings(DEFAULT_CONFIG, environ={})
    return base.model_copy(update={"config_path": tmp_path / "config.yml"})


@pytest.fixture
def care_ctx(database_url: str, settings: Settings, keyring: KeyRing) -> Iterator[Care]:
    """Storage, keys and settings as the application wires them."""
    engine = make_engine(database_url)
    care = Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))
    yield care
    care.close()


@pytest.fixture
def db_session(care_ctx: Care) -> Iterator[Session]:
    """A session on the test database; commit as the code under test would."""
    with care_ctx.sessions() as session:
        yield session
