"""The front desk of the Telegram channel: every update goes to the conversation service.

One `TypeHandler` takes every update. A button press is answered at once (Telegram shows a
spinner until then); the update becomes an `Inbound`; updates of one chat are handled one at
a time and in order (different chats run side by side). A text the service asks to send
directly (to a chat nobody is linked to) goes out here with `protect_content`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import OperationalError
from telegram import BotCommand, CallbackQuery, Update
from telegram.error import TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from bot.telegram.inbound import to_inbound
from bot.telegram.transport import on_transport
from care.conversation import ConversationService, text_for
from care.errors import StorageError
from care.settings import Settings

log = logging.getLogger(__name__)

DATABASE_DOWN = (StorageError, OperationalError)

COMMANDS: dict[str, list[tuple[str, str]]] = {
    "nl": [
        ("help", "Hulp en contact"),
        ("checkin", "Even bijpraten"),
        ("pauze", "Even geen berichten"),
        ("wissen", "Alles wissen"),
        ("taal", "Taal / language"),
        ("stop", "Stoppen"),
    ],
    "en": [
        ("help", "Help and contact"),
        ("checkin", "A quick catch-up"),
        ("pause", "No messages for a while"),
        ("wipe", "Erase everything"),
        ("language", "Language / taal"),
        ("stop", "Stop"),
    ],
}
"""The command menu: neutral words only (her phone may be seen by others)."""


class TelegramFront:
    """Hands Telegram updates to the conversation service.

    `dispatch` starts one task per update, chained per chat so that her updates are handled
    one at a time and in order, and keeps every task until it is done: `drain` waits for
    them, so a stop never drops an update that Telegram already handed over.
    """

    def __init__(self, service: ConversationService, *, protect_content: bool = True) -> None:
        self.service = service
        self.protect_content = protect_content
        self._last: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_hand(self) -> int:
        """Updates taken but not yet finished."""
        return len(self._tasks)

    def dispatch(self, update: Update, *, answer_outage: bool = True) -> asyncio.Task[None]:
        """Start handling `update` after the chat's previous update; returns its task.

        With `answer_outage` (polling) a database outage gets a kind direct reply and no error
        leaves the task; without it (webhook) the caller awaits the task and answers 503.
        """
        chat = update.effective_chat
        key = chat.id if chat is not None else None
        previous = self._last.get(key) if key is not None else None
        task = asyncio.create_task(self._handle(update, previous, answer_outage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if key is not None:
            self._last[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: int, done: asyncio.Task[None]) -> None:
        if self._last.get(key) is done:
            del self._last[key]

    async def drain(self) -> None:
        """Wait until every update taken so far is handled."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(
        self, update: Update, previous: asyncio.Task[None] | None, answer_outage: bool
    ) -> None:
        # A button press is answered at once (her spinner stops), beside the handling, even
        # while her previous update still runs; the task ends when both are done.
        query = update.callback_query
        answering = asyncio.create_task(self._answer(query)) if query is not None else None
        try:
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is its own
            if not answer_outage:
                await self._process(update)
                return
            try:
                await self._process(update)
            except DATABASE_DOWN as exc:
                log.error(
                    "telegram.database_down update=%s error=%s",
                    update.update_id,
                    type(exc).__name__,
                )
                await self._sorry(update)
            except Exception as exc:  # logged by class only: the update may carry her words
                log.error(
                    "telegram.failed update=%s error=%s", update.update_id, type(exc).__name__
                )
        finally:
            if answering is not None:
                await answering

    async def _answer(self, query: CallbackQuery) -> None:
        try:
            await query.answer()
        except TelegramError as exc:
            log.warning("telegram.callback_answer_failed error=%s", type(exc).__name__)

    async def _process(self, update: Update) -> None:
        inbound = to_inbound(update)
        if inbound is None:
            return
        handled = await self.service.handle(inbound)
        if handled.direct is not None:
            await update.get_bot().send_message(
                inbound.chat_id, handled.direct, protect_content=self.protect_content
            )

    async def _sorry(self, update: Update) -> None:
        chat = update.effective_chat
        user = update.effective_user
        lang = (user.language_code or "")[:2] if user else ""
        if chat is None:
            return
        try:
            await update.get_bot().send_message(
                chat.id,
                text_for("sorry_plain", lang if lang in ("nl", "en") else "nl"),
                protect_content=self.protect_content,
            )
        except TelegramError as exc:
            log.warning("telegram.sorry_failed error=%s", type(exc).__name__)

    async def on_update(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The PTB handler (polling mode): hands the update on and returns at once."""
        if isinstance(update, Update):
            self.dispatch(update)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """PTB's error handler: log ids and the error class, never text."""
        error = context.error
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("telegram.error update=%s error=%s", update_id, type(error).__name__)


def build_application(
    settings: Settings,
    front: TelegramFront,
    *,
    token: str,
    base_url: str | None = None,
    base_file_url: str | None = None,
    **builder_options: Any,
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The PTB Application with one handler that hands each update to the front.

    PTB itself runs updates one after another: the handler only starts the front's task,
    which runs chats side by side and keeps each chat in order. So when `Application.stop`
    returns, every update fetched is in the front's hands and `front.drain()` finishes it.
    """
    builder = ApplicationBuilder().token(token).concurrent_updates(False)
    builder = builder.base_url(base_url or settings.telegram.base_url)
    builder = on_transport(builder)  # aiohttp under PTB (see bot.telegram.transport)
    if base_file_url:
        builder = builder.base_file_url(base_file_url)
    for name, value in builder_options.items():
        builder = getattr(builder, name)(value)
    application = builder.build()
    application.add_handler(TypeHandler(Update, front.on_update))
    application.add_error_handler(front.on_error)
    return application


async def set_commands(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Publish the neutral command menu in Dutch (default) and English."""
    bot = application.bot
    try:
        await bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS["nl"]])
        await bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS["en"]], language_code="en")
    except TelegramError as exc:
        log.warning("telegram.set_commands_failed error=%s", type(exc).__name__)
