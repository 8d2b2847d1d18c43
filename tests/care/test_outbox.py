"""The outbox sender: priority, order per person, exactly once, limits, faults and recovery.

Every test runs on SQLite and PostgreSQL (`care_ctx`). The channel is a fake that records what
it was asked to deliver and raises scripted channel errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, event, select, update
from sqlalchemy.orm import Session

from care.clock import FakeClock
from care.context import Care
from care.db import savepoint
from care.directory import erase_client
from care.models import (
    ChatMessage,
    Client,
    OutboxMessage,
    OutboxPriority,
    OutboxStatus,
    Worker,
)
from care.outbox import (
    IN_FLIGHT,
    SKIP_EXPIRED,
    UNCONFIRMED,
    MaybeDelivered,
    OutboxSender,
    Outgoing,
    PermanentError,
    RateLimited,
    SenderOptions,
    TransientError,
    Unreachable,
    _GroupCommit,
    carry_riders,
    collecting,
    enqueue,
    ride_along,
    run_riders,
    skipped_sends,
    take_deletable,
    write,
)
from care.settings import RateLimits
from tests.reminders.helpers import FakeChannel, People, make_people

FAST = SenderOptions(poll_seconds=0.05, backoff_base_seconds=0.05, claim_seconds=5)


def fast_limits(care: Care, per_chat: float = 30.0, overall: float = 200.0) -> None:
    """Raise the rate limits so that tests about other things run quickly."""
    telegram = care.settings.telegram.model_copy(
        update={"rate_limits": RateLimits(per_chat_per_second=per_chat, overall_per_second=overall)}
    )
    care.settings = care.settings.model_copy(update={"telegram": telegram})


def put(
    care: Care,
    to: tuple[str, int],
    text: str,
    priority: OutboxPriority = OutboxPriority.REPLY,
    **kwargs: object,
) -> int:
    """Enqueue a text message and commit; returns the outbox id."""
    with care.sessions() as session, session.begin():
        person: Client | Worker | None = (
            session.get(Client, to[1]) if to[0] == "client" else session.get(Worker, to[1])
        )
        assert person is not None
        row = enqueue(
            session,
            care.vault,
            person,
            {"type": "text", "text": text},
            kind="test",
            priority=priority,
            **kwargs,  # type: ignore[arg-type]
        )
        session.flush()
        return row.id


def row(care: Care, row_id: int) -> OutboxMessage:
    with care.sessions() as session:
        found = session.get(OutboxMessage, row_id)
        assert found is not None
        return found


@pytest.fixture
def people(care_ctx: Care) -> People:
    return make_people(care_ctx, clients=4)


async def run_until_idle(sender: OutboxSender, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Run the sender until no row is pending or being sent (retries included)."""
    await sender.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert await sender.idle(timeout), "the sender did not finish in time"
            with sender.care.sessions() as session:
                open_rows = session.scalars(
                    select(OutboxMessage.id).where(
                        OutboxMessage.status.in_((OutboxStatus.PENDING, OutboxStatus.SENDING))
                    )
                ).all()
            if not open_rows:
                return
            assert time.monotonic() < deadline, "rows were left unsent"
            await asyncio.sleep(0.05)
    finally:
        await sender.stop(flush=False)


@contextlib.asynccontextmanager
async def stopping(sender: OutboxSender, *, flush: bool = True) -> AsyncIterator[OutboxSender]:
    """Stop the sender when the block ends, also when an assertion in it fails: left running,
    it would go on sending into the next test. A sender the block stopped itself, or one that
    never started, is left as it is (its `stop` then does nothing). `flush` as for `stop`;
    after a failure nothing is flushed, so that a stuck sender does not hold up the report."""
    failed = True
    try:
        yield sender
        failed = False
    finally:
        await sender.stop(flush=flush and not failed)


async def test_critical_then_replies_then_notices_then_reminders(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    c = people.client_ids
    reminder = put(care_ctx, ("client", c[0]), "reminder", OutboxPriority.REMINDER)
    notice = put(care_ctx, ("worker", people.worker_id), "notice", OutboxPriority.NOTICE)
    reply = put(care_ctx, ("client", c[1]), "reply", OutboxPriority.REPLY)
    critical = put(care_ctx, ("client", c[2]), "alert", OutboxPriority.CRITICAL)
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=SenderOptions(max_in_flight=1))
    await run_until_idle(sender)
    assert channel.delivered_ids() == [critical, reply, notice, reminder]
    assert [m.critical for _, m in channel.deliveries] == [True, False, False, False]


async def test_each_row_is_sent_once_and_recorded(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx)
    to_client = put(care_ctx, ("client", people.client_ids[0]), "hoi")
    to_worker = put(care_ctx, ("worker", people.worker_id), "let op")
    channel = FakeChannel()
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))  # a second run: nothing
    assert sorted(channel.delivered_ids()) == [to_client, to_worker]
    sent = {m.outbox_id: m for _, m in channel.deliveries}
    assert sent[to_client].chat_id == people.chat_of_client(0)
    assert sent[to_client].text == "hoi" and sent[to_client].protect_content
    for row_id in (to_client, to_worker):
        done = row(care_ctx, row_id)
        assert done.status is OutboxStatus.SENT
        assert done.sent_at is not None and done.channel_message_id is not None
        assert done.attempts == 1 and done.last_error is None
    with care_ctx.sessions() as session:
        bot_messages = session.scalars(select(ChatMessage)).all()
    # Only her chat keeps the ids (for wipe); the worker's chat is not hers to wipe.
    assert [(m.client_id, m.from_bot) for m in bot_messages] == [(people.client_ids[0], True)]
    assert bot_messages[0].message_id == row(care_ctx, to_client).channel_message_id


async def test_one_person_gets_her_messages_in_order_and_at_most_one_a_second(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx, per_chat=2.0)
    her = ("client", people.client_ids[0])
    ids = [put(care_ctx, her, f"deel {i}") for i in range(3)]
    other = put(care_ctx, ("client", people.client_ids[1]), "ander")
    channel = FakeChannel()
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    to_her = [(t, m.outbox_id) for t, m in channel.deliveries if m.outbox_id in ids]
    assert [i for _, i in to_her] == ids
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(to_her)]
    assert min(gaps) >= 0.45  # 2 per second, with headroom
    # Another person does not wait behind her.
    assert channel.delivered_ids().index(other) < 2


