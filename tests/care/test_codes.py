"""One-time codes: random, single use, expiring, refused alike whatever is wrong."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from care import directory
from care.codes import MAX_CODE_LENGTH, issue_code, redeem_code
from care.context import Care
from care.errors import CodeRefused
from care.models import Client, ClientStatus, CodeKind, OneTimeCode, utcnow


def _worker_id(care: Care) -> int:
    with care.sessions.begin() as session:
        directory.add_organisation(session, "Kompas")
        return directory.add_worker(session, care.vault, "Kompas", "Sanne").id


def test_code_is_url_safe_short_enough_and_stored_only_as_index(care_ctx: Care) -> None:
    worker_id = _worker_id(care_ctx)
    with care_ctx.sessions.begin() as session:
        code = issue_code(session, care_ctx.keyring, CodeKind.WORKER, worker_id=worker_id)
    assert len(code) <= MAX_CODE_LENGTH and len(code) >= 22  # >= 128 bits in base64
    assert all(c.isalnum() or c in "-_" for c in code)
    with care_ctx.sessions() as session:
        stored = session.scalars(select(OneTimeCode.code_index)).all()
    assert code not in stored


def test_used_expired_unknown_and_malformed_codes_are_refused_the_same_way(
    care_ctx: Care,
) -> None:
    worker_id = _worker_id(care_ctx)
    now = utcnow()
    with care_ctx.sessions.begin() as session:
        good = issue_code(session, care_ctx.keyring, CodeKind.WORKER, worker_id=worker_id)
        old = issue_code(
            session,
            care_ctx.keyring,
            CodeKind.WORKER,
            worker_id=worker_id,
            now=now - timedelta(days=8),
        )
    with care_ctx.sessions.begin() as session:
        assert redeem_code(session, care_ctx.keyring, good).worker_id == worker_id
    messages = set()
    for attempt in (good, old, "A" * 32, "x", "A" * 65, "bad code with spaces!!", ""):
        with care_ctx.sessions.begin() as session, pytest.raises(CodeRefused) as info:
            redeem_code(session, care_ctx.keyring, attempt)
        messages.add(str(info.value))
    assert messages == {"This code is not valid. Ask for a new one."}


def test_enrolling_binds_her_chat_and_activates_her(care_ctx: Care) -> None:
    _worker_id(care_ctx)
    with care_ctx.sessions.begin() as session:
        worker = directory.get_worker(session, "Sanne")
        invited = directory.invite_client(session, care_ctx.vault, worker, alias="roos")
    with care_ctx.sessions.begin() as session:
        linked = directory.link_chat(session, care_ctx.vault, invited.code, 4242)
        assert linked.client is not None and linked.client.alias == "roos"
    with care_ctx.sessions() as session:
        found = directory.find_by_chat(session, care_ctx.keyring, 4242)
        assert found.client is not None
        assert found.client.status is ClientStatus.ACTIVE
        assert directory.chat_id_of(session, care_ctx.vault, found.client) == 4242
        assert directory.find_by_chat(session, care_ctx.keyring, 4243).client is None
        client = session.get(Client, invited.id)
        assert client is not None and b"4242" not in (client.chat_id_enc or b"")
