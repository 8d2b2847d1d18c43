"""Kill the sending process (SIGKILL) at random points of a burst of 500 reminders, restart it,
several times; then check what reached the fake Telegram.

What can be promised, and is checked here: no reminder arrives twice; every reminder the outbox
marked as sent arrived exactly once; nothing is left unsent. A SIGKILL can land after Telegram
accepted a message and before its row was marked: such a row is found "in flight" afterwards,
is not repeated (it may have arrived) and is recorded as "unconfirmed" for her worker. So is a
row the sender had marked in flight ahead of its turn at the rate limit and not yet sent. There
can be at most `max_in_flight` of those per kill. A dropped connection is the same case.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from care.context import Care
from care.crypto import keyring_from_set, new_key_set
from care.db import make_engine, make_sessionmaker
from care.models import Client, OutboxMessage, OutboxPriority, OutboxStatus
from care.outbox import UNCONFIRMED, enqueue
from care.settings import Settings
from care.vault import Vault
from tests.fakes.telegram_api import FakeTelegram
from tests.faults.child import OPTIONS
from tests.reminders.helpers import make_people

ROOT = Path(__file__).resolve().parents[2]
BURST = 500
KILLS = 4

pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server
    assert not server.internal_errors


def _burst(database_url: str, settings: Settings, key_set: dict[str, object]) -> Care:
    keyring = keyring_from_set(key_set, "test keys")
    engine = make_engine(database_url)
    care = Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))
    people = make_people(care, clients=BURST)
    with care.sessions() as session, session.begin():
        for i, client_id in enumerate(people.client_ids):
            client = session.get(Client, client_id)
            assert client is not None
            enqueue(
                session,
                care.vault,
                client,
                {"type": "text", "text": f"herinnering {i}"},
                kind="appointment_reminder",
                priority=OutboxPriority.REMINDER,
                dedupe_key=f"appt:{i}:120",
            )
    return care


def _spawn(
    database_url: str, key_set: dict[str, object], fake: FakeTelegram
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "AFTERCARE_DATABASE_URL": database_url,
        "AFTERCARE_KEYS": json.dumps(key_set),
        "FAKE_BASE_URL": fake.base_url,
        "FAKE_TOKEN": fake.token,
        "PTB_TIMEDELTA": "true",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.child"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def _reap(child: subprocess.Popen[str]) -> None:
    child.wait(timeout=30)
    if child.stdout is not None:
        child.stdout.close()


def _open_rows(care: Care) -> int:
    with care.sessions() as session:
        return len(
            session.scalars(
                select(OutboxMessage.id).where(
                    OutboxMessage.status.in_((OutboxStatus.PENDING, OutboxStatus.SENDING))
                )
            ).all()
        )


def _run(database_url: str, settings: Settings, fake: FakeTelegram, faults: bool) -> None:
    key_set = new_key_set()
    care = _burst(database_url, settings, key_set)
    rng = random.Random()
    fake.enforce_rate_limits(per_chat=1, overall=30)
    drops = 0
    if faults:
        fake.fail_next("sendMessage", 500, times=6)
        fake.fail_next("sendMessage", 502, times=3)
        fake.fail_next("sendMessage", 429, retry_after=1, times=2)
        fake.drop_next("sendMessage", times=2)
        fake.drop_next("sendMessage", after=True, times=2)
        drops = 4
    landed: list[int] = []
    try:
        for _ in range(KILLS):
            child = _spawn(database_url, key_set, fake)
            target = fake.stats.messages_accepted + rng.randint(15, 80)
            fake.wait_for(lambda t=target: fake.stats.messages_accepted >= t, timeout=60)  # type: ignore[misc]
            time.sleep(rng.uniform(0, 0.3))
            child.send_signal(signal.SIGKILL)
            _reap(child)
            landed.append(fake.stats.messages_accepted)
        child = _spawn(database_url, key_set, fake)
        deadline = time.monotonic() + 120
        while _open_rows(care) and time.monotonic() < deadline:
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        _reap(child)
        assert _open_rows(care) == 0, "rows were left unsent"

        # Each kill landed in the middle of the burst: some, not all, had been delivered.
        assert all(0 < n < BURST for n in landed), landed
        assert landed == sorted(landed) and len(set(landed)) == KILLS

        assert fake.duplicates() == {}
        with care.sessions() as session:
            rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        unconfirmed = lost = 0
        for i, row in enumerate(rows):
            arrived = fake.count_sent(10_000 + i, f"herinnering {i}")
            assert row.status is OutboxStatus.SENT, (row.id, row.status, row.last_error)
            if row.last_error == UNCONFIRMED:
                unconfirmed += 1
                lost += arrived == 0
                assert arrived <= 1
            else:
                assert arrived == 1, (row.id, arrived)
        assert unconfirmed <= KILLS * OPTIONS.max_in_flight + drops
        print(f"kills landed at {landed}; unconfirmed rows: {unconfirmed}, of which lost: {lost}")
    finally:
        care.close()


def test_sigkill_during_a_burst_loses_and_doubles_nothing(
    database_url: str, settings: Settings, fake: FakeTelegram
) -> None:
    _run(database_url, settings, fake, faults=False)


def test_the_same_with_429_5xx_and_dropped_connections(
    database_url: str, settings: Settings, fake: FakeTelegram
) -> None:
    _run(database_url, settings, fake, faults=True)
