"""People and a fake channel for the outbox and reminder tests."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from care.context import Care
from care.directory import add_organisation, add_worker, invite_client, link_chat
from care.models import Client, Worker
from care.outbox import ChannelError, Delivered, Outgoing

WORKER_CHAT = 9_000


@dataclass
class People:
    """An organisation with one worker and some clients, all linked to chats."""

    worker_id: int
    client_ids: list[int]

    def chat_of_client(self, index: int) -> int:
        """The chat id the i-th client was linked with."""
        return 10_000 + index


def make_people(
    care: Care, clients: int = 2, timezone: str = "Europe/Amsterdam", language: str = "nl"
) -> People:
    """Create and link a worker and `clients` clients; commits."""
    with care.sessions() as session, session.begin():
        add_organisation(session, "Test org", actor="test")
        issued = add_worker(session, care.vault, "Test org", "Sam", actor="test")
        link_chat(session, care.vault, issued.code, WORKER_CHAT)
        worker = session.get(Worker, issued.id)
        assert worker is not None
        ids = []
        for i in range(clients):
            code = invite_client(
                session,
                care.vault,
                worker,
                alias=f"roos-{i}",
                language=language,
                timezone=timezone,
                actor="test",
            )
            link_chat(session, care.vault, code.code, 10_000 + i)
            ids.append(code.id)
    return People(issued.id, ids)


def client(care: Care, client_id: int) -> Client:
    """A fresh copy of a client."""
    with care.sessions() as session:
        found = session.get(Client, client_id)
        assert found is not None
        return found


@dataclass
class FakeChannel:
    """Records deliveries; `script` maps a call number or an outbox id to an error to raise."""

    delay: float = 0.0
    deliveries: list[tuple[float, Outgoing]] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    fail: dict[int, list[ChannelError]] = field(default_factory=dict)
    hook: Callable[[Outgoing], None] | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    async def deliver(self, message: Outgoing) -> Delivered:
        """Deliver, or raise the next scripted error for this outbox id."""
        self.attempts.append(message.outbox_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        errors = self.fail.get(message.outbox_id)
        if errors:
            raise errors.pop(0)
        if self.hook is not None:
            self.hook(message)
        self.deliveries.append((time.monotonic(), message))
        return Delivered((next(self._ids),))

    def delivered_ids(self) -> list[int]:
        """Outbox ids in the order they were delivered."""
        return [m.outbox_id for _, m in self.deliveries]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until `count` messages were delivered."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"waited for {count} deliveries, saw {len(self.deliveries)}")
            await asyncio.sleep(0.01)


@dataclass
class FakeConversation:
    """Stands in for `ConversationService.start_flow`: records calls, refuses a repeated key."""

    calls: list[dict[str, object]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    held_until: dict[int, datetime] = field(default_factory=dict)
    """Per client: when her open safety question times out (asked of `defer`)."""

    async def start_flow(
        self,
        client_id: int,
        flow: str,
        *,
        context: object = None,
        priority: object = None,
        dedupe_key: str | None = None,
        expires_at: object = None,
        defer: Callable[[datetime], bool] | None = None,
    ) -> bool:
        """Record the call; False for a dedupe key seen before, and False without a record
        when her safety question (`held_until`) holds the flow back and `defer` takes it."""
        held = self.held_until.get(client_id)
        if held is not None and defer is not None and defer(held):
            return False
        if dedupe_key is not None and dedupe_key in self.keys:
            return False
        if dedupe_key is not None:
            self.keys.add(dedupe_key)
        self.calls.append(
            {
                "client_id": client_id,
                "flow": flow,
                "context": dict(context or {}),  # type: ignore[call-overload]
                "priority": priority,
                "dedupe_key": dedupe_key,
                "expires_at": expires_at,
            }
        )
        return True
