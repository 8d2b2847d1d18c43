"""End to end: real python-telegram-bot against the fake Bot API, the whole bot running.

Each test is what a girl or her worker does in Telegram and what they then see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from care.models import (
    AuditEntry,
    ChatMessage,
    CheckIn,
    ClientStatus,
    Escalation,
    EscalationStatus,
    ProcessedUpdate,
)
from tests.bot.harness import CLIENT_CHAT, WORKER_CHAT, TelegramWorld

STRANGER = 7_777_001


async def test_enroll_and_onboarding_in_dutch(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    fake = tg.fake
    first = await tg.exchange(
        lambda: fake.push_command(CLIENT_CHAT, "/start", tg.world.client_code), expect=2
    )
    assert first[0].text == "Hoi! 👋 Fijn dat je er bent."
    assert [label for label, _ in first[1].buttons] == ["Nederlands", "English"]
    await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Nederlands"), expect=4)
    assert any("Anna" in t for t in tg.texts()), "the worker's first name fills {worker_name}"
    await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Ja, prima"), expect=1)
    await tg.exchange(lambda: fake.push_text(CLIENT_CHAT, "Sam"), expect=3)
    await tg.settle()
    texts = tg.texts()
    assert "Dank je! Zo noem ik je vanaf nu." in texts
    assert texts[-1].startswith("Dat was het!")
    assert all(m.protect_content for m in fake.sent(CLIENT_CHAT))
    assert fake.unanswered_callbacks() == []
    # Her worker hears that she linked the app.
    assert any("roos-1" in t for t in tg.texts(WORKER_CHAT))
    assert tg.world.client().status is ClientStatus.ACTIVE


async def test_enroll_in_english_and_her_nickname_is_used(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    await tg.enroll("English")
    sent = await tg.exchange(lambda: tg.fake.push_command(CLIENT_CHAT, "/checkin"), expect=1)
    assert sent[0].text == "Hi! How are you today?"
    assert [label for label, _ in sent[0].buttons] == ["😊 Good", "😐 Okay", "😔 Not so good"]


async def test_start_without_a_valid_code_says_nothing_and_stores_nothing(
    telegram_bot: TelegramWorld,
) -> None:
    tg = telegram_bot
    with tg.care.sessions() as session:
        audit_before = session.scalar(select(func.count()).select_from(AuditEntry))
    for push in (
        lambda: tg.fake.push_command(STRANGER, "/start"),
        lambda: tg.fake.push_command(STRANGER, "/start", "not-a-valid-code-at-all-000"),
        lambda: tg.fake.push_text(STRANGER, "hallo?"),
    ):
        sent = await tg.exchange(push, chat_id=STRANGER)
        assert sent[0].text == "Hoi! Deze chat is niet actief."
        assert sent[0].protect_content
        assert sent[0].buttons == []
    with tg.care.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ProcessedUpdate)) == 0
        assert session.scalar(select(func.count()).select_from(ChatMessage)) == 0
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == audit_before


async def test_checkin_with_buttons_and_with_free_text(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/checkin"), expect=1)
    sent = await tg.exchange(lambda: fake.press(CLIENT_CHAT, "😊 Goed"), expect=2)
    assert sent[0].text == "Fijn om te horen! 😊"
    assert "veilig" in (sent[1].text or "")
    await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Ja"), expect=1)
    # Free text instead of a button: the NLU reads the mood.
    await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/checkin"), expect=1)
    sent = await tg.exchange(lambda: fake.push_text(CLIENT_CHAT, "ik voel me rot"))
    assert "niet zo goed" in (sent[0].text or "")
    await tg.settle()
    with tg.care.sessions() as session:
        moods = session.scalars(select(CheckIn.mood).order_by(CheckIn.id)).all()
        safe = session.scalars(select(CheckIn.feels_safe).order_by(CheckIn.id)).all()
    assert moods == ["good", "bad"]
    assert safe[0] is True


async def test_crisis_reaches_the_worker_with_buttons_and_acknowledge_works(
    telegram_bot: TelegramWorld,
) -> None:
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    worker_before = len(fake.sent(WORKER_CHAT))
    fake.push_text(CLIENT_CHAT, "ik wil niet meer leven")
    alerts = await tg.bot_says(worker_before + 1, WORKER_CHAT)
    alert = alerts[-1]
    assert "roos-1" in (alert.text or "")
    assert "Kritiek" in (alert.text or "")
    labels = [label for label, _ in alert.buttons]
    assert labels == ["Gezien", "Ik bel haar", "Afgehandeld"]
    await tg.settle()
    assert any("113" in t for t in tg.texts()), "she gets the 113 number at once"
    with tg.care.sessions() as session:
        escalation = session.scalars(select(Escalation)).one()
        assert escalation.status is EscalationStatus.OPEN
        assert escalation.severity.value == "critical"
    her_before = len(fake.sent(CLIENT_CHAT))
    await tg.exchange(lambda: fake.press(WORKER_CHAT, "Gezien"), chat_id=WORKER_CHAT)
    her = await tg.bot_says(her_before + 1)
    assert her[-1].text == "Anna heeft je bericht gezien."
    with tg.care.sessions() as session:
        escalation = session.scalars(select(Escalation)).one()
        assert escalation.status is EscalationStatus.ACKNOWLEDGED
        assert escalation.acknowledged_by == tg.world.worker_id
    # The alert itself now says who took it, and keeps only "I will call her" and "Resolve".
    await tg.until(lambda: (fake.message(WORKER_CHAT, alert.message_id) or alert).edit_count > 0)
    edited = fake.message(WORKER_CHAT, alert.message_id)
    assert edited is not None and "👀 Gezien door Anna de Vries" in (edited.text or "")
    assert [label for label, _ in edited.buttons] == ["Ik bel haar", "Afgehandeld"]
    sent = await tg.exchange(
        lambda: fake.press(WORKER_CHAT, "Afgehandeld", alert.message_id), chat_id=WORKER_CHAT
    )
    assert "afgehandeld" in (sent[0].text or "")
    await tg.until(lambda: (fake.message(WORKER_CHAT, alert.message_id) or alert).buttons == [])
    resolved = fake.message(WORKER_CHAT, alert.message_id)
    assert resolved is not None and "✅ Afgehandeld door Anna de Vries" in (resolved.text or "")
    # Pressing resolve again (an old copy of the alert) is refused and changes nothing.
    resolve = dict(alert.buttons)["Afgehandeld"]
    sent = await tg.exchange(
        lambda: fake.push_callback(WORKER_CHAT, resolve, alert.message_id), chat_id=WORKER_CHAT
    )
    assert "al afgehandeld" in (sent[0].text or "")
    assert fake.unanswered_callbacks() == []


async def test_wipe_deletes_every_recorded_message(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    await tg.exchange(lambda: fake.push_text(CLIENT_CHAT, "hoi"), expect=2)
    await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/wissen"), expect=1)
    before_wipe = [m.message_id for m in fake.visible(CLIENT_CHAT)]
    assert len(before_wipe) > 10
    await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Ja, alles wissen"), expect=1)
    await tg.until(lambda: len(fake.visible(CLIENT_CHAT)) == 1)
    await tg.settle()
    left = fake.visible(CLIENT_CHAT)
    # Only a neutral thumbs-up is left: nothing that says a chat was wiped.
    assert [m.text for m in left] == ["👍"]
    with tg.care.sessions() as session:
        kept = session.scalars(
            select(ChatMessage.message_id).where(ChatMessage.deleted_at.is_(None))
        ).all()
    assert kept == [left[0].message_id]


async def _enrolled_with_duress_word(tg: TelegramWorld, word: str) -> None:
    """Her organisation gets a duress word; then she enrolls."""
    from care import directory
    from care.models import Organisation

    with tg.care.sessions.begin() as session:
        org = session.scalars(select(Organisation)).one()
        directory.set_duress_word(session, tg.care.keyring, org, word, "test")
    await tg.enroll()


async def test_duress_word_gets_an_ordinary_reply_and_a_silent_alarm(
    telegram_bot: TelegramWorld,
) -> None:
    tg = telegram_bot
    fake = tg.fake
    await _enrolled_with_duress_word(tg, "Paraplu")
    worker_before = len(fake.sent(WORKER_CHAT))
    sent = await tg.exchange(lambda: fake.push_text(CLIENT_CHAT, "paraplu"))
    assert sent[0].text == "Oké, top! 👍"
    assert sent[0].buttons == []
    alerts = await tg.bot_says(worker_before + 1, WORKER_CHAT)
    assert "STIL ALARM" in (alerts[-1].text or "")
    await tg.settle()
    assert len(fake.sent(CLIENT_CHAT)) == len(tg.texts()), "nothing more reached her"
    with tg.care.sessions() as session:
        escalation = session.scalars(select(Escalation)).one()
        assert (escalation.severity.value, escalation.reason) == ("critical", "duress")
    # "I will call her" on a silent alarm sends her nothing.
    her_before = len(fake.sent(CLIENT_CHAT))
    sent = await tg.exchange(lambda: fake.press(WORKER_CHAT, "Ik bel haar"), chat_id=WORKER_CHAT)
    assert "niets gestuurd" in (sent[0].text or "")
    await tg.settle()
    assert len(fake.sent(CLIENT_CHAT)) == her_before


async def test_a_first_look_from_before_a_move_does_not_hide_the_duress_word(
    telegram_bot: TelegramWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a server NLU, her text has a look of its own before the turn. When the duress word
    changes after that look (her organisation sets one meanwhile), the turn still recognises
    it: it reads the word with her locked row, never from the look."""
    from care import directory
    from care.models import Organisation

    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    real_look = directory.look_up_chat

    def look_from_before(*args: Any) -> directory.Look | None:
        found = real_look(*args)
        with tg.care.sessions.begin() as session:
            org = session.scalars(select(Organisation)).one()
            directory.set_duress_word(session, tg.care.keyring, org, "Paraplu", "test")
        return found

    looks = []

    def counted_look(*args: Any) -> directory.Look | None:
        looks.append(1)
        return look_from_before(*args)

    monkeypatch.setattr(directory, "look_up_chat", counted_look)
    monkeypatch.setattr(tg.world.service.nlu, "reads_here", lambda: False)
    worker_before = len(fake.sent(WORKER_CHAT))
    sent = await tg.exchange(lambda: fake.push_text(CLIENT_CHAT, "paraplu"))
    assert sent[0].text == "Oké, top! 👍"
    alerts = await tg.bot_says(worker_before + 1, WORKER_CHAT)
    assert "STIL ALARM" in (alerts[-1].text or "")
    assert looks == [1]