async def test_overall_rate_stays_inside_the_limit(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx, per_chat=30.0, overall=20.0)
    for i in range(30):
        put(care_ctx, ("client", people.client_ids[i % 4]), f"m{i}")
    channel = FakeChannel()
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST), timeout=15)
    stamps = [t for t, _ in channel.deliveries]
    assert len(stamps) == 30
    # In no window of one second more than 20 went out.
    for i, start in enumerate(stamps):
        assert sum(1 for t in stamps[i:] if t < start + 1.0) <= 20
    assert stamps[-1] - stamps[0] >= 29 / 20 * 0.95


async def test_an_expired_row_is_never_sent_and_recorded_as_skipped(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    clock = FakeClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    her = people.client_ids[0]
    late = put(
        care_ctx,
        ("client", her),
        "reminder",
        OutboxPriority.REMINDER,
        dedupe_key="appt:1:2",
        not_before=clock.now() - timedelta(hours=3),
        expires_at=clock.now() - timedelta(minutes=1),
    )
    channel = FakeChannel()
    await run_until_idle(OutboxSender(care_ctx, channel, clock, options=FAST))
    assert channel.deliveries == []
    assert row(care_ctx, late).status is OutboxStatus.CANCELLED
    with care_ctx.sessions() as session:
        skips = skipped_sends(session, her)
    assert [(s.reason, s.ref) for s in skips] == [("expired", "appt:1:2")]


async def test_a_passing_fault_is_retried_with_backoff_and_sent_once(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    row_id = put(care_ctx, ("client", people.client_ids[0]), "hoi")
    channel = FakeChannel(fail={row_id: [TransientError("502"), TransientError("reset")]})
    started = time.monotonic()
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    sender = OutboxSender(care_ctx, channel, options=FAST)
    await sender.start()
    async with stopping(sender):
        await channel.wait_for(1)
    assert channel.attempts == [row_id] * 3
    assert channel.delivered_ids() == [row_id]
    done = row(care_ctx, row_id)
    assert done.status is OutboxStatus.SENT and done.attempts == 3
    assert time.monotonic() - started >= 0.05 * 0.5 + 0.1 * 0.5


async def test_a_message_held_for_later_does_not_hold_up_what_is_due_now(
    care_ctx: Care, people: People
) -> None:
    """Her worker's message waits for the end of her quiet hours; when she writes meanwhile,
    the replies to her go at once (the held one never was tried, so nothing is out of
    order)."""
    fast_limits(care_ctx)
    her = ("client", people.client_ids[0])
    held = put(care_ctx, her, "morgen", not_before=datetime.now(UTC) + timedelta(hours=8))
    reply = put(care_ctx, her, "nu")
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=FAST)
    await sender.start()
    async with stopping(sender):
        await channel.wait_for(1)
    assert channel.delivered_ids() == [reply]
    assert row(care_ctx, held).status is OutboxStatus.PENDING


async def test_a_message_waiting_to_be_tried_again_keeps_hers_behind_it_in_order(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    her = ("client", people.client_ids[0])
    first = put(care_ctx, her, "eerst")
    with care_ctx.sessions.begin() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == first)
            .values(attempts=1, not_before=datetime.now(UTC) + timedelta(seconds=0.6))
        )
    second = put(care_ctx, her, "daarna")
    channel = FakeChannel()
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.delivered_ids() == [first, second]


async def test_the_error_code_is_kept_never_the_text(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx)
    row_id = put(care_ctx, ("client", people.client_ids[0]), "hoi")
    channel = FakeChannel(fail={row_id: [TransientError("secret detail 12345")]})
    sender = OutboxSender(
        care_ctx, channel, options=SenderOptions(poll_seconds=0.05, backoff_base_seconds=30)
    )
    await sender.start()
    async with stopping(sender, flush=False):
        await asyncio.sleep(0.4)
    waiting = row(care_ctx, row_id)
    assert waiting.status is OutboxStatus.PENDING
    assert waiting.last_error == "transient" and waiting.attempts == 1
    assert waiting.not_before > datetime.now(UTC) + timedelta(seconds=10)


