"""The outbox: every message to a person is a row written in the transaction that decided it.

Only after commit is anything sent. The sender (see `OutboxSender`) delivers due rows by
priority through a `Channel` that `bot` implements, and marks each row sent exactly once.

Channel errors (raised by `Channel.deliver`):

    ChannelError
     ├── RateLimited        429: wait `retry_after` seconds, then try again
     ├── TransientError     5xx, connection refused or dropped before sending: retry with backoff
     ├── MaybeDelivered     time-out after the request went out: may have arrived; not repeated
     │                      blindly for ordinary messages
     ├── Unreachable        403: she blocked the bot or deleted her account
     └── PermanentError     400 and the like: this message can never be sent as it is
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy.orm import Session

from care.models import Client, OutboxMessage, OutboxPriority, OutboxStatus, RecipientKind, Worker
from care.vault import Vault

PayloadKind = Literal["text", "photo", "delete", "edit"]


@dataclass(frozen=True)
class Button:
    """An inline button: a short stable id as callback data, and its label."""

    id: str
    label: str


@dataclass(frozen=True)
class Outgoing:
    """One decrypted outbox message, ready for a channel.

    kind "text": `text` with optional `buttons` (rows of buttons).
    kind "photo": `photo` (PNG bytes) with `text` as caption.
    kind "delete": delete `message_ids` from the chat.
    kind "edit": change the text/buttons of `edit_message_id`.
    """

    outbox_id: int
    recipient_kind: RecipientKind
    recipient_id: int
    chat_id: int
    kind: PayloadKind
    text: str = ""
    buttons: tuple[tuple[Button, ...], ...] = ()
    photo: bytes | None = None
    message_ids: tuple[int, ...] = ()
    edit_message_id: int | None = None
    protect_content: bool = True
    critical: bool = False


@dataclass(frozen=True)
class Delivered:
    """What the channel reports after sending: the message ids now visible in the chat."""

    message_ids: tuple[int, ...] = field(default_factory=tuple)


class ChannelError(Exception):
    """A message could not be delivered."""


class RateLimited(ChannelError):
    """The channel asks us to wait before sending again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after} s")
        self.retry_after = retry_after


class TransientError(ChannelError):
    """A passing fault (5xx, network) before the message was accepted: safe to retry."""


class MaybeDelivered(ChannelError):
    """A time-out after the request went out: the message may have arrived."""


class Unreachable(ChannelError):
    """The person cannot be reached (blocked the bot, deleted the account)."""


class PermanentError(ChannelError):
    """This message can never be sent as it is."""


class Channel(Protocol):
    """Delivers one outbox message to a person; raises a ChannelError subclass on failure."""

    async def deliver(self, message: Outgoing) -> Delivered:
        """Send the message and return the ids of the messages it created."""
        ...


def enqueue(
    session: Session,
    vault: Vault,
    to: Client | Worker,
    payload: dict[str, Any],
    *,
    kind: str,
    priority: OutboxPriority = OutboxPriority.REPLY,
    dedupe_key: str | None = None,
    not_before: datetime | None = None,
    expires_at: datetime | None = None,
    escalation_id: int | None = None,
    client_id: int | None = None,
) -> OutboxMessage:
    """Write an outbox row in the caller's transaction; its payload is encrypted.

    `payload` holds the message (e.g. {"type": "text", "text": ..., "buttons": [[[id, label]]]}).
    `client_id` names the client a message to a worker is about, so that erasing her also
    erases it; for a message to a client it is her own id.
    """
    recipient_kind = RecipientKind.CLIENT if isinstance(to, Client) else RecipientKind.WORKER
    about = to.id if isinstance(to, Client) else client_id
    row = OutboxMessage(
        recipient_kind=recipient_kind,
        recipient_id=to.id,
        client_id=about,
        data_key_id=to.data_key_id,
        kind=kind,
        priority=int(priority),
        payload_enc=vault.encrypt(session, to.data_key_id, json.dumps(payload)),
        status=OutboxStatus.PENDING,
        dedupe_key=dedupe_key,
        escalation_id=escalation_id,
        expires_at=expires_at,
    )
    if not_before is not None:
        row.not_before = not_before
    session.add(row)
    session.flush()
    return row


def read_payload(session: Session, vault: Vault, row: OutboxMessage) -> dict[str, Any]:
    """Decrypt an outbox row's payload."""
    loaded: dict[str, Any] = json.loads(vault.decrypt(session, row.data_key_id, row.payload_enc))
    return loaded
