"""The audit trail detects edits, deletions and insertions."""

from __future__ import annotations

from sqlalchemy import delete, update

from care import audit
from care.context import Care
from care.models import AuditEntry


def _three_entries(care: Care) -> None:
    with care.sessions.begin() as session:
        for n in range(3):
            audit.record(
                session, "worker:1", "client.view", client_alias=f"a{n}", responsible_worker_id=1
            )


def test_intact_chain_verifies(care_ctx: Care) -> None:
    _three_entries(care_ctx)
    with care_ctx.sessions() as session:
        report = audit.verify(session)
    assert report.ok and report.entries == 3


def test_edited_entry_is_found(care_ctx: Care) -> None:
    _three_entries(care_ctx)
    with care_ctx.sessions.begin() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 2).values(actor="worker:9"))
    with care_ctx.sessions() as session:
        report = audit.verify(session)
    assert not report.ok
    assert report.problems == ("entry 2: its content was changed after it was written",)


def test_deleted_entry_is_found(care_ctx: Care) -> None:
    _three_entries(care_ctx)
    with care_ctx.sessions.begin() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.id == 2))
    with care_ctx.sessions() as session:
        report = audit.verify(session)
    assert report.problems == ("entry 3: the entry before it was changed or removed",)
