"""When reminders and check-ins are due: pure functions of a schedule, a time zone and a moment.

Everything here is exact and fast under a fake clock: no database, no scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

from care.settings import WEEKDAYS, TimeWindow, parse_hhmm
from reminders.errors import InvalidSchedule

# A check-in may start this late after its time (the scheduler was down); later it is skipped.
CHECKIN_GRACE = timedelta(hours=6)
# A reminder moved out of quiet hours goes out this long before they begin.
BEFORE_QUIET = timedelta(minutes=30)


def parse_window(text: str | None, default: TimeWindow) -> TimeWindow:
    """'22:00-08:00' as a TimeWindow; None gives the default."""
    if not text:
        return default
    try:
        return TimeWindow.parse(text)
    except ValueError:
        raise InvalidSchedule(
            f"quiet hours must look like 22:00-08:00 (got {text[:20]!r})"
        ) from None


def is_quiet(moment: datetime, zone: ZoneInfo, quiet: TimeWindow) -> bool:
    """True when `moment` falls in the quiet hours of this time zone."""
    return quiet.contains(moment.astimezone(zone).time().replace(tzinfo=None))


def parse_days(text: str) -> tuple[str, ...]:
    """'mon,thu' as ('mon', 'thu'); refuses anything else."""
    days = tuple(d.strip().lower() for d in text.split(",") if d.strip())
    if not days or any(d not in WEEKDAYS for d in days):
        raise InvalidSchedule("check-in days must be a list of mon tue wed thu fri sat sun")
    return tuple(d for d in WEEKDAYS if d in days)


class CheckinTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires on her weekdays at her local clock time, once per local day.

    APScheduler 3.11's CronTrigger returns the repeated hour of a fall-back night again and
    again (the scheduler would loop); this trigger takes the first of the two, and a time
    that does not exist on a spring-forward night is moved on by the gap, once.
    """

    def __init__(self, days: tuple[str, ...], at: time, timezone: str) -> None:
        self.days = tuple(days)
        self.at = at
        self.timezone = timezone

    def __getstate__(self) -> dict[str, object]:
        return {"version": 1, "days": self.days, "at": self.at, "timezone": self.timezone}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.days = tuple(state["days"])
        self.at = state["at"]
        self.timezone = str(state["timezone"])

    def __str__(self) -> str:
        return f"checkin[{','.join(self.days)} {self.at:%H:%M} {self.timezone}]"

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first check-in moment at or after `now` and after the previous one (UTC)."""
        zone = ZoneInfo(self.timezone)
        earliest = (
            now
            if previous_fire_time is None
            else max(now, previous_fire_time + timedelta(seconds=1))
        )
        day = earliest.astimezone(zone).date() - timedelta(days=1)
        wanted = {i for i, name in enumerate(WEEKDAYS) if name in self.days}
        for _ in range(16):
            if day.weekday() in wanted:
                moment = datetime.combine(day, self.at, tzinfo=zone).astimezone(UTC)
                if moment >= earliest:
                    return moment
            day += timedelta(days=1)
        return None


@dataclass(frozen=True)
class CheckinSchedule:
    """A client's check-ins: weekdays, local time and time zone, and her quiet hours."""

    days: tuple[str, ...]
    at: time
    zone: ZoneInfo
    quiet: TimeWindow

    @classmethod
    def of(
        cls, days: str, at: str, timezone: str, quiet: str | None, default_quiet: TimeWindow
    ) -> CheckinSchedule:
        """Build and check a schedule from the text columns of a client."""
        try:
            clock_time = parse_hhmm(at)
        except ValueError:
            raise InvalidSchedule("the check-in time must be HH:MM, for example 16:00") from None
        schedule = cls(
            parse_days(days), clock_time, ZoneInfo(timezone), parse_window(quiet, default_quiet)
        )
        if schedule.quiet.contains(clock_time):
            q = schedule.quiet
            raise InvalidSchedule(
                f"the check-in time {clock_time:%H:%M} falls in her quiet hours "
                f"{q.start:%H:%M}-{q.end:%H:%M}; choose a time between {q.end:%H:%M} and "
                f"{q.start:%H:%M}"
            )
        return schedule

    def trigger(self) -> CheckinTrigger:
        """The APScheduler trigger: her days and local time, in her time zone."""
        return CheckinTrigger(self.days, self.at, self.zone.key)

    def local_day(self, moment: datetime) -> date:
        """Her calendar day at `moment` (one check-in per day at most)."""
        return moment.astimezone(self.zone).date()

    def fire_times(self, start: datetime, end: datetime) -> list[datetime]:
        """Check-in moments (UTC) in [start, end)."""
        trigger = self.trigger()
        found: list[datetime] = []
        previous: datetime | None = None
        while True:
            fire = trigger.get_next_fire_time(previous, start)
            if fire is None or fire >= end:
                return found
            found.append(fire)
            previous = fire

    def last_due(self, now: datetime) -> datetime | None:
        """The latest check-in moment at or before `now` (looking back up to eight days)."""
        times = self.fire_times(now - timedelta(days=8), now + timedelta(microseconds=1))
        return times[-1] if times else None


