"""What the reminders need from the conversation service (`care.conversation`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from care.models import OutboxPriority


class FlowStarter(Protocol):
    """Starts a dialogue flow for a client and writes its messages to the outbox."""

    async def start_flow(
        self,
        client_id: int,
        flow: str,
        *,
        context: Mapping[str, str] | None = None,
        priority: OutboxPriority = OutboxPriority.REMINDER,
        dedupe_key: str | None = None,
        expires_at: datetime | None = None,
    ) -> bool:
        """Start `flow` for her; False when not started (duplicate key, paused, ...)."""
        ...

    async def alert_waits_until(self, client_id: int) -> datetime | None:
        """When her unanswered question that would alert her worker times out (None: no
        such question waits); until then `start_flow` holds scheduled flows back."""
        ...
