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

import asyncio
import base64
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Exists,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import TableValuedAlias

from care.clock import Clock, SystemClock
from care.db import BEFORE_SAVEPOINT, insert_new_rows, one_of
from care.directory import chat_id_of
from care.errors import DecryptionError
from care.models import (
    ChatMessage,
    Client,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    RecipientKind,
    SkippedSend,
    Worker,
    utcnow,
)
from care.vault import Vault

if TYPE_CHECKING:
    from care.context import Care

_T = TypeVar("_T")
_A = TypeVar("_A")

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

    def __init__(self, retry_after: float, scope: Literal["chat", "global"] | None = None) -> None:
        super().__init__(f"rate limited; retry after {retry_after} s")
        self.retry_after = retry_after
        # Whether the limit hit was one person's chat or the whole bot; unknown (None) is
        # treated as global, the safe side.
        self.scope = scope


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
    """Write an outbox row in the caller's transaction; its payload is encrypted. The row is
    INSERTed at once, or, inside `collecting()`, when the caller hands its rows over (`write`,
    `Handoff.take`); its `id` is known from then on. It stays outside the session: a later
    change to it is not saved.

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
        not_before=not_before or utcnow(),
        attempts=0,
    )
    collector = _written.get()
    if collector is None:
        write(session, [row])
    else:
        # Written when the turn hands its rows to the sender (`OutboxSender.take`), which
        # can then claim them in the same INSERT, or by the turn before it commits.
        collector.append(row)
        collector.people.append(to)
    return row


_WRITTEN_COLUMNS = (
    "recipient_kind",
    "recipient_id",
    "client_id",
    "data_key_id",
    "kind",
    "priority",
    "payload_enc",
    "status",
    "dedupe_key",
    "escalation_id",
    "not_before",
    "expires_at",
    "claimed_by",
    "claimed_until",
    "attempts",
    "last_error",
)


def write(session: Session, rows: Sequence[OutboxMessage]) -> None:
    """INSERT the rows not yet written, in order, on the session's connection; each gets its
    `id`. The rows stay plain objects, outside the session: for the one or two rows of a
    turn, the ORM's unit of work costs more than the statements, so write a row once it is
    settled (`OutboxSender.take` decides before the turn writes). What `OutboxSender.take`
    left to do once the rows have ids runs after the INSERT."""
    new = [row for row in rows if row.id is None]
    if not new:
        return
    connection = session.connection()
    values = [{name: getattr(row, name) for name in _WRITTEN_COLUMNS} for row in new]
    rider = _take_rider(session) if len(new) == 1 else None
    after: list[Callable[[], None]] = session.info.pop(_AFTER_WRITE, None) or []
    if rider is not None:  # one statement for the row and the statement waiting for it
        statement, params = rider
        named = {_RIDING_NAME + name: value for name, value in values[0].items()}
        named[_RIDING_NAME + "created_at"] = utcnow()  # (no default is applied here)
        riding = _riding(statement)
        new[0].id = connection.execute(riding, {**params, **named}).scalar_one()
    elif len(new) == 1:
        new[0].id = connection.execute(_INSERT_ROWS, values[0]).scalar_one()
    else:  # one statement for all (the ids come back in the order of the rows)
        ids = connection.execute(_INSERT_ROWS, values).scalars().all()
        for row, row_id in zip(new, ids, strict=True):
            row.id = row_id
    for settle in after:
        settle()
    known = session.info.get(_KNOWN_OPEN)
    if known is not None:
        for row in new:
            if row.status in _OPEN:
                known[(row.recipient_kind, row.recipient_id)] = True


_AFTER_WRITE = "aftercare.outbox_after_write"
"""`session.info` key: what `OutboxSender.take` left to do once the rows it took have ids."""
_RIDERS = "aftercare.outbox_riders"
"""`session.info` key: the statement waiting to ride along with the next row written."""
_RIDING: dict[Any, Any] = {}


def carry_riders(session: Session) -> None:
    """PostgreSQL: from now on in this transaction, `ride_along` may hold a statement back
    until the next single row is written, and run it in the same statement (in its WITH):
    one round trip less. The caller must `run_riders` before it commits. (SQLite has no
    UPDATE inside a WITH, and no round trips to save: nothing waits there.)"""
    if session.get_bind().dialect.name == "postgresql":
        session.info[_RIDERS] = []
        session.info[BEFORE_SAVEPOINT] = run_riders


def ride_along(session: Session, statement: UpdateBase, params: dict[str, Any]) -> bool:
    """Hold `statement` (a write whose answer nobody needs) back until the next row is
    written (`carry_riders`); False when it cannot wait, and the caller runs it itself. A
    statement already waiting runs first, so that the writes keep their order. Not inside a
    savepoint: its rollback would not take back what waits (`care.db.savepoint` runs what
    waits before it begins one)."""
    riders: list[tuple[UpdateBase, dict[str, Any]]] | None = session.info.get(_RIDERS)
    if riders is None or session.in_nested_transaction():
        return False
    run_riders(session)
    riders.append((statement, params))
    return True


def run_riders(session: Session) -> None:
    """Run what still waits to ride along (no single row came to be written), before the
    transaction commits or anything reads what it writes."""
    riders: list[tuple[UpdateBase, dict[str, Any]]] | None = session.info.get(_RIDERS)
    while riders:
        statement, params = riders.pop(0)
        session.connection().execute(statement, params)


def _take_rider(session: Session) -> tuple[UpdateBase, dict[str, Any]] | None:
    """The statement waiting to ride along with the row being written, unless one of its
    parameters is named like a column of the outbox (the INSERT would take it for that
    column's value) or like one of the row's parameters: then it runs on its own first."""
    riders: list[tuple[UpdateBase, dict[str, Any]]] | None = session.info.get(_RIDERS)
    if not riders:
        return None
    names = riders[0][1].keys()
    if any(name in _OUTBOX.c or name.startswith(_RIDING_NAME) for name in names):
        run_riders(session)
        return None
    return riders.pop(0)


_RIDING_NAME = "outbox_"
"""What the names of the row's parameters begin with, beside a statement riding along. They
must not be the columns' own names: SQLAlchemy would take a parameter named like a column of
the riding UPDATE's table (`client_id`) for a value to set there."""


def _riding(statement: UpdateBase) -> Any:
    """An INSERT of one row (its parameters named `_RIDING_NAME` + column) with `statement`
    in its WITH (built once for each statement)."""
    riding = _RIDING.get(statement)
    if riding is None:
        columns = {
            name: bindparam(_RIDING_NAME + name, type_=_OUTBOX.c[name].type)
            for name in (*_WRITTEN_COLUMNS, "created_at")
        }
        riding = _RIDING[statement] = (
            insert(_OUTBOX).values(columns).returning(_OUTBOX.c.id).add_cte(statement.cte("ridden"))
        )
    return riding


class Written(list[OutboxMessage]):
    """The rows `enqueue` made in one unit of work, to be written by `write` (the sender's
    `take` does that for the rows it claims). It also holds on to their recipients, so that
    the session still has them when the sender takes the rows over (a session keeps only the
    objects somebody refers to; a lost one costs a query to load again)."""

    def __init__(self) -> None:
        super().__init__()
        self.people: list[Client | Worker] = []


_written: ContextVar[Written | None] = ContextVar("outbox_written", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[Written]:
    """Collect the rows `enqueue` makes in this unit of work (on this thread), so that the
    caller can hand them to the sender (`Handoff.take`) before it commits. The caller must
    `write` them, in the same transaction (the sender's `take` writes none)."""
    rows = Written()
    token = _written.set(rows)
    try:
        yield rows
    finally:
        _written.reset(token)


class Handoff(Protocol):
    """The sender of this process, as a conversation turn hands it the replies it wrote."""

    def take(self, session: Session, rows: Sequence[OutboxMessage]) -> Sequence[object]:
        """Claim `rows` in the caller's transaction (those that may go at once); the caller
        writes them all afterwards (`write`)."""
        ...

    def adopt(self, taken: Sequence[object]) -> None:
        """After the caller committed: send what `take` claimed."""
        ...


DELETE_WINDOW = timedelta(hours=48)
"""Telegram lets a bot delete messages in a private chat for 48 hours."""
_DELETE_MARGIN = timedelta(minutes=10)


def take_deletable(
    session: Session, client_id: int, now: datetime, *, older_than: datetime | None = None
) -> list[int]:
    """The ids of her recorded messages not yet deleted (up to `older_than`), marked deleted
    now; those past Telegram's 48 hours are only marked, as they can no longer go."""
    stmt = select(ChatMessage).where(
        ChatMessage.client_id == client_id, ChatMessage.deleted_at.is_(None)
    )
    if older_than is not None:
        stmt = stmt.where(ChatMessage.at <= older_than)
    rows = session.scalars(stmt.order_by(ChatMessage.message_id)).all()
    limit = now - DELETE_WINDOW + _DELETE_MARGIN
    for row in rows:
        row.deleted_at = now
    return [row.message_id for row in rows if row.at > limit]


def read_payload(session: Session, vault: Vault, row: OutboxMessage) -> dict[str, Any]:
    """Decrypt an outbox row's payload."""
    loaded: dict[str, Any] = json.loads(vault.decrypt(session, row.data_key_id, row.payload_enc))
    return loaded


# ---------------------------------------------------------------------------------------------
# The sender
# ---------------------------------------------------------------------------------------------
#
# Life of a row: PENDING --claim--> SENDING --deliver--> SENT (or FAILED / CANCELLED), or back to
# PENDING with a later `not_before` to retry. A claim (`claimed_by`, `claimed_until`) is a
# lease: a sender that dies leaves its claims to expire, and any sender then takes them over.
#
# Right before `Channel.deliver` the sender commits `last_error = IN_FLIGHT`. A row found with
# that mark after a crash may have reached the person: an ordinary message is then marked SENT
# with `last_error = UNCONFIRMED` (not repeated, and shown to her worker as a skipped-send record
# "unconfirmed"); a critical alert is sent again, because a double alert beats a lost one.
# A turn that hands its replies over (`OutboxSender.take`) writes that mark for the first reply
# to each person in its own transaction, so the reply needs no commit of its own before it goes.
# A graceful stop hands such rows back unsent (`_disarm`), as it does every armed row.

IN_FLIGHT = "in_flight"
UNCONFIRMED = "unconfirmed"

SKIP_EXPIRED = "expired"
SKIP_UNREACHABLE = "unreachable"
SKIP_UNCONFIRMED = "unconfirmed"
SKIP_ALERT_WAITS = "alert_waits"
"""A scheduled flow held back: her unanswered question would alert her worker, and the flow
would have dropped it (`ConversationService.start_flow`)."""

_log = logging.getLogger("care.outbox")

_UNREACHABLE_NOTICE = {
    "nl": (
        "{alias} is niet meer bereikbaar via de bot (de bot is geblokkeerd of het account is "
        "weg). Er gaan geen berichten meer naar haar. Neem op een andere manier contact op."
    ),
    "en": (
        "{alias} can no longer be reached through the bot (it was blocked or the account is "
        "gone). No more messages go to her. Please get in touch another way."
    ),
}


def record_skip(
    session: Session,
    client_id: int,
    kind: str,
    reason: str,
    *,
    due_at: datetime | None = None,
    ref: str | None = None,
    at: datetime | None = None,
) -> SkippedSend:
    """Record that something meant for her was not sent (her worker can list these)."""
    row = SkippedSend(client_id=client_id, kind=kind, reason=reason, due_at=due_at, ref=ref)
    if at is not None:
        row.recorded_at = at
    session.add(row)
    session.flush()
    return row


def skipped_sends(
    session: Session, client_id: int, since: datetime | None = None
) -> list[SkippedSend]:
    """What was not sent to her (newest first), for her worker to see."""
    stmt = select(SkippedSend).where(SkippedSend.client_id == client_id)
    if since is not None:
        stmt = stmt.where(SkippedSend.recorded_at >= since)
    return list(session.scalars(stmt.order_by(SkippedSend.recorded_at.desc(), SkippedSend.id)))


def to_outgoing(
    row: OutboxMessage, payload: dict[str, Any], chat_id: int, protect_default: bool = True
) -> Outgoing:
    """Turn a decrypted payload into the channel's `Outgoing`.

    Payload forms: {"type": "text", "text", "buttons": [[[id, label], ...], ...]};
    {"type": "photo", "photo": base64 PNG, "text": caption}; {"type": "delete",
    "message_ids": [...]}; {"type": "edit", "message_id", "text", "buttons"}. Any of them
    may carry "protect_content".
    """
    kind = payload.get("type", "text")
    if kind not in ("text", "photo", "delete", "edit"):
        raise ValueError(f"unknown outbox payload type {kind!r}")
    buttons = tuple(
        tuple(Button(str(b[0]), str(b[1])) for b in button_row)
        for button_row in payload.get("buttons") or ()
    )
    photo = payload.get("photo")
    edit_id = payload.get("message_id")
    return Outgoing(
        outbox_id=row.id,
        recipient_kind=row.recipient_kind,
        recipient_id=row.recipient_id,
        chat_id=chat_id,
        kind=kind,
        text=str(payload.get("text", "")),
        buttons=buttons,
        photo=base64.b64decode(photo) if isinstance(photo, str) else None,
        message_ids=tuple(int(m) for m in payload.get("message_ids") or ()),
        edit_message_id=int(edit_id) if edit_id is not None else None,
        protect_content=bool(payload.get("protect_content", protect_default)),
        critical=row.priority <= OutboxPriority.CRITICAL,
    )


@dataclass(frozen=True)
class SenderOptions:
    """How the sender paces and retries (the rate limits themselves come from settings)."""

    claim_seconds: float = 15.0
    """How long a claim lasts; a crashed sender's rows are taken over after this."""
    batch_size: int = 60
    """How many due rows to hold claimed at once (about two seconds of sending)."""
    max_in_flight: int = 16
    """Deliveries between their in-flight mark and their result (never two to the same
    person); also the most messages left in doubt ("unconfirmed") when the process dies."""
    ready_ahead: int = 2
    """Deliveries marked in flight before their turn at the rate limit, so that a send never
    waits for a commit; more (up to `max_in_flight`) while commits are slow. A better-priority
    message may always be marked ahead of them."""
    commit_batch: int = 100
    """The most result marks committed together in one transaction (group commit)."""
    poll_seconds: float = 0.5
    """How often to look for new rows when nobody calls `wake()`."""
    headroom: float = 0.95
    """Send at this share of the configured limits, so that jitter does not earn a 429."""
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 300.0
    max_attempts: int = 25
    """Ordinary messages are given up (FAILED) after this many failed attempts."""


@dataclass
class _Item:
    """A claimed row, decrypted and ready to hand to the channel."""

    row_id: int
    priority: int
    recipient: tuple[str, int]
    outgoing: Outgoing
    client_id: int | None
    attempts: int
    adopted_at: int | None = None
    """For a row handed over by a turn: the sender's wake count when it was adopted."""
    marked: bool = False
    """Its in-flight mark was committed with the turn that wrote it: arming needs no commit."""


@dataclass
class _Taken:
    """What `OutboxSender.take` claimed: its item, whose ids come from the row once written."""

    item: _Item
    row: OutboxMessage

    def written(self) -> _Item:
        """The item with the id the row was written with (after the caller's `write`)."""
        self.item.row_id = self.row.id
        self.item.outgoing = dataclasses.replace(self.item.outgoing, outbox_id=self.row.id)
        return self.item


def _in_order(item: _Item) -> tuple[int, int]:
    """The order rows go in: best priority first, then as written."""
    return (item.priority, item.row_id)


class _Bucket:
    """A token bucket on the monotonic clock."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic()

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0 when one is)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        """Use one token (call after `wait` returned 0)."""
        self.tokens -= 1.0


class _Gate:
    """Telegram's limits: per chat and overall token buckets, and 429 pauses."""

    def __init__(self, per_chat: float, overall: float, overall_burst: float = 1.0) -> None:
        self.per_chat = per_chat
        self.overall = _Bucket(overall, max(1.0, overall_burst))
        self.chats: dict[tuple[str, int], _Bucket] = {}
        self.paused_until = 0.0
        self.chat_paused_until: dict[tuple[str, int], float] = {}

    def chat_wait(self, key: tuple[str, int], now: float) -> float:
        """Seconds until this person may get another message."""
        pause = self.chat_paused_until.get(key, 0.0) - now
        bucket = self.chats.get(key)
        wait = bucket.wait(now) if bucket is not None else 0.0
        return max(pause, wait, 0.0)

    def global_wait(self, now: float) -> float:
        """Seconds until any message may go out."""
        return max(self.paused_until - now, self.overall.wait(now), 0.0)

    def take(self, key: tuple[str, int]) -> None:
        """Count a send to this person."""
        self.overall.take()
        bucket = self.chats.get(key)
        if bucket is None:
            bucket = self.chats[key] = _Bucket(self.per_chat, 1.0)
            bucket.wait(time.monotonic())
        bucket.take()

    def pause(self, seconds: float, key: tuple[str, int] | None) -> None:
        """Stop sending (to one person, or to everyone) for `seconds`."""
        until = time.monotonic() + seconds
        if key is None:
            self.paused_until = max(self.paused_until, until)
        else:
            self.chat_paused_until[key] = max(self.chat_paused_until.get(key, 0.0), until)

    def forget_idle(self, now: float) -> None:
        """Drop per-chat state that no longer limits anything (keeps memory flat)."""
        for key in [k for k, b in self.chats.items() if b.wait(now) == 0.0]:
            if self.chat_paused_until.get(key, 0.0) <= now:
                self.chats.pop(key, None)
                self.chat_paused_until.pop(key, None)


def _sender_name() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class _Together:
    """A job that runs with the others of its kind in the same batch: `run(session, args)`
    does the work of all of them at once (one statement, not one each) and answers each, in
    order."""

    run: Callable[[Session, list[Any]], list[Any]]
    arg: Any
    alone: Callable[[Connection, list[Any]], list[Any]] | None = None
    """The same work as one autocommitted statement, for a batch of nothing else: one round
    trip instead of BEGIN, the statements and COMMIT (on PostgreSQL; see `_GroupCommit`)."""


_Job = Callable[[Session], Any] | _Together

_MIN_REFILL_GAP = 0.05
"""Seconds between two claims, however often `wake()` is called."""
_LATENCY_MEMORY = 3.0
"""Seconds of commit latencies that decide how many rows to arm ahead."""


class _GroupCommit:
    """Runs write jobs on one database thread, many of them in one transaction.

    Jobs that arrive while a transaction is being committed wait and go together in the next
    one, so that a burst of sends costs a few commits instead of one or two each (on SQLite
    with synchronous=FULL every commit is an fsync, and writers queue for one lock). Jobs of
    one kind (`together`) also share their statements: a batch of sent marks is one UPDATE
    and one INSERT, whatever its size, where each mark would be a round trip or two of its
    own (on PostgreSQL, each of them also waits for the GIL again). A batch made only of jobs
    whose kinds can each be done by one statement (`alone`) is those statements, autocommitted,
    where `autocommit` connections are given (PostgreSQL): one round trip for each kind. Each
    caller is answered when its job is durable. When a batch fails, its jobs are run again one
    by one, each in its own transaction, so that one bad row cannot hold up the others.
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        max_batch: int,
        autocommit: Callable[[], Connection] | None = None,
    ) -> None:
        self._sessions = sessions
        self._autocommit = autocommit
        self._max_batch = max(1, max_batch)
        self._pending: list[tuple[_Job, asyncio.Future[Any]]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-commit")
        self._drainer: asyncio.Task[None] | None = None
        self.commits = 0

    async def together(
        self,
        run: Callable[[Session, list[_A]], list[_T]],
        arg: _A,
        alone: Callable[[Connection, list[_A]], list[_T]] | None = None,
    ) -> _T:
        """Run `run(session, [arg, ...])` once for this and every other `arg` given with the
        same `run` in the same batch; return this one's answer once committed. `alone`, if
        given, does the same as `run` in one statement: it runs instead, autocommitted, when
        the batch holds nothing else."""
        return cast(_T, await self._submit(_Together(run, arg, alone)))

    async def run(self, job: Callable[[Session], _T]) -> _T:
        """Run `job(session)` in a transaction; return its result once committed."""
        return cast(_T, await self._submit(job))

    async def _submit(self, job: _Job) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="outbox-commit")
        return await future

    async def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        if self._drainer is not None:
            await self._drainer
        self._pool.shutdown(wait=True)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                outcomes = await loop.run_in_executor(
                    self._pool, self._commit, [job for job, _ in batch]
                )
            except BaseException as exc:  # the pool is gone or we are cancelled
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
                raise
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """Thread side: each kind's one statement, autocommitted, where every job has one
        (`_alone`); else all jobs in one transaction, or one by one when that fails."""
        done = self._alone(jobs)
        left = [at for at in range(len(jobs)) if at not in done]
        if left:
            outcomes = self._in_transactions([jobs[at] for at in left])
            done.update(zip(left, outcomes, strict=True))
        return [done[at] for at in range(len(jobs))]

    def _in_transactions(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        if len(jobs) > 1:
            try:
                with self._sessions() as session, session.begin():
                    results = _run_jobs(session, jobs)
                self.commits += 1
                return [(True, result) for result in results]
            except Exception as exc:
                _log.warning("outbox.batch_failed size=%d error=%s", len(jobs), type(exc).__name__)
        outcomes: list[tuple[bool, Any]] = []
        for job in jobs:
            try:
                with self._sessions() as session, session.begin():
                    outcomes.append((True, _run_jobs(session, [job])[0]))
                self.commits += 1
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    def _alone(self, jobs: list[_Job]) -> dict[int, tuple[bool, Any]]:
        """When every job of the batch can be done by its kind's one statement (`alone`), run
        those statements, autocommitted, one for each kind, in the order the kinds came: no
        BEGIN and COMMIT round trips. Answers the outcomes by the jobs' positions. A kind
        whose statement fails, and the kinds after it, are left out: the caller runs them in
        transactions, as it would have."""
        done: dict[int, tuple[bool, Any]] = {}
        if self._autocommit is None:
            return done
        kinds: dict[Callable[[Session, list[Any]], list[Any]], list[int]] = {}
        for at, job in enumerate(jobs):
            if not isinstance(job, _Together) or job.alone is None:
                return done
            kinds.setdefault(job.run, []).append(at)
        for positions in kinds.values():
            same = [cast(_Together, jobs[at]) for at in positions]
            alone = same[0].alone
            assert alone is not None
            try:
                with self._autocommit() as connection:
                    results = alone(connection, [job.arg for job in same])
            except Exception as exc:
                _log.warning("outbox.batch_failed size=%d error=%s", len(same), type(exc).__name__)
                break
            self.commits += 1
            done.update((at, (True, result)) for at, result in zip(positions, results, strict=True))
        return done


def _run_jobs(session: Session, jobs: list[_Job]) -> list[Any]:
    """Run a batch's jobs in order; the jobs of one kind (`_Together`) all at once, where the
    first of them stands (they concern rows of their own: a row has one job at a time)."""
    kinds: dict[Callable[[Session, list[Any]], list[Any]], list[tuple[int, Any]]] = {}
    for at, job in enumerate(jobs):
        if isinstance(job, _Together):
            kinds.setdefault(job.run, []).append((at, job.arg))
    results: list[Any] = [None] * len(jobs)
    for at, job in enumerate(jobs):
        if not isinstance(job, _Together):
            results[at] = job(session)
            continue
        same = kinds[job.run]
        if same[0][0] != at:
            continue  # answered with the first of its kind
        answers = job.run(session, [arg for _, arg in same])
        for (i, _), answer in zip(same, answers, strict=True):
            results[i] = answer
    return results


_OPEN = (OutboxStatus.PENDING, OutboxStatus.SENDING)
_OPEN_FOR_PERSON = (
    select(OutboxMessage.id)
    .where(
        OutboxMessage.recipient_kind == bindparam("kind"),
        OutboxMessage.recipient_id == bindparam("person"),
        one_of(OutboxMessage.status, _OPEN),
    )
    .limit(1)
)
"""A row still open for this person (built once: see `take`)."""


def open_for(kind: RecipientKind, person: ColumnElement[int]) -> Exists:
    """Whether a row is still open for the person whose id is `person` (SQL), for a statement
    the caller runs anyway: its answer goes to `note_open`. Give the id as a bound parameter,
    not as a column of an UPDATE's table: SQLite writes RETURNING's columns unqualified, and
    inside this subquery a name the outbox also has (`client_id`) would be the outbox's."""
    return exists().where(
        OutboxMessage.recipient_kind == kind,
        OutboxMessage.recipient_id == person,
        one_of(OutboxMessage.status, _OPEN),
    )


_KNOWN_OPEN = "aftercare.outbox_open"


def note_open(session: Session, kind: RecipientKind, person: int, is_open: bool) -> None:
    """Tell `take`, later in this transaction, whether a row was open for this person (read
    by a statement of the turn that ran after her row was locked: `open_for`). `take` then
    needs no query of its own; `write` notes the rows it writes."""
    session.info.setdefault(_KNOWN_OPEN, {})[(kind, person)] = is_open


def _is_open(session: Session, kind: RecipientKind, person: int) -> bool:
    """Whether an older row is open for this person: as noted in this transaction (once), or
    asked of the database."""
    known = session.info.get(_KNOWN_OPEN)
    noted = known.pop((kind, person), None) if known else None
    if noted is not None:
        return bool(noted)
    query = {"kind": kind, "person": person}
    return session.connection().execute(_OPEN_FOR_PERSON, query).first() is not None


_OUTBOX = cast(Table, OutboxMessage.__table__)
_INSERT_ROWS = insert(_OUTBOX).returning(_OUTBOX.c.id, sort_by_parameter_order=True)
_CLAIMED_BY_ME = and_(
    _OUTBOX.c.status == OutboxStatus.SENDING,
    _OUTBOX.c.claimed_by == bindparam("sender"),
)
_MINE = and_(_OUTBOX.c.id == bindparam("row_id"), _CLAIMED_BY_ME)
_MARK_ALL_IN_FLIGHT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("row_ids", expanding=True)), _CLAIMED_BY_ME)
    .values(last_error=IN_FLIGHT, attempts=_OUTBOX.c.attempts + 1, claimed_until=bindparam("until"))
    .returning(_OUTBOX.c.id)
)
"""Claimed rows go to the channel now (`row_ids`, `sender`, `until`); answers the ids whose
claim still held."""
_SENT_STATE: dict[str, Any] = {
    "status": OutboxStatus.SENT,
    "sent_at": bindparam("now"),
    "last_error": None,
    "claimed_until": None,
}
"""What a sent mark sets, besides the id of the first message the row created."""
_MARK_SENT = (
    update(_OUTBOX).where(_MINE).values(**_SENT_STATE, channel_message_id=bindparam("first"))
)
"""A claimed row was sent (parameters `row_id`, `sender`, `now` and `first`, the id of the
first message it created)."""
_NOT_MARKED_BY = select(_OUTBOX.c.id).where(
    _OUTBOX.c.id.in_(bindparam("row_ids", expanding=True)),
    or_(
        _OUTBOX.c.status != OutboxStatus.SENT,
        _OUTBOX.c.claimed_by.is_(None),
        _OUTBOX.c.claimed_by != bindparam("sender"),
    ),
)
"""Of these rows, those this sender did not mark sent (another took them over)."""


