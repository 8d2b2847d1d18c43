"""Escalations: row and alert in one transaction; acknowledge, call, resolve; refusals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from care import directory, escalations
from care.context import Care
from care.escalations import Action, callback_data, parse_callback
from care.models import (
    AuditEntry,
    Client,
    Escalation,
    EscalationStatus,
    OutboxMessage,
    OutboxPriority,
    Severity,
    Worker,
)
from tests.bot.world import World, make_world


@pytest.fixture
def world(care_ctx: Care) -> World:
    """Het Anker, Anna, and roos-1 (linked)."""
    made = make_world(care_ctx)
    with care_ctx.sessions.begin() as session:
        directory.link_chat(session, care_ctx.vault, made.client_code, 5_550_001)
    return made


def raise_one(world: World, severity: Severity, reason: str = "help_urgent") -> int:
    with world.care.sessions.begin() as session:
        client = session.get(Client, world.client_id)
        assert client is not None
        row = escalations.raise_escalation(
            session,
            world.care.vault,
            world.care.settings,
            client,
            severity,
            reason,
            now=world.clock.now(),
        )
        return row.id


def act(world: World, worker_id: int, escalation_id: int, action: Action) -> escalations.Outcome:
    with world.care.sessions.begin() as session:
        worker = session.get(Worker, worker_id)
        assert worker is not None
        return escalations.act(
            session,
            world.care.vault,
            worker,
            escalation_id,
            action,
            now=world.clock.now(),
            settings=world.care.settings,
        )


def test_an_escalation_and_its_alert_are_written_together(world: World) -> None:
    escalation_id = raise_one(world, Severity.CRITICAL, "crisis_danger")
    alerts = world.to_worker()
    assert len(alerts) == 1
    assert alerts[0].priority == OutboxPriority.CRITICAL
    assert alerts[0].text.startswith("🔴 Kritiek — roos-1\nzegt dat ze nu in gevaar is")
    assert alerts[0].button_ids == [
        f"esc:ack:{escalation_id}",
        f"esc:call:{escalation_id}",
        f"esc:res:{escalation_id}",
    ]
    with world.care.sessions() as session:
        row = session.get(Escalation, escalation_id)
        assert row is not None
        assert row.next_step_at == world.clock.now() + timedelta(minutes=5)
        outbox = session.scalars(select(OutboxMessage)).one()
        assert outbox.escalation_id == escalation_id and outbox.client_id == world.client_id


def test_a_normal_escalation_is_not_sent_in_the_critical_lane(world: World) -> None:
    raise_one(world, Severity.NORMAL, "help_contact")
    assert world.to_worker()[0].priority == OutboxPriority.NOTICE


def test_acknowledge_tells_her_and_a_second_press_says_by_whom(world: World) -> None:
    escalation_id = raise_one(world, Severity.HIGH)
    world.pending()
    first = act(world, world.worker_id, escalation_id, Action.ACKNOWLEDGE)
    assert first.done and "als gezien" in first.message
    assert [s.text for s in world.to_client()] == ["Anna heeft je bericht gezien."]
    second = act(world, world.worker_id, escalation_id, Action.ACKNOWLEDGE)
    assert not second.done and "al gezien door Anna de Vries" in second.message
    with world.care.sessions() as session:
        row = session.get(Escalation, escalation_id)
        assert row is not None and row.status is EscalationStatus.ACKNOWLEDGED
        assert row.next_step_at is None


def test_i_will_call_her_acknowledges_and_tells_her(world: World) -> None:
    escalation_id = raise_one(world, Severity.CRITICAL)
    world.pending()
    outcome = act(world, world.worker_id, escalation_id, Action.CALL)
    assert outcome.done
    assert [s.text for s in world.to_client()] == ["Anna belt je zo."]


def test_resolved_escalations_refuse_more_presses_and_the_refusal_is_audited(
    world: World,
) -> None:
    escalation_id = raise_one(world, Severity.HIGH)
    assert act(world, world.worker_id, escalation_id, Action.RESOLVE).done
    for action in Action:
        outcome = act(world, world.worker_id, escalation_id, action)
        assert not outcome.done and "al afgehandeld" in outcome.message
    with world.care.sessions() as session:
        refused = session.scalars(
            select(AuditEntry.detail).where(AuditEntry.action == "escalation.refused")
        ).all()
    assert len(refused) == 3 and all("reason:resolved" in (d or "") for d in refused)


def test_a_worker_of_another_organisation_changes_nothing(world: World) -> None:
    escalation_id = raise_one(world, Severity.CRITICAL)
    with world.care.sessions.begin() as session:
        directory.add_organisation(session, "Elders")
        other = directory.add_worker(session, world.care.vault, "Elders", "Kim")
    for target in (escalation_id, 987_654):
        outcome = act(world, other.id, target, Action.RESOLVE)
        assert not outcome.done and "niet bij een cliënt van jouw organisatie" in outcome.message
    with world.care.sessions() as session:
        row = session.get(Escalation, escalation_id)
        assert row is not None and row.status is EscalationStatus.OPEN


def test_the_duress_alarm_is_silent_towards_her(world: World) -> None:
    escalation_id = raise_one(world, Severity.CRITICAL, "duress")
    assert "STIL ALARM" in world.to_worker()[0].text
    act(world, world.worker_id, escalation_id, Action.CALL)
    act(world, world.worker_id, escalation_id, Action.ACKNOWLEDGE)
    assert world.to_client() == []


@pytest.mark.parametrize(
    "data", ["esc:ack:", "esc:ack:x1", "esc:nuke:1", "esc:ack:1:2", "x:ack:1", "", "esc"]
)
def test_callback_data_that_is_not_ours_is_ignored(data: str) -> None:
    assert parse_callback(data) is None


def test_callback_data_round_trips_and_stays_short() -> None:
    data = callback_data(Action.CALL, 123_456_789)
    assert parse_callback(data) == (Action.CALL, 123_456_789)
    assert len(data.encode()) <= 64
