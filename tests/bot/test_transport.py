"""The Telegram channel over our aiohttp transport, against the fake Bot API.

Each fault Telegram (or the road to it) can show must become the outbox error that keeps her
message neither lost nor doubled: nothing sent -> try again; maybe sent -> do not send twice.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from telegram import Bot
from telegram.error import NetworkError, TimedOut

from bot.telegram import TelegramChannel, make_bot
from bot.telegram.transport import AiohttpRequest
from care.models import RecipientKind
from care.outbox import (
    Button,
    ChannelError,
    MaybeDelivered,
    Outgoing,
    PermanentError,
    RateLimited,
    TransientError,
    Unreachable,
)
from tests.fakes.telegram_api import FakeTelegram

CHAT = 4242


def text(words: str, *, buttons: tuple[tuple[Button, ...], ...] = ()) -> Outgoing:
    return Outgoing(
        outbox_id=1,
        recipient_kind=RecipientKind.CLIENT,
        recipient_id=1,
        chat_id=CHAT,
        kind="text",
        text=words,
        buttons=buttons,
    )


@pytest.fixture
async def bot(fake_telegram: FakeTelegram) -> AsyncIterator[Bot]:
    async with make_bot(fake_telegram.token, fake_telegram.base_url) as bot:
        yield bot


async def outcome(channel: TelegramChannel, message: Outgoing) -> ChannelError | None:
    try:
        await channel.deliver(message)
    except ChannelError as exc:
        return exc
    return None


async def test_a_message_with_buttons_arrives_protected(
    bot: Bot, fake_telegram: FakeTelegram
) -> None:
    channel = TelegramChannel(bot)
    buttons = ((Button("b1", "Goed"), Button("b2", "Slecht")),)
    delivered = await channel.deliver(text("Hoe gaat het?", buttons=buttons))
    (sent,) = fake_telegram.sent(CHAT)
    assert delivered.message_ids == (sent.message_id,)
    assert sent.text == "Hoe gaat het?"
    assert sent.buttons == [("Goed", "b1"), ("Slecht", "b2")]
    assert sent.protect_content


async def test_a_text_longer_than_telegram_takes_goes_in_parts_with_the_buttons_last(
    bot: Bot, fake_telegram: FakeTelegram
) -> None:
    words = ("Een lange brief. " * 400).strip()  # 6,800 characters: two messages
    buttons = ((Button("b1", "Gelezen"),),)
    delivered = await TelegramChannel(bot).deliver(text(words, buttons=buttons))
    first, second = fake_telegram.sent(CHAT)
    assert delivered.message_ids == (first.message_id, second.message_id), "both can be wiped"
    assert f"{first.text} {second.text}" == words
    assert not first.buttons and second.buttons == [("Gelezen", "b1")]
    assert first.protect_content and second.protect_content


async def test_an_answer_without_a_message_id_is_delivered_and_logged_without_text(
    bot: Bot, fake_telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram took the message but its answer holds no id: it went out, so it is not sent
    again (nor is it an error); only a wipe cannot reach it."""
    fake_telegram.answer_strangely_next("sendMessage", True)
    delivered = await TelegramChannel(bot).deliver(text("Hoe gaat het?"))
    assert delivered.message_ids == ()
    assert [m.text for m in fake_telegram.sent(CHAT)] == ["Hoe gaat het?"]
    assert "telegram.sent_without_id" in caplog.text
    assert "Hoe gaat" not in caplog.text and str(CHAT) not in caplog.text


async def test_a_photo_is_uploaded_with_its_caption(bot: Bot, fake_telegram: FakeTelegram) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    message = Outgoing(
        outbox_id=2,
        recipient_kind=RecipientKind.WORKER,
        recipient_id=1,
        chat_id=CHAT,
        kind="photo",
        text="Stemming, 6 weken",
        photo=png,
    )
    delivered = await TelegramChannel(bot).deliver(message)
    (sent,) = fake_telegram.sent(CHAT)
    assert delivered.message_ids == (sent.message_id,)
    assert sent.photo == png and sent.caption == "Stemming, 6 weken"


