"""The workers' desk: commands and buttons, channel-neutral, read from the outbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from care import directory
from care.context import Care
from care.errors import InvalidInput
from care.models import (
    Appointment,
    AuditEntry,
    CheckIn,
    Client,
    ClientStatus,
    OutboxMessage,
    OutboxStatus,
    Worker,
    WorkerRole,
)
from care.workers import (
    ClockChange,
    NoSuchDate,
    WorkerDesk,
    mood_chart,
    parse_when,
    plain_appointment,
)
from tests.bot.world import WORKER_CHAT, World, make_world

COORDINATOR_CHAT = 5_550_010


@pytest.fixture
def world(care_ctx: Care) -> World:
    """Het Anker, Anna (linked), roos-1 (linked), and a second client of a colleague."""
    return anker(care_ctx)


def anker(care_ctx: Care, desk: WorkerDesk | None = None) -> World:
    """The `world` fixture's world, with the given desk."""
    made = make_world(care_ctx, desk=desk)
    with care_ctx.sessions.begin() as session:
        directory.link_chat(session, care_ctx.vault, made.client_code, 5_550_001)
        bram = directory.add_worker(session, care_ctx.vault, "Het Anker", "Bram")
        coordinator = directory.add_worker(
            session, care_ctx.vault, "Het Anker", "Cor", WorkerRole.COORDINATOR
        )
        directory.link_chat(session, care_ctx.vault, coordinator.code, COORDINATOR_CHAT)
        from care.models import Worker

        found = session.get(Worker, bram.id)
        assert found is not None
        directory.invite_client(session, care_ctx.vault, found, alias="sterre-2")
    return made


def saved_appointments(world: World) -> list[Appointment]:
    with world.care.sessions() as session:
        return list(session.scalars(select(Appointment)).all())


async def worker_says(world: World, command: str, *args: str, chat: int = WORKER_CHAT) -> str:
    await world.command(command, *args, chat_id=chat)
    return "\n---\n".join(s.text for s in world.to_worker())


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("31-12-2026", "14:30", datetime(2026, 12, 31, 13, 30, tzinfo=UTC)),
        ("2026-12-31", "14:30", datetime(2026, 12, 31, 13, 30, tzinfo=UTC)),
        ("01-07-2026", "09:05", datetime(2026, 7, 1, 7, 5, tzinfo=UTC)),
    ],
)
def test_appointment_dates_in_the_documented_forms(
    date: str, time: str, expected: datetime
) -> None:
    assert parse_when(date, time, "Europe/Amsterdam") == expected


@pytest.mark.parametrize(
    ("date", "time"),
    [("31/12/2026", "14:30"), ("12-31-2026", "14:30"), ("31-12-2026", "2pm"), ("morgen", "14:30")],
)
def test_other_date_forms_are_refused(date: str, time: str) -> None:
    with pytest.raises(InvalidInput):
        parse_when(date, time, "Europe/Amsterdam")


@pytest.mark.parametrize(
    ("date", "time"),
    [
        ("31-02-2027", "10:00"),
        ("2027-13-01", "10:00"),
        ("01-03-2027", "24:00"),
        ("1-3-2027", "9:60"),
    ],
)
def test_a_day_or_time_that_does_not_exist_is_named_so(date: str, time: str) -> None:
    with pytest.raises(NoSuchDate):
        parse_when(date, time, "Europe/Amsterdam")


@pytest.mark.parametrize(
    ("date", "time", "direction"),
    [
        ("28-03-2027", "02:30", "forward"),  # 02:00 -> 03:00 in Amsterdam
        ("28-03-2027", "02:00", "forward"),
        ("31-10-2027", "02:30", "back"),  # 03:00 -> 02:00: 02:30 happens twice
        ("2027-10-31", "02:00", "back"),
    ],
)
def test_a_time_the_clock_change_skips_or_repeats_is_refused(
    date: str, time: str, direction: str
) -> None:
    with pytest.raises(ClockChange) as raised:
        parse_when(date, time, "Europe/Amsterdam")
    assert raised.value.direction == direction


def test_the_hours_around_a_clock_change_are_read_as_written() -> None:
    before = parse_when("28-03-2027", "01:59", "Europe/Amsterdam")
    after = parse_when("28-03-2027", "03:00", "Europe/Amsterdam")
    assert after.astimezone(UTC) - before.astimezone(UTC) == timedelta(minutes=1)
    assert parse_when("31-10-2027", "03:00", "Europe/Amsterdam") == datetime(
        2027, 10, 31, 2, 0, tzinfo=UTC
    )


