"""A small world for conversation tests: an organisation, a worker, a client, the service.

Used by `tests/care/test_conversation.py`, `test_escalations.py`, `test_workers.py` and the
end-to-end tests in `tests/bot/`. Reading what the service decided means reading the outbox:
`World.pending()` decrypts the rows not yet sent, in the order the sender would take them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from care import directory
from care.clock import Clock, FakeClock
from care.context import Care
from care.conversation import ConversationService, Inbound, InboundKind
from care.models import Client, OutboxMessage, OutboxStatus, RecipientKind, Worker, WorkerRole
from care.outbox import read_payload
from care.workers import WorkerDesk
from dialogues import FlowSource, load_library
from nlu import Nlu, NluConfig, build_nlu
from nlu.config import default_cache_dir

CLIENT_CHAT = 5_550_001
WORKER_CHAT = 5_550_002
OTHER_WORKER_CHAT = 5_550_003
# A Tuesday at 10:00 in Amsterdam: inside office hours.
OFFICE_TIME = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)

_NLU: Nlu | None = None
_FLOWS: FlowSource | None = None


def shared_nlu() -> Nlu:
    """The real NLU (embedded backend), built once per test run (training is cached)."""
    global _NLU
    if _NLU is None:
        _NLU = build_nlu(NluConfig(cache_dir=default_cache_dir()))
    return _NLU


def shared_flows() -> FlowSource:
    """The working copy of the dialogues, loaded once."""
    global _FLOWS
    if _FLOWS is None:
        _FLOWS = load_library()
    return _FLOWS


@dataclass
class Sent:
    """One decrypted outbox row."""

    id: int
    to: RecipientKind
    recipient_id: int
    kind: str
    priority: int
    payload: dict[str, Any]

    @property
    def text(self) -> str:
        """The text or caption."""
        return str(self.payload.get("text", ""))

    @property
    def button_ids(self) -> list[str]:
        """The callback data of every button."""
        return [b[0] for row in self.payload.get("buttons") or [] for b in row]

    def button(self, label_part: str) -> str:
        """The callback data of the button whose label contains `label_part`."""
        for row in self.payload.get("buttons") or []:
            for data, label in row:
                if label_part.lower() in label.lower():
                    return str(data)
        raise AssertionError(f"no button with {label_part!r} in {self.payload.get('buttons')}")


@dataclass
class World:
    """An organisation with a linked worker and an invited client, and the service."""

    care: Care
    service: ConversationService
    clock: Clock
    org_name: str
    worker_id: int
    client_id: int
    client_code: str
    seen: set[int] = field(default_factory=set)
    _updates: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _messages: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------ acting

    def inbound(self, chat_id: int, kind: InboundKind, **fields: Any) -> Inbound:
        """An Inbound with fresh update and message ids."""
        update_id = fields.pop("update_id", next(self._updates))
        message_id = fields.pop("message_id", None if kind == "choice" else next(self._messages))
        return Inbound(
            chat_id=chat_id, kind=kind, update_id=update_id, message_id=message_id, **fields
        )

    async def text(self, text: str, chat_id: int = CLIENT_CHAT) -> Inbound:
        """Handle a text message."""
        inbound = self.inbound(chat_id, "text", text=text)
        await self.service.handle(inbound)
        return inbound

    async def command(self, command: str, *args: str, chat_id: int = CLIENT_CHAT) -> Inbound:
        """Handle a command (without slash)."""
        inbound = self.inbound(chat_id, "command", command=command, args=tuple(args))
        await self.service.handle(inbound)
        return inbound

    async def press(self, choice_id: str, chat_id: int = CLIENT_CHAT) -> Inbound:
        """Handle a button press."""
        inbound = self.inbound(chat_id, "choice", choice_id=choice_id)
        await self.service.handle(inbound)
        return inbound

    async def enroll(self) -> None:
        """She sends /start <code> and answers onboarding with the first buttons."""
        await self.command("start", self.client_code)

    # ------------------------------------------------------------------ reading

    def pending(self, to: RecipientKind | None = None, *, mark: bool = True) -> list[Sent]:
        """New outbox rows (not returned before), in id order; `mark` marks them as seen."""
        with self.care.sessions() as session:
            rows = session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.status == OutboxStatus.PENDING)
                .order_by(OutboxMessage.id)
            ).all()
            found = []
            for row in rows:
                if row.id in self.seen or (to is not None and row.recipient_kind is not to):
                    continue
                found.append(
                    Sent(
                        row.id,
                        row.recipient_kind,
                        row.recipient_id,
                        row.kind,
                        row.priority,
                        read_payload(session, self.care.vault, row),
                    )
                )
        if mark:
            self.seen.update(s.id for s in found)
        return found

    def to_client(self) -> list[Sent]:
        """New rows to her."""
        return self.pending(RecipientKind.CLIENT)

    def to_worker(self) -> list[Sent]:
        """New rows to a worker."""
        return self.pending(RecipientKind.WORKER)

    def client(self) -> Client:
        """Her record, fresh from the database."""
        with self.care.sessions() as session:
            found = session.get(Client, self.client_id)
            assert found is not None
            return found


def make_world(
    care: Care,
    *,
    clock: Clock | None = None,
    flows: FlowSource | None = None,
    nlu: Any = None,
    desk: WorkerDesk | None = None,
    language: str = "nl",
) -> World:
    """Create 'Het Anker' with worker 'Anna de Vries' (linked) and client 'roos-1' (invited)."""
    clock = clock or FakeClock(OFFICE_TIME)
    with care.sessions.begin() as session:
        org = directory.add_organisation(session, "Het Anker", "020-1234567")
        worker = directory.add_worker(
            session, care.vault, org.name, "Anna de Vries", WorkerRole.WORKER, language=language
        )
        directory.link_chat(session, care.vault, worker.code, WORKER_CHAT)
        found = session.get(Worker, worker.id)
        assert found is not None
        client = directory.invite_client(
            session, care.vault, found, alias="roos-1", language=language
        )
    service = ConversationService(
        care,
        flows or shared_flows(),
        nlu or shared_nlu(),
        clock=clock,
        desk=desk or WorkerDesk(care),
    )
    return World(care, service, clock, org.name, worker.id, client.id, client.code)
