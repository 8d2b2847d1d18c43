"""Check-ins on a fake clock: her schedule, quiet hours, one per day, missed check-ins."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from care.clock import FakeClock
from care.context import Care
from care.models import (
    ChatMessage,
    CheckIn,
    CheckInStatus,
    Client,
    ClientStatus,
    OutboxMessage,
    OutboxPriority,
    RecipientKind,
)
from care.outbox import read_payload, skipped_sends
from reminders import jobstore
from reminders.checkins import ensure_jobs, evaluate_all, run_checkin, set_checkin_schedule
from reminders.errors import InvalidSchedule
from tests.reminders.helpers import FakeConversation, People, make_people

AMS = ZoneInfo("Europe/Amsterdam")


@pytest.fixture
def people(care_ctx: Care) -> People:
    return make_people(care_ctx, clients=1)


def her(care: Care, people: People) -> Client:
    with care.sessions() as session:
        client = session.get(Client, people.client_ids[0])
        assert client is not None
        return client


def checkins(care: Care) -> list[CheckIn]:
    with care.sessions() as session:
        return list(session.scalars(select(CheckIn).order_by(CheckIn.id)))


async def test_a_checkin_at_her_time_starts_the_flow_once_per_day(
    care_ctx: Care, people: People
) -> None:
    clock = FakeClock(datetime(2026, 5, 14, 16, 0, tzinfo=AMS))  # a Thursday; default mon,thu 16:00
    conversation = FakeConversation()
    client_id = people.client_ids[0]
    assert await run_checkin(care_ctx, conversation, client_id, clock.now())
    clock.advance(timedelta(minutes=30))  # the same day again (e.g. a doubled trigger)
    assert not await run_checkin(care_ctx, conversation, client_id, clock.now())
    (call,) = conversation.calls
    assert call["flow"] == "checkin" and call["dedupe_key"] == f"checkin:{client_id}:2026-05-14"
    assert call["priority"] is OutboxPriority.REMINDER
    assert call["expires_at"] == datetime(2026, 5, 14, 22, 0, tzinfo=AMS)  # her quiet hours
    (checkin,) = checkins(care_ctx)
    assert checkin.status is CheckInStatus.SENT
    assert checkin.due_at == datetime(2026, 5, 14, 16, 0, tzinfo=AMS)


async def test_a_checkin_late_into_her_quiet_hours_is_skipped_and_recorded(
    care_ctx: Care, people: People
) -> None:
    with care_ctx.sessions() as session, session.begin():
        client = session.get(Client, people.client_ids[0])
        assert client is not None
        set_checkin_schedule(session, care_ctx, client, at="19:00", quiet_hours="21:00-09:00")
    conversation = FakeConversation()
    late = datetime(2026, 5, 14, 21, 30, tzinfo=AMS)
    assert not await run_checkin(care_ctx, conversation, people.client_ids[0], late)
    assert conversation.calls == []
    with care_ctx.sessions() as session:
        (skip,) = skipped_sends(session, people.client_ids[0])
    assert (skip.kind, skip.reason) == ("checkin", "quiet_hours")
    assert skip.due_at == datetime(2026, 5, 14, 19, 0, tzinfo=AMS)


async def test_paused_and_unreachable_clients_get_no_checkin(
    care_ctx: Care, people: People
) -> None:
    conversation = FakeConversation()
    client_id = people.client_ids[0]
    with care_ctx.sessions() as session, session.begin():
        session.get(Client, client_id).status = ClientStatus.PAUSED  # type: ignore[union-attr]
    assert not await run_checkin(
        care_ctx, conversation, client_id, datetime(2026, 5, 14, 16, 0, tzinfo=AMS)
    )
    with care_ctx.sessions() as session, session.begin():
        client = session.get(Client, client_id)
        assert client is not None
        client.status, client.unreachable = ClientStatus.ACTIVE, True
    assert not await run_checkin(
        care_ctx, conversation, client_id, datetime(2026, 5, 18, 16, 0, tzinfo=AMS)
    )
    assert conversation.calls == []
    with care_ctx.sessions() as session:
        assert sorted(s.reason for s in skipped_sends(session, client_id)) == [
            "paused",
            "unreachable",
        ]


async def test_three_missed_checkins_in_a_row_notify_her_worker_once(
    care_ctx: Care, people: People
) -> None:
    conversation = FakeConversation()
    client_id = people.client_ids[0]
    # Mondays and Thursdays at 16:00; she answers none of them.
    moments = [
        datetime(2026, 5, 4, 16, 0, tzinfo=AMS),
        datetime(2026, 5, 7, 16, 0, tzinfo=AMS),
        datetime(2026, 5, 11, 16, 0, tzinfo=AMS),
        datetime(2026, 5, 14, 16, 0, tzinfo=AMS),
        datetime(2026, 5, 18, 16, 0, tzinfo=AMS),
    ]
    for moment in moments:
        assert await run_checkin(care_ctx, conversation, client_id, moment)
    evaluate_all(care_ctx, moments[-1] + timedelta(days=2))
    assert [c.status for c in checkins(care_ctx)] == [CheckInStatus.MISSED] * 5
    assert her(care_ctx, people).missed_checkins == 5
    with care_ctx.sessions() as session:
        notices = session.scalars(
            select(OutboxMessage).where(OutboxMessage.recipient_kind == RecipientKind.WORKER)
        ).all()
        assert len(notices) == 1
        assert notices[0].priority == OutboxPriority.NOTICE
        assert "roos-0" in read_payload(session, care_ctx.vault, notices[0])["text"]


async def test_an_answer_resets_the_count(care_ctx: Care, people: People) -> None:
    conversation = FakeConversation()
    client_id = people.client_ids[0]
    first = datetime(2026, 5, 4, 16, 0, tzinfo=AMS)
    second = datetime(2026, 5, 7, 16, 0, tzinfo=AMS)
    third = datetime(2026, 5, 11, 16, 0, tzinfo=AMS)
    await run_checkin(care_ctx, conversation, client_id, first)
    await run_checkin(care_ctx, conversation, client_id, second)
    with care_ctx.sessions() as session, session.begin():  # she writes back after the second
        session.add(
            ChatMessage(
                client_id=client_id, message_id=7, from_bot=False, at=second + timedelta(hours=1)
            )
        )
    await run_checkin(care_ctx, conversation, client_id, third)
    assert [c.status for c in checkins(care_ctx)][:2] == [
        CheckInStatus.MISSED,
        CheckInStatus.ANSWERED,
    ]
    assert her(care_ctx, people).missed_checkins == 0


def test_a_time_in_quiet_hours_is_refused_and_nothing_changes(
    care_ctx: Care, people: People
) -> None:
    with (
        pytest.raises(InvalidSchedule, match="quiet hours"),
        care_ctx.sessions() as session,
        session.begin(),
    ):
        client = session.get(Client, people.client_ids[0])
        assert client is not None
        set_checkin_schedule(session, care_ctx, client, at="23:30")
    assert her(care_ctx, people).checkin_time == "16:00"


def test_every_active_client_gets_a_checkin_job(care_ctx: Care, people: People) -> None:
    now = datetime(2026, 5, 12, 9, 0, tzinfo=AMS)  # a Tuesday
    assert ensure_jobs(care_ctx, now) == 1
    assert ensure_jobs(care_ctx, now) == 0
    with care_ctx.sessions() as session:
        times = jobstore.job_times(session, "checkin:")
    assert times == {f"checkin:{people.client_ids[0]}": datetime(2026, 5, 14, 16, 0, tzinfo=AMS)}
