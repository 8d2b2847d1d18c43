"""End to end: real python-telegram-bot against the fake Bot API, the whole bot running.

Each test is what a girl or her worker does in Telegram and what they then see.
"""

from __future__ import annotations

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
    sent = await tg.exchange(
        lambda: fake.press(WORKER_CHAT, "Afgehandeld", alert.message_id), chat_id=WORKER_CHAT
    )
    assert "afgehandeld" in (sent[0].text or "")
    # Pressing resolve again on the old alert is refused and changes nothing.
    sent = await tg.exchange(
        lambda: fake.press(WORKER_CHAT, "Afgehandeld", alert.message_id), chat_id=WORKER_CHAT
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
    assert [m.text for m in left] == [
        "Klaar, alles is gewist. Typ /start als je opnieuw wilt beginnen."
    ]
    with tg.care.sessions() as session:
        kept = session.scalars(
            select(ChatMessage.message_id).where(ChatMessage.deleted_at.is_(None))
        ).all()
    assert kept == [left[0].message_id]


async def test_duress_word_gets_an_ordinary_reply_and_a_silent_alarm(
    telegram_bot: TelegramWorld,
) -> None:
    from care import directory
    from care.models import Organisation

    tg = telegram_bot
    fake = tg.fake
    with tg.care.sessions.begin() as session:
        org = session.scalars(select(Organisation)).one()
        directory.set_duress_word(session, tg.care.keyring, org, "Paraplu", "test")
    await tg.enroll()
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