async def test_rate_limited_pauses_everything_for_retry_after(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    first = put(care_ctx, ("client", people.client_ids[0]), "een")
    second = put(care_ctx, ("client", people.client_ids[1]), "twee")
    channel = FakeChannel(fail={first: [RateLimited(1.0)]})
    sender = OutboxSender(care_ctx, channel, options=dataclasses.replace(FAST, max_in_flight=1))
    started = time.monotonic()
    await run_until_idle(sender)
    times = {m.outbox_id: t - started for t, m in channel.deliveries}
    assert set(times) == {first, second}
    assert min(times.values()) >= 0.95  # nothing went out during the pause
    assert row(care_ctx, first).attempts == 1  # a 429 is not a failed attempt


async def test_a_chat_limit_pauses_only_that_person(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx)
    first = put(care_ctx, ("client", people.client_ids[0]), "een")
    second = put(care_ctx, ("client", people.client_ids[1]), "twee")
    channel = FakeChannel(fail={first: [RateLimited(1.0, scope="chat")]})
    started = time.monotonic()
    sender = OutboxSender(care_ctx, channel, options=dataclasses.replace(FAST, max_in_flight=1))
    await sender.start()
    async with stopping(sender):
        await channel.wait_for(2)
    times = {m.outbox_id: t - started for t, m in channel.deliveries}
    assert times[second] < 0.5 <= 0.95 <= times[first]


async def test_maybe_delivered_is_not_repeated_for_ordinary_messages(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    her = people.client_ids[0]
    ordinary = put(care_ctx, ("client", her), "hoi", OutboxPriority.REMINDER, dedupe_key="r:1")
    alert = put(care_ctx, ("worker", people.worker_id), "ALARM", OutboxPriority.CRITICAL)
    channel = FakeChannel(fail={ordinary: [MaybeDelivered()], alert: [MaybeDelivered()]})
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.attempts.count(ordinary) == 1
    assert channel.attempts.count(alert) == 2  # a double alert beats a lost one
    assert channel.delivered_ids() == [alert]
    unsure = row(care_ctx, ordinary)
    assert unsure.status is OutboxStatus.SENT and unsure.last_error == UNCONFIRMED
    with care_ctx.sessions() as session:
        assert [s.reason for s in skipped_sends(session, her)] == ["unconfirmed"]


async def test_blocked_marks_her_unreachable_and_tells_her_worker(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    her = people.client_ids[0]
    first = put(care_ctx, ("client", her), "een")
    later = put(care_ctx, ("client", her), "twee")
    channel = FakeChannel(fail={first: [Unreachable()]})
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert first not in channel.delivered_ids() and later not in channel.delivered_ids()
    notices = [m for _, m in channel.deliveries]
    assert len(notices) == 1 and notices[0].recipient_kind == "worker"
    assert "roos-0" in notices[0].text
    with care_ctx.sessions() as session:
        assert session.get(Client, her).unreachable  # type: ignore[union-attr]
        assert session.get(OutboxMessage, later).status is OutboxStatus.CANCELLED  # type: ignore[union-attr]
    # Nothing more goes to her, and nothing is retried.
    put(care_ctx, ("client", her), "drie")
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.attempts.count(first) == 1 and len(channel.deliveries) == 1


async def test_a_permanent_error_is_not_retried(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx)
    row_id = put(care_ctx, ("client", people.client_ids[0]), "hoi")
    channel = FakeChannel(fail={row_id: [PermanentError("400")]})
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.attempts == [row_id]
    failed = row(care_ctx, row_id)
    assert (failed.status, failed.last_error) == (OutboxStatus.FAILED, "permanent")


async def test_a_restarted_sender_takes_over_expired_claims(care_ctx: Care, people: People) -> None:
    """A sender died: rows it only claimed are sent; a row it was sending is not repeated,
    unless it is a critical alert."""
    fast_limits(care_ctx)
    her = people.client_ids
    claimed = put(care_ctx, ("client", her[0]), "claimed only")
    in_flight = put(care_ctx, ("client", her[1]), "was on its way", OutboxPriority.REMINDER)
    alert = put(care_ctx, ("worker", people.worker_id), "ALARM", OutboxPriority.CRITICAL)
    fresh_claim = put(care_ctx, ("client", her[2]), "claimed by a live sender")
    past = datetime.now(UTC) - timedelta(seconds=1)
    with care_ctx.sessions() as session, session.begin():
        for row_id in (claimed, in_flight, alert, fresh_claim):
            r = session.get(OutboxMessage, row_id)
            assert r is not None
            r.status = OutboxStatus.SENDING
            r.claimed_by = "dead-sender"
            r.claimed_until = past
            if row_id in (in_flight, alert):
                r.last_error = IN_FLIGHT
                r.attempts = 1
            if row_id == fresh_claim:
                r.claimed_by = "live-sender"
                r.claimed_until = datetime.now(UTC) + timedelta(minutes=5)
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=FAST)
    await sender.start()
    async with stopping(sender, flush=False):
        await channel.wait_for(2)
        await asyncio.sleep(0.3)
    assert sorted(channel.delivered_ids()) == sorted([claimed, alert])
    assert row(care_ctx, in_flight).last_error == UNCONFIRMED
    assert row(care_ctx, fresh_claim).status is OutboxStatus.SENDING  # not ours to take


async def test_two_senders_deliver_every_row_exactly_once(care_ctx: Care) -> None:
    fast_limits(care_ctx, per_chat=30.0, overall=400.0)
    people = make_people(care_ctx, clients=40)
    ids = [put(care_ctx, ("client", c), f"m{c}-{k}") for k in range(3) for c in people.client_ids]
    channel = FakeChannel(delay=0.002)
    options = SenderOptions(poll_seconds=0.02, batch_size=15, max_in_flight=4)
    one, two = (
        OutboxSender(care_ctx, channel, options=options),
        OutboxSender(care_ctx, channel, options=options),
    )
    # Started inside the block: should the second fail to start, the first is still stopped.
    async with stopping(one), stopping(two):
        await one.start()
        await two.start()
        await channel.wait_for(len(ids), timeout=30)
    assert sorted(channel.delivered_ids()) == sorted(ids)
    # Order per person held even with two senders.
    for c in people.client_ids:
        mine = [m.outbox_id for _, m in channel.deliveries if m.recipient_id == c]
        assert mine == sorted(mine)
    assert one.sent_count > 0 and two.sent_count > 0


async def _waiting_sender(care: Care, channel: FakeChannel) -> OutboxSender:
    """A started sender, its claim at start over, that looks for rows only when woken or
    handed them (it polls every 30 s); the rate limits are raised."""
    fast_limits(care)
    sender = OutboxSender(care, channel, options=SenderOptions(poll_seconds=30))
    await sender.start()
    await asyncio.sleep(0.1)
    return sender


async def test_wake_sends_a_reply_at_once(care_ctx: Care, people: People) -> None:
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        put(care_ctx, ("client", people.client_ids[0]), "antwoord")
        woken = time.monotonic()
        sender.wake()
        await channel.wait_for(1, timeout=2)
    assert channel.deliveries[0][0] - woken < 0.5


async def test_an_alert_overtakes_a_full_queue_of_reminders(care_ctx: Care) -> None:
    fast_limits(care_ctx, per_chat=10.0, overall=20.0)
    people = make_people(care_ctx, clients=60)
    for c in people.client_ids:
        put(care_ctx, ("client", c), "reminder", OutboxPriority.REMINDER)
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=SenderOptions(poll_seconds=5, batch_size=40))
    await sender.start()
    async with stopping(sender):
        await channel.wait_for(5)
        alert = put(care_ctx, ("worker", people.worker_id), "ALARM", OutboxPriority.CRITICAL)
        raised = time.monotonic()
        sender.wake()
        await channel.wait_for(len(people.client_ids) + 1, timeout=20)
    at = channel.delivered_ids().index(alert)
    assert channel.deliveries[at][0] - raised < 0.5
    assert at < 5 + 5  # it did not wait behind the batch already claimed


async def test_an_erased_client_gets_nothing(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx)
    her = people.client_ids[0]
    row_id = put(care_ctx, ("client", her), "hoi")
    with care_ctx.sessions() as session, session.begin():
        erase_client(session, care_ctx.vault, session.get(Client, her), "test")  # type: ignore[arg-type]
    channel = FakeChannel()
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.attempts == []
    assert row(care_ctx, row_id).status is OutboxStatus.CANCELLED


async def test_stop_hands_back_claimed_rows(care_ctx: Care) -> None:
    fast_limits(care_ctx, per_chat=10.0, overall=5.0)
    people = make_people(care_ctx, clients=20)
    ids = [put(care_ctx, ("client", c), "m") for c in people.client_ids]
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=FAST)
    await sender.start()
    async with stopping(sender, flush=False):  # what follows reads what the stop handed back
        await channel.wait_for(2)
    with care_ctx.sessions() as session:
        statuses = {r.id: r.status for r in session.scalars(select(OutboxMessage)) if r.id in ids}
    sent = set(channel.delivered_ids())
    assert all(statuses[i] is OutboxStatus.SENT for i in sent)
    assert all(statuses[i] is OutboxStatus.PENDING for i in set(ids) - sent)
    assert len(sent) < len(ids)
    # Rows marked in flight ahead of their turn but never sent go back as they were.
    for row_id in set(ids) - sent:
        back = row(care_ctx, row_id)
        assert (back.attempts, back.last_error, back.claimed_by) == (0, None, None)


