"""Pytest fixture for the fake Telegram Bot API.

Use it from any test package by importing it into that package's ``conftest.py``::

    from tests.fakes.fixtures import fake_telegram  # noqa: F401  (a fixture, used by name)

and set ``PTB_TIMEDELTA=true`` there too (see ``tests/fakes/telegram_api.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.telegram_api import FakeTelegram


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A running fake Bot API; the test fails if a request crashed the fake."""
    with FakeTelegram() as fake:
        yield fake
    assert not fake.internal_errors, "the fake Telegram server crashed:\n" + "\n".join(
        fake.internal_errors
    )