async def test_worker_commands(telegram_bot: TelegramWorld) -> None:
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from care import directory
    from care.models import Appointment, Client, Worker

    tg = telegram_bot
    fake = tg.fake
    with tg.care.sessions.begin() as session:
        colleague = directory.add_worker(session, tg.care.vault, "Het Anker", "Bram Jansen")
        directory.link_chat(session, tg.care.vault, colleague.code, 5_550_009)
    await tg.enroll()
    # Her quiet hours (her own here) lie well away from now: what her worker sends in them
    # waits for their end.
    awake = datetime.now(ZoneInfo("Europe/Amsterdam"))
    quiet = f"{(awake + timedelta(hours=6)):%H:%M}-{(awake + timedelta(hours=7)):%H:%M}"
    with tg.care.sessions.begin() as session:
        session.scalars(select(Client).where(Client.alias == "roos-1")).one().quiet_hours = quiet
    await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/checkin"), expect=1)
    await tg.exchange(lambda: fake.press(CLIENT_CHAT, "😔 Niet zo goed"), expect=2)
    await tg.settle()

    def worker(command: str, arg: str | None = None) -> int:
        return fake.push_command(WORKER_CHAT, command, arg)

    sent = await tg.exchange(lambda: worker("/clients"), chat_id=WORKER_CHAT)
    assert "roos-1 – actief" in (sent[0].text or "")
    sent = await tg.exchange(lambda: worker("/client", "roos-1"), chat_id=WORKER_CHAT, expect=2)
    assert "Laatste check-ins" in (sent[0].text or "")
    assert "😔 niet zo goed" in (sent[0].text or "")
    assert sent[1].kind == "photo" and sent[1].photo and sent[1].photo[:4] == b"\x89PNG"
    sent = await tg.exchange(lambda: worker("/client", "nobody-here"), chat_id=WORKER_CHAT)
    assert "Ik ken geen cliënt nobody-here" in (sent[0].text or "")

    sent = await tg.exchange(lambda: worker("/invite"), chat_id=WORKER_CHAT)
    code = next(w for w in (sent[0].text or "").split() if len(w) == 32)
    assert "https://t.me/aftercare_test_bot?start=" in (sent[0].text or "")
    new_chat = 5_550_077
    await tg.exchange(
        lambda: fake.push_command(new_chat, "/start", code), chat_id=new_chat, expect=2
    )

    when = datetime.now(UTC).astimezone(ZoneInfo("Europe/Amsterdam")) + timedelta(days=10)
    date = when.strftime("%d-%m-%Y")
    sent = await tg.exchange(
        lambda: worker("/appointment", f"roos-1 {date} 14:30 Buurthuis de Linde"),
        chat_id=WORKER_CHAT,
    )
    assert "14:30" in (sent[0].text or "") and "Buurthuis de Linde" in (sent[0].text or "")
    assert [label for label, _ in sent[0].buttons] == ["Opslaan", "Annuleren"]
    with tg.care.sessions() as session:
        assert session.scalars(select(Appointment)).first() is None, "nothing before confirming"
    her_before = len(fake.sent(CLIENT_CHAT))
    await tg.exchange(lambda: fake.press(WORKER_CHAT, "Opslaan"), chat_id=WORKER_CHAT)
    her = await tg.bot_says(her_before + 1)
    assert her[-1].text is not None and her[-1].text.startswith("Nieuwe afspraak met Anna:")
    with tg.care.sessions() as session:
        appointment = session.scalars(select(Appointment)).one()
        local = appointment.starts_at.astimezone(ZoneInfo("Europe/Amsterdam"))
        assert (local.date(), local.hour, local.minute) == (when.date(), 14, 30)
    sent = await tg.exchange(
        lambda: worker("/appointment", "roos-1 2026/12/31 2pm"), chat_id=WORKER_CHAT
    )
    assert "31-12-2026 14:30" in (sent[0].text or "")

    sent = await tg.exchange(lambda: worker("/send", "roos-1 Tot morgen!"), chat_id=WORKER_CHAT)
    assert sent[0].text == "Doorgestuurd aan roos-1."
    her = await tg.bot_says(her_before + 2)
    assert her[-1].text == "Bericht van Anna:\nTot morgen!"

    sent = await tg.exchange(lambda: worker("/escalations"), chat_id=WORKER_CHAT)
    assert sent[0].text == "Geen open escalaties. 👍"

    sent = await tg.exchange(
        lambda: worker("/handover", "roos-1 Bram Jansen Ze houdt van tekenen."),
        chat_id=WORKER_CHAT,
    )
    assert "Bram Jansen" in (sent[0].text or "")
    bram = await tg.bot_says(1, 5_550_009)
    assert "Ze houdt van tekenen." in (bram[-1].text or "")
    her = await tg.bot_says(her_before + 3)
    assert "Bram" in (her[-1].text or "") and "Anna" in (her[-1].text or "")
    with tg.care.sessions() as session:
        client = session.scalars(select(Client).where(Client.alias == "roos-1")).one()
        new_worker = session.get(Worker, client.assigned_worker_id)
        assert new_worker is not None and new_worker.name == "Bram Jansen"
        actions = set(session.scalars(select(AuditEntry.action)))
    assert {"worker.client_list", "worker.client_view", "worker.send", "client.handover"} <= actions


