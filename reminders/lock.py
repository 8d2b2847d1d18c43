"""Exactly one scheduler at a time.

PostgreSQL: a session-level advisory lock held on a connection kept open for as long as this
process schedules; it is released when that connection ends, also when the process dies.
SQLite: a lease row in `scheduler_locks` renewed by a heartbeat; another process may take it
over once it has expired.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Protocol

from sqlalchemy import Connection, delete, insert, text, update
from sqlalchemy.exc import IntegrityError

from care.clock import Clock, SystemClock
from care.context import Care
from care.models import SchedulerLock

log = logging.getLogger("reminders.lock")

# pg_advisory_lock takes a bigint; this one is ours ("aftercare scheduler").
ADVISORY_KEY = 0x41_46_54_43_53_43_48_44


class Lock(Protocol):
    """A lock on running the scheduler."""

    def acquire(self) -> bool:
        """Take the lock if free; True when this process holds it now."""
        ...

    def renew(self) -> bool:
        """Keep holding it; False when it was lost."""
        ...

    def release(self) -> None:
        """Let go."""
        ...


class AdvisoryLock:
    """A PostgreSQL advisory lock on a connection of its own."""

    def __init__(self, care: Care, key: int = ADVISORY_KEY) -> None:
        self.care = care
        self.key = key
        self._connection: Connection | None = None

    def acquire(self) -> bool:
        """Try the lock without waiting."""
        if self._connection is not None:
            return True
        connection = self.care.engine.connect()
        try:
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar()
            connection.commit()
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def renew(self) -> bool:
        """Check that the connection holding the lock is still alive."""
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1")).scalar()
            self._connection.commit()
            return True
        except Exception:
            self._connection = None
            return False

    def release(self) -> None:
        """Unlock and close the connection."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            connection.commit()
        finally:
            connection.close()


class LeaseLock:
    """A lease row with an expiry, renewed by a heartbeat (SQLite)."""

    def __init__(
        self,
        care: Care,
        holder: str,
        *,
        name: str = "scheduler",
        ttl: timedelta = timedelta(seconds=30),
        clock: Clock | None = None,
    ) -> None:
        self.care = care
        self.holder = holder[:80]
        self.name = name
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()

    def _take(self, only_if_mine: bool) -> bool:
        now = self.clock.now()
        condition = SchedulerLock.holder == self.holder
        if not only_if_mine:
            condition = condition | (SchedulerLock.expires_at < now)
        with self.care.engine.begin() as connection:
            result = connection.execute(
                update(SchedulerLock)
                .where(SchedulerLock.name == self.name, condition)
                .values(holder=self.holder, expires_at=now + self.ttl)
            )
            if result.rowcount:
                return True
        if only_if_mine:
            return False
        try:
            with self.care.engine.begin() as connection:
                connection.execute(
                    insert(SchedulerLock).values(
                        name=self.name,
                        holder=self.holder,
                        acquired_at=now,
                        expires_at=now + self.ttl,
                    )
                )
            return True
        except IntegrityError:
            return False  # someone else holds an unexpired lease

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        return self._take(only_if_mine=False)

    def renew(self) -> bool:
        """Extend the lease; False when another process took it over."""
        return self._take(only_if_mine=True)

    def release(self) -> None:
        """Give the lease up."""
        with self.care.engine.begin() as connection:
            connection.execute(
                delete(SchedulerLock).where(
                    SchedulerLock.name == self.name, SchedulerLock.holder == self.holder
                )
            )


def scheduler_lock(care: Care, holder: str, clock: Clock | None = None) -> Lock:
    """The right lock for this database."""
    if care.engine.dialect.name == "postgresql":
        return AdvisoryLock(care)
    return LeaseLock(care, holder, clock=clock)