async def test_a_worker_lists_her_own_clients_a_coordinator_all(world: World) -> None:
    mine = await worker_says(world, "clients")
    assert "roos-1" in mine and "sterre-2" not in mine
    everyone = await worker_says(world, "clients", chat=COORDINATOR_CHAT)
    assert "roos-1" in everyone and "sterre-2" in everyone
    with world.care.sessions() as session:
        looked = session.scalars(
            select(AuditEntry.client_alias).where(AuditEntry.action == "worker.client_list")
        ).all()
    assert sorted(a or "" for a in looked) == ["roos-1", "roos-1", "sterre-2"]


async def test_client_view_has_checkins_and_a_mood_chart(world: World) -> None:
    now = world.clock.now()
    with world.care.sessions.begin() as session:
        for days, mood in ((9, "good"), (5, "okay"), (1, "bad")):
            when = now - timedelta(days=days)
            session.add(
                CheckIn(
                    client_id=world.client_id,
                    due_at=when,
                    answered_at=when,
                    mood=mood,
                    status="answered",
                )
            )
    await world.command("client", "roos-1", chat_id=WORKER_CHAT)
    sent = world.to_worker()
    assert "😔 niet zo goed" in sent[0].text and "😊 goed" in sent[0].text
    assert sent[1].payload["type"] == "photo"
    assert sent[1].text == "Stemming van roos-1, laatste 8 weken"


async def test_appointment_is_saved_only_after_confirming(world: World) -> None:
    text = await worker_says(world, "appointment", "roos-1", "31-12-2026", "14:30", "De", "Linde")
    assert "donderdag 31 december om 14:30" in text and "De Linde" in text
    await world.command("appointment", "roos-1", "30-12-2026", "10:00", chat_id=WORKER_CHAT)
    cancel = world.to_worker()[-1].button("Annuleren")
    assert saved_appointments(world) == []
    await world.press(cancel, chat_id=WORKER_CHAT)
    assert world.to_worker()[-1].text == "Oké, niet opgeslagen."
    await world.press(cancel, chat_id=WORKER_CHAT)
    assert world.to_worker()[-1].text == (
        "Deze afspraak was al geannuleerd. Er is niets opgeslagen."
    )
    assert saved_appointments(world) == []


async def test_appointment_confirmation_saves_and_tells_her(world: World) -> None:
    await world.command("appointment", "roos-1", "31-12-2026", "14:30", chat_id=WORKER_CHAT)
    save = world.to_worker()[-1].button("Opslaan")
    # Another worker cannot use Anna's confirmation.
    await world.press(save, chat_id=COORDINATOR_CHAT)
    assert "verlopen" in world.to_worker()[-1].text
    await world.press(save, chat_id=WORKER_CHAT)
    assert world.to_worker()[-1].text.startswith("Opgeslagen: afspraak met roos-1")
    assert world.to_client()[-1].text == (
        "Nieuwe afspraak met Anna: donderdag 31 december om 14:30."
    )
    with world.care.sessions() as session:
        saved = session.scalars(select(Appointment)).one()
    assert saved.starts_at == datetime(2026, 12, 31, 13, 30, tzinfo=UTC)


async def test_pressing_save_twice_saves_one_appointment(world: World) -> None:
    """A worker who taps again (a slow phone, a double tap) is told it is saved already, not
    asked to send it again, which would give her two appointments and every reminder twice."""
    await world.command("appointment", "roos-1", "31-12-2026", "14:30", chat_id=WORKER_CHAT)
    confirmation = world.to_worker()[-1]
    await world.press(confirmation.button("Opslaan"), chat_id=WORKER_CHAT)
    assert world.to_worker()[-1].text.startswith("Opgeslagen: afspraak met roos-1")
    assert len(world.to_client()) == 1
    for button in ("Opslaan", "Annuleren"):
        await world.press(confirmation.button(button), chat_id=WORKER_CHAT)
        assert world.to_worker()[-1].text == (
            "Deze afspraak is al opgeslagen. Er komt geen tweede."
        )
    assert world.to_client() == []
    assert len(saved_appointments(world)) == 1


