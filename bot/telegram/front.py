"""The front desk of the Telegram channel: every update goes to the conversation service.

One `TypeHandler` takes every update. A button press is answered at once (Telegram shows a
spinner until then); the update becomes an `Inbound`; updates of one chat are handled one at
a time and in order (different chats run side by side). A text the service asks to send
directly (to a chat nobody is linked to) goes out here with `protect_content`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import OperationalError
from telegram import BotCommand, Update
from telegram.error import TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from bot.telegram.inbound import to_inbound
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
    """Hands Telegram updates to the conversation service."""

    def __init__(self, service: ConversationService, *, protect_content: bool = True) -> None:
        self.service = service
        self.protect_content = protect_content
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        self.in_hand = 0

    @asynccontextmanager
    async def _chat_lock(self, chat_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(chat_id, (asyncio.Lock(), 0))
        self._locks[chat_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[chat_id]
            if users <= 1:
                del self._locks[chat_id]
            else:
                self._locks[chat_id] = (lock, users - 1)

    async def process(self, update: Update) -> None:
        """Handle one update. Raises only when the database is down (webhook: answer 503)."""
        if update.callback_query is not None:
            try:
                await update.callback_query.answer()
            except TelegramError as exc:
                log.warning("telegram.callback_answer_failed error=%s", type(exc).__name__)
        inbound = to_inbound(update)
        if inbound is None:
            return
        self.in_hand += 1
        try:
            async with self._chat_lock(inbound.chat_id):
                handled = await self.service.handle(inbound)
        finally:
            self.in_hand -= 1
        if handled.direct is not None:
            await update.get_bot().send_message(
                inbound.chat_id, handled.direct, protect_content=self.protect_content
            )

    async def on_update(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The PTB handler (polling mode): a database outage gets a kind direct reply."""
        if not isinstance(update, Update):
            return
        try:
            await self.process(update)
        except DATABASE_DOWN as exc:
            log.error(
                "telegram.database_down update=%s error=%s", update.update_id, type(exc).__name__
            )
            chat = update.effective_chat
            user = update.effective_user
            lang = (user.language_code or "")[:2] if user else ""
            if chat is not None:
                await context.bot.send_message(
                    chat.id,
                    text_for("sorry_plain", lang if lang in ("nl", "en") else "nl"),
                    protect_content=self.protect_content,
                )

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
    """The PTB Application: concurrent updates (ordered per chat by the front), one handler."""
    builder = ApplicationBuilder().token(token).concurrent_updates(True)
    builder = builder.base_url(base_url or settings.telegram.base_url)
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