async def test_the_in_flight_mark_is_committed_before_the_channel_sees_a_message(
    care_ctx: Care,
) -> None:
    fast_limits(care_ctx, per_chat=30.0, overall=400.0)
    people = make_people(care_ctx, clients=12)
    ids = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids]
    seen: dict[int, tuple[str | None, int]] = {}

    def check(message: Outgoing) -> None:
        # A fresh session sees only what was committed.
        stored = row(care_ctx, message.outbox_id)
        seen[message.outbox_id] = (stored.last_error, stored.attempts)

    channel = FakeChannel(delay=0.01, hook=check)
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert seen == {row_id: (IN_FLIGHT, 1) for row_id in ids}


@pytest.fixture
def commits(care_ctx: Care) -> Iterator[list[str]]:
    """The names of the threads that committed a transaction, one entry per commit (an
    autocommitted statement is a commit of its own)."""
    names: list[str] = []

    def count(_connection: object) -> None:
        names.append(threading.current_thread().name)

    def count_autocommitted(connection: Connection, *_: object) -> None:
        if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            names.append(threading.current_thread().name)

    event.listen(care_ctx.engine, "commit", count)
    event.listen(care_ctx.engine, "after_cursor_execute", count_autocommitted)
    yield names
    event.remove(care_ctx.engine, "commit", count)
    event.remove(care_ctx.engine, "after_cursor_execute", count_autocommitted)


async def test_the_marks_of_many_deliveries_share_commits(
    care_ctx: Care, commits: list[str]
) -> None:
    fast_limits(care_ctx, per_chat=30.0, overall=400.0)
    people = make_people(care_ctx, clients=40)
    ids = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids]
    commits.clear()
    channel = FakeChannel(delay=0.05)
    options = dataclasses.replace(FAST, ready_ahead=16, max_in_flight=16)
    await run_until_idle(OutboxSender(care_ctx, channel, options=options))
    assert sorted(channel.delivered_ids()) == ids
    marks = [name for name in commits if name.startswith("outbox-commit")]
    # One by one it would take two commits per message (in flight, then sent).
    assert 0 < len(marks) <= len(ids) / 2
    for row_id in ids:
        assert row(care_ctx, row_id).status is OutboxStatus.SENT


async def test_a_failing_job_does_not_hold_up_the_others_in_its_batch(
    care_ctx: Care, people: People
) -> None:
    """A batch that fails is run again one job at a time: the good jobs commit, the bad one
    reports its own error to its caller only."""
    rows = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids[:3]]

    def mark(row_id: int) -> Any:
        def job(session: Session) -> int:
            session.execute(
                update(OutboxMessage).where(OutboxMessage.id == row_id).values(last_error="done")
            )
            if row_id == rows[1]:
                raise ValueError("this row cannot be written")
            return row_id

        return job

    writer = _GroupCommit(care_ctx.sessions, max_batch=10)
    outcomes = await asyncio.gather(*(writer.run(mark(r)) for r in rows), return_exceptions=True)
    await writer.close()
    assert outcomes[0] == rows[0] and outcomes[2] == rows[2]
    assert isinstance(outcomes[1], ValueError)
    assert [row(care_ctx, r).last_error for r in rows] == ["done", None, "done"]
    assert writer.commits == 2  # the two good jobs, each on its own after the batch failed


async def test_a_batch_of_good_jobs_is_one_commit(care_ctx: Care, people: People) -> None:
    rows = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids]

    def mark(row_id: int) -> Any:
        def job(session: Session) -> None:
            session.execute(
                update(OutboxMessage).where(OutboxMessage.id == row_id).values(last_error="done")
            )

        return job

    writer = _GroupCommit(care_ctx.sessions, max_batch=10)
    await asyncio.gather(*(writer.run(mark(r)) for r in rows))
    await writer.close()
    assert writer.commits == 1
    assert all(row(care_ctx, r).last_error == "done" for r in rows)


async def test_jobs_of_one_kind_run_together_and_each_gets_its_own_answer(
    care_ctx: Care, people: People
) -> None:
    """`together`: the jobs of one kind in a batch are one call (one statement); a plain job
    in the same batch runs in its place; when the batch fails, each runs alone."""
    rows = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids[:3]]
    calls: list[list[int]] = []

    def mark_all(session: Session, row_ids: list[int]) -> list[int]:
        calls.append(row_ids)
        if len(row_ids) == 1 and row_ids[0] == rows[1]:
            raise ValueError("this row cannot be written")
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(row_ids)).values(last_error="done")
        )
        if rows[1] in row_ids:
            raise ValueError("the batch holds a row that cannot be written")
        return [row_id * 10 for row_id in row_ids]

    def plain(session: Session) -> str:
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id == rows[2]).values(kind="plain")
        )
        return "plain"

    writer = _GroupCommit(care_ctx.sessions, max_batch=10)
    good = await asyncio.gather(
        writer.together(mark_all, rows[0]), writer.run(plain), writer.together(mark_all, rows[2])
    )
    assert good == [rows[0] * 10, "plain", rows[2] * 10]
    assert calls == [[rows[0], rows[2]]], "one call for both"
    assert writer.commits == 1
    calls.clear()
    outcomes = await asyncio.gather(
        *(writer.together(mark_all, r) for r in rows), return_exceptions=True
    )
    await writer.close()
    assert calls == [rows, [rows[0]], [rows[1]], [rows[2]]], "together, then one by one"
    assert outcomes[0] == rows[0] * 10 and outcomes[2] == rows[2] * 10
    assert isinstance(outcomes[1], ValueError)
    assert [row(care_ctx, r).last_error for r in rows] == ["done", None, "done"]
    assert row(care_ctx, rows[2]).kind == "plain"