async def test_two_taps_at_once_save_one_appointment(world: World) -> None:
    await world.command("appointment", "roos-1", "31-12-2026", "14:30", chat_id=WORKER_CHAT)
    save = world.to_worker()[-1].button("Opslaan")
    await asyncio.gather(*(world.press(save, chat_id=WORKER_CHAT) for _ in range(2)))
    answers = sorted(sent.text for sent in world.to_worker())
    assert answers[0] == "Deze afspraak is al opgeslagen. Er komt geen tweede."
    assert answers[1].startswith("Opgeslagen: afspraak met roos-1")
    assert len(saved_appointments(world)) == 1
    assert len(world.to_client()) == 1


async def test_a_save_that_failed_is_saved_by_the_next_press(care_ctx: Care) -> None:
    """The turn that confirmed it failed and was rolled back: the worker is told so, and the
    same button saves it after all (not "saved already", which would lose it)."""
    failures = ["the disk is full"]

    def book_failing_once(*args: Any, **kwargs: Any) -> Appointment:
        if failures:
            raise RuntimeError(failures.pop())
        return plain_appointment(*args, **kwargs)

    world = anker(care_ctx, WorkerDesk(care_ctx, appointments=book_failing_once))
    await world.command("appointment", "roos-1", "31-12-2026", "14:30", chat_id=WORKER_CHAT)
    save = world.to_worker()[-1].button("Opslaan")
    await world.press(save, chat_id=WORKER_CHAT)
    assert world.to_worker()[-1].text == (
        "Sorry, dat lukte niet door een fout bij mij. Probeer het zo nog eens."
    )
    assert saved_appointments(world) == []
    assert world.to_client() == []
    await world.press(save, chat_id=WORKER_CHAT)
    assert world.to_worker()[-1].text.startswith("Opgeslagen: afspraak met roos-1")
    assert len(saved_appointments(world)) == 1
    assert len(world.to_client()) == 1


async def test_appointments_in_the_past_or_unreadable_are_refused(world: World) -> None:
    assert "verleden" in await worker_says(world, "appointment", "roos-1", "01-01-2020", "10:00")
    assert "31-12-2026 14:30" in await worker_says(world, "appointment", "roos-1", "morgen", "10")
    assert "Gebruik" in await worker_says(world, "appointment", "roos-1")
    assert await worker_says(world, "appointment", "roos-1", "31-02-2027", "10:00") == (
        "31-02-2027 10:00 bestaat niet. Schrijf de dag eerst, tijd 00:00-23:59: "
        "bv. 31-12-2026 14:30 of 2026-12-31 14:30."
    )
    skipped = await worker_says(world, "appointment", "roos-1", "28-03-2027", "02:30")
    assert skipped.startswith("Die tijd bestaat niet op die dag: de klok gaat dan een uur vooruit")
    twice = await worker_says(world, "appointment", "roos-1", "31-10-2027", "02:30")
    assert twice.startswith("Die tijd komt op die dag twee keer voor")


async def test_send_is_refused_to_someone_who_stopped(world: World) -> None:
    with world.care.sessions.begin() as session:
        client = session.get(Client, world.client_id)
        assert client is not None
        client.status = ClientStatus.ENDED
    answer = await worker_says(world, "send", "roos-1", "hoi")
    assert "niet bereikbaar" in answer and "ze is gestopt" in answer
    assert world.to_client() == []


async def test_handover_needs_a_known_colleague(world: World) -> None:
    assert "geen collega" in await worker_says(world, "handover", "roos-1", "Nobody", "note")
    assert "al de contactpersoon" in await worker_says(
        world, "handover", "roos-1", "Anna", "de", "Vries"
    )


async def test_invite_gives_a_code_that_enrolls(world: World) -> None:
    text = await worker_says(world, "invite", "maan-3")
    code = next(word for word in text.split() if len(word) == 32)
    assert "/start " + code in text
    await world.command("start", code, chat_id=5_550_055)
    with world.care.sessions() as session:
        client = session.scalars(select(Client).where(Client.alias == "maan-3")).one()
    assert client.status is ClientStatus.ACTIVE


async def test_unknown_commands_and_plain_text_get_the_command_list(world: World) -> None:
    assert "Opdrachten:" in await worker_says(world, "bogus")
    await world.text("hallo?", chat_id=WORKER_CHAT)
    assert "Opdrachten:" in world.to_worker()[-1].text