def _pairs(name: str, ids: tuple[str, str], numbers: tuple[str, str]) -> TableValuedAlias:
    """PostgreSQL: the table `name` of pairs (`ids[1]`, `numbers[1]`) from two arrays passed
    side by side, the parameters `ids[0]` (integers) and `numbers[0]` (big integers)."""
    return (
        func.unnest(
            bindparam(ids[0], type_=postgresql.ARRAY(Integer)),
            bindparam(numbers[0], type_=postgresql.ARRAY(BigInteger)),
        )
        .table_valued(ids[1], numbers[1])
        .render_derived(name=name)
    )


_SENT = _pairs("sent", ("row_ids", "row_id"), ("firsts", "first"))
_SHOWN = _pairs("shown", ("client_ids", "client_id"), ("message_ids", "message_id"))
_MARKED = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == _SENT.c.row_id, _CLAIMED_BY_ME)
    .values(**_SENT_STATE, channel_message_id=_SENT.c.first)
    .returning(_OUTBOX.c.id)
    .cte("marked")
)
_SHOWN_RECORDED = (
    postgresql.insert(cast(Table, ChatMessage.__table__))
    .from_select(
        ["client_id", "message_id", "from_bot", "at"],
        select(
            _SHOWN.c.client_id,
            _SHOWN.c.message_id,
            true(),
            bindparam("now", type_=ChatMessage.at.type),
        ),
    )
    .on_conflict_do_nothing()
    .cte("recorded")
)
_MARK_SENT_RECORDING = select(_MARKED.c.id).add_cte(_SHOWN_RECORDED)
"""PostgreSQL: `_MARK_SENT` for many rows (parameters `row_ids` and `firsts`, in order, and
`sender` and `now`) and the message ids they created in her chats recorded (`client_ids` and
`message_ids`), in one statement; answers the ids of the rows it marked."""