async def test_a_batch_of_one_kind_alone_is_its_one_autocommitted_statement(
    care_ctx: Care, people: People
) -> None:
    """`alone`: a batch made only of jobs whose kinds have a single statement is those
    statements, one for each kind, run outside a transaction; with a plain job beside them,
    or when a statement fails, the kinds' `run` does the work in a transaction as before."""
    rows = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids[:3]]
    ran: list[tuple[str, list[int]]] = []

    def mark_all(session: Session, row_ids: list[int]) -> list[str]:
        ran.append(("in a transaction", row_ids))
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(row_ids)).values(last_error="tx")
        )
        return ["tx"] * len(row_ids)

    def mark_alone(connection: Connection, row_ids: list[int]) -> list[str]:
        ran.append(("alone", row_ids))
        if rows[1] in row_ids:
            raise ValueError("this statement fails")
        connection.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(row_ids)).values(last_error="alone")
        )
        return ["alone"] * len(row_ids)

    def autocommit() -> Connection:
        return care_ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def plain(session: Session) -> str:
        return "plain"

    def kind_all(session: Session, row_ids: list[int]) -> list[str]:
        ran.append(("other kind in a transaction", row_ids))
        return ["other tx"] * len(row_ids)

    def kind_alone(connection: Connection, row_ids: list[int]) -> list[str]:
        ran.append(("other kind alone", row_ids))
        connection.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(row_ids)).values(kind="other")
        )
        return ["other alone"] * len(row_ids)

    writer = _GroupCommit(care_ctx.sessions, max_batch=10, autocommit=autocommit)
    both = await asyncio.gather(*(writer.together(mark_all, r, mark_alone) for r in rows[::2]))
    assert both == ["alone", "alone"]
    assert ran == [("alone", rows[::2])]
    assert [row(care_ctx, r).last_error for r in rows] == ["alone", None, "alone"]
    ran.clear()
    kinds = await asyncio.gather(
        writer.together(kind_all, rows[2], kind_alone),
        writer.together(mark_all, rows[0], mark_alone),
    )
    assert kinds == ["other alone", "alone"]
    assert ran == [("other kind alone", [rows[2]]), ("alone", [rows[0]])], "in the order they came"
    assert row(care_ctx, rows[2]).kind == "other"
    ran.clear()
    failing = await asyncio.gather(
        writer.together(mark_all, rows[1], mark_alone),
        writer.together(kind_all, rows[0], kind_alone),
    )
    assert failing == ["tx", "other tx"]
    assert ran == [
        ("alone", [rows[1]]),
        ("in a transaction", [rows[1]]),
        ("other kind in a transaction", [rows[0]]),
    ], "the kinds after a failed statement go to the transaction too"
    ran.clear()
    mixed = await asyncio.gather(writer.together(mark_all, rows[0], mark_alone), writer.run(plain))
    assert mixed == ["tx", "plain"]
    assert ran == [("in a transaction", [rows[0]])]
    ran.clear()
    failed = await writer.together(mark_all, rows[1], mark_alone)
    await writer.close()
    assert failed == "tx"
    assert ran == [("alone", [rows[1]]), ("in a transaction", [rows[1]])]
    assert row(care_ctx, rows[1]).last_error == "tx"
    assert writer.commits == 6


async def test_a_burst_of_deliveries_is_marked_in_a_few_statements(care_ctx: Care) -> None:
    """The marks of deliveries that wait for the same commit share their statements, and each
    row still gets its own message id, recorded in her chat for wipe."""
    fast_limits(care_ctx, per_chat=30.0, overall=400.0)
    people = make_people(care_ctx, clients=40)
    ids = [put(care_ctx, ("client", c), "hoi") for c in people.client_ids]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if threading.current_thread().name.startswith("outbox-commit"):
            statements.append(statement)

    event.listen(care_ctx.engine, "before_cursor_execute", seen)
    try:
        channel = FakeChannel(delay=0.05)
        options = dataclasses.replace(FAST, ready_ahead=16, max_in_flight=16)
        await run_until_idle(OutboxSender(care_ctx, channel, options=options))
    finally:
        event.remove(care_ctx.engine, "before_cursor_execute", seen)
    assert sorted(channel.delivered_ids()) == ids
    updates = [s for s in statements if s.startswith("UPDATE outbox")]
    # One by one it would take two UPDATEs per message (in flight, then sent).
    assert 0 < len(updates) <= len(ids) / 2, len(updates)
    given = {m.outbox_id: 100 + n for n, (_, m) in enumerate(channel.deliveries)}
    with care_ctx.sessions() as session:
        recorded = {
            c: m for c, m in session.execute(select(ChatMessage.client_id, ChatMessage.message_id))
        }
    for she, row_id in zip(people.client_ids, ids, strict=True):
        done = row(care_ctx, row_id)
        assert done.status is OutboxStatus.SENT and done.last_error is None
        assert done.channel_message_id == given[row_id]
        assert recorded[she] == given[row_id]


async def test_a_message_sent_after_its_row_was_taken_over_is_still_recorded_for_wipe(
    care_ctx: Care, people: People, caplog: pytest.LogCaptureFixture
) -> None:
    """Its claim ran out while it was on its way and another sender took the row: the row is
    that sender's to settle (the mark of the send changes nothing of it and says so in the
    log, ids only), but the message is in her chat, so its id is kept for wipe. The other row
    marked in the same batch is sent."""
    fast_limits(care_ctx)
    taken, kept = (put(care_ctx, ("client", c), "hoi") for c in people.client_ids[:2])

    def take_over(message: Outgoing) -> None:
        if message.outbox_id == taken:
            with care_ctx.sessions() as session, session.begin():
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == taken)
                    .values(claimed_by="another-sender")
                )

    channel = FakeChannel(hook=take_over)
    sender = OutboxSender(care_ctx, channel, options=FAST)
    await sender.start()
    async with stopping(sender, flush=False):
        await channel.wait_for(2)
        assert await sender.idle(5)
    assert sorted(channel.delivered_ids()) == [taken, kept]
    assert row(care_ctx, kept).status is OutboxStatus.SENT
    assert row(care_ctx, kept).channel_message_id is not None
    assert row(care_ctx, taken).status is OutboxStatus.SENDING  # not ours to settle
    assert row(care_ctx, taken).claimed_by == "another-sender"
    assert row(care_ctx, taken).sent_at is None
    with care_ctx.sessions() as session:
        recorded = set(session.execute(select(ChatMessage.client_id, ChatMessage.from_bot)))
    assert recorded == {(she, True) for she in people.client_ids[:2]}
    lost = [r.getMessage() for r in caplog.records if "claim_lost_after_send" in r.getMessage()]
    assert lost == [f"outbox.claim_lost_after_send outbox_id={taken}"]


