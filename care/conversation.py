"""The conversation service: one channel-neutral road for every message, hers and her worker's.

A channel (Telegram, the console) turns what a person did into an `Inbound` and calls
`ConversationService.handle`. For a text, the safety lexicon and the NLU read her words: inside
her turn's transaction when the NLU is embedded (a tenth of a millisecond), before it when the
NLU is a server (never wait for a server in a transaction). In one transaction, the service drops
an update it has already processed, finds who the chat belongs to (blind index), records her
message id (so that wipe can delete it), checks the duress word (which sets the NLU's reading
aside), lets the engine answer, and applies the events: replies and alerts become outbox
rows, escalations rows, check-in answers `CheckIn` rows. The turn hands its replies to the
outbox sender of this process; only after commit is anything sent. The reminders start flows
through `start_flow`.

Never lose a message: when anything fails after her message arrived, she still gets a kind
reply and her worker a notice; the failure is logged with ids only. Nothing here ever logs
message text or chat ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar, cast
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Insert,
    Integer,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    exists,
    false,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

import dialogues
from care import audit, directory, escalations, outbox
from care.clock import Clock, SystemClock
from care.context import Care
from care.db import insert_new, one_of
from care.db import savepoint as begin_savepoint
from care.errors import CareError, CodeRefused, DecryptionError, StorageError
from care.models import (
    Appointment,
    AppointmentStatus,
    ChatMessage,
    CheckIn,
    CheckInStatus,
    Client,
    ClientStatus,
    DialogueSession,
    Organisation,
    OutboxMessage,
    OutboxPriority,
    ProcessedUpdate,
    RecipientKind,
    Severity,
    Worker,
)
from care.settings import WEEKDAYS, Settings
from care.texts import pick
from care.workers import WorkerDesk, format_when
from dialogues import (
    ChoiceInput,
    CommandInput,
    EndFlow,
    Escalate,
    Event,
    FlowSource,
    NotifyWorker,
    Say,
    SetField,
    SetLanguage,
    SetStatus,
    Step,
    TextInput,
    TimeoutInput,
    Wipe,
)
from dialogues import Session as DialogueState

log = logging.getLogger(__name__)
_T = TypeVar("_T")

InboundKind = Literal["text", "choice", "command", "unsupported"]
_Who = Literal["client", "worker", "nobody"]


MAX_TEXT_CHARS = 2000
"""Longer texts get a kind "please write it shorter" instead of being read."""

PROCESSED_KEPT = timedelta(days=7)
"""How long a processed update id is kept (Telegram keeps undelivered updates for 24 hours)."""

TIMEOUT_GIVE_UP = timedelta(minutes=10)
"""A time-out that still fails this long after it was due is given up: her worker is alerted
instead of the job trying again every minute while what should follow (maybe an alert) never
comes."""
_CHECKIN_WINDOW = timedelta(hours=36)
_CHECKIN_CONTINUES = timedelta(hours=2)
_STATE_FORMAT = 1


@dataclass(frozen=True)
class Inbound:
    """What a person did in a chat, as any channel reports it.

    `kind` "text": `text`; "choice": a button, `choice_id` (the callback data);
    "command": `command` (without slash, lower case) and `args`; "unsupported": `reason`
    (sticker, photo, voice, video, location, contact, document, edited, forwarded, ...).
    `message_id` is her message (None for a button press); `update_id` the channel's id of
    this event, so that a redelivery is processed once. `language` is the app language the
    channel saw (used only for a chat nobody is linked to).
    """

    chat_id: int
    kind: InboundKind
    update_id: int | None = None
    message_id: int | None = None
    text: str = ""
    choice_id: str = ""
    command: str = ""
    args: tuple[str, ...] = ()
    reason: str = ""
    language: str | None = None


@dataclass(frozen=True)
class Handled:
    """What `handle` did. `direct` is a text the channel must send at once itself (to a chat
    nobody is linked to, or when the database cannot take even an apology)."""

    duplicate: bool = False
    direct: str | None = None
    who: _Who = "nobody"


class Understander(Protocol):
    """The NLU as the service needs it (`nlu.Nlu` fits): safety lexicon first, never raises."""

    async def understand(self, text: str, lang: str) -> Any:
        """An `nlu.Understanding` with `.safety` (severity, category) and `.result`."""
        ...

    def reads_here(self) -> bool:
        """True when `understand_now` may be used: no server is to be asked now."""
        ...

    def understand_now(self, text: str, lang: str) -> Any:
        """`understand` on the caller's thread, without a server (quick: it runs in her turn's
        transaction, with her row locked)."""
        ...


_TEXTS: dict[str, dict[str, str]] = {
    "neutral": {"nl": "Hoi! Deze chat is niet actief.", "en": "Hi! This chat is not active."},
    "sorry": {
        "nl": "Sorry, er ging bij mij iets mis. Ik heb {worker_name} een seintje gegeven. "
        "Ben je in gevaar? Bel 112.",
        "en": "Sorry, something went wrong on my side. I have let {worker_name} know. "
        "If you are in danger, call 112.",
    },
    "sorry_plain": {
        "nl": "Sorry, er ging bij mij iets mis. Probeer het zo nog eens. Ben je in gevaar? "
        "Bel 112.",
        "en": "Sorry, something went wrong on my side. Please try again soon. If you are in "
        "danger, call 112.",
    },
    "duress_reply": {"nl": "Oké, top! 👍", "en": "Okay, great! 👍"},
    "held_again": {"nl": "Even terug naar mijn vraag van net:", "en": "Back to my question:"},
    "unsupported_media": {
        "nl": "Ik kan (nog) alleen tekst lezen. Wil je het in een berichtje typen?",
        "en": "I can only read text for now. Could you type it in a message?",
    },
    "unsupported_sticker": {
        "nl": "Leuk! Ik kan alleen tekst lezen. Wil je het typen?",
        "en": "Nice! I can only read text. Could you type it?",
    },
    "unsupported_place": {
        "nl": "Ik kan alleen tekst lezen. Stuur hier liever geen locatie of telefoonnummer.",
        "en": "I can only read text. Better not send a location or phone number here.",
    },
    "unsupported_edited": {
        "nl": "Ik lees alleen nieuwe berichten. Stuur je het nog een keer?",
        "en": "I only read new messages. Could you send it again?",
    },
    "unsupported_forwarded": {
        "nl": "Ik lees alleen berichten die je zelf typt.",
        "en": "I only read messages you type yourself.",
    },
    "unsupported_too_long": {
        "nl": "Dat is een lang bericht! Kun je het korter zeggen, in een paar zinnen?",
        "en": "That's a long message! Could you say it in a few sentences?",
    },
}

_UNSUPPORTED_KEYS = {
    "sticker": "unsupported_sticker",
    "location": "unsupported_place",
    "venue": "unsupported_place",
    "contact": "unsupported_place",
    "edited": "unsupported_edited",
    "forwarded": "unsupported_forwarded",
    "too_long": "unsupported_too_long",
}

_NOTICES: dict[str, dict[str, str]] = {
    "notice": {"nl": "ℹ️ {alias}: {reason}.", "en": "ℹ️ {alias}: {reason}."},
    "client_stopped": {"nl": "is gestopt met de app", "en": "stopped using the app"},
    "client_paused": {
        "nl": "heeft de berichten van de app op pauze gezet",
        "en": "paused the app's messages",
    },
    "client_resumed": {
        "nl": "krijgt de berichten van de app weer",
        "en": "gets the app's messages again",
    },
    "appointment_cant_come": {
        "nl": "kan niet naar de afspraak komen",
        "en": "cannot come to the appointment",
    },
    "appointment_question": {
        "nl": "heeft een vraag over de afspraak",
        "en": "has a question about the appointment",
    },
    "bot_error": {
        "nl": "de app kon een bericht van haar niet verwerken; zij kreeg een excuus. "
        "Neem even contact op",
        "en": "the app could not handle a message from her; she got an apology. "
        "Please get in touch",
    },
    "enrolled": {
        "nl": "heeft de app gekoppeld en begint met kennismaken",
        "en": "linked the app and is starting the introduction",
    },
}


def text_for(key: str, lang: str, **values: Any) -> str:
    """A text of the service in a language (Dutch when the language is unknown)."""
    return pick(_TEXTS, key, lang, **values)


def notice_text(reason: str, alias: str, lang: str) -> str:
    """A non-urgent notice for a worker: alias and what happened."""
    known = _NOTICES.get(reason)
    said = (known.get(lang) or known["nl"]) if known else reason.replace("_", " ")
    template = _NOTICES["notice"].get(lang) or _NOTICES["notice"]["nl"]
    return template.format(alias=alias, reason=said)


def in_office_hours(now: datetime, settings: Settings) -> bool:
    """True when workers are expected to answer (settings.office_hours, local time)."""
    local = now.astimezone(ZoneInfo(settings.timezone))
    day = WEEKDAYS[local.weekday()]
    hours = settings.office_hours
    return day in hours.days and hours.contains(local.time().replace(tzinfo=None))


@dataclass
class _State:
    """Her stored conversation: the engine session and the few fields she gave (nickname)."""

    session: DialogueState | None
    fields: dict[str, str | bool | int] = field(default_factory=dict)
    row_id: int | None = None
    """Her `dialogue_sessions` row, when she has one."""
    held: DialogueState | None = None
    """A question whose silence alerts her worker (the safety check), which she left
    unanswered for another flow (a command, a help request): asked again when that flow
    ends, and its alert raised at `held_until` unless she answered it by then."""
    held_until: datetime | None = None
    until: datetime | None = None
    """When the question waiting for her times out, as saved beside a held one (her row's
    `timeout_at` is then the earlier of the two)."""


class LazyContext(Mapping[str, str | bool]):
    """A turn's placeholder values and flags. Some groups of them cost a query; a group is
    read the first time one of its keys is asked for, and only then."""

    def __init__(
        self,
        values: dict[str, str | bool],
        groups: Mapping[tuple[str, ...], Callable[[], dict[str, str | bool]]],
    ) -> None:
        self._values = values
        self._groups = {key: (keys, load) for keys, load in groups.items() for key in keys}

    def overlay(self, extra: Mapping[str, str]) -> LazyContext:
        """Give some keys fixed values (a reminder's own); they win over what a group reads."""
        self._values.update(extra)
        return self

    def __getitem__(self, key: str) -> str | bool:
        if key not in self._values and key in self._groups:
            keys, load = self._groups[key]
            for name, value in load().items():
                self._values.setdefault(name, value)
            for name in keys:
                self._groups.pop(name, None)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._values), **dict.fromkeys(self._groups)})

    def __len__(self) -> int:
        return len(set(self._values) | set(self._groups))


