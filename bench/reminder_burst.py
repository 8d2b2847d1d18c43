"""Benchmark: 3,000 appointment reminders for 3,000 girls due in the same minute.

The whole road: scheduler jobs -> ConversationService.start_flow -> outbox -> OutboxSender ->
the real Telegram channel -> the fake Bot API enforcing 1/s per chat and 30/s overall with
429s. Escalations (critical outbox rows) are raised in the middle of the burst. The fake runs
in a child process (`RemoteFakeTelegram`), as the real Telegram is not in our process;
`--fake local` runs it in this process instead, where it takes a share of the CPU.

    .venv/bin/python bench/reminder_burst.py [--clients 3000] [--database-url URL]
                                             [--fake remote|local]

Prints messages/s as a share of the 30/s limit (target >= 0.9), 429s received (target 0),
lost and duplicated reminders (target 0), and the p99 delay of an escalation raised during
the burst (target < 2 s) next to the same delay on an idle system (the baseline of this run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("PTB_TIMEDELTA", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from bot.telegram import TelegramChannel, make_bot
from care.context import Care
from care.conversation import ConversationService
from care.crypto import keyring_from_set, new_key_set
from care.db import make_engine, make_sessionmaker, upgrade
from care.flow_versions import FlowStore
from care.models import Client, OutboxMessage, OutboxPriority, Worker
from care.outbox import OutboxSender, enqueue
from care.settings import DEFAULT_CONFIG, load_settings
from care.vault import Vault
from reminders.appointments import create_appointment
from reminders.runtime import Reminders
from tests.fakes.remote import RemoteFakeTelegram
from tests.fakes.telegram_api import FakeTelegram
from tests.reminders.helpers import WORKER_CHAT, make_people

LIMIT = 30.0
LEAD = timedelta(seconds=45)  # set-up time before the reminders fall due
POLL = 0.05  # how often to look at the fake; arrival times come from its own stamps


class _NoNlu:
    async def understand(self, text: str, lang: str) -> Any:
        raise AssertionError("not used by reminders")

    def reads_here(self) -> bool:
        return True

    def understand_now(self, text: str, lang: str) -> Any:
        raise AssertionError("not used by reminders")


def _care(url: str) -> Care:
    settings = load_settings(DEFAULT_CONFIG, environ={})
    reminders = settings.reminders.model_copy(update={"appointment_offsets_hours": (2.0,)})
    settings = settings.model_copy(update={"reminders": reminders})
    keyring = keyring_from_set(new_key_set(), "bench keys")
    engine = make_engine(url)
    return Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))


def _book(care: Care, client_ids: list[int], worker_id: int, due: datetime) -> None:
    quiet_start = due + timedelta(hours=12)
    quiet = f"{quiet_start:%H}:00-{quiet_start + timedelta(hours=1):%H}:00"
    with care.sessions() as session, session.begin():
        worker = session.get(Worker, worker_id)
        assert worker is not None
        for client_id in client_ids:
            client = session.get(Client, client_id)
            assert client is not None
            client.timezone, client.quiet_hours = "UTC", quiet
            create_appointment(
                session, care, client, worker, due + timedelta(hours=2), "Kantoor", now=due - LEAD
            )


def _alert(care: Care, worker_id: int, text: str) -> None:
    with care.sessions() as session, session.begin():
        worker = session.get(Worker, worker_id)
        assert worker is not None
        enqueue(
            session,
            care.vault,
            worker,
            {"type": "text", "text": text},
            kind="escalation",
            priority=OutboxPriority.CRITICAL,
        )


async def _until(check: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Poll `check` (a blocking call to the fake) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(POLL)


async def _escalation_delays(
    care: Care,
    sender: OutboxSender,
    fake: FakeTelegram | RemoteFakeTelegram,
    worker_id: int,
    tag: str,
    count: int,
    gap: float,
) -> list[float]:
    raised: dict[str, float] = {}
    for i in range(count):
        text = f"ALARM {tag} {i}"
        await asyncio.to_thread(_alert, care, worker_id, text)
        raised[text] = time.perf_counter()
        sender.wake()
        await asyncio.sleep(gap)

    def arrived_all() -> bool:
        texts = {m.text for m in fake.sent(WORKER_CHAT)}
        return all(t in texts for t in raised)

    await _until(arrived_all, 60, "the escalations")
    arrived = {
        c.params.get("text"): c.at
        for c in fake.calls("sendMessage")
        if c.status == 200 and c.params.get("chat_id") == WORKER_CHAT
    }
    return [arrived[t] - raised[t] for t in raised]


async def _all_written(care: Care, clients: int) -> float:
    """When the jobs had written every reminder (as outbox rows)."""

    def count() -> int:
        with care.sessions() as session:
            return len(
                session.scalars(
                    select(OutboxMessage.id).where(OutboxMessage.kind != "escalation")
                ).all()
            )

    while await asyncio.to_thread(count) < clients:  # noqa: ASYNC110 (another process's rows)
        await asyncio.sleep(0.5)
    return time.perf_counter()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def run(clients: int, url: str, fake_kind: str) -> None:
    """Set up, run the burst, print the figures."""
    care = _care(url)
    started = time.perf_counter()
    people = make_people(care, clients=clients, timezone="UTC")
    due = datetime.now(UTC) + LEAD
    _book(care, people.client_ids, people.worker_id, due)
    print(f"set-up: {clients} clients and appointments in {time.perf_counter() - started:.1f} s")

    with RemoteFakeTelegram() if fake_kind == "remote" else FakeTelegram() as fake:
        fake.enforce_rate_limits(per_chat=1, overall=int(LIMIT))
        bot = make_bot(fake.token, fake.base_url)
        await bot.initialize()
        service = ConversationService(care, FlowStore(care.sessions), _NoNlu())
        sender = OutboxSender(care, TelegramChannel(bot))
        service.set_wake(sender.wake)
        await sender.start()
        baseline = await _escalation_delays(care, sender, fake, people.worker_id, "idle", 5, 1.2)
        reminders = Reminders(care, service)
        assert await reminders.start()
        wait = (due - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(wait, 0) + 1)
        before_429 = fake.stats.rate_limited
        burst_began = time.perf_counter()
        produced = asyncio.create_task(_all_written(care, clients))
        # Escalations in the middle of the burst (it lasts about clients / 30 s).
        await asyncio.sleep(min(20.0, clients / LIMIT / 4))
        during = await _escalation_delays(care, sender, fake, people.worker_id, "burst", 20, 1.5)
        expected = clients + 5 + 20  # the reminders and the escalations
        await _until(
            lambda: fake.stats.messages_accepted >= expected,
            clients / LIMIT * 3 + 60,
            "the reminders",
        )
        written_after = await produced
        await reminders.stop()
        await sender.stop()
        await bot.shutdown()

        reminder_calls = [
            c
            for c in fake.calls("sendMessage")
            if c.status == 200 and c.params.get("chat_id") != WORKER_CHAT
        ]
        span = reminder_calls[-1].at - reminder_calls[0].at
        rate = (len(reminder_calls) - 1) / span if span > 0 else float("nan")
        counted = collections.Counter(c.params.get("chat_id") for c in reminder_calls)
        per_chat = [counted[10_000 + c] for c in range(clients)]
        lost = sum(1 for n in per_chat if n == 0)
        doubled = sum(1 for n in per_chat if n > 1)
        print(f"reminders delivered: {len(reminder_calls)} of {clients} in {span:.1f} s")
        print(
            f"messages/s: {rate:.1f} = {rate / LIMIT:.2f} of the {LIMIT:.0f}/s limit "
            "(target >= 0.9)"
        )
        print(
            f"429s received: {fake.stats.rate_limited} (during the burst: "
            f"{fake.stats.rate_limited - before_429}; target 0)"
        )
        print(f"lost: {lost}, duplicated: {doubled} (target 0 and 0)")
        print(
            f"the scheduler had written all {clients} reminders to the outbox "
            f"{written_after - burst_began:.1f} s after they fell due (jobs -> start_flow)"
        )
        print(
            f"escalation delay p99: {_p99(during):.2f} s during the burst (target < 2 s), "
            f"{_p99(baseline):.2f} s idle (baseline); ratio {_p99(during) / _p99(baseline):.1f}x; "
            f"median {statistics.median(during):.2f} s"
        )
    care.close()


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--fake", choices=("remote", "local"), default="remote")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        asyncio.run(run(args.clients, url, args.fake))


if __name__ == "__main__":
    main()
