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
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, aliased

from care.clock import Clock, SystemClock
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
)
from care.vault import Vault

if TYPE_CHECKING:
    from care.context import Care

_T = TypeVar("_T")

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

IN_FLIGHT = "in_flight"
UNCONFIRMED = "unconfirmed"

SKIP_EXPIRED = "expired"
SKIP_UNREACHABLE = "unreachable"
SKIP_UNCONFIRMED = "unconfirmed"

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
    max_in_flight: int = 4
    """Deliveries running at the same time (never two to the same person)."""
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

    def __init__(self, per_chat: float, overall: float) -> None:
        self.per_chat = per_chat
        self.overall = _Bucket(overall, 1.0)
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


class OutboxSender:
    """Delivers due outbox rows through a channel: by priority, in order per person, once.

    Several senders may run on PostgreSQL (claims use SELECT ... FOR UPDATE SKIP LOCKED); on
    SQLite the claims are conditional updates, so a second sender is safe but pointless.
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
        self._gate = _Gate(
            limits.per_chat_per_second * self.options.headroom,
            limits.overall_per_second * self.options.headroom,
        )
        self._postgres = care.engine.dialect.name == "postgresql"
        self._protect = care.settings.privacy.protect_content
        self._queue: list[_Item] = []
        self._known: set[int] = set()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._busy_recipients: set[tuple[str, int]] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._db_pool: ThreadPoolExecutor | None = None
        self._stopping = False
        self._draining = False
        self._idle = asyncio.Event()
        self.sent_count = 0

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start sending in the running event loop."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-sender")
        _log.info("outbox.sender_started sender=%s", self.name)

    def wake(self) -> None:
        """Look for new rows now (call after committing a reply or an alert)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

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
        leave a message in doubt). Claimed rows not yet sent are handed back.
        """
        if self._task is None:
            return
        if flush:
            await self.idle(timeout)
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=timeout)
        queued = [item.row_id for item in self._queue]
        self._queue.clear()
        self._known.clear()
        if queued:
            await self._db(self._release_claims, queued)
        if self._db_pool is not None:
            self._db_pool.shutdown(wait=True)
            self._db_pool = None
        _log.info("outbox.sender_stopped sender=%s returned=%d", self.name, len(queued))

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        opts = self.options
        last_refill = 0.0
        claimed = 0
        last_prune = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            woken = self._wake.is_set()
            self._wake.clear()
            since = now - last_refill
            low = len(self._queue) * 2 < opts.batch_size and since >= 0.05 and claimed > 0
            if woken or low or since >= opts.poll_seconds:
                claimed = await self._refill()
                last_refill = time.monotonic()
                if not claimed and not self._queue and not self._in_flight:
                    self._idle.set()
            if now - last_prune > 30:
                self._gate.forget_idle(now)
                last_prune = now
            delay = self._dispatch_ready()
            if self._stopping:
                break
            if delay is None:
                delay = opts.poll_seconds
            remaining = opts.poll_seconds - (time.monotonic() - last_refill)
            delay = max(0.001, min(delay, max(remaining, 0.001)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _dispatch_ready(self) -> float | None:
        """Start every delivery that may go now; return seconds until the next one may."""
        soonest: float | None = None
        while self._queue and len(self._in_flight) < self.options.max_in_flight:
            now = time.monotonic()
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
            wait = self._gate.global_wait(now)
            if wait > 0:
                return wait
            self._queue.remove(chosen)
            self._gate.take(chosen.recipient)
            self._busy_recipients.add(chosen.recipient)
            task = asyncio.create_task(self._deliver(chosen), name=f"outbox-{chosen.row_id}")
            self._in_flight[chosen.row_id] = task
        return soonest

    async def _refill(self) -> int:
        opts = self.options
        want = max(opts.batch_size - len(self._queue) - len(self._in_flight), 0)
        worst = max((item.priority for item in self._queue), default=None)
        try:
            items = await self._db(self._claim, want, worst)
        except Exception as exc:  # the database is away: keep what we hold, try again later
            _log.warning("outbox.claim_failed sender=%s error=%s", self.name, type(exc).__name__)
            return 0
        fresh = [item for item in items if item.row_id not in self._known]
        for item in fresh:
            self._known.add(item.row_id)
        self._queue.extend(fresh)
        self._queue.sort(key=lambda i: (i.priority, i.row_id))
        return len(fresh)

    async def _deliver(self, item: _Item) -> None:
        try:
            await self._deliver_once(item)
        except Exception as exc:  # never let one message stop the sender
            _log.error(
                "outbox.deliver_crashed sender=%s outbox_id=%d error=%s",
                self.name,
                item.row_id,
                type(exc).__name__,
            )
        finally:
            self._in_flight.pop(item.row_id, None)
            self._known.discard(item.row_id)
            self._busy_recipients.discard(item.recipient)
            self._wake.set()

    async def _deliver_once(self, item: _Item) -> None:
        if not await self._db(self._mark_in_flight, item.row_id):
            _log.warning("outbox.claim_lost sender=%s outbox_id=%d", self.name, item.row_id)
            return
        try:
            delivered = await self.channel.deliver(item.outgoing)
        except RateLimited as exc:
            scope = exc.scope
            self._gate.pause(exc.retry_after, item.recipient if scope == "chat" else None)
            _log.warning(
                "outbox.rate_limited sender=%s outbox_id=%d retry_after=%.1f scope=%s",
                self.name,
                item.row_id,
                exc.retry_after,
                scope or "global",
            )
            await self._db(self._retry, item, "rate_limited", exc.retry_after, False)
        except MaybeDelivered:
            if item.outgoing.critical:
                await self._db(self._retry, item, "maybe_delivered", 1.0, True)
            else:
                await self._db(self._mark_unconfirmed, item.row_id)
        except Unreachable:
            await self._db(self._mark_unreachable, item.row_id)
        except PermanentError:
            await self._db(self._finish, item.row_id, OutboxStatus.FAILED, "permanent")
        except (TransientError, ChannelError, OSError, TimeoutError) as exc:
            code = "transient" if isinstance(exc, ChannelError) else type(exc).__name__[:40]
            await self._db(self._retry, item, code, None, True)
        else:
            await self._db(self._mark_sent, item.row_id, delivered)
            self.sent_count += 1

    async def _db(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, fn, *args)

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
        o = OutboxMessage
        p = aliased(OutboxMessage)
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
                        p.status.in_((OutboxStatus.PENDING, OutboxStatus.SENDING)),
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
        if better_than is not None:
            stmt = stmt.where(o.priority < better_than)
        stmt = stmt.order_by(o.priority, o.id).limit(limit)
        if self._postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        return list(session.scalars(stmt))

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
            row.status = OutboxStatus.CANCELLED
            row.last_error = SKIP_EXPIRED
            row.claimed_by = self.name
            if row.client_id is not None:
                record_skip(
                    session,
                    row.client_id,
                    row.kind,
                    SKIP_EXPIRED,
                    due_at=row.not_before,
                    ref=row.dedupe_key or f"outbox:{row.id}",
                    at=now,
                )
            _log.info("outbox.expired outbox_id=%d kind=%s", row.id, row.kind)

    def _prepare(self, session: Session, row: OutboxMessage, now: datetime) -> _Item | None:
        """Decrypt a claimed row; settle rows that cannot or must not be sent."""
        if row.last_error == IN_FLIGHT:
            # A sender died while this was on its way: it may have arrived.
            if row.priority > OutboxPriority.CRITICAL:
                self._settle_unconfirmed(session, row, now)
                return None
            _log.warning("outbox.resend_critical outbox_id=%d", row.id)
        if row.expires_at is not None and row.expires_at <= now:
            row.status = OutboxStatus.CANCELLED
            row.last_error = SKIP_EXPIRED
            if row.client_id is not None:
                record_skip(
                    session, row.client_id, row.kind, SKIP_EXPIRED, due_at=row.not_before, at=now
                )
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
                _log.warning("outbox.no_chat outbox_id=%d", row.id)
                return None
            outgoing = to_outgoing(
                row, read_payload(session, self.care.vault, row), chat_id, self._protect
            )
        except (DecryptionError, ValueError, KeyError, TypeError) as exc:
            row.status = OutboxStatus.CANCELLED
            row.last_error = "erased" if isinstance(exc, DecryptionError) else "bad_payload"
            _log.warning("outbox.unreadable outbox_id=%d error=%s", row.id, row.last_error)
            return None
        return _Item(
            row_id=row.id,
            priority=row.priority,
            recipient=(row.recipient_kind.value, row.recipient_id),
            outgoing=outgoing,
            client_id=row.client_id,
            attempts=row.attempts,
        )

    def _settle_unconfirmed(self, session: Session, row: OutboxMessage, now: datetime) -> None:
        row.status = OutboxStatus.SENT
        row.last_error = UNCONFIRMED
        row.sent_at = now
        row.claimed_until = None
        if row.client_id is not None:
            record_skip(
                session,
                row.client_id,
                row.kind,
                SKIP_UNCONFIRMED,
                due_at=row.not_before,
                ref=row.dedupe_key or f"outbox:{row.id}",
                at=now,
            )
        _log.warning("outbox.unconfirmed outbox_id=%d kind=%s", row.id, row.kind)

    def _owned(self, session: Session, row_id: int) -> OutboxMessage | None:
        row = session.get(OutboxMessage, row_id)
        if row is None or row.status is not OutboxStatus.SENDING or row.claimed_by != self.name:
            return None
        return row

    def _mark_in_flight(self, row_id: int) -> bool:
        now = self.clock.now()
        with self.care.sessions() as session, session.begin():
            result = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == row_id,
                    OutboxMessage.status == OutboxStatus.SENDING,
                    OutboxMessage.claimed_by == self.name,
                )
                .values(
                    last_error=IN_FLIGHT,
                    attempts=OutboxMessage.attempts + 1,
                    claimed_until=now + timedelta(seconds=self.options.claim_seconds),
                )
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

    def _mark_sent(self, row_id: int, delivered: Delivered) -> None:
        now = self.clock.now()
        with self.care.sessions() as session, session.begin():
            row = self._owned(session, row_id)
            if row is None:
                _log.warning("outbox.claim_lost_after_send outbox_id=%d", row_id)
                return
            row.status = OutboxStatus.SENT
            row.sent_at = now
            row.last_error = None
            row.claimed_until = None
            if delivered.message_ids:
                row.channel_message_id = delivered.message_ids[0]
            if row.recipient_kind is RecipientKind.CLIENT and row.kind != "delete":
                known = set(
                    session.scalars(
                        select(ChatMessage.message_id).where(
                            ChatMessage.client_id == row.recipient_id,
                            ChatMessage.message_id.in_(delivered.message_ids),
                        )
                    )
                )
                for message_id in delivered.message_ids:
                    if message_id not in known:
                        session.add(
                            ChatMessage(
                                client_id=row.recipient_id,
                                message_id=message_id,
                                from_bot=True,
                                at=now,
                            )
                        )
            _log.debug("outbox.sent outbox_id=%d attempts=%d", row.id, row.attempts)

    def _mark_unconfirmed(self, row_id: int) -> None:
        with self.care.sessions() as session, session.begin():
            row = self._owned(session, row_id)
            if row is not None:
                self._settle_unconfirmed(session, row, self.clock.now())

    def _finish(self, row_id: int, status: OutboxStatus, code: str) -> None:
        with self.care.sessions() as session, session.begin():
            row = self._owned(session, row_id)
            if row is not None:
                row.status = status
                row.last_error = code
                row.claimed_until = None
                _log.warning("outbox.failed outbox_id=%d error=%s", row.id, code)

    def _retry(self, item: _Item, code: str, after: float | None, counts: bool) -> None:
        opts = self.options
        with self.care.sessions() as session, session.begin():
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

    def _mark_unreachable(self, row_id: int) -> None:
        now = self.clock.now()
        with self.care.sessions() as session, session.begin():
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

    def _release_claims(self, row_ids: list[int]) -> None:
        with self.care.sessions() as session, session.begin():
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