@pytest.mark.parametrize(
    ("status", "expected"),
    [(403, Unreachable), (400, PermanentError), (502, TransientError), (500, TransientError)],
)
async def test_telegrams_refusals(
    bot: Bot, fake_telegram: FakeTelegram, status: int, expected: type[ChannelError]
) -> None:
    fake_telegram.fail_next("sendMessage", status)
    error = await outcome(TelegramChannel(bot), text("hoi"))
    assert type(error) is expected
    assert fake_telegram.sent(CHAT) == []


async def test_too_many_requests_carries_the_wait(bot: Bot, fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next("sendMessage", 429, retry_after=7)
    error = await outcome(TelegramChannel(bot), text("hoi"))
    assert isinstance(error, RateLimited) and error.retry_after == 7


async def test_a_connection_dropped_is_maybe_delivered_whether_or_not_it_arrived(
    bot: Bot, fake_telegram: FakeTelegram
) -> None:
    channel = TelegramChannel(bot)
    fake_telegram.drop_next("sendMessage", after=True)
    assert isinstance(await outcome(channel, text("een")), MaybeDelivered)
    assert fake_telegram.texts(CHAT) == ["een"], "it did arrive: sending again would double it"
    fake_telegram.drop_next("sendMessage")
    assert isinstance(await outcome(channel, text("twee")), MaybeDelivered)
    # The connection was closed under us; the next message takes a fresh one.
    assert await outcome(channel, text("drie")) is None
    assert fake_telegram.texts(CHAT) == ["een", "drie"]


async def test_no_answer_in_time_is_maybe_delivered(fake_telegram: FakeTelegram) -> None:
    request = AiohttpRequest(read_timeout=0.2)
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url, request=request) as bot:
        fake_telegram.delay_next("sendMessage", 1.0, after=True)
        error = await outcome(TelegramChannel(bot), text("te traag"))
    assert isinstance(error, MaybeDelivered)
    assert fake_telegram.texts(CHAT) == ["te traag"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_telegram_out_of_reach_is_not_sent_so_it_is_tried_again(
    fake_telegram: FakeTelegram,
) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/bot"
    request = AiohttpRequest()
    await request.initialize()  # not `async with bot`: that asks getMe of the closed port
    bot = Bot(fake_telegram.token, base_url=base_url, request=request)
    try:
        with pytest.raises(NetworkError) as caught:
            await bot.send_message(CHAT, "hoi")
        assert isinstance(await outcome(TelegramChannel(bot), text("hoi")), TransientError)
    finally:
        await request.shutdown()
    # The token is in every Bot API URL: no error text may show it.
    chain = [caught.value, caught.value.__cause__]
    assert all(fake_telegram.token not in f"{e!s} {e!r}" for e in chain if e is not None)


async def test_no_free_connection_in_time_is_not_sent(fake_telegram: FakeTelegram) -> None:
    request = AiohttpRequest(connection_pool_size=1, pool_timeout=0.05, connect_timeout=0.05)
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url, request=request) as bot:
        fake_telegram.delay_next("sendMessage", 1.0)
        channel = TelegramChannel(bot)
        slow = asyncio.create_task(channel.deliver(text("eerst")))
        await asyncio.sleep(0.3)  # it holds the only connection for a second
        with pytest.raises(TimedOut):
            await bot.send_message(CHAT, "ertussen")
        assert isinstance(await outcome(channel, text("ertussen")), TransientError)
        await slow
    assert fake_telegram.texts(CHAT) == ["eerst"], "the ones that found no connection never left"


async def test_the_transport_must_be_initialised_and_shuts_down_once(
    fake_telegram: FakeTelegram,
) -> None:
    request = AiohttpRequest()
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request(fake_telegram.base_url + "/getMe", "POST")
    await request.initialize()
    status, body = await request.do_request(
        f"{fake_telegram.base_url}{fake_telegram.token}/getMe", "POST"
    )
    assert status == 200 and b'"ok":true' in body.replace(b" ", b"")
    await request.shutdown()
    await request.shutdown()
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request(fake_telegram.base_url + "/getMe", "POST")
    with pytest.raises(ValueError, match="at least 1"):
        AiohttpRequest(connection_pool_size=0)