def next_quiet_start(moment: datetime, zone: ZoneInfo, quiet: TimeWindow) -> datetime:
    """The next moment her quiet hours begin (UTC); messages should not outlive it."""
    local = moment.astimezone(zone)
    for days in range(0, 3):
        day = local.date() + timedelta(days=days)
        start = datetime.combine(day, quiet.start, tzinfo=zone)
        if start > local:
            return start.astimezone(UTC)
    return (local + timedelta(days=1)).astimezone(UTC)


def out_of_quiet(ideal: datetime, zone: ZoneInfo, quiet: TimeWindow) -> datetime:
    """`ideal`, or when it falls in quiet hours the evening before they began (minus a margin)."""
    if not is_quiet(ideal, zone, quiet):
        return ideal
    local = ideal.astimezone(zone)
    day = local.date()
    if quiet.start > quiet.end and local.time() < quiet.end:
        day -= timedelta(days=1)  # the early-morning part of a window that began last night
    begins = datetime.combine(day, quiet.start, tzinfo=zone)
    return (begins - BEFORE_QUIET).astimezone(UTC)


@dataclass(frozen=True)
class PlannedReminder:
    """One appointment reminder: its offset, and when it goes out (None: it will not)."""

    offset_minutes: int
    run_at: datetime | None
    reason: str | None = None


def appointment_reminders(
    starts_at: datetime,
    offsets_hours: tuple[float, ...],
    zone: ZoneInfo,
    quiet: TimeWindow,
    now: datetime,
) -> list[PlannedReminder]:
    """When each reminder of an appointment goes out.

    A reminder that would fall in her quiet hours goes out the evening before instead; one
    whose time has already passed, or that would come no earlier than the next (shorter)
    reminder, is left out.
    """
    planned: list[PlannedReminder] = []
    later_run: datetime | None = None
    for hours in sorted(offsets_hours):  # shortest first, so each knows the one after it
        minutes = round(hours * 60)
        run_at = out_of_quiet(starts_at - timedelta(minutes=minutes), zone, quiet)
        reason: str | None = None
        if run_at <= now:
            reason = "too_late"
        elif run_at >= starts_at or (later_run is not None and run_at >= later_run):
            reason = "superseded"
        if reason is None:
            later_run = run_at
            planned.append(PlannedReminder(minutes, run_at))
        else:
            planned.append(PlannedReminder(minutes, None, reason))
    return sorted(planned, key=lambda p: -p.offset_minutes)


def appointment_reminder_decision(
    now: datetime,
    starts_at: datetime,
    offset_minutes: int,
    offsets_hours: tuple[float, ...],
    zone: ZoneInfo,
    quiet: TimeWindow,
) -> str | None:
    """Why a reminder job running at `now` must not send (None: send it).

    After downtime a reminder is still sent once if useful: not after the appointment began,
    not when the next (shorter) reminder is already due, not in her quiet hours.
    """
    if now >= starts_at:
        return "too_late"
    shorter = [round(h * 60) for h in offsets_hours if round(h * 60) < offset_minutes]
    if shorter and now >= out_of_quiet(starts_at - timedelta(minutes=max(shorter)), zone, quiet):
        return "superseded"
    if is_quiet(now, zone, quiet):
        return "quiet_hours"
    return None


def checkin_decision(
    now: datetime, schedule: CheckinSchedule, grace: timedelta = CHECKIN_GRACE
) -> tuple[datetime | None, str | None]:
    """For a check-in job running at `now`: the check-in it stands for, and why it must not
    send (None: send it). Missed runs were coalesced into this one by the scheduler."""
    due = schedule.last_due(now)
    if due is None:
        return None, "not_due"
    if now - due > grace:
        return due, "too_late"
    if is_quiet(now, schedule.zone, schedule.quiet):
        return due, "quiet_hours"
    return due, None
