"""Fixtures for the bot's tests: the fake Bot API, and the whole bot running against it."""

from __future__ import annotations

import os

import pytest

# python-telegram-bot 22 warns on int retry_after unless told to use timedelta; with
# filterwarnings=error that warning would become an exception.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from tests.bot.harness import telegram_bot  # noqa: F401  (fixtures, used by name)
from tests.fakes.fixtures import fake_telegram  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    """Register `bot_settings`: Telegram settings the `telegram_bot` fixture should use."""
    config.addinivalue_line("markers", "bot_settings(**changes): telegram settings for the bot")
