"""One-time codes that link a worker's or a client's Telegram to their record.

A code has 192 bits of randomness, is URL-safe and 32 characters long (Telegram allows 64 in a
start parameter), is single use and expires. Only its blind index is stored. Unknown, used and
expired codes are refused the same way, so a refusal tells nothing.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from care.crypto import KeyRing
from care.errors import CodeRefused
from care.models import CodeKind, OneTimeCode, utcnow

CODE_BYTES = 24
MAX_CODE_LENGTH = 64
_CODE_FORM = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_PURPOSE = "one-time-code"


def issue_code(
    session: Session,
    keyring: KeyRing,
    kind: CodeKind,
    *,
    worker_id: int | None = None,
    client_id: int | None = None,
    valid_days: int = 7,
    now: datetime | None = None,
) -> str:
    """Create a code for a worker or a client and return it (shown once, never stored)."""
    if (kind is CodeKind.WORKER) != (worker_id is not None) or (kind is CodeKind.CLIENT) != (
        client_id is not None
    ):
        raise ValueError("a worker code needs worker_id, a client code needs client_id")
    code = secrets.token_urlsafe(CODE_BYTES)
    issued = now or utcnow()
    session.add(
        OneTimeCode(
            code_index=keyring.blind_index(_PURPOSE, code),
            kind=kind,
            worker_id=worker_id,
            client_id=client_id,
            created_at=issued,
            expires_at=issued + timedelta(days=valid_days),
        )
    )
    session.flush()
    return code


def redeem_code(
    session: Session, keyring: KeyRing, code: str, now: datetime | None = None
) -> OneTimeCode:
    """Use a code once. Raises CodeRefused for any code that is not valid now."""
    moment = now or utcnow()
    if not isinstance(code, str) or not _CODE_FORM.match(code):
        raise CodeRefused()
    row = session.scalars(
        select(OneTimeCode).where(OneTimeCode.code_index == keyring.blind_index(_PURPOSE, code))
    ).first()
    if row is None or row.used_at is not None or row.expires_at <= moment:
        raise CodeRefused()
    # Mark used with a guarded UPDATE so two concurrent redemptions cannot both succeed.
    result = session.execute(
        update(OneTimeCode)
        .where(OneTimeCode.id == row.id, OneTimeCode.used_at.is_(None))
        .values(used_at=moment)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise CodeRefused()
    session.refresh(row)
    return row


def revoke_codes(
    session: Session, *, worker_id: int | None = None, client_id: int | None = None
) -> None:
    """Expire every open code of a worker or client (e.g. when a new one is issued)."""
    stmt = update(OneTimeCode).where(OneTimeCode.used_at.is_(None))
    if worker_id is not None:
        stmt = stmt.where(OneTimeCode.worker_id == worker_id)
    if client_id is not None:
        stmt = stmt.where(OneTimeCode.client_id == client_id)
    session.execute(stmt.values(expires_at=utcnow()).execution_options(synchronize_session=False))
