"""The audit trail: who read or changed a client's data, append-only and hash-chained.

Each entry's hash covers its fields and the previous entry's hash, so editing or deleting a
row breaks the chain and `verify()` finds where.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from care.models import AuditEntry, utcnow

GENESIS = "0" * 64
_LOCK_KEY = 0x41554454  # "AUDT"


def _digest(entry: AuditEntry, prev_hash: str) -> str:
    body = json.dumps(
        [
            entry.at.isoformat(),
            entry.actor,
            entry.action,
            entry.client_alias,
            entry.responsible_worker_id,
            entry.detail,
            prev_hash,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(
    session: Session,
    actor: str,
    action: str,
    client_alias: str | None = None,
    responsible_worker_id: int | None = None,
    detail: str | None = None,
) -> AuditEntry:
    """Append one audit entry in the caller's transaction.

    `actor` is e.g. "worker:12" or "admin:cli"; `detail` must never hold message text.
    """
    if session.get_bind().dialect.name == "postgresql":
        # Serialise writers so that two transactions never chain onto the same entry.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    last = session.scalars(
        select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1).with_for_update()
    ).first()
    prev_hash = last.hash if last is not None else GENESIS
    entry = AuditEntry(
        at=utcnow().replace(microsecond=0),
        actor=actor,
        action=action,
        client_alias=client_alias,
        responsible_worker_id=responsible_worker_id,
        detail=detail,
        prev_hash=prev_hash,
    )
    entry.hash = _digest(entry, prev_hash)
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class AuditReport:
    """The outcome of checking the chain."""

    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the chain is whole."""
        return not self.problems


def verify(session: Session) -> AuditReport:
    """Walk the chain and report every entry that was changed, removed or inserted."""
    problems: list[str] = []
    prev_hash = GENESIS
    count = 0
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        count += 1
        if entry.prev_hash != prev_hash:
            problems.append(f"entry {entry.id}: the entry before it was changed or removed")
        if _digest(entry, entry.prev_hash) != entry.hash:
            problems.append(f"entry {entry.id}: its content was changed after it was written")
        prev_hash = entry.hash
    return AuditReport(count, tuple(problems))