class _Duplicate(Exception):
    """This update was processed before."""


class _Nobody(Exception):
    """Nobody is linked to this chat (the first look's transaction is rolled back)."""


def _where(exc: BaseException) -> str:
    """Where an exception was raised (module:line), for logs that must not hold its text."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


# Statements of every turn, built once (building one costs more than running it).
# The session row is read and written as a plain row (a turn needs no ORM object of it).
_SESSIONS = cast(Table, DialogueSession.__table__)
_SESSION_OF = select(_SESSIONS.c.id, _SESSIONS.c.state_enc).where(
    _SESSIONS.c.client_id == bindparam("client_id")
)
_SESSION_NEW = insert(_SESSIONS)
_HER_WITH_SESSION: Select[Any] = (
    select(
        Client,
        _SESSIONS.c.id,
        _SESSIONS.c.state_enc,
        Organisation.duress_index,
        outbox.open_for(RecipientKind.CLIENT, cast(ColumnElement[int], Client.id)),
    )
    .join(_SESSIONS, _SESSIONS.c.client_id == Client.id)
    .join(Organisation, Organisation.id == Client.org_id)
    .with_for_update(of=[Client.__table__, _SESSIONS])
    .execution_options(populate_existing=True)
)
"""Her row and her session row, both locked, and her organisation's duress index: the turn's
first statement reads what `_load` and the duress check would read next (two round trips less
a turn). Both her rows are locked, so that on PostgreSQL a turn that waited for hers reads the
session as the turn before it left it (READ COMMITTED re-reads only the rows it locks); her
organisation's row is not (her turn must not wait for another girl's). A girl without a
session row is not found here."""
_TIMED_OUT = (
    select(_SESSIONS.c.client_id, _SESSIONS.c.timeout_at)
    .where(_SESSIONS.c.timeout_at <= bindparam("now", type_=DialogueSession.timeout_at.type))
    .order_by(_SESSIONS.c.timeout_at)
    .limit(500)
)
"""Whose question has waited too long (the oldest first; the rest at the next run)."""
_STILL_TIMED_OUT = select(_SESSIONS.c.id).where(
    _SESSIONS.c.client_id == bindparam("her_id"),
    _SESSIONS.c.timeout_at <= bindparam("now", type_=DialogueSession.timeout_at.type),
)
_NO_TIMEOUT = (
    update(_SESSIONS).where(_SESSIONS.c.client_id == bindparam("her_id")).values(timeout_at=None)
)
_HER_BY_CHAT = _HER_WITH_SESSION.where(Client.chat_index == bindparam("index"))
_HER_BY_ID = _HER_WITH_SESSION.where(Client.id == bindparam("client_id"))
_READ_AHEAD = "conversation.session_read_ahead"
"""`session.info` key: (her id, session row id, state) read with her row by `_lock_her`."""
_DURESS_AHEAD = "conversation.duress_read_ahead"
"""`session.info` key: (her id, her organisation's id, its duress index) read by `_lock_her`."""
_SESSION_SAVE = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("row_id"))
    .returning(outbox.open_for(RecipientKind.CLIENT, bindparam("her_id", type_=Integer)))
)
"""Her new state; it also answers whether a message is still open for her, which the sender
asks before it takes the turn's replies (`outbox.note_open`): one round trip less a turn.
(On PostgreSQL `_SESSION_SAVE_LATER` goes with the turn's reply instead; the first statement
of her turn answered the sender's question.)
(Her id goes in as a parameter: SQLite writes the columns of an UPDATE's RETURNING
unqualified, and inside the subquery `client_id` would then be the outbox's own column.)"""
_SESSION_SAVE_LATER = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("row_id"))
    .values(
        {
            name: bindparam(name, type_=_SESSIONS.c[name].type)
            for name in ("flow", "flow_version", "state_enc", "updated_at", "timeout_at")
        }
    )
)
"""PostgreSQL: her new state, in the WITH of the statement that writes the turn's reply
(`outbox.ride_along`): one round trip less a turn."""
# Her check-in too: a turn answers at most one, as a plain row.
_CHECKINS = cast(Table, CheckIn.__table__)
_RECENT_CHECKIN = (
    select(_CHECKINS.c.id)
    .where(
        _CHECKINS.c.client_id == bindparam("her_id"),
        one_of(_CHECKINS.c.status, [CheckInStatus.SENT, CheckInStatus.ANSWERED]),
        _CHECKINS.c.due_at > bindparam("since", type_=CheckIn.due_at.type),
    )
    .order_by(_CHECKINS.c.due_at.desc(), _CHECKINS.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
"""Her latest check-in, sent or answered, within `_CHECKIN_WINDOW`."""
_CHECKIN_NEW = insert(_CHECKINS)
_HER_CURRENT_CHECKIN = and_(
    _CHECKINS.c.id == _RECENT_CHECKIN,
    or_(
        _CHECKINS.c.status == CheckInStatus.SENT,
        _CHECKINS.c.answered_at > bindparam("continues", type_=CheckIn.answered_at.type),
    ),
)
"""The check-in she is answering: the one sent last, or the one she began answering a moment
ago (within `_CHECKIN_CONTINUES`)."""
_CHECKIN_ANSWER = update(_CHECKINS).where(_HER_CURRENT_CHECKIN).returning(_CHECKINS.c.id)
"""Her answer goes into her current check-in (the values to set are the parameters besides
`her_id`, `since` and `continues`); answers its id, or nothing when she begins a new one."""
_CHECKIN_FIRST_ANSWER = (
    update(_CHECKINS)
    .where(_HER_CURRENT_CHECKIN, _CHECKINS.c.mood.is_(None))
    .returning(_CHECKINS.c.id)
)
"""A mood: a check-in that has one already is done, a second mood begins a new one."""


def _answer_or_begin(answer: Update, column: str | None) -> Insert:
    """PostgreSQL: `answer` in a WITH, and the INSERT of a new check-in when it changed
    nothing (`_answer_checkin`): one statement, one round trip less on the turn that begins
    a check-in. Her row is locked for the turn, so nothing else answers hers meanwhile."""
    values: dict[str, BindParameter[Any]] = {
        "status": bindparam("status", type_=_CHECKINS.c.status.type),
        "answered_at": bindparam("answered_at", type_=_CHECKINS.c.answered_at.type),
    }
    if column is not None:
        values[column] = bindparam(column, type_=_CHECKINS.c[column].type)
    answered = answer.values(values).cte("answered")
    now = values["answered_at"]
    begun = select(
        bindparam("her_id", type_=Integer),
        now.label("due_at"),
        now.label("sent_at"),
        *(value.label(name) for name, value in values.items()),
    ).where(~exists(select(answered.c.id)))
    return (
        insert(_CHECKINS)
        .from_select(["client_id", "due_at", "sent_at", *values], begun)
        .add_cte(answered)
    )


_CHECKIN_FIELDS: dict[str, tuple[str | None, Update]] = {
    "mood": ("mood", _CHECKIN_FIRST_ANSWER),
    "safe": ("feels_safe", _CHECKIN_ANSWER),
    "checkin": (None, _CHECKIN_ANSWER),
}
"""Each field that answers a check-in: the column it fills, and the statement that puts it
into her current check-in."""
_CHECKIN_ANSWER_OR_NEW = {
    name: _answer_or_begin(answer, column) for name, (column, answer) in _CHECKIN_FIELDS.items()
}
"""`_answer_or_begin` for each field that answers a check-in."""
_PROCESSED = insert(cast(Table, ProcessedUpdate.__table__))
_HER_BY_CHAT_MARKING = _HER_BY_CHAT.add_cte(
    _PROCESSED.values(update_id=bindparam("update_id"), processed_at=bindparam("now")).cte("marked")
)
"""PostgreSQL: `_HER_BY_CHAT` that records the update id as well (`_mark_processed`), in the
same statement: one round trip less a turn (under load each round trip also waits for the
GIL again). SQLite has no INSERT inside a WITH."""
_HER_MESSAGE = (
    postgresql.insert(cast(Table, ChatMessage.__table__))
    .from_select(
        ["client_id", "message_id", "from_bot", "at"],
        select(
            Client.id,
            bindparam("message_id", type_=ChatMessage.message_id.type),
            false(),
            bindparam("now", type_=ChatMessage.at.type),
        ).where(Client.chat_index == bindparam("index")),
    )
    .on_conflict_do_nothing()
)
_HER_BY_CHAT_MARKING_MESSAGE = _HER_BY_CHAT_MARKING.add_cte(_HER_MESSAGE.cte("remembered"))
"""`_HER_BY_CHAT_MARKING` that records her message's id as well (`_remember`)."""
_MARKED = "conversation.update_marked"
"""`session.info` key: the update id the turn's first statement recorded."""
_REMEMBERED = "conversation.message_remembered"
"""`session.info` key: (her id, message id) the turn's first statement recorded."""


class ConversationService:
    """Ties the engine, the NLU and storage together for every channel and for the reminders."""

    def __init__(
        self,
        care: Care,
        flows: FlowSource,
        nlu: Understander,
        *,
        clock: Clock | None = None,
        desk: WorkerDesk | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.care = care
        self.flows = flows
        self.nlu = nlu
        self.clock: Clock = clock or SystemClock()
        self.desk = desk or WorkerDesk(care)
        self._wake = wake
        self._handoff: outbox.Handoff | None = None
        # PostgreSQL: statements that do two things at once where SQLite has no way to (an
        # INSERT inside a WITH), to save round trips; SQLite's stay in this process.
        self._postgres = care.engine.dialect.name == "postgresql"

    @property
    def settings(self) -> Settings:
        """The settings of this process."""
        return self.care.settings

    def set_wake(self, wake: Callable[[], None] | None) -> None:
        """Tell the service what wakes the outbox sender after a commit."""
        self._wake = wake

    def set_handoff(self, handoff: outbox.Handoff | None) -> None:
        """Hand the replies of a turn straight to this process's sender (`OutboxSender`):
        claimed in the turn's transaction, they need no claim of their own."""
        self._handoff = handoff

    def wake(self) -> None:
        """Wake the outbox sender (a reply must go out at once)."""
        if self._wake is not None:
            self._wake()

    # ------------------------------------------------------------------ inbound

    async def handle(self, inbound: Inbound) -> Handled:
        """Process one event from a chat; see the module docstring for the road it takes.

        Raises `care.errors.DatabaseUnavailable` (or SQLAlchemy's OperationalError) only when
        the database cannot be reached at all, so that a webhook can answer 503 and Telegram
        retries; every other failure ends in a kind reply.
        """
        if inbound.kind == "text" and len(inbound.text) > MAX_TEXT_CHARS:
            inbound = Inbound(
                chat_id=inbound.chat_id,
                kind="unsupported",
                update_id=inbound.update_id,
                message_id=inbound.message_id,
                reason="too_long",
                language=inbound.language,
            )
        if inbound.kind != "text" or self.nlu.reads_here():
            return await self._handle_plain(inbound)
        # The NLU is a server: read her text before the turn's transaction, not inside it.
        kind, person_id, lang = await asyncio.to_thread(self._who, inbound)
        if kind == "nobody":
            return await asyncio.to_thread(self._stranger, inbound)
        understanding = None
        if kind == "client":
            # Read before the turn's transaction (the NLU may be a server). A duress word is
            # recognised in the turn, which then ignores this.
            understanding = await self.nlu.understand(inbound.text, lang)
        try:
            left = await asyncio.to_thread(self._turn, inbound, kind, person_id, understanding)
        except _Duplicate:
            return Handled(duplicate=True, who=kind)
        except Exception as exc:
            return await self._failed(inbound, exc, kind)
        if left:
            self.wake()
        return Handled(who=kind)

    async def _failed(self, inbound: Inbound, exc: Exception, kind: _Who) -> Handled:
        """A turn failed (and was rolled back): log where, never what; apologise to her.
        When not even the apology could be stored and the turn failed on the database itself,
        the database is down: `exc` is raised again, for the channel (a webhook answers 503
        and Telegram delivers the update again; nothing of it was stored)."""
        log.error(
            "turn.failed update=%s error=%s at=%s",
            inbound.update_id,
            type(exc).__name__,
            _where(exc),
        )
        direct = await asyncio.to_thread(self._apologise, inbound)
        if direct is not None and isinstance(exc, (StorageError, OperationalError)):
            raise exc
        self.wake()
        return Handled(direct=direct, who=kind)

    async def _handle_plain(self, inbound: Inbound) -> Handled:
        """A button, a command, an unsupported kind and a text the NLU reads without a server:
        the first look and the turn share one transaction (and one trip to a thread)."""
        try:
            looked = await asyncio.to_thread(self._look_and_turn, inbound)
        except _Duplicate:
            return Handled(duplicate=True)
        except Exception as exc:
            return await self._failed(inbound, exc, "nobody")
        if looked is None:
            return await asyncio.to_thread(self._stranger, inbound)
        kind, left = looked
        if left:
            self.wake()
        return Handled(who=kind)

    def _look_and_turn(self, inbound: Inbound) -> tuple[_Who, bool] | None:
        """`_who` and `_turn` in one transaction; None for a chat nobody is linked to (then
        nothing was written)."""

        def work(session: Session) -> _Who:
            index = directory.chat_index(self.care.keyring, inbound.chat_id)
            her = self._lock_first(session, inbound, index)
            if her is None:
                linked = directory.find_by_chat(
                    session, self.care.keyring, inbound.chat_id, lock=True
                )
                if linked.worker is not None:
                    self._turn_in(session, inbound, "worker", linked.worker.id, None)
                    return "worker"
                her = linked.client
            if her is None:
                raise _Nobody()  # and what the first statement recorded is rolled back
            understanding = None
            if inbound.kind == "text":
                understanding = self.nlu.understand_now(inbound.text, her.language)
            self._turn_in(session, inbound, "client", her.id, understanding, her)
            return "client"

        try:
            return self._transact(work)
        except _Nobody:
            return None

    def _lock_first(self, session: Session, inbound: Inbound, index: str) -> Client | None:
        """The first statement of her turn: her row, locked (`_lock_her`); on PostgreSQL it
        records the update id and her message's id too (`_HER_BY_CHAT_MARKING_MESSAGE`),
        `_Duplicate` when the update was recorded before."""
        if inbound.update_id is None or not self._postgres:
            return _lock_her(session, _HER_BY_CHAT, {"index": index})
        params: dict[str, Any] = {
            "index": index,
            "update_id": inbound.update_id,
            "now": self.clock.now(),
        }
        statement = _HER_BY_CHAT_MARKING
        if inbound.message_id is not None:
            statement = _HER_BY_CHAT_MARKING_MESSAGE
            params["message_id"] = inbound.message_id
        try:
            her = _lock_her(session, statement, params)
        except IntegrityError:
            raise _Duplicate() from None
        session.info[_MARKED] = inbound.update_id
        if her is not None and inbound.message_id is not None:
            session.info[_REMEMBERED] = (her.id, inbound.message_id)
        return her

    def _who(self, inbound: Inbound) -> tuple[_Who, int, str]:
        """Read-only first look: who, their id and language (her duress word is checked in
        the turn, with her locked row). A duplicate update is found by the turn; until then it
        costs one look and one NLU reading."""
        # Autocommit: one statement, no transaction to begin and end (on SQLite it need not
        # wait for the turn of the writers, see `care.db.SqliteTurns`).
        with self.care.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            found = directory.look_up_chat(conn, self.care.keyring, inbound.chat_id)
        if found is None:
            return "nobody", 0, inbound.language or self.settings.default_language
        return found.kind, found.id, found.language

    def _mark_processed(
        self, session: Session, inbound: Inbound, *, savepoint: bool = False
    ) -> None:
        """Record the update id; `_Duplicate` when another turn recorded it first. Without a
        savepoint the caller's transaction is lost on a duplicate (it is rolled back anyway)."""
        if inbound.update_id is None or session.info.get(_MARKED) == inbound.update_id:
            return
        row = {"update_id": inbound.update_id, "processed_at": self.clock.now()}
        try:
            if savepoint:
                with begin_savepoint(session):
                    session.execute(_PROCESSED, row)
            else:
                session.connection().execute(_PROCESSED, row)
        except IntegrityError:
            raise _Duplicate() from None

    def _stranger(self, inbound: Inbound) -> Handled:
        """A chat nobody is linked to: a valid `/start <code>` links it; anything else gets a
        neutral sentence and nothing is stored."""
        lang = inbound.language if inbound.language in self.settings.languages else None
        neutral = text_for("neutral", lang or self.settings.default_language)
        if inbound.kind != "command" or inbound.command != "start" or len(inbound.args) != 1:
            return Handled(direct=neutral)
        try:
            with self.care.sessions.begin() as session:
                linked = directory.link_chat(
                    session, self.care.vault, inbound.args[0], inbound.chat_id
                )
                self._mark_processed(session, inbound)
                if linked.worker is not None:
                    self.desk.welcome(session, linked.worker)
                    kind: _Who = "worker"
                else:
                    assert linked.client is not None
                    self._enrolled(session, linked.client, inbound)
                    kind = "client"
        except CodeRefused:
            return Handled(direct=neutral)
        except _Duplicate:
            return Handled(duplicate=True)
        log.info("chat.linked who=%s update=%s", kind, inbound.update_id)
        self.wake()
        return Handled(who=kind)

    def _enrolled(self, session: Session, client: Client, inbound: Inbound) -> None:
        now = self.clock.now()
        if client.auto_delete_hours is None:
            client.auto_delete_hours = self.settings.privacy.auto_delete_hours
        self._remember(session, client, inbound.message_id, now)
        state = self._load(session, client)
        context = self.context(session, client, state.fields, now)
        flow = self.flows.active("onboarding")
        turn = state.session.turn if state.session else 0
        step = dialogues.start(flow, context, client.language, flows=self.flows, turn=turn)
        self._hold_waiting(session, client, state)  # onboarding takes its place
        self._notify_worker(session, client, "enrolled")
        self._apply(session, client, state, step.events, now)
        state.session = step.session
        self._save(session, client, state)

    def _turn(
        self,
        inbound: Inbound,
        kind: _Who,
        person_id: int,
        understanding: Any,
    ) -> bool:
        """One turn in one transaction; True when it wrote messages the sender must look for
        (those it did not take over)."""
        _, left = self._transact(
            lambda session: self._turn_in(session, inbound, kind, person_id, understanding)
        )
        return left

    def _transact(self, work: Callable[[Session], _T]) -> tuple[_T, bool]:
        """Run `work` in one transaction and hand the messages it wrote to the sender of this
        process (claimed before the commit, queued after it). Returns what `work` returned and
        whether messages were left for the sender to find (it must then be woken)."""
        handoff = self._handoff
        with outbox.collecting() as written:
            with self.care.sessions.begin() as session:
                outbox.carry_riders(session)  # her new state goes with her reply (PostgreSQL)
                result = work(session)
                taken = handoff.take(session, written) if handoff and written else ()
                outbox.write(session, written)
                outbox.run_riders(session)
            if taken and handoff is not None:
                handoff.adopt(taken)
            return result, len(taken) < len(written)

    def _turn_in(
        self,
        session: Session,
        inbound: Inbound,
        kind: _Who,
        person_id: int,
        understanding: Any,
        locked: Client | None = None,
    ) -> None:
        """The turn itself; `locked` is her row when it was just read (and locked) in this
        transaction."""
        self._mark_processed(session, inbound)
        now = self.clock.now()
        index = directory.chat_index(self.care.keyring, inbound.chat_id)
        worker = session.get(Worker, person_id) if kind == "worker" else None
        if worker is not None and worker.chat_index == index:
            self._worker_turn(session, worker, inbound, now)
            return
        client = locked
        if kind == "client" and client is None:
            client = _lock_her(session, _HER_BY_ID, {"client_id": person_id}) or session.get(
                Client, person_id, with_for_update=True
            )
        if client is None or client.chat_index != index:
            # Linked or unlinked since the first look: ask the index again.
            linked = directory.find_by_chat(session, self.care.keyring, inbound.chat_id)
            if linked.worker is not None:
                self._worker_turn(session, linked.worker, inbound, now)
                return
            if linked.client is None:
                return
            client = session.get(Client, linked.client.id, with_for_update=True)
            assert client is not None
        self._client_turn(session, client, inbound, understanding, now)

    def _worker_turn(
        self, session: Session, worker: Worker, inbound: Inbound, now: datetime
    ) -> None:
        linked = self._relink(session, inbound)
        if linked is not None and linked.client is not None:
            self._enrolled(session, linked.client, inbound)
            return
        if linked is not None and linked.worker is not None and linked.worker.id != worker.id:
            self.desk.welcome(session, linked.worker)
            return
        self.desk.handle(session, worker, inbound, now)

    def _relink(self, session: Session, inbound: Inbound) -> directory.Linked | None:
        """`/start <code>` in a chat that is linked already: the code's person takes the chat
        (a new code for her, or a code meant for someone else). None when it is no code."""
        if inbound.kind != "command" or inbound.command != "start" or len(inbound.args) != 1:
            return None
        try:
            with begin_savepoint(session):
                linked = directory.link_chat(
                    session, self.care.vault, inbound.args[0], inbound.chat_id
                )
        except CodeRefused:
            return None  # an old link clicked again: a plain /start
        log.info("chat.relinked update=%s", inbound.update_id)
        return linked

    def _client_turn(
        self,
        session: Session,
        client: Client,
        inbound: Inbound,
        understanding: Any,
        now: datetime,
    ) -> None:
        self._remember(session, client, inbound.message_id, now)
        if inbound.kind == "text" and self._is_duress(session, client, inbound.text):
            # Something ordinary for whoever reads along; a silent alarm for her worker.
            self._reply(session, client, text_for("duress_reply", client.language))
            escalations.raise_escalation(
                session,
                self.care.vault,
                self.settings,
                client,
                Severity.CRITICAL,
                "duress",
                now=now,
            )
            self._end_quietly(session, client)
            log.warning("duress.raised client=%s update=%s", client.id, inbound.update_id)
            return
        if inbound.kind == "unsupported":
            key = _UNSUPPORTED_KEYS.get(inbound.reason, "unsupported_media")
            self._reply(session, client, text_for(key, client.language))
            return
        linked = self._relink(session, inbound)
        if linked is not None and linked.worker is not None:
            self.desk.welcome(session, linked.worker)
            return
        if linked is not None and linked.client is not None and linked.client.id != client.id:
            self._enrolled(session, linked.client, inbound)
            return
        state = self._load(session, client)
        context = self.context(session, client, state.fields, now)
        engine_input: dialogues.Input
        if inbound.kind == "choice":
            engine_input = ChoiceInput(inbound.choice_id)
        elif inbound.kind == "command":
            engine_input = CommandInput(inbound.command)
        else:
            safety = understanding.safety if understanding is not None else None
            result = understanding.result if understanding is not None else None
            engine_input = TextInput(
                inbound.text,
                intent=result.intent if result is not None else None,
                confidence=float(result.confidence) if result is not None else 0.0,
                safety=safety.severity if safety is not None else None,
                safety_category=safety.category if safety is not None else None,
            )
            if safety is not None and safety.severity is not None:
                log.info(
                    "safety.signal client=%s severity=%s entry=%s",
                    client.id,
                    safety.severity,
                    safety.matched,
                )
        if state.held is not None:
            self._answer_held(session, client, state, engine_input)
        step = self._resume(state, engine_input, client.language, context)
        self._hold(session, client, state, step)
        self._apply(session, client, state, step.events, now)
        state.session = step.session
        until = self._ask_held_again(session, client, state, step, context, now)
        self._save(session, client, state, until=until)
        log.info(
            "turn.handled client=%s update=%s flow=%s events=%d",
            client.id,
            inbound.update_id,
            step.session.flow,
            len(step.events),
        )

    def _end_quietly(self, session: Session, client: Client) -> None:
        """After her duress word: the question she was asked is dropped, so that nothing
        follows up on her screen (its time-out's message, the question asked again) for
        whoever reads along; her next message starts afresh, and old buttons are stale."""
        state = self._load(session, client)
        if state.session is not None and state.session.waiting:
            state.session = self._idle(client.language, state.session.turn + 1)
        elif state.held is None:
            return
        state.held = state.held_until = None  # the alarm went to her worker
        self._save(session, client, state)

    # ------------------------------------------------------------------ a question held

    def _answer_held(
        self, session: Session, client: Client, state: _State, engine_input: dialogues.Input
    ) -> None:
        """A button of the question she left (`_State.held`), pressed on the message that
        asked it: she answers it after all. The question she was in is held in its place
        if its silence alerts her worker, else dropped."""
        assert state.held is not None
        try:
            if not dialogues.takes_choice(state.held, engine_input, self.flows):
                return
        except (dialogues.SessionError, dialogues.UnknownFlowError):
            return  # its content changed: the button is stale, its alert still comes
        current, until = state.session, self._pending_alert(session, client, state)
        state.session, state.held, state.held_until = state.held, None, None
        if current is not None and until is not None:
            state.held, state.held_until = current, until
        log.info("question.held_answered client=%s", client.id)

    def _hold(self, session: Session, client: Client, state: _State, step: Step) -> None:
        """Before her turn's events are applied. A trigger (a command, a help request) took
        her away from a question whose silence alerts her worker: hold it, so that it is
        asked again when she is done and its alert still comes when it was due (the
        earliest, when one is held already). An escalation for her drops what is held: her
        worker is alerted now."""
        if any(isinstance(event, Escalate) for event in step.events):
            if state.held is not None:
                log.info("question.held_dropped client=%s reason=escalated", client.id)
            state.held = state.held_until = None
            return
        if step.interrupted:
            self._hold_waiting(session, client, state)

    def _hold_waiting(self, session: Session, client: Client, state: _State) -> None:
        """Hold the question waiting for her, if its silence alerts her worker: another flow
        takes its place now."""
        until = self._pending_alert(session, client, state)
        if state.session is None or until is None:
            return
        if state.held_until is None or until < state.held_until:
            state.held, state.held_until = state.session, until
            log.info("question.held client=%s flow=%s", client.id, state.session.flow)

    def _ask_held_again(
        self,
        session: Session,
        client: Client,
        state: _State,
        step: Step,
        context: Mapping[str, str | bool],
        now: datetime,
    ) -> datetime | Literal["asked"] | None:
        """After her turn's events: when the flow that took her away has ended, the held
        question is asked again, in her language, with fresh buttons and its first time-out.
        Not after a wipe (it would be back on her screen), nor when she paused, went on or
        stopped just now, nor after a stop: its alert then still comes at its time, and she
        is asked nothing. Returns the question's time-out for `_save`."""
        held, until = state.held, state.held_until
        if held is None or until is None or until <= now or step.session.waiting:
            return "asked"
        if client.status is ClientStatus.ENDED or any(
            isinstance(event, Wipe | SetStatus) for event in step.events
        ):
            return "asked"
        lead = text_for("held_again", client.language)
        try:
            # Her latest turn, so that every button she was shown since is stale as well.
            latest = max(held.turn, step.session.turn)
            again = dialogues.ask_again(
                dataclasses.replace(held, lang=client.language, turn=latest),
                self.flows,
                context,
                lead,
            )
        except (dialogues.SessionError, dialogues.UnknownFlowError):
            return "asked"  # its content changed: its alert still comes at its time
        self._apply(session, client, state, again.events, now)
        state.session, state.held, state.held_until = again.session, None, None
        log.info("question.asked_again client=%s flow=%s", client.id, held.flow)
        return until

    def _raise_held(self, session: Session, client: Client, state: _State, now: datetime) -> bool:
        """At the held question's time-out: raise the alerts its silence promised her worker
        (`dialogues.silence_alerts`), and drop it; she is asked nothing. True when due."""
        held, until = state.held, state.held_until
        if held is None or until is None or until > now:
            return False
        state.held = state.held_until = None
        context = self.context(session, client, state.fields, now)
        alerts: Sequence[Event]
        try:
            alerts = dialogues.silence_alerts(held, self.flows, context)
        except (dialogues.SessionError, dialogues.UnknownFlowError):
            # Its content changed: what it promised is unknown, so her worker is alerted.
            alerts = (Escalate(Severity.HIGH.value, "timeout_failed"),)
        self._apply(session, client, state, alerts, now)
        log.info(
            "question.held_alerted client=%s flow=%s alerts=%d", client.id, held.flow, len(alerts)
        )
        return True

    def _is_duress(self, session: Session, client: Client, text: str) -> bool:
        ahead = session.info.get(_DURESS_AHEAD)
        if ahead is not None and ahead[:2] == (client.id, client.org_id):
            # her locked row was read with it
            return directory.matches_duress(self.care.keyring, client.org_id, ahead[2], text)
        org = session.get(Organisation, client.org_id)
        return org is not None and directory.is_duress(self.care.keyring, org, text)

    def _resume(
        self,
        state: _State,
        engine_input: dialogues.Input,
        lang: str,
        context: Mapping[str, str | bool],
    ) -> dialogues.Step:
        current = state.session or self._idle(lang, 0)
        try:
            return dialogues.resume(current, engine_input, self.flows, context)
        except (dialogues.SessionError, dialogues.UnknownFlowError):
            # Her flow version is gone or changed: start from idle; old buttons stay stale.
            log.warning("session.reset flow=%s version=%s", current.flow, current.version)
            return dialogues.resume(
                self._idle(lang, current.turn + 1), engine_input, self.flows, context
            )

    def _idle(self, lang: str, turn: int) -> DialogueState:
        fallback = self.flows.active(self.flows.triggers().not_understood)
        return DialogueState(fallback.id, fallback.version, fallback.content_hash, lang, None, turn)

    def _apologise(self, inbound: Inbound) -> str | None:
        """After a failed turn: a kind reply to her and a notice to her worker, in a new
        transaction; returns a text to send directly when even that is impossible."""
        try:
            with self.care.sessions.begin() as session:
                with contextlib.suppress(_Duplicate):
                    self._mark_processed(session, inbound, savepoint=True)
                linked = directory.find_by_chat(session, self.care.keyring, inbound.chat_id)
                now = self.clock.now()
                if linked.worker is not None:
                    self.desk.failed(session, linked.worker)
                    return None
                client = linked.client
                if client is None:
                    return None
                self._remember(session, client, inbound.message_id, now)
                worker = session.get(Worker, client.assigned_worker_id)
                name = escalations.first_name(worker) if worker else ""
                self._reply(session, client, text_for("sorry", client.language, worker_name=name))
                self._notify_worker(session, client, "bot_error")
            return None
        except Exception as exc:
            log.error(
                "turn.apology_failed update=%s error=%s at=%s",
                inbound.update_id,
                type(exc).__name__,
                _where(exc),
            )
            return text_for("sorry_plain", inbound.language or self.settings.default_language)

    # ------------------------------------------------------------------ reminders' road

    async def start_flow(
        self,
        client_id: int,
        flow: str,
        *,
        context: Mapping[str, str] | None = None,
        priority: OutboxPriority = OutboxPriority.REMINDER,
        dedupe_key: str | None = None,
        expires_at: datetime | None = None,
        defer: Callable[[datetime], bool] | None = None,
    ) -> bool:
        """Start a flow for her (a reminder, a check-in) on its active version.

        All events are applied and the outbox rows written in one transaction; the first
        message carries `dedupe_key`, so a job that runs twice sends once (the second call
        returns False and changes nothing). False too for a client who is paused, stopped,
        unreachable or not enrolled, and while a question waits for her whose silence
        alerts her worker (the safety check): starting would drop it, and the alert with it.
        That is recorded for her worker as a skip, unless `defer` (asked with the moment
        that question times out, with her row locked) answers True: the caller then runs
        the flow again later, and nothing is recorded.
        """
        started = await asyncio.to_thread(
            self._start_flow,
            client_id,
            flow,
            context or {},
            priority,
            dedupe_key,
            expires_at,
            defer,
        )
        if started:
            self.wake()
        return started

    def _start_flow(
        self,
        client_id: int,
        flow_id: str,
        extra: Mapping[str, str],
        priority: OutboxPriority,
        dedupe_key: str | None,
        expires_at: datetime | None,
        defer: Callable[[datetime], bool] | None,
    ) -> bool:
        try:
            with self.care.sessions.begin() as session:
                client = session.get(Client, client_id, with_for_update=True)
                if (
                    client is None
                    or client.status is not ClientStatus.ACTIVE
                    or client.unreachable
                    or client.chat_id_enc is None
                    or client.data_key_id is None
                ):
                    return False
                if (
                    dedupe_key is not None
                    and session.scalars(
                        select(OutboxMessage.id).where(OutboxMessage.dedupe_key == dedupe_key)
                    ).first()
                ):
                    return False
                now = self.clock.now()
                state = self._load(session, client)
                waits_until = self._pending_alert(session, client, state)
                if waits_until is not None:
                    # Her unanswered question would alert her worker (the safety check):
                    # this flow would drop it, and the alert with it. The caller runs it
                    # again once the question is settled, or her worker sees why it was not.
                    if defer is not None and defer(waits_until):
                        log.info("flow.deferred client=%s flow=%s", client_id, flow_id)
                        return False
                    outbox.record_skip(
                        session, client.id, flow_id, outbox.SKIP_ALERT_WAITS, ref=dedupe_key, at=now
                    )
                    log.info("flow.held client=%s flow=%s reason=alert_waits", client_id, flow_id)
                    return False
                context = self.context(session, client, state.fields, now).overlay(extra)
                turn = state.session.turn if state.session else 0
                step = dialogues.start(
                    self.flows.active(flow_id),
                    context,
                    client.language,
                    flows=self.flows,
                    turn=turn,
                )
                self._apply(
                    session,
                    client,
                    state,
                    step.events,
                    now,
                    priority=priority,
                    dedupe_key=dedupe_key,
                    expires_at=expires_at,
                )
                state.session = step.session
                self._save(session, client, state)
        except IntegrityError:
            return False  # another run wrote the same dedupe_key first
        log.info("flow.started client=%s flow=%s", client_id, flow_id)
        return True

    # ------------------------------------------------------------------ context and state

    def context(
        self,
        session: Session,
        client: Client,
        fields: Mapping[str, str | bool | int],
        now: datetime,
    ) -> LazyContext:
        """Placeholder values in her language and time zone, and the flags branches test. Her
        worker, organisation and next appointment are read only when a text or a branch of
        this turn asks for them."""
        nickname = fields.get("alias")
        values: dict[str, str | bool] = {
            "alias": nickname if isinstance(nickname, str) else "",
            "has_alias": isinstance(nickname, str) and bool(nickname),
            "office_hours": in_office_hours(now, self.settings),
            "stopped": client.status is ClientStatus.ENDED,
        }

        def worker() -> dict[str, str | bool]:
            found = session.get(Worker, client.assigned_worker_id)
            return {"worker_name": escalations.first_name(found) if found else ""}

        def org() -> dict[str, str | bool]:
            found = session.get(Organisation, client.org_id)
            return {
                "org_name": found.name if found else "",
                "org_phone": (found.phone or "") if found else "",
            }

        def appointment() -> dict[str, str | bool]:
            return self._next_appointment(session, client, now)

        return LazyContext(
            values,
            {
                ("worker_name",): worker,
                ("org_name", "org_phone"): org,
                ("appointment_time", "appointment_place", "has_appointment"): appointment,
            },
        )

    def _next_appointment(
        self, session: Session, client: Client, now: datetime
    ) -> dict[str, str | bool]:
        found: dict[str, str | bool] = {
            "appointment_time": "",
            "appointment_place": "",
            "has_appointment": False,
        }
        upcoming = session.scalars(
            select(Appointment)
            .where(
                Appointment.client_id == client.id,
                Appointment.starts_at > now,
                Appointment.status.in_([AppointmentStatus.PLANNED, AppointmentStatus.CONFIRMED]),
            )
            .order_by(Appointment.starts_at)
            .limit(1)
        ).first()
        if upcoming is not None:
            found["appointment_time"] = format_when(
                upcoming.starts_at, client.timezone, client.language
            )
            if upcoming.place_enc is not None:
                with contextlib.suppress(DecryptionError):
                    found["appointment_place"] = self.care.vault.decrypt(
                        session, client.data_key_id, upcoming.place_enc
                    )
            found["has_appointment"] = True
        return found

    def _load(self, session: Session, client: Client) -> _State:
        ahead = session.info.pop(_READ_AHEAD, None)
        if ahead is not None and ahead[0] == client.id:
            row = ahead[1:]
        else:
            outbox.run_riders(session)  # a save still waiting goes first
            row = session.connection().execute(_SESSION_OF, {"client_id": client.id}).first()
        if row is None:
            return _State(None)
        row_id, state_enc = row
        try:
            data = json.loads(self.care.vault.decrypt(session, client.data_key_id, state_enc))
            stored = data.get("session")
            state = DialogueState.from_json(stored) if stored else None
            loaded = _State(state, dict(data.get("fields") or {}), row_id)
        except (DecryptionError, dialogues.SessionError, ValueError, AttributeError):
            log.warning("session.unreadable client=%s", client.id)
            return _State(None, row_id=row_id)
        held = data.get("held")
        if held:
            try:
                loaded.held = DialogueState.from_json(held["session"])
                loaded.held_until = datetime.fromisoformat(held["until"])
                until = data.get("until")
                loaded.until = datetime.fromisoformat(until) if until else None
            except (dialogues.SessionError, ValueError, TypeError, KeyError):
                log.warning("session.held_unreadable client=%s", client.id)
                loaded.held = loaded.held_until = loaded.until = None
        return loaded

    def _save(
        self,
        session: Session,
        client: Client,
        state: _State,
        *,
        until: datetime | Literal["asked"] | None = "asked",
    ) -> None:
        """Write her state. `until`: when her waiting question times out; "asked" counts it
        from now (it was just asked, or asked again)."""
        now = self.clock.now()
        state.until = self._timeout_at(state.session, now) if until == "asked" else until
        data: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "session": state.session.to_json() if state.session else None,
            "fields": state.fields,
        }
        timeout_at = state.until
        if state.held is not None and state.held_until is not None:
            data["held"] = {
                "session": state.held.to_json(),
                "until": state.held_until.isoformat(),
            }
            data["until"] = state.until.isoformat() if state.until else None
            timeout_at = min(state.held_until, timeout_at or state.held_until)
        encrypted = self.care.vault.encrypt(session, client.data_key_id, json.dumps(data))
        session.info.pop(_READ_AHEAD, None)  # what it read is no longer her state
        connection = session.connection()
        if state.row_id is None:
            outbox.run_riders(session)
            found = connection.execute(_SESSION_OF, {"client_id": client.id}).first()
            state.row_id = found[0] if found is not None else None
        values = {
            "flow": state.session.flow if state.session else "",
            "flow_version": state.session.version if state.session else None,
            "state_enc": encrypted,
            "updated_at": now,
            "timeout_at": timeout_at,
        }
        if state.row_id is None:
            result = connection.execute(_SESSION_NEW, {"client_id": client.id, **values})
            state.row_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        elif outbox.ride_along(session, _SESSION_SAVE_LATER, {"row_id": state.row_id, **values}):
            return  # written with the turn's reply (PostgreSQL: `_transact`)
        else:
            saved = connection.execute(
                _SESSION_SAVE, {"row_id": state.row_id, "her_id": client.id, **values}
            )
            still_open = saved.scalar()
            if still_open is not None:  # (None: no row was updated; the sender then asks)
                outbox.note_open(session, RecipientKind.CLIENT, client.id, bool(still_open))

    def _pending_alert(self, session: Session, client: Client, state: _State) -> datetime | None:
        """When the question waiting for her times out, if her silence then alerts her worker
        (`dialogues.timeout_alerts`): an alert still to come. None when nothing such waits,
        when its time-out is no longer to come (given up after failing: her worker was
        alerted then), or when the question cannot be read (outdated content)."""
        if state.session is None or not state.session.waiting:
            return None
        try:
            if not dialogues.timeout_alerts(state.session, self.flows):
                return None
        except (dialogues.SessionError, dialogues.UnknownFlowError):
            return None
        if state.held is not None:
            return state.until  # her row's time-out is the earlier of the two
        return session.scalar(
            select(DialogueSession.timeout_at).where(DialogueSession.client_id == client.id)
        )

    def _timeout_at(self, state: DialogueState | None, now: datetime) -> datetime | None:
        """When the question waiting for her times out (None: nothing waits, or it never
        times out)."""
        if state is None or not state.waiting:
            return None
        try:
            minutes = dialogues.timeout_minutes(state, self.flows)
        except (dialogues.SessionError, dialogues.UnknownFlowError):
            return None
        return now + timedelta(minutes=minutes) if minutes else None

    # ------------------------------------------------------------------ time-outs

    async def fire_timeouts(self) -> int:
        """Go on, without her answer, with every conversation whose question waited for her
        longer than its node's `timeout_minutes`: for example a safety check she did not
        answer then alerts her worker. Run periodically (every minute); returns how many
        time-outs happened. One that fails is tried again at the next run, and given up with
        an alert to her worker once it has failed for `TIMEOUT_GIVE_UP` (counted here)."""
        fired = await asyncio.to_thread(self._fire_timeouts)
        if fired:
            self.wake()
        return fired

    def _fire_timeouts(self) -> int:
        now = self.clock.now()
        with self.care.engine.connect() as connection:
            due = connection.execute(_TIMED_OUT, {"now": now}).all()
        fired = 0
        for client_id, due_at in due:
            try:
                fired += self._fire_timeout(client_id, now)
            except Exception as exc:  # the others still get theirs; this one is tried again
                log.error(
                    "timeout.failed client=%s error=%s at=%s",
                    client_id,
                    type(exc).__name__,
                    _where(exc),
                )
                if now - due_at >= TIMEOUT_GIVE_UP:
                    fired += self._give_up_timeout(client_id, now)
        if fired:
            log.info("timeout.fired count=%d", fired)
        return fired

    def _fire_timeout(self, client_id: int, now: datetime) -> bool:
        def work(session: Session) -> bool:
            client = _still_timed_out(session, client_id, now)
            if client is None:
                return False
            state = self._load(session, client)
            alerted = self._raise_held(session, client, state, now)
            if client.status not in (ClientStatus.ACTIVE, ClientStatus.PAUSED):
                # Stop means stop: nothing goes on for her (a held alert goes to her worker).
                self._save(session, client, state, until=None)
                return alerted
            if alerted and (state.until is None or state.until > now):
                self._save(session, client, state, until=state.until)  # hers waits on
                return True
            context = self.context(session, client, state.fields, now)
            step = self._resume(state, TimeoutInput(), client.language, context)
            self._hold(session, client, state, step)  # an escalation drops what is held
            # She did not write just now: what it tells her waits for the end of her quiet
            # hours; her worker's alerts do not.
            held = self.settings.quiet_until(
                client.quiet_hours, client.timezone, now, who=client.id
            )
            self._apply(
                session,
                client,
                state,
                step.events,
                now,
                priority=OutboxPriority.REMINDER,
                not_before=held,
            )
            state.session = step.session
            self._save(session, client, state)
            log.info(
                "timeout.handled client=%s flow=%s events=%d held=%s",
                client.id,
                step.session.flow,
                len(step.events),
                held is not None,
            )
            return True

        fired, _ = self._transact(work)
        return fired

    def _give_up_timeout(self, client_id: int, now: datetime) -> bool:
        """Her time-out has failed since `TIMEOUT_GIVE_UP`: stop trying and alert her worker
        (what should have followed may have been an alert: a safety check she did not
        answer). Her session stays at the question, so her next message goes on from there.
        True when her worker was alerted."""

        def work(session: Session) -> bool:
            client = _still_timed_out(session, client_id, now)
            if client is None:
                return False
            session.execute(_NO_TIMEOUT, {"her_id": client_id})
            if client.status not in (ClientStatus.ACTIVE, ClientStatus.PAUSED):
                return False
            escalations.raise_escalation(
                session,
                self.care.vault,
                self.settings,
                client,
                Severity.HIGH,
                "timeout_failed",
                now=now,
            )
            return True

        try:
            alerted, _ = self._transact(work)
        except Exception as exc:  # logged; the job tries again next time
            log.error("timeout.give_up_failed client=%s error=%s", client_id, type(exc).__name__)
            return False
        log.error("timeout.given_up client=%s worker_alerted=%s", client_id, alerted)
        return alerted

    # ------------------------------------------------------------------ applying events

    def _apply(
        self,
        session: Session,
        client: Client,
        state: _State,
        events: Sequence[Event],
        now: datetime,
        *,
        priority: OutboxPriority = OutboxPriority.REPLY,
        dedupe_key: str | None = None,
        expires_at: datetime | None = None,
        not_before: datetime | None = None,
    ) -> None:
        """Apply the engine's events in order, in the caller's transaction; what she is told
        waits until `not_before` when it is given."""
        notified = {e.reason for e in events if isinstance(e, NotifyWorker)}
        first_say = True
        for event in events:
            if isinstance(event, Say):
                self._reply(
                    session,
                    client,
                    event.text,
                    buttons=_button_rows(event.choices),
                    priority=priority,
                    dedupe_key=dedupe_key if first_say else None,
                    expires_at=expires_at,
                    not_before=not_before,
                    kind="reply" if priority is OutboxPriority.REPLY else "flow",
                )
                first_say = False
            elif isinstance(event, Escalate):
                escalations.raise_escalation(
                    session,
                    self.care.vault,
                    self.settings,
                    client,
                    Severity(event.severity),
                    event.reason,
                    now=now,
                )
            elif isinstance(event, NotifyWorker):
                self._notify_worker(session, client, event.reason)
            elif isinstance(event, SetField):
                self._set_field(session, client, state, event, now)
            elif isinstance(event, SetLanguage):
                if event.lang in self.settings.languages:
                    client.language = event.lang
            elif isinstance(event, SetStatus):
                self._set_status(session, client, event.status, notified, now)
            elif isinstance(event, Wipe):
                self._wipe(session, client, state, now)
            elif isinstance(event, EndFlow):
                pass

    def _reply(
        self,
        session: Session,
        client: Client,
        text: str,
        *,
        buttons: list[list[list[str]]] | None = None,
        priority: OutboxPriority = OutboxPriority.REPLY,
        dedupe_key: str | None = None,
        expires_at: datetime | None = None,
        not_before: datetime | None = None,
        kind: str = "reply",
    ) -> None:
        payload: dict[str, Any] = {"type": "text", "text": text}
        if buttons:
            payload["buttons"] = buttons
        outbox.enqueue(
            session,
            self.care.vault,
            client,
            payload,
            kind=kind,
            priority=priority,
            dedupe_key=dedupe_key,
            expires_at=expires_at,
            not_before=not_before,
            client_id=client.id,
        )

    def _notify_worker(self, session: Session, client: Client, reason: str) -> None:
        worker = session.get(Worker, client.assigned_worker_id)
        if worker is None or worker.chat_id_enc is None:
            return
        payload = {"type": "text", "text": notice_text(reason, client.alias, worker.language)}
        outbox.enqueue(
            session,
            self.care.vault,
            worker,
            payload,
            kind="notice",
            priority=OutboxPriority.NOTICE,
            client_id=client.id,
        )

    def _set_field(
        self, session: Session, client: Client, state: _State, event: SetField, now: datetime
    ) -> None:
        name, value = event.name, event.value
        if name in ("mood", "safe", "checkin"):
            self._answer_checkin(session, client, name, value, now)
            return
        if name == "appointment_answer":
            self._answer_appointment(session, client, str(value), now)
        if isinstance(value, str):
            value = value[:80]
        state.fields[name] = value

    def _answer_checkin(
        self, session: Session, client: Client, name: str, value: object, now: datetime
    ) -> None:
        """Her answer goes into the check-in she is answering (`_HER_CURRENT_CHECKIN`), in one
        statement; when there is none, it begins a new one. A second mood means a new
        check-in (she asked for one, or the next one came)."""
        if name == "checkin" and value == "no_answer":
            # The question timed out. Whether she answered is settled by the reminders'
            # watchdog, which also counts the check-ins she missed (reminders.checkins).
            return
        values: dict[str, Any] = {}
        if name == "mood":
            values["mood"] = str(value)[:16]
        elif name == "safe":
            values["feels_safe"] = {"yes": True, "no": False}.get(str(value))
        values["status"] = CheckInStatus.ANSWERED
        values["answered_at"] = now
        if client.missed_checkins:
            client.missed_checkins = 0
        connection = session.connection()
        which = {
            "her_id": client.id,
            "since": now - _CHECKIN_WINDOW,
            "continues": now - _CHECKIN_CONTINUES,
        }
        if self._postgres:
            connection.execute(_CHECKIN_ANSWER_OR_NEW[name], {**which, **values})
            return
        _, answer = _CHECKIN_FIELDS[name]
        if connection.execute(answer, {**which, **values}).first() is not None:
            return
        connection.execute(
            _CHECKIN_NEW,
            {
                "client_id": client.id,
                "due_at": now,
                "sent_at": now,
                "status": CheckInStatus.SENT,
                **values,
            },
        )

    def _answer_appointment(
        self, session: Session, client: Client, answer: str, now: datetime
    ) -> None:
        status = {
            "confirmed": AppointmentStatus.CONFIRMED,
            "cant_come": AppointmentStatus.CANT_COME,
        }.get(answer)
        if status is None:
            return
        upcoming = session.scalars(
            select(Appointment)
            .where(
                Appointment.client_id == client.id,
                Appointment.starts_at > now - timedelta(hours=1),
                Appointment.status.in_([AppointmentStatus.PLANNED, AppointmentStatus.CONFIRMED]),
            )
            .order_by(Appointment.starts_at)
            .limit(1)
        ).first()
        if upcoming is not None:
            upcoming.status = status

    def _set_status(
        self,
        session: Session,
        client: Client,
        status: str,
        notified: set[str],
        now: datetime,
    ) -> None:
        new = {
            "active": ClientStatus.ACTIVE,
            "paused": ClientStatus.PAUSED,
            "stopped": ClientStatus.ENDED,
        }[status]
        old = client.status
        if new is old:
            return
        client.status = new
        if new is ClientStatus.ENDED:
            client.ended_at = now
        elif new is ClientStatus.ACTIVE:
            client.ended_at = None
        audit.record(
            session,
            "client",
            f"client.status.{new.value}",
            client_alias=client.alias,
            responsible_worker_id=client.assigned_worker_id,
        )
        reason = {
            ClientStatus.ENDED: "client_stopped",
            ClientStatus.PAUSED: "client_paused",
            ClientStatus.ACTIVE: "client_resumed",
        }[new]
        if reason not in notified and old is not ClientStatus.INVITED:
            self._notify_worker(session, client, reason)
            notified.add(reason)

    def _wipe(self, session: Session, client: Client, state: _State, now: datetime) -> None:
        """Delete every message of her chat that can still be deleted (48 h), hers and the
        bot's, and forget what she typed (nickname, free-text answers)."""
        self._delete_messages(session, client, now, older_than=None)
        state.fields.clear()
        session.execute(
            update(CheckIn).where(CheckIn.client_id == client.id).values(answer_enc=None)
        )
        audit.record(
            session,
            "client",
            "client.wipe",
            client_alias=client.alias,
            responsible_worker_id=client.assigned_worker_id,
        )

    def _delete_messages(
        self, session: Session, client: Client, now: datetime, *, older_than: datetime | None
    ) -> int:
        """Delete her recorded messages (all of them for a wipe, `older_than` for the
        auto-delete); returns how many can still be deleted."""
        session.flush()
        ids = outbox.take_deletable(session, client.id, now, older_than=older_than)
        everything = older_than is None  # the sender adds what is recorded meanwhile
        if (ids or everything) and client.chat_id_enc is not None:
            outbox.enqueue(
                session,
                self.care.vault,
                client,
                {"type": "delete", "message_ids": ids, "everything": everything},
                kind="delete",
                priority=OutboxPriority.REPLY,
                client_id=client.id,
            )
        return len(ids)

    def _remember(
        self, session: Session, client: Client, message_id: int | None, now: datetime
    ) -> None:
        """Record her message id, so that wipe and auto-delete can remove it later."""
        if message_id is None or session.info.get(_REMEMBERED) == (client.id, message_id):
            return
        insert_new(
            session, ChatMessage, client_id=client.id, message_id=message_id, from_bot=False, at=now
        )

    # ------------------------------------------------------------------ leave no trace

    async def forget_old_updates(self, older_than: timedelta = PROCESSED_KEPT) -> int:
        """Drop processed update ids older than Telegram ever redelivers (keeps the table
        small); returns how many were dropped."""
        cutoff = self.clock.now() - older_than

        def prune() -> int:
            with self.care.sessions.begin() as session:
                result = session.execute(
                    delete(ProcessedUpdate).where(ProcessedUpdate.processed_at < cutoff)
                )
                return int(getattr(result, "rowcount", 0) or 0)

        return await asyncio.to_thread(prune)

    async def auto_delete(self) -> int:
        """Delete, for every client who chose it, the chat messages older than her N hours.

        Run periodically (the runtime does it every few minutes); returns how many message
        ids were queued for deletion.
        """
        deleted = await asyncio.to_thread(self._auto_delete)
        if deleted:
            self.wake()
        return deleted

    def _auto_delete(self) -> int:
        now = self.clock.now()
        total = 0
        with self.care.sessions.begin() as session:
            clients = session.scalars(
                select(Client).where(
                    Client.auto_delete_hours.is_not(None), Client.chat_id_enc.is_not(None)
                )
            ).all()
            for client in clients:
                hours = client.auto_delete_hours
                if hours is None or not 1 <= hours <= 47:
                    continue
                total += self._delete_messages(
                    session, client, now, older_than=now - timedelta(hours=hours)
                )
        if total:
            log.info("auto_delete.queued messages=%d", total)
        return total


def _lock_her(session: Session, statement: Select[Any], params: dict[str, Any]) -> Client | None:
    """Lock her row and read her session row with it (`_HER_WITH_SESSION`), and whether a
    message is open for her; None when no girl with a session row matches (then nothing is
    locked)."""
    found = session.execute(statement, params).first()
    if found is None:
        return None
    client, row_id, state_enc, duress_index, is_open = found
    session.info[_READ_AHEAD] = (client.id, row_id, state_enc)
    session.info[_DURESS_AHEAD] = (client.id, client.org_id, duress_index)
    # Whether a message was open for her when her row was locked: the sender asks before it
    # takes this turn's replies (on SQLite her session's UPDATE answers it again).
    outbox.note_open(session, RecipientKind.CLIENT, client.id, bool(is_open))
    return cast(Client, client)


def _still_timed_out(session: Session, client_id: int, now: datetime) -> Client | None:
    """Her row, locked, while her question still waits past its time; None when she answered
    meanwhile or another process went on already."""
    client = _lock_her(session, _HER_BY_ID, {"client_id": client_id})
    still = {"her_id": client_id, "now": now}
    if client is None or session.execute(_STILL_TIMED_OUT, still).first() is None:
        return None
    return client


def _button_rows(choices: Sequence[dialogues.Choice]) -> list[list[list[str]]]:
    """Buttons in rows: up to three short labels side by side, otherwise one per row."""
    if not choices:
        return []
    pairs = [[c.id, c.label] for c in choices]
    if len(pairs) <= 3 and all(len(c.label) <= 14 for c in choices):
        return [pairs]
    return [[pair] for pair in pairs]


__all__ = [
    "MAX_TEXT_CHARS",
    "CareError",
    "ConversationService",
    "Handled",
    "Inbound",
    "Understander",
    "format_when",
    "in_office_hours",
    "notice_text",
    "text_for",
]