def test_mood_chart_is_a_png() -> None:
    points = [
        (datetime(2026, 3, day, 12, tzinfo=UTC), mood)
        for day, mood in ((1, "good"), (4, "okay"), (8, "bad"))
    ]
    assert mood_chart(points, "test")[:8] == b"\x89PNG\r\n\x1a\n"


async def test_client_view_shows_what_was_not_sent_and_why(world: World) -> None:
    from care.outbox import record_skip

    now = world.clock.now()
    with world.care.sessions.begin() as session:
        record_skip(
            session,
            world.client_id,
            "checkin",
            "quiet_hours",
            due_at=now - timedelta(days=1),
            at=now,
        )
        record_skip(
            session, world.client_id, "appointment_reminder", "missed_downtime", due_at=now, at=now
        )
        record_skip(session, world.client_id, "checkin", "alert_waits", at=now)
        record_skip(
            session,
            world.client_id,
            "checkin",
            "paused",
            due_at=now - timedelta(days=30),
            at=now - timedelta(days=30),
        )
    text = await worker_says(world, "client", "roos-1")
    assert "Niet verstuurd (laatste 14 dagen):" in text
    assert "check-in: in haar stille uren" in text
    assert "afspraakherinnering: bot was uit" in text
    assert "check-in: er stond een veiligheidsvraag voor haar open" in text
    assert "ze heeft gepauzeerd" not in text  # older than 14 days


def relay_rows(world: World) -> list[tuple[int, datetime, OutboxStatus]]:
    with world.care.sessions() as session:
        rows = session.execute(
            select(OutboxMessage.id, OutboxMessage.not_before, OutboxMessage.status)
            .where(OutboxMessage.kind == "relay")
            .order_by(OutboxMessage.id)
        )
        return [(row_id, not_before, status) for row_id, not_before, status in rows]


async def test_a_message_in_her_quiet_hours_waits_unless_her_worker_says_now(
    world: World,
) -> None:
    """At 23:30 her phone must stay silent: Anna's message waits until 08:00 (the
    organisation's quiet hours, 22:00-08:00, her time), and Anna is told so, with a button
    to send it now after all. Pressing it twice sends it once."""
    amsterdam = ZoneInfo("Europe/Amsterdam")
    world.clock.set(datetime(2026, 3, 3, 23, 30, tzinfo=amsterdam))  # type: ignore[attr-defined]
    answer = await worker_says(world, "send", "roos-1", "Bel", "me", "morgen")
    assert answer.startswith("Het is nu stille tijd voor roos-1: haar telefoon blijft stil tot")
    assert "04-03 08:00" in answer
    [(row_id, not_before, status)] = relay_rows(world)
    assert not_before == datetime(2026, 3, 4, 8, 0, tzinfo=amsterdam)
    assert status is OutboxStatus.PENDING
    await world.command("send", "roos-1", "hoi", chat_id=WORKER_CHAT)
    button = world.to_worker()[-1].button("Toch nu sturen")
    assert button != f"relay:now:{row_id}", "each held message has a button of its own"

    await world.press(f"relay:now:{row_id}", chat_id=WORKER_CHAT)
    assert [s.text for s in world.to_worker()] == ["Je bericht gaat nu naar roos-1."]
    rows = relay_rows(world)
    assert rows[0][1] == world.clock.now(), "the first goes now"
    assert rows[1][1] == datetime(2026, 3, 4, 8, 0, tzinfo=amsterdam), "the second still waits"
    await world.press(f"relay:now:{row_id}", chat_id=WORKER_CHAT)
    assert [s.text for s in world.to_worker()] == [
        "Dat bericht is al verstuurd of bestaat niet meer."
    ]
    with world.care.sessions() as session:
        actions = list(session.scalars(select(AuditEntry.action)))
    assert actions.count("worker.send_now") == 1


async def test_in_her_own_waking_hours_a_message_goes_at_once(world: World) -> None:
    """She chose 01:00-07:00 as her quiet hours: at 23:30 a message goes to her at once."""
    amsterdam = ZoneInfo("Europe/Amsterdam")
    with world.care.sessions.begin() as session:
        session.get_one(Client, world.client_id).quiet_hours = "01:00-07:00"
    world.clock.set(datetime(2026, 3, 3, 23, 30, tzinfo=amsterdam))  # type: ignore[attr-defined]
    assert await worker_says(world, "send", "roos-1", "hoi") == "Doorgestuurd aan roos-1."
    [(_, not_before, _)] = relay_rows(world)
    assert abs(not_before - datetime.now(UTC)) < timedelta(minutes=1), "written to go now"


