"""The exceptions of `reminders`.

ReminderError (a CareError, so the edge tells the person in one line)
 └── InvalidSchedule    a schedule a person asked for cannot be used; says why and what to do
"""

from __future__ import annotations

from care.errors import CareError, InvalidInput


class ReminderError(CareError):
    """Base of every error raised by `reminders`."""


class InvalidSchedule(ReminderError, InvalidInput):
    """A check-in schedule or appointment time cannot be used."""
