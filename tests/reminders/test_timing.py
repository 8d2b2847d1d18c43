"""Schedule rules as pure functions: time zones, quiet hours, daylight saving, downtime."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from care.clock import FakeClock
from care.settings import TimeWindow
from reminders.errors import InvalidSchedule
from reminders.timing import (
    CheckinSchedule,
    appointment_reminder_decision,
    appointment_reminders,
    checkin_decision,
    next_quiet_start,
    out_of_quiet,
)

AMS = ZoneInfo("Europe/Amsterdam")
QUIET = TimeWindow(start=time(22, 0), end=time(8, 0))


def local(*args: int, zone: ZoneInfo = AMS) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc,arg-type]


def schedule(
    days: str = "mon,thu", at: str = "16:00", tz: str = "Europe/Amsterdam"
) -> CheckinSchedule:
    return CheckinSchedule.of(days, at, tz, None, QUIET)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (local(2026, 3, 20), local(2026, 4, 10)),  # spring forward, 29 March
        (local(2026, 10, 15), local(2026, 11, 5)),  # fall back, 25 October
    ],
)
def test_a_checkin_keeps_her_local_time_across_daylight_saving(
    start: datetime, end: datetime
) -> None:
    times = schedule("mon,thu,sun").fire_times(start, end)
    assert times, "no check-ins found"
    assert {t.astimezone(AMS).strftime("%H:%M") for t in times} == {"16:00"}
    assert len({t.astimezone(AMS).date() for t in times}) == len(times)
    assert {t.astimezone(AMS).strftime("%a") for t in times} == {"Mon", "Thu", "Sun"}


def test_the_repeated_hour_of_fall_back_does_not_double_a_checkin() -> None:
    # 02:30 happens twice on 25 October 2026 in Amsterdam; she gets one check-in that day.
    night = CheckinSchedule.of("sun", "02:30", "Europe/Amsterdam", "23:00-01:00", QUIET)
    times = night.fire_times(local(2026, 10, 24), local(2026, 10, 26))
    assert len(times) == 1


def test_her_own_time_zone_counts() -> None:
    curacao = schedule("mon", "09:00", "America/Curacao")
    (fire,) = curacao.fire_times(datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 2, tzinfo=UTC))
    assert fire == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)


def test_a_checkin_time_in_quiet_hours_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="quiet hours 22:00-08:00"):
        schedule(at="23:15")
    with pytest.raises(InvalidSchedule, match="mon tue wed"):
        schedule(days="monday")


def test_a_reminder_that_would_come_at_night_comes_the_evening_before() -> None:
    moved = out_of_quiet(local(2026, 5, 12, 6, 30), AMS, QUIET)
    assert moved == local(2026, 5, 11, 21, 30).astimezone(UTC)
    late = out_of_quiet(local(2026, 5, 12, 23, 0), AMS, QUIET)
    assert late == local(2026, 5, 12, 21, 30).astimezone(UTC)
    assert out_of_quiet(local(2026, 5, 12, 12, 0), AMS, QUIET) == local(2026, 5, 12, 12, 0)


def test_appointment_reminders_at_24_and_2_hours() -> None:
    starts = local(2026, 5, 12, 14, 0)
    clock = FakeClock(local(2026, 5, 1, 12, 0))
    plans = appointment_reminders(starts, (24.0, 2.0), AMS, QUIET, clock.now())
    assert [(p.offset_minutes, p.run_at) for p in plans] == [
        (1440, starts - timedelta(hours=24)),
        (120, starts - timedelta(hours=2)),
    ]


def test_a_reminder_whose_time_has_passed_is_left_out() -> None:
    starts = local(2026, 5, 12, 14, 0)
    plans = appointment_reminders(starts, (24.0, 2.0), AMS, QUIET, local(2026, 5, 11, 18, 0))
    assert [(p.offset_minutes, p.reason) for p in plans] == [(1440, "too_late"), (120, None)]


def test_an_early_morning_appointment_gets_its_short_reminder_the_evening_before() -> None:
    starts = local(2026, 5, 12, 9, 0)  # 2 h before is 07:00, in quiet hours
    plans = appointment_reminders(starts, (24.0, 2.0), AMS, QUIET, local(2026, 5, 1, 12, 0))
    assert plans[1].run_at == local(2026, 5, 11, 21, 30).astimezone(UTC)


def test_after_downtime_a_reminder_goes_once_and_never_after_the_appointment_began() -> None:
    starts = local(2026, 5, 12, 14, 0)

    def decide(now: datetime, offset: int) -> str | None:
        return appointment_reminder_decision(now, starts, offset, (24.0, 2.0), AMS, QUIET)

    assert decide(local(2026, 5, 11, 14, 5), 1440) is None  # five minutes late: still useful
    assert decide(local(2026, 5, 12, 12, 30), 1440) == "superseded"  # the 2 h one is due
    assert decide(local(2026, 5, 12, 12, 30), 120) is None
    assert decide(local(2026, 5, 12, 14, 0), 120) == "too_late"
    assert decide(local(2026, 5, 11, 23, 0), 1440) == "quiet_hours"


def test_a_checkin_missed_by_hours_is_sent_once_or_skipped_at_night() -> None:
    thursday = schedule()
    due = local(2026, 5, 14, 16, 0).astimezone(UTC)
    assert checkin_decision(local(2026, 5, 14, 16, 0), thursday) == (due, None)
    assert checkin_decision(local(2026, 5, 14, 19, 0), thursday) == (due, None)
    assert checkin_decision(local(2026, 5, 14, 22, 30), thursday) == (due, "too_late")
    early = CheckinSchedule.of("thu", "18:00", "Europe/Amsterdam", None, QUIET)
    assert checkin_decision(local(2026, 5, 14, 23, 0), early)[1] == "quiet_hours"


def test_a_message_expires_when_her_quiet_hours_begin() -> None:
    assert next_quiet_start(local(2026, 5, 14, 16, 0), AMS, QUIET) == local(2026, 5, 14, 22, 0)
    assert next_quiet_start(local(2026, 5, 14, 23, 0), AMS, QUIET) == local(2026, 5, 15, 22, 0)