async def test_every_unsupported_update_gets_a_short_kind_answer(
    telegram_bot: TelegramWorld,
) -> None:
    from tests.fakes.telegram_api import SAMPLES

    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    answers: dict[str, str | None] = {}

    def push(kind: str) -> Callable[[], int]:
        return lambda: fake.push_message(CLIENT_CHAT, **SAMPLES[kind])

    for kind in ("sticker", "photo", "voice", "video", "video_note", "document", "location"):
        sent = await tg.exchange(push(kind))
        answers[kind] = sent[0].text
    sent = await tg.exchange(lambda: fake.push_message(CLIENT_CHAT, **SAMPLES["contact"]))
    answers["contact"] = sent[0].text
    sent = await tg.exchange(lambda: fake.push_message(CLIENT_CHAT, **SAMPLES["forwarded"]))
    answers["forwarded"] = sent[0].text
    sent = await tg.exchange(lambda: fake.push_message(CLIENT_CHAT, **SAMPLES["long_text"]))
    answers["long_text"] = sent[0].text
    mine = fake.push_text(CLIENT_CHAT, "hoi")
    await tg.settle()
    message_id = max(m.message_id for m in fake.visible(CLIENT_CHAT) if not m.from_bot)
    sent = await tg.exchange(lambda: fake.push_edit(CLIENT_CHAT, message_id, "hallo"))
    answers["edited"] = sent[0].text
    assert mine
    assert answers["sticker"] == "Leuk! Ik kan alleen tekst lezen. Wil je het typen?"
    for kind in ("photo", "voice", "video", "video_note", "document"):
        assert (
            answers[kind] == "Ik kan (nog) alleen tekst lezen. Wil je het in een berichtje typen?"
        )
    assert answers["location"] == answers["contact"]
    assert "geen locatie" in (answers["location"] or "")
    assert answers["forwarded"] == "Ik lees alleen berichten die je zelf typt."
    assert "lang bericht" in (answers["long_text"] or "")
    assert "nieuwe berichten" in (answers["edited"] or "")
    assert all(len(a or "") < 120 for a in answers.values())


