"""No free text ever reaches the database in plain: a canary note is nowhere to be found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from care import directory
from care.context import Care
from care.models import Appointment, CheckIn, Client, OutboxMessage, RecipientKind, utcnow

CANARY = "CANARY-7f3e-kzit-bij-hem-thuis"
CHAT_ID = 987654321123


def _store_everything(care: Care) -> None:
    with care.sessions.begin() as session:
        directory.add_organisation(session, "Kompas")
        issued = directory.add_worker(session, care.vault, "Kompas", "Sanne")
        worker = directory.get_worker(session, "Sanne")
        invited = directory.invite_client(session, care.vault, worker, alias="roos")
        code = invited.code
        client = session.get(Client, invited.id)
        assert client is not None
        key = client.data_key_id
        session.add(
            CheckIn(
                client_id=client.id,
                due_at=utcnow(),
                answer_enc=care.vault.encrypt(session, key, CANARY),
            )
        )
        session.add(
            Appointment(
                client_id=client.id,
                worker_id=worker.id,
                starts_at=utcnow(),
                place_enc=care.vault.encrypt(session, key, CANARY),
            )
        )
        session.add(
            OutboxMessage(
                recipient_kind=RecipientKind.CLIENT,
                recipient_id=client.id,
                client_id=client.id,
                data_key_id=key,
                kind="reply",
                payload_enc=care.vault.encrypt(session, key, CANARY),
            )
        )
        assert issued.code
    with care.sessions.begin() as session:
        directory.link_chat(session, care.vault, code, CHAT_ID)


def _assert_absent(raw: bytes) -> None:
    assert CANARY.encode() not in raw
    assert str(CHAT_ID).encode() not in raw


def test_canary_is_not_in_the_raw_database(care_ctx: Care, backend: str) -> None:
    _store_everything(care_ctx)
    url = make_url(str(care_ctx.engine.url))
    if backend == "sqlite":
        care_ctx.engine.dispose()
        assert url.database is not None
        files = [Path(url.database), Path(url.database + "-wal")]
        raw = b"".join(path.read_bytes() for path in files if path.exists())
    else:
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            pytest.fail("pg_dump is needed for this test (Debian package postgresql-client)")
        raw = subprocess.run(
            [pg_dump, "-h", "127.0.0.1", "-U", "postgres", "-d", str(url.database)],
            check=True,
            capture_output=True,
        ).stdout
        assert b"COPY public.outbox" in raw  # the dump really holds the tables
    assert b"roos" in raw  # the pseudonym is there, so the search itself works
    _assert_absent(raw)