def _shown_in_her_chat(sent: list[tuple[_Item, Delivered]]) -> list[tuple[int, int]]:
    """(her id, message id) of each message these sends left in a girl's chat (a delete
    leaves none), for wipe and auto-delete to remove."""
    return [
        (item.recipient[1], message_id)
        for item, delivered in sent
        if item.recipient[0] == RecipientKind.CLIENT.value and item.outgoing.kind != "delete"
        for message_id in delivered.message_ids
    ]


def _candidate_statement(better: bool, postgres: bool) -> Select[int]:
    """Due rows that nothing is waiting ahead of for the same person (a row in flight, or
    an open better or older one that is due or waits to be tried again), best priority first
    (parameters `now`, `limit` and, when `better`, `better_than`). Built once, when a sender
    is made: building it costs more than running it."""
    o = OutboxMessage
    p = aliased(OutboxMessage)
    now = bindparam("now", type_=o.not_before.type)
    due = and_(
        o.not_before <= now,
        or_(
            o.status == OutboxStatus.PENDING,
            and_(o.status == OutboxStatus.SENDING, o.claimed_until < now),
        ),
    )
    blocked = (
        select(p.id)
        .where(
            p.recipient_kind == o.recipient_kind,
            p.recipient_id == o.recipient_id,
            p.id != o.id,
            or_(
                and_(p.status == OutboxStatus.SENDING, p.claimed_until >= now),
                and_(
                    p.status.in_(_OPEN),
                    # A row held for later (her quiet hours) and never tried does not hold
                    # up what is due now; one waiting to be tried again does (order).
                    or_(p.not_before <= now, p.attempts > 0),
                    or_(
                        p.priority < o.priority,
                        and_(p.priority == o.priority, p.id < o.id),
                    ),
                ),
            ),
        )
        .exists()
    )
    stmt = select(o.id).where(due, ~blocked)
    if better:
        stmt = stmt.where(o.priority < bindparam("better_than", type_=o.priority.type))
    stmt = stmt.order_by(o.priority, o.id).limit(bindparam("limit", type_=Integer()))
    if postgres:
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