def _written_by_a_turn(
    care: Care, sender: OutboxSender, she: int, *texts: str
) -> tuple[list[int], Sequence[object]]:
    """A turn's transaction up to its commit: the rows it wrote and what the sender took."""
    with collecting() as written:
        with care.sessions() as session, session.begin():
            client = session.get(Client, she)
            assert client is not None
            for text in texts:
                enqueue(session, care.vault, client, {"type": "text", "text": text}, kind="reply")
            taken = sender.take(session, written)
            write(session, written)  # what the sender did not take, as a turn does
        return [r.id for r in written], taken


def _turn(care: Care, sender: OutboxSender, client_id: int, *texts: str) -> list[int]:
    """What a conversation turn does: write replies, hand them over, commit, then adopt."""
    ids, taken = _written_by_a_turn(care, sender, client_id, *texts)
    sender.adopt(taken)
    return ids


async def test_a_turn_hands_its_replies_over_without_a_claim(
    care_ctx: Care, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        claims: list[int] = []
        real_claim = sender._claim
        monkeypatch.setattr(sender, "_claim", lambda *a: claims.append(1) or real_claim(*a))
        began = time.monotonic()
        ids = _turn(care_ctx, sender, people.client_ids[0], "een", "twee")  # no wake()
        await channel.wait_for(2, timeout=2)
        await asyncio.sleep(0.1)
        assert channel.deliveries[0][0] - began < 0.5
        assert channel.delivered_ids() == ids, "in the order they were written"
        assert claims == [], "no claim: nothing else was waiting"
    assert [row(care_ctx, i).status for i in ids] == [OutboxStatus.SENT] * 2


async def test_a_flush_sends_what_waited_behind_a_message_settled_during_a_claim(
    care_ctx: Care, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her second message waits while her first is on its way (her messages go in order). A
    stop's flush claims: the claim sees her first still open and takes nothing, and the first
    is sent before the claim ends. That is not "nothing left": the flush goes on and sends the
    second (before, the bot's stop left her replies in the outbox until the next start)."""
    fast_limits(care_ctx)
    her = ("client", people.client_ids[0])
    first = put(care_ctx, her, "first")
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=FAST)
    on_its_way, release = asyncio.Event(), asyncio.Event()
    deliver = channel.deliver

    async def slow_first(message: Any) -> Any:
        if message.outbox_id == first:
            on_its_way.set()
            await release.wait()
        return await deliver(message)

    monkeypatch.setattr(channel, "deliver", slow_first)
    stop_asked, looked, settled = threading.Event(), threading.Event(), threading.Event()
    real_claim = sender._claim

    def claim(*args: Any) -> Any:
        late = stop_asked.is_set()  # a claim begun by the flush, while the first is away
        items = real_claim(*args)
        if late and not settled.is_set():
            looked.set()
            settled.wait(5)  # ...ends after the first was sent
        return items

    monkeypatch.setattr(sender, "_claim", claim)
    await sender.start()
    await asyncio.wait_for(on_its_way.wait(), 5)
    second = put(care_ctx, her, "second")
    stop_asked.set()
    stopped = asyncio.create_task(sender.stop(flush=True))
    try:
        assert await asyncio.to_thread(looked.wait, 5)
        release.set()
        await channel.wait_for(1)
        while row(care_ctx, first).status is not OutboxStatus.SENT:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the sender has settled it
    finally:
        settled.set()
        release.set()
        await asyncio.wait_for(stopped, 15)
    assert channel.delivered_ids() == [first, second]
    assert row(care_ctx, second).status is OutboxStatus.SENT


async def test_a_turns_reply_goes_to_the_channel_in_the_loops_next_round(
    care_ctx: Care, people: People
) -> None:
    """Marked in flight by the turn, her reply needs no arming and no round of the sender's
    loop: under load each round waits behind every other callback, and she waits with it."""
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        ids, taken = _written_by_a_turn(care_ctx, sender, people.client_ids[0], "een", "twee")
        sender.adopt(taken)  # on the loop's thread, as after the turn's commit
        await asyncio.sleep(0)
        went_at_once = list(channel.attempts)
        await channel.wait_for(2, timeout=3)
    assert went_at_once == ids[:1], "the first reply was with the channel already"
    assert channel.delivered_ids() == ids
    assert [row(care_ctx, i).status for i in ids] == [OutboxStatus.SENT] * 2


async def test_a_turns_reply_keeps_her_chats_pace(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx, per_chat=2.0)
    sender = OutboxSender(
        care_ctx, channel := FakeChannel(), options=SenderOptions(poll_seconds=30)
    )
    await sender.start()
    async with stopping(sender):
        await asyncio.sleep(0.1)
        she, other = people.client_ids[:2]
        first = _turn(care_ctx, sender, she, "een")
        await channel.wait_for(1, timeout=3)
        second = _turn(care_ctx, sender, she, "twee")
        third = _turn(care_ctx, sender, other, "ander")
        await channel.wait_for(3, timeout=3)
    at = {m.outbox_id: t for t, m in channel.deliveries}
    assert at[second[0]] - at[first[0]] >= 0.45, "2 a second in her chat, with headroom"
    assert at[third[0]] < at[second[0]], "another girl does not wait behind her"


async def test_an_alert_waiting_for_the_overall_limit_goes_before_a_turns_reply(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx, per_chat=30.0, overall=2.0)
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=SenderOptions(poll_seconds=30))
    await sender.start()
    async with stopping(sender):
        await asyncio.sleep(0.1)
        filler = put(care_ctx, ("client", people.client_ids[1]), "eerder")
        sender.wake()
        await channel.wait_for(1, timeout=3)  # the overall limit's token is spent
        alert = put(care_ctx, ("worker", people.worker_id), "ALARM", OutboxPriority.CRITICAL)
        sender.wake()
        await asyncio.sleep(0.1)  # claimed and armed; waits for the next token
        reply = _turn(care_ctx, sender, people.client_ids[0], "antwoord")
        await channel.wait_for(3, timeout=5)
    assert channel.delivered_ids() == [filler, alert, *reply]


async def test_a_turns_alert_to_her_worker_goes_before_her_reply_written_first(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx, per_chat=30.0, overall=2.0)  # one message now, the next in 0.5 s
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=SenderOptions(poll_seconds=30))
    await sender.start()
    async with stopping(sender):
        await asyncio.sleep(0.1)
        she = people.client_ids[0]
        with collecting() as written, care_ctx.sessions() as session, session.begin():
            client = session.get(Client, she)
            worker = session.get(Worker, people.worker_id)
            assert client is not None and worker is not None
            reply = enqueue(
                session, care_ctx.vault, client, {"type": "text", "text": "hoi"}, kind="reply"
            )
            alert = enqueue(
                session,
                care_ctx.vault,
                worker,
                {"type": "text", "text": "ALARM"},
                kind="alert",
                priority=OutboxPriority.CRITICAL,
                client_id=she,
            )
            taken = sender.take(session, written)
            write(session, written)
        sender.adopt(taken)
        await channel.wait_for(2, timeout=3)
    assert channel.delivered_ids() == [alert.id, reply.id]


