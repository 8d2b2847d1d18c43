"""The Telegram channel: python-telegram-bot 22 at the edge, nothing else knows Telegram.

`inbound.to_inbound` turns an `Update` into a channel-neutral `care.conversation.Inbound`;
`front.TelegramFront` hands it to the conversation service (answering button presses at once,
one update at a time per chat); `channel.TelegramChannel` delivers outbox messages and maps
Telegram's errors onto `care.outbox`'s; `webhook` serves webhook mode with `/healthz`;
`transport.AiohttpRequest` carries PTB's requests over aiohttp;
`runner` runs polling or webhook mode and stops gracefully on SIGTERM.
"""

import os

# python-telegram-bot 22 warns on every RetryAfter unless told to use timedelta; we handle both.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from bot.telegram.channel import TelegramChannel
from bot.telegram.front import TelegramFront, build_application
from bot.telegram.inbound import to_inbound
from bot.telegram.transport import make_bot

__all__ = ["TelegramChannel", "TelegramFront", "build_application", "make_bot", "to_inbound"]
