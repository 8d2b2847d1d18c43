"""The real APScheduler: one scheduler at a time, jobs that fire, runs missed during downtime."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from care.context import Care
from care.models import Client, Worker
from care.outbox import skipped_sends
from reminders import jobstore
from reminders.appointments import create_appointment
from reminders.checkins import JOB_FUNC, job_id
from reminders.runtime import Reminders
from reminders.timing import CheckinSchedule
from tests.reminders.helpers import FakeConversation, make_people


async def test_only_one_process_schedules_and_the_other_says_so(
    care_ctx: Care, caplog: pytest.LogCaptureFixture
) -> None:
    first = Reminders(care_ctx, FakeConversation(), heartbeat_seconds=0.2)
    second = Reminders(care_ctx, FakeConversation(), standby_retry_seconds=0.2)
    assert await first.start()
    with caplog.at_level(logging.INFO, logger="reminders.runtime"):
        assert not await second.start()
    assert "does not schedule" in caplog.text
    assert first.scheduling and not second.scheduling
    await first.stop()
    for _ in range(50):  # the standby takes over once the lock is free
        if second.scheduling:
            break
        await asyncio.sleep(0.1)
    assert second.scheduling
    await second.stop()


def reminder_due_in_two_seconds(care: Care) -> tuple[int, int, datetime]:
    """One client with an appointment 62 seconds from now, reminded one minute before it
    (her quiet hours kept away from the time the test runs); returns her id, the
    appointment's id and now."""
    reminders = care.settings.reminders.model_copy(update={"appointment_offsets_hours": (1 / 60,)})
    care.settings = care.settings.model_copy(update={"reminders": reminders})
    people = make_people(care, clients=1)
    her = people.client_ids[0]
    now = datetime.now(UTC)
    with care.sessions() as session, session.begin():
        client = session.get_one(Client, her)
        worker = session.get_one(Worker, people.worker_id)
        quiet_start = (now + timedelta(hours=12)).astimezone(UTC)
        client.timezone = "UTC"
        client.quiet_hours = f"{quiet_start:%H}:00-{(quiet_start + timedelta(hours=1)):%H}:00"
        starts = now + timedelta(seconds=62)
        appointment = create_appointment(session, care, client, worker, starts, "Hier", now=now)
        return her, appointment.id, now


async def test_a_reminder_job_fires_and_starts_her_flow(care_ctx: Care) -> None:
    _, appointment_id, _ = reminder_due_in_two_seconds(care_ctx)
    conversation = FakeConversation()
    runtime = Reminders(care_ctx, conversation)
    assert await runtime.start()
    try:
        for _ in range(60):
            if conversation.calls:
                break
            await asyncio.sleep(0.1)
    finally:
        await runtime.stop()
    assert [c["dedupe_key"] for c in conversation.calls] == [f"appt:{appointment_id}:1"]
    with care_ctx.sessions() as session:
        assert jobstore.job_times(session, "appt:") == {}  # a date job is gone once it ran


async def test_a_reminder_held_back_by_a_safety_question_fires_again_later(
    care_ctx: Care, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real scheduler runs her reminder while a safety question is open: the job, which
    APScheduler already removed as done, is written again for later and fires then."""
    from reminders import appointments

    monkeypatch.setattr(appointments, "DEFER_MARGIN", timedelta(seconds=1))
    her, appointment_id, now = reminder_due_in_two_seconds(care_ctx)
    first_run = now + timedelta(seconds=2)
    conversation = FakeConversation()
    conversation.held_until[her] = first_run + timedelta(seconds=1)
    runtime = Reminders(care_ctx, conversation)
    assert await runtime.start()
    try:
        for _ in range(100):  # until its job has been moved on
            with care_ctx.sessions() as session:
                moved = jobstore.job_times(session, "appt:").get(f"appt:{appointment_id}:1")
            if moved is not None and moved > first_run + timedelta(milliseconds=500):
                break
            await asyncio.sleep(0.05)
        assert moved is not None and moved > first_run
        assert conversation.calls == []
        del conversation.held_until[her]  # she answered
        for _ in range(100):
            if conversation.calls:
                break
            await asyncio.sleep(0.05)
    finally:
        await runtime.stop()
    assert [c["dedupe_key"] for c in conversation.calls] == [f"appt:{appointment_id}:1"]
    with care_ctx.sessions() as session:
        assert jobstore.job_times(session, "appt:") == {}


async def test_a_checkin_missed_during_downtime_is_recorded_for_her_worker(care_ctx: Care) -> None:
    people = make_people(care_ctx, clients=1)
    client_id = people.client_ids[0]
    long_ago = datetime.now(UTC) - timedelta(hours=9)
    schedule = CheckinSchedule.of(
        "mon", "16:00", "UTC", None, care_ctx.settings.reminders.quiet_hours
    )
    with care_ctx.sessions() as session, session.begin():
        jobstore.put_job(
            session,
            job_id(client_id),
            JOB_FUNC,
            (client_id,),
            schedule.trigger(),
            next_run_time=long_ago,
            misfire_grace_time=6 * 3600,
            coalesce=True,
        )
    conversation = FakeConversation()
    runtime = Reminders(care_ctx, conversation)
    assert await runtime.start()
    try:
        for _ in range(50):
            with care_ctx.sessions() as session:
                skips = skipped_sends(session, client_id)
            if skips:
                break
            await asyncio.sleep(0.1)
    finally:
        await runtime.stop()
    assert [(s.kind, s.reason, s.ref) for s in skips] == [
        ("checkin", "missed_downtime", f"checkin:{client_id}")
    ]
    assert conversation.calls == []
    with care_ctx.sessions() as session:  # the job stays, for her next check-in
        assert set(jobstore.job_times(session, "checkin:")) == {job_id(client_id)}