async def test_a_turns_replies_are_written_once_already_taken(
    care_ctx: Care, people: People
) -> None:
    """The replies are INSERTed once, written claimed and (the first) marked in flight: no UPDATE
    of the outbox in the turn, and no commit of its own before it goes."""
    channel = FakeChannel()
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement.split()[0] + " " + statement.split()[2])

    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        event.listen(care_ctx.engine, "before_cursor_execute", seen)
        try:
            ids, taken = _written_by_a_turn(care_ctx, sender, people.client_ids[0], "een", "twee")
        finally:
            event.remove(care_ctx.engine, "before_cursor_execute", seen)
        assert "INSERT outbox" in statements, statements  # one per row, or one for both
        assert not [s for s in statements if s.startswith("UPDATE")], statements
        first, second = (row(care_ctx, i) for i in ids)
        assert (first.status, first.last_error, first.attempts) == (
            OutboxStatus.SENDING,
            IN_FLIGHT,
            1,
        )
        assert (second.status, second.last_error, second.attempts) == (
            OutboxStatus.SENDING,
            None,
            0,
        )
        sender.adopt(taken)
        await channel.wait_for(2, timeout=3)
    assert channel.delivered_ids() == ids


async def test_a_taken_row_settled_in_the_turn_is_stored_settled_and_the_next_one_is_marked(
    care_ctx: Care, people: People
) -> None:
    """A row the sender takes but must not send (here: already expired) is written claimed,
    then settled in the same turn; the settled state and the mark that moves to the next row
    are stored, and only the next row goes out."""
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        she = people.client_ids[0]
        with collecting() as written:
            with care_ctx.sessions() as session, session.begin():
                client = session.get(Client, she)
                assert client is not None
                past = datetime.now(UTC) - timedelta(minutes=1)
                text = {"type": "text", "text": "te laat"}
                enqueue(session, care_ctx.vault, client, text, kind="reply", expires_at=past)
                enqueue(
                    session, care_ctx.vault, client, {"type": "text", "text": "nu"}, kind="reply"
                )
                taken = sender.take(session, written)
                write(session, written)
            late, now = (r.id for r in written)
        stale, marked = row(care_ctx, late), row(care_ctx, now)
        assert (stale.status, stale.last_error) == (OutboxStatus.CANCELLED, SKIP_EXPIRED)
        assert (marked.status, marked.last_error, marked.attempts) == (
            OutboxStatus.SENDING,
            IN_FLIGHT,
            1,
        )
        with care_ctx.sessions() as session:
            skipped = [(s.reason, s.ref) for s in skipped_sends(session, she)]
        assert skipped == [(SKIP_EXPIRED, f"outbox:{late}")], "recorded with the row's id"
        sender.adopt(taken)
        await channel.wait_for(1, timeout=3)
        await asyncio.sleep(0.1)
    assert channel.delivered_ids() == [now]
    assert row(care_ctx, now).status is OutboxStatus.SENT


async def test_a_reply_behind_an_older_open_row_is_left_to_the_claim(
    care_ctx: Care, people: People
) -> None:
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        she = people.client_ids[0]
        older = put(care_ctx, ("client", she), "herinnering", OutboxPriority.REMINDER)
        (reply,) = _turn(care_ctx, sender, she, "antwoord")
        assert row(care_ctx, reply).status is OutboxStatus.PENDING, "not taken over"
        sender.wake()
        await channel.wait_for(2, timeout=3)
    assert channel.delivered_ids() == [reply, older], "the claim's order: a reply first"


async def test_a_turn_that_rolls_back_hands_over_nothing(care_ctx: Care, people: People) -> None:
    fast_limits(care_ctx)
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=SenderOptions(poll_seconds=0.05))
    await sender.start()
    adopted: list[object] = []
    async with stopping(sender):
        with (
            pytest.raises(RuntimeError),
            collecting() as written,
            care_ctx.sessions() as session,
            session.begin(),
        ):
            client = session.get(Client, people.client_ids[0])
            assert client is not None
            enqueue(session, care_ctx.vault, client, {"type": "text", "text": "x"}, kind="reply")
            adopted.extend(sender.take(session, written))
            raise RuntimeError("the turn failed")
        await asyncio.sleep(0.3)
    assert len(adopted) == 1, "taken inside the transaction..."
    assert channel.deliveries == [], "...but never adopted, so never sent"
    with care_ctx.sessions() as session:
        assert session.scalars(select(OutboxMessage)).all() == []