class OutboxSender:
    """Delivers due outbox rows through a channel: by priority, in order per person, once.

    Several senders may run on PostgreSQL (claims use SELECT ... FOR UPDATE SKIP LOCKED); on
    SQLite the claims are conditional updates, so a second sender is safe but pointless.

    A claimed row goes through three steps. Armed: its in-flight mark is committed (in a group
    commit with other rows' marks), a little ahead of its turn. Fired: when the rate limits
    let a message go, the best-priority armed row is handed to the channel. Settled: its
    result (sent, retry later, failed) is committed, again grouped with others. The loop that
    paces the sends never waits for the database: claims and commits run on their own threads.
    """

    def __init__(
        self,
        care: Care,
        channel: Channel,
        clock: Clock | None = None,
        options: SenderOptions | None = None,
        name: str | None = None,
    ) -> None:
        self.care = care
        self.channel = channel
        self.clock: Clock = clock or SystemClock()
        self.options = options or SenderOptions()
        self.name = (name or _sender_name())[:64]
        limits = care.settings.telegram.rate_limits
        overall = limits.overall_per_second * self.options.headroom
        # The overall bucket may hold a little more than one send, so that a loop that wakes a
        # few ms late catches up instead of losing the time; it stays small enough that no
        # window of one second sees more than the limit: burst + rate <= limit - 1/4.
        self._gate = _Gate(
            limits.per_chat_per_second * self.options.headroom,
            overall,
            limits.overall_per_second - overall - 0.25,
        )
        self._overall_rate = overall
        self._arm_latencies: collections.deque[tuple[float, float]] = collections.deque()
        self._postgres = care.engine.dialect.name == "postgresql"
        # key: whether the query looks only for rows better than a given priority
        self._candidate_stmts = {
            better: _candidate_statement(better, self._postgres) for better in (False, True)
        }
        self._protect = care.settings.privacy.protect_content
        self._queue: list[_Item] = []  # claimed, not yet armed; sorted by (priority, id)
        self._ahead: dict[int, _Item] = {}  # being armed or armed, not yet fired
        self._armed: list[_Item] = []  # in-flight mark committed, waiting for its turn
        self._handback: list[_Item] = []  # armed after stop began: never sent, handed back
        self._known: set[int] = set()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._busy_recipients: set[tuple[str, int]] = set()
        self._wake = asyncio.Event()
        self._wakes = 0  # counts wake() calls: a claim started after the last one saw all rows
        self._claimed_wakes = -1
        self._settled = 0  # counts rows settled (`_done`): see `_refill`
        self._recheck = False
        self._last_claimed = 0
        self._last_refill = float("-inf")
        self._refilling: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._claim_pool: ThreadPoolExecutor | None = None
        self._commits: _GroupCommit | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self.sent_count = 0

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start sending in the running event loop."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._claim_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-claim")
        engine = self.care.engine
        self._commits = _GroupCommit(
            self.care.sessions,
            self.options.commit_batch,
            (lambda: engine.connect().execution_options(isolation_level="AUTOCOMMIT"))
            if self._postgres
            else None,
        )
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-sender")
        _log.info("outbox.sender_started sender=%s", self.name)

    def wake(self) -> None:
        """Look for new rows now (call after committing a reply or an alert)."""
        self._on_loop(self._woken)

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> bool:
        """Run `callback` on the sender's event loop: at once when called there, else soon
        (from any thread). False when there is no loop to run it (not started, or closed)."""
        loop = self._loop
        if loop is None:
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            callback(*args)
            return True
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed
            return False
        return True

    def _woken(self) -> None:
        self._wakes += 1
        self._wake.set()

    def take(self, session: Session, rows: Sequence[OutboxMessage]) -> list[_Taken]:
        """Claim rows a conversation turn has just made, in the turn's own transaction; the
        caller then writes them all (`write`, the transaction's last statement).

        A reply then needs no claim of its own: after the commit, `adopt` queues it. The first
        row for each person also gets its in-flight mark here, so it goes out without another
        commit; the next rows for her are marked in turn, after the one before them is settled.
        Only rows that could be claimed now are taken, and only when nothing else is open for
        that person (an older message goes first: such rows are left to the ordinary claim,
        like everything not taken). Runs on the caller's thread; if the transaction rolls
        back, the claim and the mark never existed.
        """
        if self._loop is None or self._stopping or not rows:
            return []
        now = self.clock.now()
        until = now + timedelta(seconds=self.options.claim_seconds)
        groups: dict[tuple[RecipientKind, int], list[OutboxMessage]] = {}
        for row in rows:
            if row.id is None and row.status is OutboxStatus.PENDING and row.not_before <= now:
                groups.setdefault((row.recipient_kind, row.recipient_id), []).append(row)
        claimed: list[list[OutboxMessage]] = []
        for (kind, person), group in groups.items():
            if _is_open(session, kind, person):
                continue
            # By priority, then in the order written (the sort is stable).
            group.sort(key=lambda r: r.priority)
            for row in group:
                row.status = OutboxStatus.SENDING
                row.claimed_by = self.name
                row.claimed_until = until
            # The first is marked before it is written: one INSERT, no UPDATE after it.
            group[0].last_error = IN_FLIGHT
            group[0].attempts += 1
            claimed.append(group)
        if not claimed:
            return []
        taken: list[_Taken] = []
        for group in claimed:
            marked: OutboxMessage | None = group[0]
            for row in group:
                item = self._to_item_unwritten(session, row, now)
                if item is None:
                    if row is marked:  # settled instead: the mark goes to the next one
                        marked = None
                elif marked is None:
                    marked = row
                    row.last_error = IN_FLIGHT
                    row.attempts += 1
                if item is not None:
                    item.marked = row is marked
                    taken.append(_Taken(item, row))
        return taken

    def adopt(self, taken: Sequence[object]) -> None:
        """Queue what `take` claimed, once the caller has written it and committed (from any
        thread; a row left unwritten was never claimed). If the sender has stopped meanwhile,
        the rows are handed back (`_hand_back`) and the next claim sends them."""
        items = [
            one.written() for one in taken if isinstance(one, _Taken) and one.row.id is not None
        ]
        if items and not self._on_loop(self._adopted, items):
            self._hand_back(items)

    def _hand_back(self, items: list[_Item]) -> None:
        """Rows taken while the sender stopped go back to pending: the next claim sends them.
        (Left alone, their claims would expire and a row marked in flight would count as
        maybe delivered, so never be sent.)"""
        marked = [item.row_id for item in items if item.marked]
        claimed = [item.row_id for item in items if not item.marked]
        try:
            with self.care.sessions() as session, session.begin():
                if marked:
                    self._disarm(session, marked)
                if claimed:
                    self._release_claims(session, claimed)
        except Exception as exc:  # the claims expire; the rows are then settled as unconfirmed
            _log.warning("outbox.handback_failed sender=%s error=%s", self.name, type(exc).__name__)

    def _adopted(self, items: list[_Item]) -> None:
        if self._task is None or self._stopping:
            if self._loop is not None:
                # Not on the loop's thread: a commit must not hold up the sends still going.
                self._loop.run_in_executor(None, self._hand_back, items)
            return
        fresh = [item for item in items if item.row_id not in self._known]
        for item in fresh:
            item.adopted_at = self._wakes
            self._known.add(item.row_id)
        # The best first: a turn's alert to her worker gets the one token left before her reply.
        fresh.sort(key=_in_order)
        queued = [item for item in fresh if not self._fire_at_once(item)]
        if queued:
            self._queue.extend(queued)
            self._queue.sort(key=_in_order)
        self._wake.set()

    def _fire_at_once(self, item: _Item) -> bool:
        """Hand a row a turn marked in flight to the channel now, when nothing goes before it:
        no row armed and waiting, none queued or being armed with a better priority, her chat
        free and the limits open. It skips the arming (it is marked already) and the rounds of
        the sender's loop, each of which waits behind every other callback under load (in
        bench/turn_latency.py at 200 girls, the turn's commit to the start of its send took a
        median 4.0 ms before, 0.7-1.6 ms since). False: it queues as any row does."""
        if not item.marked or self._armed:
            return False
        if len(self._in_flight) >= self.options.max_in_flight:
            return False
        if item.recipient in self._busy_recipients:
            return False
        waiting = itertools.chain(self._queue, self._ahead.values())
        if any(other.priority < item.priority for other in waiting):
            return False
        now = time.monotonic()
        if self._gate.global_wait(now) > 0 or self._gate.chat_wait(item.recipient, now) > 0:
            return False
        self._busy_recipients.add(item.recipient)
        self._fire(item)
        return True

    def _fire(self, item: _Item) -> None:
        """Hand a row marked in flight to the channel (the limits allowed it just now)."""
        self._gate.take(item.recipient)
        task = asyncio.create_task(self._send(item), name=f"outbox-{item.row_id}")
        self._in_flight[item.row_id] = task

    async def idle(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109
        """Wait until nothing is due, queued or in flight; False on time-out."""
        self._idle.clear()
        self.wake()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, flush: bool = True, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop sending. With `flush`, first deliver what is due (up to `timeout` seconds).

        Deliveries already under way are always finished, never cut off half-way (that would
        leave a message in doubt). Claimed rows not yet sent are handed back, also those
        already marked in flight but not yet handed to the channel.
        """
        if self._task is None:
            return
        if flush:
            await self.idle(timeout)
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        if self._refilling is not None:
            await asyncio.wait([self._refilling], timeout=timeout)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=timeout)
        queued = [item.row_id for item in self._queue]
        armed = [item.row_id for item in self._armed + self._handback]
        for item in self._armed + self._handback:
            self._in_flight.pop(item.row_id, None)
            self._busy_recipients.discard(item.recipient)
        self._queue.clear()
        self._armed.clear()
        self._handback.clear()
        self._ahead.clear()
        self._known.clear()
        assert self._commits is not None
        try:
            if queued:
                await self._commits.run(lambda s: self._release_claims(s, queued))
            if armed:
                await self._commits.run(lambda s: self._disarm(s, armed))
        except Exception as exc:  # the claims expire by themselves
            _log.warning("outbox.handback_failed sender=%s error=%s", self.name, type(exc).__name__)
        await self._commits.close()
        self._commits = None
        if self._claim_pool is not None:
            self._claim_pool.shutdown(wait=True)
            self._claim_pool = None
        _log.info(
            "outbox.sender_stopped sender=%s returned=%d", self.name, len(queued) + len(armed)
        )

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        last_prune = time.monotonic()
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            waits = [self._arm_ready(now), self._fire_ready()]
            if self._refilling is None:
                refill_wait = self._refill_wait(now)
                if refill_wait <= 0:
                    self._refilling = asyncio.create_task(self._refill(), name="outbox-claim")
                else:
                    waits.append(refill_wait)
            if now - last_prune > 30:
                self._gate.forget_idle(now)
                last_prune = now
            delay = max(0.001, min((w for w in waits if w is not None), default=1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _refill_wait(self, now: float) -> float:
        """Seconds until the next claim is due (0: now)."""
        since = now - self._last_refill
        wait = self.options.poll_seconds - since
        low = len(self._queue) * 2 < self.options.batch_size
        if self._wakes != self._claimed_wakes or (low and (self._last_claimed or self._recheck)):
            # A burst of wakes (a scheduler writing thousands of reminders) must not turn
            # into a claim each: every claim is a write that queues for the database lock.
            wait = min(wait, _MIN_REFILL_GAP - since)
        return max(wait, 0.0)

    def _arm_ready(self, now: float) -> float | None:
        """Mark the next rows in flight (ahead of their turn); seconds until one may be armed."""
        opts = self.options
        soonest: float | None = None
        while self._queue and len(self._in_flight) < opts.max_in_flight:
            chosen: _Item | None = None
            for item in self._queue:  # kept sorted by (priority, id)
                if item.recipient in self._busy_recipients:
                    continue
                wait = self._gate.chat_wait(item.recipient, now)
                if wait <= 0:
                    chosen = item
                    break
                soonest = wait if soonest is None else min(soonest, wait)
            if chosen is None:
                return soonest
            if len(self._ahead) >= self._ready_target(now):
                best_ahead = min(item.priority for item in self._ahead.values())
                if chosen.priority >= best_ahead:
                    return soonest
            self._queue.remove(chosen)
            self._busy_recipients.add(chosen.recipient)
            self._ahead[chosen.row_id] = chosen
            task = asyncio.create_task(self._arm(chosen), name=f"outbox-arm-{chosen.row_id}")
            self._in_flight[chosen.row_id] = task
        return soonest

    def _ready_target(self, now: float) -> int:
        """How many rows to hold armed: enough to cover the slowest recent commit."""
        latencies = self._arm_latencies
        while latencies and latencies[0][0] < now - _LATENCY_MEMORY:
            latencies.popleft()
        slowest = max((latency for _, latency in latencies), default=0.0)
        cover = math.ceil(slowest * self._overall_rate * 1.25) + 1
        return max(1, min(self.options.max_in_flight, max(self.options.ready_ahead, cover)))

    def _fire_ready(self) -> float | None:
        """Hand armed rows to the channel while the limits allow; seconds until the next may."""
        while self._armed:
            now = time.monotonic()
            wait = self._gate.global_wait(now)
            if wait > 0:
                return wait
            chosen: _Item | None = None
            soonest: float | None = None
            for item in self._armed:  # kept sorted by (priority, id)
                chat_wait = self._gate.chat_wait(item.recipient, now)
                if chat_wait <= 0:
                    chosen = item
                    break
                soonest = chat_wait if soonest is None else min(soonest, chat_wait)
            if chosen is None:
                return soonest
            self._armed.remove(chosen)
            self._ahead.pop(chosen.row_id, None)
            self._fire(chosen)
        return None

    async def _refill(self) -> None:
        opts = self.options
        self._claimed_wakes = wakes = self._wakes
        settled = self._settled
        self._recheck = False
        self._last_refill = time.monotonic()
        # Rows handed over by turns do not count: a full queue of them must not keep older
        # rows (a reminder, a second message of hers) from being claimed.
        claimed = sum(1 for item in self._queue if item.adopted_at is None)
        want = max(opts.batch_size - claimed - len(self._in_flight), 0)
        worst = max((item.priority for item in self._queue), default=None)
        fresh: list[_Item] = []
        try:
            loop = asyncio.get_running_loop()
            items = await loop.run_in_executor(self._claim_pool, self._claim, want, worst)
            fresh = [item for item in items if item.row_id not in self._known]
        except Exception as exc:  # the database is away: keep what we hold, try again later
            _log.warning("outbox.claim_failed sender=%s error=%s", self.name, type(exc).__name__)
        finally:
            self._refilling = None
            self._wake.set()
        for item in fresh:
            self._known.add(item.row_id)
        self._queue.extend(fresh)
        self._queue.sort(key=_in_order)
        self._last_claimed = len(fresh)
        # Idle only when this claim saw all there is: no row was written since it began (a
        # wake), and none settled meanwhile (the claim may have seen it still open and held
        # back the person's next row; a stop's flush then left that row unsent).
        nothing = not fresh and not self._queue and not self._in_flight
        if nothing and wakes == self._wakes and settled == self._settled:
            self._idle.set()

    async def _arm(self, item: _Item) -> None:
        """Commit the in-flight mark; then the row waits for its turn (see `_fire_ready`)."""
        armed = False
        began = time.monotonic()
        try:
            assert self._commits is not None
            if item.marked:  # marked by the turn that wrote it
                marked = True
            else:
                alone = self._mark_in_flight_on if self._postgres else None
                marked = await self._commits.together(self._mark_in_flight, item.row_id, alone)
                self._arm_latencies.append((time.monotonic(), time.monotonic() - began))
            if not marked:
                _log.warning("outbox.claim_lost sender=%s outbox_id=%d", self.name, item.row_id)
            elif self._stopping:
                self._handback.append(item)
            else:
                self._armed.append(item)
                self._armed.sort(key=_in_order)
                armed = True
        except Exception as exc:  # not marked, so not sent; the claim expires and it is retried
            _log.error(
                "outbox.arm_failed sender=%s outbox_id=%d error=%s",
                self.name,
                item.row_id,
                type(exc).__name__,
            )
        finally:
            if not armed:
                self._ahead.pop(item.row_id, None)
                self._done(item)
            else:
                self._wake.set()

    async def _send(self, item: _Item) -> None:
        try:
            await self._send_once(item)
        except Exception as exc:  # never let one message stop the sender
            _log.error(
                "outbox.deliver_crashed sender=%s outbox_id=%d error=%s",
                self.name,
                item.row_id,
                type(exc).__name__,
            )
        finally:
            self._done(item)

    def _done(self, item: _Item) -> None:
        self._settled += 1
        self._in_flight.pop(item.row_id, None)
        self._known.discard(item.row_id)
        self._busy_recipients.discard(item.recipient)
        # A row may wait behind this one for the same person: look again. A row handed over
        # by a turn had nobody waiting behind it then; a row written since came with a wake.
        if item.adopted_at is None or item.adopted_at != self._wakes:
            self._recheck = True
        self._wake.set()

    async def _send_once(self, item: _Item) -> None:
        commits = self._commits
        assert commits is not None
        row_id = item.row_id
        try:
            delivered = await self.channel.deliver(item.outgoing)
        except RateLimited as exc:
            scope = exc.scope
            self._gate.pause(exc.retry_after, item.recipient if scope == "chat" else None)
            _log.warning(
                "outbox.rate_limited sender=%s outbox_id=%d retry_after=%.1f scope=%s",
                self.name,
                row_id,
                exc.retry_after,
                scope or "global",
            )
            after = exc.retry_after
            await commits.run(lambda s: self._retry(s, item, "rate_limited", after, False))
        except MaybeDelivered:
            if item.outgoing.critical:
                await commits.run(lambda s: self._retry(s, item, "maybe_delivered", 1.0, True))
            else:
                await commits.run(lambda s: self._mark_unconfirmed(s, row_id))
        except Unreachable:
            await commits.run(lambda s: self._mark_unreachable(s, row_id))
        except PermanentError:
            await commits.run(lambda s: self._finish(s, row_id, OutboxStatus.FAILED, "permanent"))
        except (TransientError, ChannelError, OSError, TimeoutError) as exc:
            code = "transient" if isinstance(exc, ChannelError) else type(exc).__name__[:40]
            await commits.run(lambda s: self._retry(s, item, code, None, True))
        else:
            alone = self._mark_sent_alone if self._postgres else None
            await commits.together(self._mark_sent, (item, delivered), alone)
            self.sent_count += 1

    # ------------------------------------------------------------------ database work (thread)

    def _claim(self, want: int, worst_queued: int | None) -> list[_Item]:
        """Claim due rows: the oldest unsent row of each person, best priority first."""
        now = self.clock.now()
        until = now + timedelta(seconds=self.options.claim_seconds)
        with self.care.sessions() as session, session.begin():
            self._expire(session, now)
            ids = self._candidates(session, now, want, None)
            if worst_queued is not None:
                # Better rows than the worst we hold go out first even when we hold a full batch.
                ids += [i for i in self._candidates(session, now, 20, worst_queued) if i not in ids]
            if not ids:
                return []
            claimable = or_(
                OutboxMessage.status == OutboxStatus.PENDING,
                and_(
                    OutboxMessage.status == OutboxStatus.SENDING,
                    OutboxMessage.claimed_until < now,
                ),
            )
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids), claimable)
                .values(status=OutboxStatus.SENDING, claimed_by=self.name, claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            rows = session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.id.in_(ids),
                    OutboxMessage.claimed_by == self.name,
                    OutboxMessage.claimed_until == until,
                )
                .order_by(OutboxMessage.priority, OutboxMessage.id)
            ).all()
            return [item for row in rows if (item := self._prepare(session, row, now))]

    def _candidates(
        self, session: Session, now: datetime, limit: int, better_than: int | None
    ) -> list[int]:
        if limit <= 0:
            return []
        stmt = self._candidate_stmts[better_than is not None]
        params: dict[str, Any] = {"now": now, "limit": limit, "better_than": better_than}
        return list(session.scalars(stmt, params))

    def _expire(self, session: Session, now: datetime) -> None:
        """Rows past `expires_at` are never sent; each is recorded as skipped."""
        stmt = (
            select(OutboxMessage)
            .where(
                OutboxMessage.status == OutboxStatus.PENDING,
                OutboxMessage.expires_at.is_not(None),
                OutboxMessage.expires_at <= now,
            )
            .limit(500)
        )
        if self._postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        for row in session.scalars(stmt):
            row.claimed_by = self.name
            self._cancel_expired(session, row, now)

    def _cancel_expired(self, session: Session, row: OutboxMessage, now: datetime) -> None:
        """Never send a row past `expires_at`; record it as skipped for her worker."""
        row.status = OutboxStatus.CANCELLED
        row.last_error = SKIP_EXPIRED
        self._record_row_skip(session, row, SKIP_EXPIRED, now)
        _log.info("outbox.expired outbox_id=%d kind=%s", row.id, row.kind)

    def _payload(self, session: Session, row: OutboxMessage, now: datetime) -> dict[str, Any]:
        """The row's payload. A wipe's delete ("everything") is completed here, just before it
        goes: messages of hers recorded after the wipe was decided (a message that was on its
        way then) are deleted too. Her earlier rows are settled by now (one person's rows go
        in order), so every message sent before the wipe is recorded."""
        payload = read_payload(session, self.care.vault, row)
        if payload.get("type") == "delete" and payload.get("everything") and row.client_id:
            late = take_deletable(session, row.client_id, now)
            payload["message_ids"] = sorted({*payload.get("message_ids", ()), *late})
        return payload

    def _prepare(self, session: Session, row: OutboxMessage, now: datetime) -> _Item | None:
        """Decrypt a claimed row; settle rows that cannot or must not be sent."""
        if row.last_error == IN_FLIGHT:
            # A sender died while this was on its way: it may have arrived.
            if row.priority > OutboxPriority.CRITICAL:
                self._settle_unconfirmed(session, row, now)
                return None
            _log.warning("outbox.resend_critical outbox_id=%d", row.id)
        return self._to_item(session, row, now)

    def _to_item_unwritten(
        self, session: Session, row: OutboxMessage, now: datetime
    ) -> _Item | None:
        """`_to_item` for a row the caller has yet to write (`take`): it is written as this
        settles it, so nothing is updated after. A row past `expires_at` is cancelled here
        and its skip recorded once it has an id (`write` runs that after its INSERT)."""
        if row.expires_at is not None and row.expires_at <= now:
            row.status = OutboxStatus.CANCELLED
            row.last_error = SKIP_EXPIRED
            after = session.info.setdefault(_AFTER_WRITE, [])
            after.append(lambda: self._cancel_expired(session, row, now))
            return None
        return self._to_item(session, row, now)

    def _to_item(self, session: Session, row: OutboxMessage, now: datetime) -> _Item | None:
        """Decrypt a claimed row for the channel; settle it when it cannot or must not be
        sent."""
        if row.expires_at is not None and row.expires_at <= now:
            self._cancel_expired(session, row, now)
            return None
        person: Client | Worker | None
        if row.recipient_kind is RecipientKind.CLIENT:
            person = session.get(Client, row.recipient_id)
            if person is not None and (person.unreachable or person.chat_id_enc is None):
                row.status = OutboxStatus.CANCELLED
                row.last_error = SKIP_UNREACHABLE
                record_skip(session, person.id, row.kind, SKIP_UNREACHABLE, at=now)
                return None
        else:
            person = session.get(Worker, row.recipient_id)
        try:
            chat_id = chat_id_of(session, self.care.vault, person) if person else None
            if chat_id is None:
                row.status = OutboxStatus.FAILED
                row.last_error = "no_chat"
                _log.warning("outbox.no_chat outbox_id=%s kind=%s", row.id, row.kind)
                return None
            outgoing = to_outgoing(row, self._payload(session, row, now), chat_id, self._protect)
        except (DecryptionError, ValueError, KeyError, TypeError) as exc:
            row.status = OutboxStatus.CANCELLED
            row.last_error = "erased" if isinstance(exc, DecryptionError) else "bad_payload"
            _log.warning(
                "outbox.unreadable outbox_id=%s kind=%s error=%s", row.id, row.kind, row.last_error
            )
            return None
        return _Item(
            row_id=row.id,
            priority=row.priority,
            recipient=(row.recipient_kind.value, row.recipient_id),
            outgoing=outgoing,
            client_id=row.client_id,
            attempts=row.attempts,
        )

    def _record_row_skip(
        self, session: Session, row: OutboxMessage, reason: str, now: datetime
    ) -> None:
        """Record for her worker that this row was not (surely) sent, and why."""
        if row.client_id is not None:
            record_skip(
                session,
                row.client_id,
                row.kind,
                reason,
                due_at=row.not_before,
                ref=row.dedupe_key or f"outbox:{row.id}",
                at=now,
            )

    def _settle_unconfirmed(self, session: Session, row: OutboxMessage, now: datetime) -> None:
        row.status = OutboxStatus.SENT
        row.last_error = UNCONFIRMED
        row.sent_at = now
        row.claimed_until = None
        self._record_row_skip(session, row, SKIP_UNCONFIRMED, now)
        _log.warning("outbox.unconfirmed outbox_id=%d kind=%s", row.id, row.kind)

    def _owned(self, session: Session, row_id: int) -> OutboxMessage | None:
        row = session.get(OutboxMessage, row_id)
        if row is None or row.status is not OutboxStatus.SENDING or row.claimed_by != self.name:
            return None
        return row

    def _mark_in_flight(self, session: Session, row_ids: list[int]) -> list[bool]:
        """Mark claimed rows in flight, in one statement; for each, whether its claim held."""
        return self._mark_in_flight_on(session.connection(), row_ids)

    def _mark_in_flight_on(self, connection: Connection, row_ids: list[int]) -> list[bool]:
        """`_mark_in_flight` on a connection (alone, autocommitted, on PostgreSQL)."""
        until = self.clock.now() + timedelta(seconds=self.options.claim_seconds)
        params = {"row_ids": row_ids, "sender": self.name, "until": until}
        marked = set(connection.execute(_MARK_ALL_IN_FLIGHT, params).scalars())
        return [row_id in marked for row_id in row_ids]

    def _disarm(self, session: Session, row_ids: list[int]) -> None:
        """Hand back rows marked in flight that were never given to the channel."""
        session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.id.in_(row_ids),
                OutboxMessage.status == OutboxStatus.SENDING,
                OutboxMessage.claimed_by == self.name,
                OutboxMessage.last_error == IN_FLIGHT,
            )
            .values(
                status=OutboxStatus.PENDING,
                claimed_by=None,
                claimed_until=None,
                last_error=None,
                attempts=OutboxMessage.attempts - 1,
            )
            .execution_options(synchronize_session=False)
        )

    def _mark_sent(self, session: Session, sent: list[tuple[_Item, Delivered]]) -> list[None]:
        """The rows are sent (one UPDATE for all of them); the message ids they created in
        her chat are recorded (one INSERT), so that wipe and auto-delete can remove them. Those
        ids are recorded even where another sender had taken the row over meanwhile: the
        message is in her chat all the same."""
        now = self.clock.now()
        connection = session.connection()
        marks = [
            {
                "row_id": item.row_id,
                "sender": self.name,
                "now": now,
                "first": delivered.message_ids[0] if delivered.message_ids else None,
            }
            for item, delivered in sent
        ]
        if connection.execute(_MARK_SENT, marks).rowcount != len(marks):
            lost = connection.execute(
                _NOT_MARKED_BY, {"row_ids": [m["row_id"] for m in marks], "sender": self.name}
            ).scalars()
            for row_id in lost:
                _log.warning("outbox.claim_lost_after_send outbox_id=%d", row_id)
        messages = [
            {"client_id": client_id, "message_id": message_id, "from_bot": True, "at": now}
            for client_id, message_id in _shown_in_her_chat(sent)
        ]
        insert_new_rows(session, ChatMessage, messages)
        return [None] * len(sent)

    def _mark_sent_alone(
        self, connection: Connection, sent: list[tuple[_Item, Delivered]]
    ) -> list[None]:
        """`_mark_sent` as one statement (PostgreSQL, autocommitted: one round trip)."""
        shown = _shown_in_her_chat(sent)
        row_ids = [item.row_id for item, _ in sent]
        marked = connection.execute(
            _MARK_SENT_RECORDING,
            {
                "row_ids": row_ids,
                "firsts": [d.message_ids[0] if d.message_ids else None for _, d in sent],
                "sender": self.name,
                "now": self.clock.now(),
                "client_ids": [client_id for client_id, _ in shown],
                "message_ids": [message_id for _, message_id in shown],
            },
        ).scalars()
        for row_id in sorted(set(row_ids).difference(marked)):
            _log.warning("outbox.claim_lost_after_send outbox_id=%d", row_id)
        return [None] * len(sent)

    def _mark_unconfirmed(self, session: Session, row_id: int) -> None:
        row = self._owned(session, row_id)
        if row is not None:
            self._settle_unconfirmed(session, row, self.clock.now())

    def _finish(self, session: Session, row_id: int, status: OutboxStatus, code: str) -> None:
        row = self._owned(session, row_id)
        if row is not None:
            row.status = status
            row.last_error = code
            row.claimed_until = None
            _log.warning("outbox.failed outbox_id=%d error=%s", row.id, code)

    def _retry(
        self, session: Session, item: _Item, code: str, after: float | None, counts: bool
    ) -> None:
        opts = self.options
        row = self._owned(session, item.row_id)
        if row is None:
            return
        if not counts:
            row.attempts = max(row.attempts - 1, 0)
        critical = row.priority <= OutboxPriority.CRITICAL
        if counts and not critical and row.attempts >= opts.max_attempts:
            row.status = OutboxStatus.FAILED
            row.last_error = code
            row.claimed_until = None
            _log.error("outbox.gave_up outbox_id=%d attempts=%d", row.id, row.attempts)
            return
        if after is None:
            step = opts.backoff_base_seconds * 2 ** max(row.attempts - 1, 0)
            after = min(opts.backoff_cap_seconds, step) * random.uniform(0.5, 1.0)
        row.status = OutboxStatus.PENDING
        row.last_error = code
        row.claimed_by = None
        row.claimed_until = None
        row.not_before = self.clock.now() + timedelta(seconds=after)
        _log.info(
            "outbox.retry outbox_id=%d attempts=%d error=%s in=%.1fs",
            row.id,
            row.attempts,
            code,
            after,
        )

    def _mark_unreachable(self, session: Session, row_id: int) -> None:
        now = self.clock.now()
        row = self._owned(session, row_id)
        if row is None:
            return
        row.status = OutboxStatus.FAILED
        row.last_error = SKIP_UNREACHABLE
        row.claimed_until = None
        if row.recipient_kind is not RecipientKind.CLIENT:
            _log.error("outbox.worker_unreachable worker_id=%d", row.recipient_id)
            return
        client = session.get(Client, row.recipient_id)
        if client is None:
            return
        record_skip(session, client.id, row.kind, SKIP_UNREACHABLE, due_at=row.not_before)
        if client.unreachable:
            return
        client.unreachable = True
        _log.warning("outbox.client_unreachable client_id=%d", client.id)
        others = session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.recipient_kind == RecipientKind.CLIENT,
                OutboxMessage.recipient_id == client.id,
                OutboxMessage.status == OutboxStatus.PENDING,
            )
        )
        for other in others:
            other.status = OutboxStatus.CANCELLED
            other.last_error = SKIP_UNREACHABLE
            record_skip(session, client.id, other.kind, SKIP_UNREACHABLE, at=now)
        worker = session.get(Worker, client.assigned_worker_id)
        if worker is None:
            return
        text = _UNREACHABLE_NOTICE.get(worker.language, _UNREACHABLE_NOTICE["nl"])
        enqueue(
            session,
            self.care.vault,
            worker,
            {"type": "text", "text": text.format(alias=client.alias)},
            kind="notice_unreachable",
            priority=OutboxPriority.NOTICE,
            dedupe_key=f"unreachable:{client.id}:{row.id}",
            client_id=client.id,
        )

    def _release_claims(self, session: Session, row_ids: list[int]) -> None:
        session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.id.in_(row_ids),
                OutboxMessage.status == OutboxStatus.SENDING,
                OutboxMessage.claimed_by == self.name,
                or_(OutboxMessage.last_error.is_(None), OutboxMessage.last_error != IN_FLIGHT),
            )
            .values(status=OutboxStatus.PENDING, claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )
