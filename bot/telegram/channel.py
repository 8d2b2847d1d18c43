"""`TelegramChannel`: delivers one outbox message through the Bot API.

Telegram's errors become `care.outbox` errors, so that the sender decides what to do:

    RetryAfter (429)                       -> RateLimited(retry_after)
    Forbidden (403, blocked / deactivated) -> Unreachable
    BadRequest (400)                       -> PermanentError (deleting a gone message: done)
    TimedOut while connecting              -> TransientError (nothing was sent)
    TimedOut after sending                 -> MaybeDelivered
    connection dropped after sending       -> MaybeDelivered
    5xx, connection refused                -> TransientError
    anything else Telegram says            -> PermanentError

Error messages never carry the text or the chat id.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import aiohttp
import httpx
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import (
    BadRequest,
    Forbidden,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.warnings import PTBUserWarning

from bot.telegram.transport import NOT_SENT
from care.outbox import (
    Button,
    Delivered,
    MaybeDelivered,
    Outgoing,
    PermanentError,
    RateLimited,
    TransientError,
    Unreachable,
)

log = logging.getLogger(__name__)

SEND_TEXT_NUDGE = r"Please use 'Bot\.sendMessage' instead"
"""PTB's nudge when `Bot.do_api_request` is asked for a method it has its own for; the channel
does so on purpose (`TelegramChannel._send_text`), so the nudge is ignored, here and in the
tests' warning filters (pyproject.toml)."""
warnings.filterwarnings("ignore", message=SEND_TEXT_NUDGE, category=PTBUserWarning)

MAX_TEXT = 4096
MAX_CAPTION = 1024
DELETE_BATCH = 100

_NOT_SENT: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    *NOT_SENT,
)
"""Causes after which nothing reached Telegram: ours (`bot.telegram.transport`) and those of
PTB's default transport, so that the channel answers truly under either."""
_TRANSPORT = (httpx.HTTPError, aiohttp.ClientError)
"""Causes from the wire (not, say, a bug of ours): after the request began, maybe sent."""


def keyboard(rows: Sequence[Sequence[Button]]) -> InlineKeyboardMarkup | None:
    """Inline buttons whose callback data is the button's short id."""
    if not rows:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.id) for b in row] for row in rows]
    )


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Cut a text into Telegram-sized parts, at a line break or space where possible."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    parts.append(text)
    return parts


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramChannel:
    """The `care.outbox.Channel` for Telegram."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def deliver(self, message: Outgoing) -> Delivered:
        """Send, edit or delete; raise a `care.outbox.ChannelError` subclass on failure."""
        try:
            return await self._deliver(message)
        except RetryAfter as exc:
            raise RateLimited(_seconds(exc.retry_after)) from None
        except Forbidden:
            raise Unreachable("the person blocked the bot or left Telegram") from None
        except BadRequest:
            log.warning(
                "telegram.bad_request outbox_id=%s kind=%s", message.outbox_id, message.kind
            )
            raise PermanentError(f"Telegram refused this {message.kind} message") from None
        except TimedOut as exc:
            if isinstance(exc.__cause__, _NOT_SENT):
                raise TransientError("Telegram could not be reached") from None
            raise MaybeDelivered("Telegram did not answer in time") from None
        except NetworkError as exc:
            cause = exc.__cause__
            if isinstance(cause, _TRANSPORT) and not isinstance(cause, _NOT_SENT):
                raise MaybeDelivered("the connection broke after sending") from None
            raise TransientError("Telegram is not available") from None
        except TelegramError:
            raise PermanentError("Telegram refused the request") from None

    async def _deliver(self, message: Outgoing) -> Delivered:
        chat_id = message.chat_id
        protect = message.protect_content
        if message.kind == "delete":
            doomed = list(message.message_ids)
            for start in range(0, len(doomed), DELETE_BATCH):
                try:
                    await self.bot.delete_messages(chat_id, doomed[start : start + DELETE_BATCH])
                except BadRequest:
                    # Already gone or older than 48 hours: nothing more can be done.
                    log.info("telegram.delete_skipped outbox_id=%s", message.outbox_id)
            return Delivered(())
        if message.kind == "edit":
            if message.edit_message_id is None:
                raise PermanentError("an edit needs the id of the message to change")
            markup = keyboard(message.buttons)
            if message.text:
                await self.bot.edit_message_text(
                    message.text[:MAX_TEXT],
                    chat_id=chat_id,
                    message_id=message.edit_message_id,
                    reply_markup=markup,
                )
            else:
                await self.bot.edit_message_reply_markup(
                    chat_id=chat_id, message_id=message.edit_message_id, reply_markup=markup
                )
            return Delivered(())
        if message.kind == "photo":
            if message.photo is None:
                raise PermanentError("a photo message without a picture")
            sent = await self.bot.send_photo(
                chat_id,
                photo=message.photo,
                caption=message.text[:MAX_CAPTION] or None,
                reply_markup=keyboard(message.buttons),
                protect_content=protect,
            )
            return Delivered((sent.message_id,))
        parts = split_text(message.text or " ")
        ids: list[int] = []
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            shown = await self._send_text(chat_id, part, message.buttons if last else (), protect)
            if shown is not None:
                ids.append(shown)
        return Delivered(tuple(ids))

    async def _send_text(
        self, chat_id: int, text: str, buttons: Sequence[Sequence[Button]], protect: bool
    ) -> int | None:
        """sendMessage; the id of the message sent. Telegram's answer is read as it comes
        (`Bot.do_api_request`): `Bot.send_message` would build a whole `Message` from it,
        with its chat, its sender and its keyboard, for the one id the outbox keeps (this
        takes 0.70x the CPU of `send_message` a call, `bench/transport.py`). Telegram's errors are
        raised as from `send_message`. None, logged, when the answer holds no id: the message
        went out, and only `/wipe` cannot reach it."""
        data: dict[str, Any] = {"chat_id": chat_id, "text": text, "protect_content": protect}
        if buttons:
            data["reply_markup"] = {
                "inline_keyboard": [
                    [{"text": b.label, "callback_data": b.id} for b in row] for row in buttons
                ]
            }
        answer = await self.bot.do_api_request("sendMessage", api_kwargs=data)
        message_id = answer.get("message_id") if isinstance(answer, dict) else None
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            log.warning("telegram.sent_without_id")
            return None
        return message_id
