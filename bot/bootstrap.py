"""The one place that wires the application together from the settings.

`build(settings)` opens storage and keys, loads the flows (published versions, or the working
copy when nothing is published), builds the NLU and the conversation service with the worker
desk (appointments through the reminders). `serve_telegram` runs the bot in polling or webhook
mode with the outbox sender, the reminders and the auto-delete job, and stops gracefully;
`bot.console` runs the same parts with the console channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text

from care.clock import Clock, SystemClock
from care.context import Care, open_care
from care.conversation import ConversationService
from care.db import open_connections
from care.flow_versions import FlowStore
from care.outbox import Channel, OutboxSender, SenderOptions
from care.settings import Settings, resolve_path
from care.workers import AppointmentBook, WorkerDesk
from dialogues import FlowSource
from nlu import Nlu, NluConfig, build_nlu
from reminders.appointments import create_appointment
from reminders.runtime import Reminders

log = logging.getLogger(__name__)

_T = TypeVar("_T")

GIL_SWITCH_SECONDS = 0.0001
"""How long a thread may hold the GIL while another waits, while the bot serves (Python's
default: 5 ms). A turn's database work runs on a worker thread and gives the GIL up at every
statement; when the answer is back it waits for whichever thread holds the GIL (the event
loop, another turn, the sender's commits) to hand it over, at the latest after this long.
5 ms -> 1 ms: five paired runs of `bench/turn_latency.py --clients 200 --turns 12`, median p99
SQLite 54 ms instead of 86, PostgreSQL 469 ms instead of 808. 1 ms -> 0.1 ms (2026-12-01,
eight runs on PostgreSQL, four each, in turns, timing each turn's statements inside the bot):
the statements' wall time per turn, p50 2.7-3.8 ms instead of 3.6-5.1 where the bot's CPU per
turn was the same, p99 14-23 ms instead of 21-44 in all eight; CPU per turn unchanged. The
end-to-end figures moved less than the VM's speed between runs. On a VM where the bot was
busy ~75% of the time (2026-12-06, 200 girls x 20 turns on PostgreSQL, 0.1, 1 and 5 ms in
turns, three runs each) 0.1 ms cost CPU: 138-177 context switches a turn instead of 88-116
and 9.7-11.6 ms of CPU a turn instead of 8.7-10.2, with p50 and p99 no better (they moved
by 3x between runs). Kept, for the bot that is not saturated (production's load is a few
turns a second), where it shortens the turn. Running her turns on the event loop instead
(SQLAlchemy's asyncio extension on psycopg's async connection, the same code under
`AsyncSession.run_sync`) cut the context switches to 47 a turn, but not the CPU per turn
(10.4-10.6 ms against 10.0-10.9), and p99 got worse (746-858 ms against 141-367): not taken."""

AUTO_DELETE_EVERY_SECONDS = 300.0
"""How often the auto-delete job looks for messages older than a client's chosen hours."""
TIMEOUTS_EVERY_SECONDS = 60.0
"""How often to look for questions that waited for her longer than their `timeout_minutes`."""


@dataclass
class Parts:
    """Everything one process runs with."""

    settings: Settings
    care: Care
    clock: Clock
    flows: FlowSource
    nlu: Nlu
    desk: WorkerDesk
    service: ConversationService

    async def warm(self) -> None:
        """Open the database connections, load the flows and read one word in each language
        before the first girl writes, so that her first turn after a start is as quick as
        the next."""
        await asyncio.to_thread(open_connections, self.care.engine)
        if isinstance(self.flows, FlowStore):
            await asyncio.to_thread(self.flows.warm)
        for lang in self.settings.languages:
            await self.nlu.understand("hoi", lang)

    async def aclose(self) -> None:
        """Release the NLU and the database."""
        await self.nlu.aclose()
        self.care.close()


def nlu_config(settings: Settings) -> NluConfig:
    """Map our settings onto the NLU's own config."""
    token = settings.nlu.rasa_token.get_secret_value() if settings.nlu.rasa_token else None
    return NluConfig(
        backend=settings.nlu.backend,
        languages=settings.languages,
        confidence_threshold=settings.nlu.confidence_threshold,
        rasa_url=settings.nlu.rasa_url,
        rasa_token=token,
        rasa_timeout_s=settings.nlu.rasa_timeout_seconds,
        cache_dir=resolve_path(settings, settings.nlu.cache_dir),
    )


def appointment_book() -> AppointmentBook:
    """`reminders.appointments.create_appointment`: the appointment and its reminder jobs."""
    book: AppointmentBook = create_appointment
    return book


def build(
    settings: Settings,
    *,
    care: Care | None = None,
    clock: Clock | None = None,
    nlu: Nlu | None = None,
    flows: FlowSource | None = None,
) -> Parts:
    """Open storage, load flows and NLU, and build the conversation service."""
    care = care or open_care(settings)
    clock = clock or SystemClock()
    flows = flows or FlowStore(care.sessions)
    nlu = nlu or build_nlu(nlu_config(settings))
    desk = WorkerDesk(care, appointments=appointment_book())
    service = ConversationService(care, flows, nlu, clock=clock, desk=desk)
    return Parts(settings, care, clock, flows, nlu, desk, service)


def make_sender(
    parts: Parts, channel: Channel, options: SenderOptions | None = None, care: Care | None = None
) -> OutboxSender:
    """The outbox sender for a channel: a turn hands it its replies, claimed in the turn's
    transaction; anything else written wakes it."""
    sender = OutboxSender(care or parts.care, channel, parts.clock, options)
    parts.service.set_wake(sender.wake)
    parts.service.set_handoff(sender)
    return sender


class Background:
    """The reminders (when this process holds the scheduler lock), the auto-delete job and the
    questions that time out."""

    def __init__(
        self,
        parts: Parts,
        *,
        auto_delete_every: float = AUTO_DELETE_EVERY_SECONDS,
        timeouts_every: float = TIMEOUTS_EVERY_SECONDS,
    ):
        self.parts = parts
        self.auto_delete_every = auto_delete_every
        self.timeouts_every = timeouts_every
        self._reminders: Reminders | None = None
        self._task: asyncio.Task[None] | None = None
        self._timeouts: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the reminders (they schedule only when this process gets the scheduler lock)
        the auto-delete job and the time-outs."""
        parts = self.parts
        self._reminders = Reminders(parts.care, parts.service, parts.clock)
        if not await self._reminders.start():
            log.info("bootstrap.reminders_elsewhere another process runs the scheduler")
        self._task = asyncio.create_task(
            _every(self.auto_delete_every, self._auto_delete, "auto_delete"), name="auto-delete"
        )
        # In every process: each time-out goes on once, under her row's lock.
        self._timeouts = asyncio.create_task(
            _every(self.timeouts_every, parts.service.fire_timeouts, "timeouts"), name="timeouts"
        )

    async def _auto_delete(self) -> None:
        await self.parts.service.auto_delete()
        await self.parts.service.forget_old_updates()

    async def stop(self) -> None:
        """Stop the auto-delete job, the time-outs and the reminders."""
        for task in (self._task, self._timeouts):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._timeouts = None
        if self._reminders is not None:
            await self._reminders.stop()
            self._reminders = None


async def _every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `job` now and every `seconds` after, until cancelled; a failure is logged (the
    database may be away for a while) and the job runs again at its next time."""
    while True:
        try:
            await job()
        except Exception as exc:
            log.warning("%s.failed error=%s", name, type(exc).__name__)
        await asyncio.sleep(seconds)


def database_health(care: Care) -> Callable[[], Awaitable[bool]]:
    """A check for `/healthz`: True when the database answers `SELECT 1` within 2 seconds."""

    def ping() -> bool:
        try:
            with care.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def check() -> bool:
        try:
            return await asyncio.wait_for(asyncio.to_thread(ping), 2.0)
        except TimeoutError:
            return False

    return check


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop` (finish the update in hand, flush, exit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def run_served(main: Coroutine[Any, Any, _T]) -> _T:
    """Run the bot's main coroutine to the end on uvloop, where it is installed (a dependency
    on Linux and macOS), else on asyncio's own loop. uvloop's loop is asyncio's, written in C:
    the bot's event loop thread receives every update, sends every message and hands each turn
    to a thread and back, and on one CPU that loop's own cost is felt by every girl waiting.
    `bench/turn_latency.py` (200 girls x 12 turns, PostgreSQL, three pairs of runs in turns
    on a slow VM, the bot saturated): p50 36-70 ms against 63-171, p99 413-1064 ms against
    572-1833, CPU 6-11% less."""
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's loop
        return asyncio.run(main)
    return uvloop.run(main)


async def serve_telegram(
    parts: Parts,
    stop: asyncio.Event,
    *,
    token: str,
    base_url: str | None = None,
    base_file_url: str | None = None,
    sender_options: SenderOptions | None = None,
    ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run the Telegram bot until `stop` is set, then stop in order: no new updates, finish
    the updates in hand, stop the background jobs, flush the outbox, close."""
    from telegram import Update

    from bot.telegram import TelegramChannel, TelegramFront, build_application
    from bot.telegram.front import set_commands
    from bot.telegram.webhook import WebhookServer

    settings = parts.settings
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    await parts.warm()
    front = TelegramFront(parts.service, protect_content=settings.privacy.protect_content)
    application = build_application(
        settings, front, token=token, base_url=base_url, base_file_url=base_file_url
    )
    await application.initialize()
    parts.desk.bot_username = settings.telegram.username or application.bot.username
    sender = make_sender(parts, TelegramChannel(application.bot), sender_options)
    await sender.start()
    background = Background(parts)
    await background.start()
    await set_commands(application)
    await application.start()
    server: WebhookServer | None = None
    info: dict[str, Any] = {"mode": settings.telegram.mode}
    if settings.telegram.mode == "webhook":
        hook = settings.telegram.webhook
        secret = settings.telegram.webhook_secret
        assert secret is not None  # load_settings refuses webhook mode without it
        server = WebhookServer(
            front,
            application.bot,
            secret=secret.get_secret_value(),
            health=database_health(parts.care),
            path=hook.path,
            listen=hook.listen,
            port=hook.port,
        )
        await server.start()
        info["port"] = server.port
        if hook.public_url:
            await application.bot.set_webhook(
                hook.public_url,
                secret_token=secret.get_secret_value(),
                allowed_updates=Update.ALL_TYPES,
            )
        else:
            log.warning("bot.webhook_not_registered telegram.webhook.public_url is not set")
    else:
        assert application.updater is not None
        await application.updater.start_polling(allowed_updates=Update.ALL_TYPES)
    # What start-up built (modules, flows, models, the NLU) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks it every time (in
    # bench/turn_latency.py, 200 girls x 20 turns: one full collection of ~110 ms per run
    # before, none since).
    gc.collect()
    gc.freeze()
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    log.info("bot.running mode=%s loop=%s", settings.telegram.mode, loop)
    if ready is not None:
        ready(info)
    await stop.wait()
    log.info("bot.stopping")
    if server is not None:
        await server.stop()
    elif application.updater is not None:
        await application.updater.stop()
    await application.stop()
    await front.drain()
    await background.stop()
    await sender.stop(flush=True)
    await application.shutdown()
    sys.setswitchinterval(switch_interval)
    gc.unfreeze()
    log.info("bot.stopped")
