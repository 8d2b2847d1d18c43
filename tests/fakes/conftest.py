"""Fixtures for the tests of the fake Telegram Bot API itself."""

import os

# python-telegram-bot 22 warns on int retry_after unless it is told to use timedelta, and
# filterwarnings=error would turn building RetryAfter into a PTBDeprecationWarning.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from tests.fakes.fixtures import fake_telegram  # noqa: F401