async def test_the_same_update_twice_is_processed_once(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    before = len(fake.sent(CLIENT_CHAT))
    update_id = fake.push_command(CLIENT_CHAT, "/checkin", times=2)
    await tg.bot_says(before + 1)
    fake.redeliver(update_id)
    await tg.settle()
    assert len(fake.sent(CLIENT_CHAT)) == before + 1


async def test_a_reply_waits_for_the_one_still_on_its_way(telegram_bot: TelegramWorld) -> None:
    """Her next message is handled while the bot's answer to the last one is still being
    delivered: the new answer follows it, never overtakes it."""
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    before = len(fake.sent(CLIENT_CHAT))
    fake.delay_next("sendMessage", 0.8, chat_id=CLIENT_CHAT)  # the first answer is slow
    fake.push_command(CLIENT_CHAT, "/checkin")
    await fake.wait_for_async(lambda: fake.pending_updates() == 0, 5)
    await asyncio.sleep(0.2)  # its turn committed; its answer is on its way
    fake.push_text(CLIENT_CHAT, "hoi")
    # Both answers arrive (a stalled sender would never send the second), however slow the
    # machine: `settle` alone does not wait for a message still on its way.
    await fake.wait_for_async(lambda: len(fake.texts(CLIENT_CHAT)) >= before + 2, 10)
    await tg.settle()
    texts = fake.texts(CLIENT_CHAT)[before:]
    assert len(texts) == 2, texts
    assert "Hoe gaat het" in texts[0], "the check-in question came first, as asked first"


async def test_forged_and_old_buttons_change_nothing(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()
    first = await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/checkin"))
    old_question = first[0].message_id
    await tg.exchange(lambda: fake.press(CLIENT_CHAT, "😊 Goed"), expect=2)
    # A forged id and an old button: a gentle re-ask, no check-in change.
    sent = await tg.exchange(lambda: fake.push_callback(CLIENT_CHAT, "zzzzzz.bad"))
    assert sent[0].text is not None and sent[0].text.startswith("Die knop hoort bij een eerder")
    sent = await tg.exchange(lambda: fake.press(CLIENT_CHAT, "😔 Niet zo goed", old_question))
    assert sent[0].text is not None and sent[0].text.startswith("Die knop hoort bij een eerder")
    # A worker's escalation button pressed by her is just another stale button.
    sent = await tg.exchange(lambda: fake.push_callback(CLIENT_CHAT, "esc:res:1"))
    assert sent[0].text is not None and sent[0].text.startswith("Die knop hoort bij een eerder")
    await tg.settle()
    with tg.care.sessions() as session:
        assert session.scalars(select(CheckIn.mood)).all() == ["good"]
    assert fake.unanswered_callbacks() == []


async def test_a_safety_question_she_left_for_help_can_still_be_answered(
    telegram_bot: TelegramWorld,
) -> None:
    """Asked "shall I alert Anna?", she opens the help menu and answers the question on its
    own message after all. Later, asked again, she goes through the help menu: the question
    comes back when she is done there, and she answers it on the new message."""
    tg = telegram_bot
    fake = tg.fake
    await tg.enroll()

    def danger() -> int:
        return fake.push_text(CLIENT_CHAT, "ik weet niet waar ik ben")

    (question,) = await tg.exchange(danger)
    assert question.text is not None and question.text.startswith("Ik wil zeker weten")
    await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/help"))
    sent = await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Nee, nu niet", question.message_id))
    assert sent[0].text is not None and sent[0].text.startswith("Oké, ik doe niks")

    await tg.exchange(danger)
    await tg.exchange(lambda: fake.push_command(CLIENT_CHAT, "/help"))
    sent = await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Iets anders"), expect=2)
    again = sent[1]
    assert again.text is not None and again.text.startswith(
        "Even terug naar mijn vraag van net:\n\nIk wil zeker weten"
    )
    sent = await tg.exchange(lambda: fake.press(CLIENT_CHAT, "Ja, graag", again.message_id))
    assert sent[0].text is not None and sent[0].text.startswith("Ik heb Anna een seintje")
    await tg.settle()
    with tg.care.sessions() as session:
        assert session.scalars(select(Escalation.reason)).all() == ["safety_check_alert"]
    assert fake.unanswered_callbacks() == []


async def test_a_worker_of_another_organisation_is_refused_and_audited(
    telegram_bot: TelegramWorld,
) -> None:
    from care import directory

    tg = telegram_bot
    fake = tg.fake
    outsider_chat = 5_550_099
    with tg.care.sessions.begin() as session:
        directory.add_organisation(session, "Elders")
        other = directory.add_worker(session, tg.care.vault, "Elders", "Kim")
        directory.link_chat(session, tg.care.vault, other.code, outsider_chat)
    await tg.enroll()
    await tg.exchange(lambda: fake.push_text(CLIENT_CHAT, "help ik ben in gevaar"), expect=1)
    await tg.settle()
    with tg.care.sessions() as session:
        escalation_id = session.scalars(select(Escalation.id)).first()
    sent = await tg.exchange(
        lambda: fake.push_callback(outsider_chat, f"esc:ack:{escalation_id}", 1),
        chat_id=outsider_chat,
    )
    assert "hoort niet bij een cliënt van jouw organisatie" in (sent[0].text or "")
    sent = await tg.exchange(
        lambda: fake.push_command(outsider_chat, "/client", "roos-1"), chat_id=outsider_chat
    )
    assert "Ik ken geen cliënt roos-1" in (sent[0].text or "")
    with tg.care.sessions() as session:
        escalation = session.get(Escalation, escalation_id)
        assert escalation is not None and escalation.status is EscalationStatus.OPEN
        refused = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "escalation.refused")
        ).all()
    assert len(refused) == 1 and refused[0].detail is not None
    assert "reason:foreign" in refused[0].detail
