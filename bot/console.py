"""The console channel: chat with the bot in a terminal, on the local database.

Same conversation service, same engine, same outbox as Telegram; only the channel differs.
`aftercare chat` (and `aftercare run` without a Telegram token) creates a demo organisation,
worker and client once, then you are the client. Her worker's alerts show in the same
terminal. Type a message, a number to tap one of her buttons, or:

    /start CODE        enroll (the code is printed when you start)
    /demo-reminder     an appointment reminder now (an appointment is planned if none is)
    /w TEXT            speak as the worker, e.g. `/w /clients`, `/w /client demo`
    w1, w2, ...        tap the worker's buttons
    /quit              leave (Ctrl-D too)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from datetime import timedelta
from typing import Protocol, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.bootstrap import Background, Parts, make_sender
from care import directory
from care.conversation import Inbound
from care.directory import chat_index
from care.errors import InvalidInput, NotFound
from care.models import Appointment, AppointmentStatus, Client, Organisation, Worker, WorkerRole
from care.outbox import Button, Delivered, Outgoing
from care.settings import RateLimits

log = logging.getLogger(__name__)

CONSOLE_CLIENT_CHAT = -7_000_000_001
"""The console's chat id for the client: negative, so never a Telegram private chat."""
CONSOLE_WORKER_CHAT = -7_000_000_002

DEMO_ORG = "Demo Het Anker"
DEMO_PHONE = "020-0000000"
DEMO_WORKER = "Anna Demo"
DEMO_ALIAS = "demo"
DEMO_DURESS = "paraplu"

_INTRO = {
    "nl": """\
── Aftercare demo (console) ──────────────────────────────────────────────
Jij bent de cliënt '{alias}'. Typ een bericht, of een cijfer om op een knop te tikken.
{enroll}
Probeer: /checkin · /help · 'ik voel me niet veilig' · /wissen · /taal · /pauze · /stop
/demo-reminder: een herinnering aan een afspraak.  Noodwoord van de demo: '{duress}'.
Als hulpverlener: /w /clients · /w /client {alias} · /w /escalations · knoppen: w1, w2 …
/quit om te stoppen.
──────────────────────────────────────────────────────────────────────────""",
    "en": """\
── Aftercare demo (console) ──────────────────────────────────────────────
You are the client '{alias}'. Type a message, or a number to tap a button.
{enroll}
Try: /checkin · /help · 'I don't feel safe' · /wipe · /language · /pause · /stop
/demo-reminder: an appointment reminder.  The demo's duress word: '{duress}'.
As the worker: /w /clients · /w /client {alias} · /w /escalations · buttons: w1, w2 …
/quit to leave.
──────────────────────────────────────────────────────────────────────────""",
}
_ENROLL = {
    "nl": "Eerst koppelen: typ  /start {code}",
    "en": "First enroll: type  /start {code}",
}
_ENROLLED = {
    "nl": "Je bent al gekoppeld. (/start begint de kennismaking opnieuw.)",
    "en": "You are enrolled already. (/start runs the introduction again.)",
}