async def test_send_now_for_a_forged_or_foreign_message_changes_nothing(world: World) -> None:
    """A made-up id, a message that is no relay (her check-in question) and another
    organisation's held message: each is refused and audited; nothing moves."""
    amsterdam = ZoneInfo("Europe/Amsterdam")
    world.clock.set(datetime(2026, 3, 3, 23, 30, tzinfo=amsterdam))  # type: ignore[attr-defined]
    with world.care.sessions.begin() as session:
        directory.add_organisation(session, "De Overkant")
        other = directory.add_worker(session, world.care.vault, "De Overkant", "Olga")
        directory.link_chat(session, world.care.vault, other.code, 5_550_077)
        olga = session.get_one(Worker, other.id)
        invited = directory.invite_client(session, world.care.vault, olga, alias="zon-9")
        directory.link_chat(session, world.care.vault, invited.code, 5_550_078)
    world.pending()
    await world.command("send", "zon-9", "hoi", chat_id=5_550_077)
    [(foreign, _, _)] = relay_rows(world)
    world.pending()
    await world.service.start_flow(world.client_id, "checkin")
    not_relay = world.to_client()[-1].id
    before = relay_rows(world)
    for forged in (f"relay:now:{foreign}", f"relay:now:{not_relay}", "relay:now:999999999"):
        await world.press(forged, chat_id=WORKER_CHAT)
        assert [s.text for s in world.to_worker()] == ["Deze knop werkt niet (meer)."]
    assert relay_rows(world) == before
    with world.care.sessions() as session:
        refused = session.scalars(
            select(AuditEntry.action).where(AuditEntry.action == "worker.button_refused")
        ).all()
    assert len(refused) == 3


async def test_what_her_worker_arranges_at_night_reaches_her_in_the_morning(
    world: World,
) -> None:
    """An appointment saved and a handover made at 23:30: she hears of both at 08:00, and
    her worker is told when."""
    amsterdam = ZoneInfo("Europe/Amsterdam")
    world.clock.set(datetime(2026, 3, 3, 23, 30, tzinfo=amsterdam))  # type: ignore[attr-defined]
    await world.command("appointment", "roos-1", "31-12-2026", "14:30", chat_id=WORKER_CHAT)
    await world.press(world.to_worker()[-1].button("Opslaan"), chat_id=WORKER_CHAT)
    saved = world.to_worker()[-1].text
    assert saved.startswith("Opgeslagen: afspraak met roos-1")
    assert saved.endswith("Zij krijgt het bericht om 04-03 08:00 (stille tijd).")
    with world.care.sessions.begin() as session:
        bram = directory.add_worker(session, world.care.vault, "Het Anker", "Bram Jansen")
        directory.link_chat(session, world.care.vault, bram.code, 5_550_033)
    world.pending()
    handed = await worker_says(world, "handover", "roos-1", "Bram", "Jansen", "Ze", "tekent")
    assert handed.endswith("Zij krijgt het bericht om 04-03 08:00 (stille tijd).")
    morning = datetime(2026, 3, 4, 8, 0, tzinfo=amsterdam)
    assert [not_before for _, not_before, _ in relay_rows(world)] == [morning, morning]


async def test_an_invite_with_a_bad_or_taken_alias_is_refused_in_her_workers_language(
    world: World,
) -> None:
    """The alias rules come from the CLI's storage layer, in English; the worker reads them
    in the desk's words, in their own language, and no client is made."""
    with world.care.sessions() as session:
        before = len(session.scalars(select(Client)).all())
    assert await worker_says(world, "invite", "roos de", "Vries") == (
        "Een schuilnaam heeft 2 tot 40 letters, cijfers, '.', '_' of '-', zonder spaties."
        " Nooit haar echte naam. Of laat hem weg: dan kies ik er een."
    )
    assert await worker_says(world, "invite", "roos-1") == (
        "Die schuilnaam is al in gebruik in jouw organisatie. Kies een andere, of laat hem"
        " weg: dan kies ik er een."
    )
    with world.care.sessions() as session:
        assert len(session.scalars(select(Client)).all()) == before
    assert "Nieuwe cliënt roos-2" in await worker_says(world, "invite", "roos-2")
