"""What the reminders need from the conversation service (`care.conversation`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
        defer: Callable[[datetime], bool] | None = None,
    ) -> bool:
        """Start `flow` for her; False when not started (duplicate key, paused, ...). While
        her unanswered question would alert her worker (the safety check), scheduled flows
        are held back: `defer` is asked with when that question times out, and True means
        the caller runs the flow again later (else her worker sees it was not sent)."""
        ...