async def test_a_stopped_sender_takes_nothing_and_the_claim_sends_it_later(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    channel = FakeChannel()
    sender = OutboxSender(care_ctx, channel, options=FAST)
    await sender.start()
    await sender.stop()
    (reply,) = _turn(care_ctx, sender, people.client_ids[0], "later")
    assert row(care_ctx, reply).status is OutboxStatus.PENDING
    again = OutboxSender(care_ctx, channel, options=FAST)
    await run_until_idle(again)
    assert channel.delivered_ids() == [reply]


async def test_a_wipe_also_deletes_a_message_that_was_on_its_way(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    she = people.client_ids[0]
    on_its_way = put(care_ctx, ("client", she), "vraag")
    channel = FakeChannel()

    def wipe_while_sending(message: Outgoing) -> None:
        if message.outbox_id != on_its_way:
            return
        # She pressed "wipe" while this message was being delivered: its id is not recorded.
        with care_ctx.sessions() as session, session.begin():
            client = session.get(Client, she)
            assert client is not None
            ids = take_deletable(session, she, datetime.now(UTC))
            enqueue(
                session,
                care_ctx.vault,
                client,
                {"type": "delete", "message_ids": ids, "everything": True},
                kind="delete",
                client_id=she,
            )

    channel.hook = wipe_while_sending
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.deliveries[0][1].outbox_id == on_its_way
    deletes = [m for _, m in channel.deliveries if m.kind == "delete"]
    assert len(deletes) == 1
    with care_ctx.sessions() as session:
        recorded = session.scalars(select(ChatMessage).where(ChatMessage.client_id == she)).all()
    assert len(recorded) == 1, "the message on its way was recorded after the wipe began"
    assert [r.message_id for r in recorded] == list(deletes[0].message_ids)
    assert all(r.deleted_at is not None for r in recorded), "nothing of hers is left"


async def test_rows_handed_over_do_not_keep_older_rows_from_being_claimed(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    channel = FakeChannel(delay=0.1)
    options = SenderOptions(poll_seconds=0.2, batch_size=2, max_in_flight=1)
    sender = OutboxSender(care_ctx, channel, options=options)
    await sender.start()
    async with stopping(sender):
        await asyncio.sleep(0.1)
        older = put(care_ctx, ("client", people.client_ids[3]), "herinnering")  # no wake
        for she in people.client_ids[:3]:
            _turn(care_ctx, sender, she, "een", "twee", "drie")
        await channel.wait_for(10, timeout=10)
    assert channel.delivered_ids().index(older) < 6, "claimed beside the handed-over rows"


async def test_a_turns_first_reply_is_marked_in_flight_with_the_turn(
    care_ctx: Care, people: People
) -> None:
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    async with stopping(sender):
        commits = sender._commits
        assert commits is not None
        before = commits.commits
        (first, second), taken = _written_by_a_turn(
            care_ctx, sender, people.client_ids[0], "a", "b"
        )
        marked = row(care_ctx, first)
        assert (marked.last_error, marked.attempts) == (IN_FLIGHT, 1), "committed with the turn"
        assert row(care_ctx, second).last_error is None, "the next one waits for the first"
        sender.adopt(taken)
        await channel.wait_for(2, timeout=3)
    assert channel.delivered_ids() == [first, second]
    assert [row(care_ctx, i).last_error for i in (first, second)] == [None, None]
    assert commits.commits - before <= 3, "the first reply's mark took no commit of its own"


async def test_replies_taken_while_the_sender_stops_are_handed_back_and_sent_later(
    care_ctx: Care, people: People
) -> None:
    channel = FakeChannel()
    sender = await _waiting_sender(care_ctx, channel)
    # The stop under test is the one inside; the block's stop then does nothing (it is there
    # for a turn that fails before it).
    async with stopping(sender, flush=False):
        ids, taken = _written_by_a_turn(care_ctx, sender, people.client_ids[0], "een", "twee")
        stop = asyncio.create_task(sender.stop(flush=False))
        await asyncio.sleep(0)  # the stop has begun when the turn's commit arrives
        sender.adopt(taken)
        await stop
    deadline = time.monotonic() + 3
    while any(row(care_ctx, i).status is not OutboxStatus.PENDING for i in ids):
        assert time.monotonic() < deadline, "handed back"
        await asyncio.sleep(0.02)
    assert [(row(care_ctx, i).last_error, row(care_ctx, i).attempts) for i in ids] == [
        (None, 0),
        (None, 0),
    ], "not in flight, so not counted as maybe delivered"
    assert channel.deliveries == []
    await run_until_idle(OutboxSender(care_ctx, channel, options=FAST))
    assert channel.delivered_ids() == list(ids), "both sent by the next sender, in order"
    assert all(row(care_ctx, i).last_error is None for i in ids), "none unconfirmed"


def test_replies_taken_after_the_event_loop_closed_are_handed_back(
    care_ctx: Care, people: People
) -> None:
    fast_limits(care_ctx)
    sender = OutboxSender(care_ctx, FakeChannel(), options=SenderOptions(poll_seconds=30))
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sender.start())
        ids, taken = _written_by_a_turn(care_ctx, sender, people.client_ids[1], "hoi")
    finally:  # stopped and closed also when the turn fails
        loop.run_until_complete(sender.stop(flush=False))
        loop.close()
    sender.adopt(taken)  # from a turn's thread, after the loop closed
    (reply,) = ids
    assert row(care_ctx, reply).status is OutboxStatus.PENDING
    assert row(care_ctx, reply).last_error is None


def test_a_write_held_back_goes_with_the_next_row_written(care_ctx: Care, people: People) -> None:
    """`ride_along` (PostgreSQL): a write whose answer nobody needs waits for the next single
    row written and goes in its INSERT's WITH, one statement for both. A second one runs the
    first at once (the writes keep their order); a savepoint (`care.db.savepoint`) runs what
    waits before it begins, and inside it, or on SQLite, nothing waits; what no single row
    took runs at `run_riders`."""
    she = people.client_ids[0]
    postgres = care_ctx.engine.dialect.name == "postgresql"
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()[:3]))

    rename = update(Client).where(Client.id == bindparam("who")).values(alias=bindparam("alias"))
    event.listen(care_ctx.engine, "before_cursor_execute", seen)
    try:
        with care_ctx.sessions() as session, session.begin():
            client = session.get(Client, she)
            assert client is not None
            statements.clear()

            def rename_to(alias: str) -> bool:
                """Hold the rename back, or run it (as its callers do) when it cannot wait."""
                params = {"who": she, "alias": alias}
                if ride_along(session, rename, params):
                    return True
                session.execute(rename, params)
                return False

            assert not ride_along(session, rename, {"who": she, "alias": "x"}), "not carrying"
            carry_riders(session)
            assert rename_to("eerst") is postgres
            assert rename_to("dan") is postgres
            with savepoint(session):  # what waits runs first ("dan")
                assert not rename_to("genest")
            assert rename_to("dan") is postgres
            text = {"type": "text", "text": "hoi"}
            row = enqueue(session, care_ctx.vault, client, text, kind="reply")
            assert row.id is not None
            assert rename_to("roos-laatst") is postgres
            run_riders(session)
            run_riders(session)  # nothing left: nothing runs
    finally:
        event.remove(care_ctx.engine, "before_cursor_execute", seen)
    with care_ctx.sessions() as session:
        assert session.get(Client, she).alias == "roos-laatst"  # type: ignore[union-attr]
    if postgres:
        assert statements == [
            "UPDATE clients SET",  # "eerst", run when "dan" came
            "UPDATE clients SET",  # "dan", run before the savepoint began
            "SAVEPOINT sa_savepoint_1",
            "UPDATE clients SET",  # "genest", in the savepoint, by its caller
            "RELEASE SAVEPOINT sa_savepoint_1",
            "WITH ridden AS",  # "dan" again, with the row
            "UPDATE clients SET",  # "roos-laatst", by run_riders
        ], statements
    else:
        assert "INSERT INTO outbox" in statements, statements
        assert not [s for s in statements if s.startswith("WITH")], "each rename at once"
