"""Running the bot: webhook mode (secret token, 503 when the database is down, /healthz) and
a graceful stop that finishes the update in hand and flushes the outbox."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError
from telegram import Bot

from bot.bootstrap import database_health, serve_telegram
from bot.telegram.webhook import SECRET_HEADER, WebhookServer
from care.db import make_engine
from care.settings import WebhookSettings
from tests.bot.harness import CLIENT_CHAT, FAST_SENDER, TelegramWorld
from tests.fakes.telegram_api import FakeTelegram


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


PORT = _free_port()
WEBHOOK = {
    "mode": "webhook",
    "webhook_secret": SecretStr("s3cret-token_1"),
    "webhook": WebhookSettings(
        listen="127.0.0.1", port=PORT, path="hook", public_url=f"http://127.0.0.1:{PORT}/hook"
    ),
}


@pytest.mark.bot_settings(**WEBHOOK)
async def test_webhook_mode_serves_her_and_checks_the_secret(telegram_bot: TelegramWorld) -> None:
    tg = telegram_bot
    assert tg.fake.webhook_url == f"http://127.0.0.1:{PORT}/hook"
    await tg.enroll()
    assert tg.texts()[-1].startswith("Dat was het!")
    assert all(a.secret_sent == "s3cret-token_1" for a in tg.fake.webhook_attempts())
    update = {
        "update_id": 99,
        "message": {
            "message_id": 1,
            "date": 0,
            "text": "hoi",
            "chat": {"id": CLIENT_CHAT, "type": "private"},
        },
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}") as http:
        assert (await http.post("/hook", json=update)).status_code == 403
        wrong = await http.post("/hook", json=update, headers={SECRET_HEADER: "guess"})
        assert wrong.status_code == 403
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"ok": True}


@pytest.mark.bot_settings(**WEBHOOK)
async def test_webhook_answers_503_while_the_database_is_down(
    telegram_bot: TelegramWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg = telegram_bot
    service = tg.parts.service

    def down(*args: Any) -> Any:
        raise OperationalError("connect", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(service.care.engine.pool, "connect", down)
    update = {
        "update_id": 77,
        "message": {
            "message_id": 5,
            "date": 0,
            "text": "hoi",
            "chat": {"id": CLIENT_CHAT, "type": "private"},
        },
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}") as http:
        answer = await http.post("/hook", json=update, headers={SECRET_HEADER: "s3cret-token_1"})
    assert answer.status_code == 503
    monkeypatch.undo()
    # Telegram delivers it again later; now it is handled (she is unknown: neutral answer).
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}") as http:
        answer = await http.post("/hook", json=update, headers={SECRET_HEADER: "s3cret-token_1"})
    assert answer.status_code == 200


async def test_healthz_is_503_when_the_database_cannot_be_reached(
    fake_telegram: FakeTelegram,
) -> None:
    class Nobody:
        async def process(self, update: object) -> None:
            raise AssertionError("not called")

    class Unreachable:
        engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")

    server = WebhookServer(
        Nobody(),  # type: ignore[arg-type]
        Bot(fake_telegram.token, base_url=fake_telegram.base_url),
        secret="x-secret",
        health=database_health(Unreachable),  # type: ignore[arg-type]
        port=0,
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            health = await http.get("/healthz")
        assert health.status_code == 503 and health.json() == {"ok": False}
    finally:
        await server.stop()
        Unreachable.engine.dispose()


async def test_stop_finishes_the_update_in_hand_and_flushes_the_outbox(
    telegram_bot: TelegramWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg = telegram_bot
    await tg.enroll()
    nlu = tg.parts.service.nlu
    real = nlu.understand_now  # the embedded NLU reads her text in her turn, on its thread
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(text: str, lang: str) -> Any:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.6)
        return real(text, lang)

    monkeypatch.setattr(nlu, "understand_now", slow)
    before = len(tg.fake.sent(CLIENT_CHAT))
    tg.fake.push_text(CLIENT_CHAT, "hoi")
    await asyncio.wait_for(started.wait(), 10)
    tg.stop.set()  # as SIGTERM does
    await asyncio.wait_for(tg.task, 30)
    assert len(tg.fake.sent(CLIENT_CHAT)) > before, "the reply went out before the bot exited"
    assert tg.world.pending(mark=False) == []


async def test_an_update_fetched_as_the_bot_stops_is_answered_after_the_restart(
    telegram_bot: TelegramWorld,
) -> None:
    tg = telegram_bot
    await tg.enroll()
    # The poll waiting now was asked before the fault: "hallo" ends it, and the next poll
    # hands "hoi" over with its answer late, so the bot stops before the answer arrives.
    tg.fake.delay_next("getUpdates", 3.0, after=True)
    await tg.exchange(lambda: tg.fake.push_text(CLIENT_CHAT, "hallo"))
    await tg.settle()
    before = len(tg.fake.sent(CLIENT_CHAT))
    update_id = tg.fake.push_text(CLIENT_CHAT, "hoi")
    await tg.until(lambda: tg.fake.delivered_at(update_id) is not None)
    tg.stop.set()
    await asyncio.wait_for(tg.task, 30)
    assert not tg.fake.confirmed(update_id), "never confirmed, so Telegram keeps it"
    assert len(tg.fake.sent(CLIENT_CHAT)) == before

    stop = asyncio.Event()
    again = asyncio.create_task(
        serve_telegram(
            tg.parts,
            stop,
            token=tg.fake.token,
            base_url=tg.fake.base_url,
            sender_options=FAST_SENDER,
        )
    )
    try:
        await tg.bot_says(before + 1)
        await tg.settle()
        assert tg.fake.confirmed(update_id)
        replies = tg.fake.sent(CLIENT_CHAT)[before:]
        assert len(replies) == 1, "answered once after the restart"
    finally:
        stop.set()
        await asyncio.wait_for(again, 30)


async def test_a_chats_updates_are_handled_in_order_and_drain_waits_for_all(
    telegram_bot: TelegramWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg = telegram_bot
    await tg.enroll()
    service = tg.parts.service
    real = service.handle
    seen: list[str] = []

    async def slow_first(inbound: Any) -> Any:
        seen.append(inbound.text or "")
        if inbound.text == "een":
            await asyncio.sleep(0.4)  # the next two arrive while this one runs
        return await real(inbound)

    monkeypatch.setattr(service, "handle", slow_first)
    before = len(tg.fake.sent(CLIENT_CHAT))
    for text in ("een", "twee", "drie"):
        tg.fake.push_text(CLIENT_CHAT, text)
    await tg.until(lambda: tg.fake.pending_updates() == 0)
    tg.stop.set()  # at once: the three are in the front's hands, not yet answered
    await asyncio.wait_for(tg.task, 30)
    assert seen == ["een", "twee", "drie"]
    assert len(tg.fake.sent(CLIENT_CHAT)) >= before + 3, "each got its answer before the exit"
    assert tg.world.pending(mark=False) == []
