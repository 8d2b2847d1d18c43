"""Fixtures for the bot's tests: the fake Bot API, and the whole bot running against it."""

from __future__ import annotations

import os

# python-telegram-bot 22 warns on int retry_after unless told to use timedelta; with
# filterwarnings=error that warning would become an exception.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from tests.bot.harness import telegram_bot  # noqa: F401  (fixtures, used by name)
from tests.fakes.fixtures import fake_telegram  # noqa: F401