class ConsoleChannel:
    """A `care.outbox.Channel` that prints: her chat, and her worker's alerts beside it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._ids = itertools.count(1)
        self.buttons: dict[int, tuple[Button, ...]] = {}

    def next_id(self) -> int:
        """A new message id (hers and the bot's share one counter, as in Telegram)."""
        return next(self._ids)

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A word from the console itself (not from the bot)."""
        self._print(text)

    def show_direct(self, text: str) -> None:
        """A text the service answered directly (to a chat nobody is linked to)."""
        self._print("🤖 " + text)

    async def deliver(self, message: Outgoing) -> Delivered:
        """Print the message; remember its buttons so that a number can tap them."""
        to_worker = message.chat_id != CONSOLE_CLIENT_CHAT
        prefix = "    ┃ 👩‍💼 " if to_worker else "🤖 "
        indent = "    ┃    " if to_worker else "   "
        if message.kind == "delete":
            self._print(
                f"{indent}(🧹 {len(message.message_ids)} berichten gewist / messages deleted)"
            )
            return Delivered(())
        lines = (message.text or "").splitlines() or [""]
        if message.kind == "photo":
            size = len(message.photo or b"") // 1024
            lines = [f"[📈 {lines[0]} — PNG, {size} KB]"]
        self._print(prefix + lines[0])
        for line in lines[1:]:
            self._print(indent + line)
        flat = tuple(b for row in message.buttons for b in row)
        if flat:
            mark = "w" if to_worker else ""
            labels = "  ".join(f"[{mark}{n}] {b.label}" for n, b in enumerate(flat, 1))
            self._print(indent + labels)
            self.buttons[message.chat_id] = flat
        return Delivered((self.next_id(),))


@dataclasses.dataclass
class Demo:
    """Who the console speaks as."""

    client_id: int
    alias: str
    code: str | None
    language: str


def ensure_demo(parts: Parts, alias: str | None = None) -> Demo:
    """Create the demo organisation, worker and client once; return who the console is.

    With `alias`, the console speaks as that existing client instead (refused when she is
    linked to a real Telegram chat).
    """
    care = parts.care
    settings = parts.settings
    console_index = chat_index(care.keyring, CONSOLE_CLIENT_CHAT)
    with care.sessions.begin() as session:
        org = session.scalars(select(Organisation).where(Organisation.name == DEMO_ORG)).first()
        if org is None:
            org = directory.add_organisation(session, DEMO_ORG, DEMO_PHONE, actor="console")
            directory.set_duress_word(session, care.keyring, org, DEMO_DURESS, "console")
            issued = directory.add_worker(
                session,
                care.vault,
                DEMO_ORG,
                DEMO_WORKER,
                WorkerRole.WORKER,
                language=settings.default_language,
                actor="console",
            )
            directory.link_chat(session, care.vault, issued.code, CONSOLE_WORKER_CHAT)
            worker = session.get(Worker, issued.id)
            assert worker is not None
            directory.invite_client(
                session,
                care.vault,
                worker,
                alias=DEMO_ALIAS,
                language=settings.default_language,
                timezone=settings.timezone,
                languages=settings.languages,
                actor="console",
            )
        stmt = select(Client).where(Client.alias == (alias or DEMO_ALIAS))
        if alias is None:
            stmt = stmt.where(Client.org_id == org.id)
        client = session.scalars(stmt).first()
        if client is None:
            raise NotFound(f"no client {alias or DEMO_ALIAS!r}; see `aftercare client list`")
        if client.chat_index is not None and client.chat_index != console_index:
            raise InvalidInput(
                f"{client.alias!r} is linked to Telegram; the console cannot speak for her"
            )
        code = None
        if client.chat_index is None:
            code = directory.reissue_client_code(session, care.vault, client, actor="console")
        return Demo(client.id, client.alias, code, client.language)


def _console_care(parts: Parts) -> Parts:
    """The same parts, with Telegram's per-chat limit lifted (a terminal has none)."""
    telegram = parts.settings.telegram.model_copy(
        update={"rate_limits": RateLimits(per_chat_per_second=30.0, overall_per_second=100.0)}
    )
    settings = parts.settings.model_copy(update={"telegram": telegram})
    return dataclasses.replace(parts, care=dataclasses.replace(parts.care, settings=settings))


async def _plan_demo_appointment(parts: Parts, client_id: int) -> None:
    """An appointment tomorrow at 15:00 (her time) when she has none coming up."""
    now = parts.clock.now()

    def plan() -> None:
        with parts.care.sessions.begin() as session:
            client = session.get(Client, client_id)
            assert client is not None
            upcoming = session.scalars(
                select(Appointment).where(
                    Appointment.client_id == client.id,
                    Appointment.starts_at > now,
                    Appointment.status != AppointmentStatus.CANCELLED,
                )
            ).first()
            if upcoming is not None:
                return
            worker = session.get(Worker, client.assigned_worker_id)
            assert worker is not None
            local = (now + timedelta(days=1)).astimezone(ZoneInfo(client.timezone))
            starts = local.replace(hour=15, minute=0, second=0, microsecond=0)
            parts.desk.appointments(session, parts.care, client, worker, starts, "Stationsplein 1")

    await asyncio.to_thread(plan)


class LineSource(Protocol):
    """Where the console reads her lines from (stdin, or a script in tests)."""

    def readline(self) -> str:
        """The next line with its newline; an empty string at the end."""
        ...


async def run_console(
    parts: Parts,
    stdin: LineSource,
    stdout: TextIO,
    *,
    alias: str | None = None,
    background: bool = True,
) -> None:
    """Chat in the terminal until /quit or end of input."""
    demo = ensure_demo(parts, alias)
    lang = demo.language if demo.language in _INTRO else "nl"
    enroll = _ENROLL[lang].format(code=demo.code) if demo.code else _ENROLLED[lang]
    stdout.write(_INTRO[lang].format(alias=demo.alias, enroll=enroll, duress=DEMO_DURESS) + "\n")
    stdout.flush()
    channel = ConsoleChannel(stdout)
    console_parts = _console_care(parts)
    sender = make_sender(parts, channel, care=console_parts.care)
    await sender.start()
    jobs = Background(parts) if background else None
    if jobs is not None:
        await jobs.start()
    try:
        while True:
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            try:
                await _one_line(parts, demo, channel, line)
            except Exception as exc:  # a person never sees a traceback
                log.error("console.failed error=%s", type(exc).__name__)
                channel.show_direct(f"(demo: that did not work: {type(exc).__name__})")
            await sender.idle(timeout=10.0)
    finally:
        if jobs is not None:
            await jobs.stop()
        await sender.stop(flush=True)


async def _one_line(parts: Parts, demo: Demo, channel: ConsoleChannel, line: str) -> None:
    if line == "/demo-reminder":
        await _plan_demo_appointment(parts, demo.client_id)
        started = await parts.service.start_flow(
            demo.client_id,
            "appointment_reminder",
            dedupe_key=f"console:{parts.clock.now().timestamp()}",
        )
        if not started:
            channel.show_direct(
                "(demo: no reminder: enroll first; or she paused or stopped; or a safety"
                " question to her is still open)"
            )
        return
    inbound = _inbound(line, channel)
    if inbound is not None:
        handled = await parts.service.handle(inbound)
        if handled.direct is not None:
            channel.show_direct(handled.direct)


def _inbound(line: str, channel: ConsoleChannel) -> Inbound | None:
    chat = CONSOLE_CLIENT_CHAT
    if line.startswith("/w ") or line == "/w":
        chat, line = CONSOLE_WORKER_CHAT, line[2:].strip()
        if not line:
            return None
    elif line[:1] == "w" and line[1:].isdigit():
        chat, line = CONSOLE_WORKER_CHAT, line[1:]
    buttons = channel.buttons.get(chat, ())
    if line.isdigit() and buttons:
        if not 1 <= int(line) <= len(buttons):
            # A slip of the finger, not a message: it must not become her nickname.
            mark = "w" if chat == CONSOLE_WORKER_CHAT else ""
            channel.note(
                f"(geen knop {mark}{line}: kies {mark}1–{mark}{len(buttons)} / "
                f"no button {mark}{line}: choose {mark}1–{mark}{len(buttons)})"
            )
            return None
        return Inbound(
            chat_id=chat, kind="choice", update_id=None, choice_id=buttons[int(line) - 1].id
        )
    message_id = channel.next_id()
    words = line[1:].split() if line.startswith("/") else []
    if words:
        name, *args = words
        return Inbound(
            chat_id=chat,
            kind="command",
            update_id=None,
            message_id=message_id,
            command=name.lower(),
            args=tuple(args),
        )
    return Inbound(chat_id=chat, kind="text", update_id=None, message_id=message_id, text=line)
