"""Tests of the fake Telegram Bot API, driven through the real python-telegram-bot stack."""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import telegram
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from tests.fakes.remote import RemoteFakeTelegram
from tests.fakes.telegram_api import (
    DEFAULT_TOKEN,
    SAMPLES,
    FakeTelegram,
    FakeTelegramError,
    WaitTimeout,
)

CHAT = 1001
OTHER_CHAT = 1002
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def keyboard(*labels: str) -> InlineKeyboardMarkup:
    """One row of buttons whose callback data is the lower-cased label."""
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(x, callback_data=x.lower()) for x in labels]]
    )


@pytest.fixture
async def bot(fake_telegram: FakeTelegram) -> AsyncIterator[telegram.Bot]:
    """A real PTB bot pointed at the fake."""
    async with telegram.Bot(
        fake_telegram.token,
        base_url=fake_telegram.base_url,
        base_file_url=fake_telegram.base_file_url,
    ) as bot:
        yield bot


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------- basics


async def test_get_me_answers_the_bot_user(bot: telegram.Bot, fake_telegram: FakeTelegram) -> None:
    me = await bot.get_me()
    assert me.is_bot
    assert me.id == fake_telegram.bot_id
    assert me.username == fake_telegram.bot_username


async def test_wrong_token_is_unauthorized(fake_telegram: FakeTelegram) -> None:
    wrong = telegram.Bot("999:not-the-token", base_url=fake_telegram.base_url)
    with pytest.raises(InvalidToken):
        async with wrong:  # initialize() calls getMe, and shuts down again when it fails
            pass


async def test_unknown_method_is_not_found(bot: telegram.Bot) -> None:
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("sendSomethingNew", api_kwargs={"chat_id": CHAT})


def test_error_bodies_are_shaped_like_telegrams(fake_telegram: FakeTelegram) -> None:
    with httpx.Client(base_url=fake_telegram.url) as client:
        unknown = client.post(f"/bot{fake_telegram.token}/sendSomethingNew")
        wrong_token = client.post("/bot999:nope/getMe")
        fake_telegram.fail_next("sendMessage", 429, retry_after=3)
        limited = client.post(
            f"/bot{fake_telegram.token}/sendMessage", data={"chat_id": CHAT, "text": "hoi"}
        )
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert wrong_token.status_code == 401
    assert wrong_token.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert limited.status_code == 429
    assert limited.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 3",
        "parameters": {"retry_after": 3},
    }


def test_json_bodies_and_lower_case_method_names_work(fake_telegram: FakeTelegram) -> None:
    with httpx.Client(base_url=fake_telegram.url) as client:
        answer = client.post(
            f"/bot{fake_telegram.token}/sendmessage",
            json={"chat_id": CHAT, "text": "12", "protect_content": True},
        )
    assert answer.json()["ok"] is True
    [sent] = fake_telegram.sent(CHAT)
    assert sent.text == "12"  # a numeric text stays text
    assert sent.protect_content


# ---------------------------------------------------------------------- sending and chat state


async def test_send_message_records_text_markup_and_protection(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    message = await bot.send_message(
        CHAT, "Hoe gaat het?", protect_content=True, reply_markup=keyboard("Goed", "Slecht")
    )
    assert message.has_protected_content
    assert message.reply_markup == keyboard("Goed", "Slecht")
    [sent] = fake_telegram.sent(CHAT)
    assert sent.message_id == message.message_id
    assert sent.text == "Hoe gaat het?"
    assert sent.protect_content
    assert sent.buttons == [("Goed", "goed"), ("Slecht", "slecht")]
    assert fake_telegram.texts(CHAT) == ["Hoe gaat het?"]
    assert fake_telegram.calls("sendMessage")[0].params["protect_content"] is True


async def test_message_ids_increase_per_chat_and_are_shared_with_her_messages(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    first = await bot.send_message(CHAT, "een")
    fake_telegram.push_text(CHAT, "hoi")
    second = await bot.send_message(CHAT, "twee")
    elsewhere = await bot.send_message(OTHER_CHAT, "een")
    assert (first.message_id, second.message_id) == (1, 3)
    assert elsewhere.message_id == 1
    assert [(m.message_id, m.from_bot) for m in fake_telegram.visible(CHAT)] == [
        (1, True),
        (2, False),
        (3, True),
    ]


async def test_telegram_limits_on_texts_and_button_data(bot: telegram.Bot) -> None:
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(CHAT, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)button_data_invalid"):
        await bot.send_message(
            CHAT,
            "kies",
            reply_markup=InlineKeyboardMarkup(
                [[InlineKeyboardButton("a", callback_data="x" * 65)]]
            ),
        )


async def test_strict_chats_refuse_a_chat_that_never_wrote() -> None:
    async with FakeTelegram(strict_chats=True) as fake:
        async with telegram.Bot(fake.token, base_url=fake.base_url) as bot:
            with pytest.raises(BadRequest, match=r"[Cc]hat not found"):
                await bot.send_message(CHAT, "hoi")
            fake.push_text(CHAT, "hoi")
            await bot.send_message(CHAT, "hallo")
        assert fake.texts(CHAT) == ["hallo"]


async def test_concurrent_sends_get_unique_consecutive_ids(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    await asyncio.gather(*(bot.send_message(CHAT + i % 4, f"m{i}") for i in range(80)))
    for offset in range(4):
        ids = sorted(m.message_id for m in fake_telegram.sent(CHAT + offset))
        assert ids == list(range(1, 21))
    assert fake_telegram.stats.messages_accepted == 80


# ---------------------------------------------------------------------- edits, deletes, buttons


async def test_edit_message_text_and_markup(bot: telegram.Bot, fake_telegram: FakeTelegram) -> None:
    message = await bot.send_message(CHAT, "Hoe gaat het?", reply_markup=keyboard("Goed"))
    await bot.edit_message_text("Dank je", chat_id=CHAT, message_id=message.message_id)
    edited = fake_telegram.message(CHAT, message.message_id)
    assert edited is not None
    assert (edited.text, edited.reply_markup, edited.edit_count) == ("Dank je", None, 1)
    await bot.edit_message_reply_markup(CHAT, message.message_id, reply_markup=keyboard("Ok"))
    assert fake_telegram.sent(CHAT)[0].buttons == [("Ok", "ok")]
    with pytest.raises(BadRequest, match="not modified"):
        await bot.edit_message_reply_markup(CHAT, message.message_id, reply_markup=keyboard("Ok"))
    with pytest.raises(BadRequest, match=r"[Mm]essage to edit not found"):
        await bot.edit_message_text("x", chat_id=CHAT, message_id=99)


async def test_delete_message_removes_it_and_twice_is_not_found(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_text(CHAT, "geheim")
    reply = await bot.send_message(CHAT, "ok")
    assert await bot.delete_message(CHAT, 1)
    assert [m.message_id for m in fake_telegram.visible(CHAT)] == [reply.message_id]
    with pytest.raises(BadRequest, match=r"^Message to delete not found$"):
        await bot.delete_message(CHAT, 1)
    with pytest.raises(BadRequest, match=r"^Message to delete not found$"):
        await bot.delete_message(CHAT, 77)
    assert fake_telegram.sent(CHAT)[0].deleted is False


async def test_delete_messages_wipes_the_chat_and_skips_unknown_ids(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_text(CHAT, "een")
    await bot.send_message(CHAT, "twee")
    fake_telegram.push_text(CHAT, "drie")
    await bot.send_message(OTHER_CHAT, "blijft")
    assert await bot.delete_messages(CHAT, [1, 2, 3, 40])
    assert fake_telegram.visible(CHAT) == []
    assert [m.text for m in fake_telegram.visible(OTHER_CHAT)] == ["blijft"]
    assert [m.deleted for m in fake_telegram.sent(CHAT)] == [True]


async def test_messages_older_than_48_hours_cannot_be_deleted(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    old = await bot.send_message(CHAT, "oud")
    fake_telegram.advance_clock(47 * 3600)
    young = await bot.send_message(CHAT, "jong")
    fake_telegram.advance_clock(2 * 3600)
    with pytest.raises(BadRequest, match="can't be deleted for everyone"):
        await bot.delete_message(CHAT, old.message_id)
    await bot.delete_messages(CHAT, [old.message_id, young.message_id])
    assert [m.text for m in fake_telegram.visible(CHAT)] == ["oud"]


async def test_button_press_and_callback_answer(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    await bot.send_message(CHAT, "Hoe gaat het?", reply_markup=keyboard("Goed", "Slecht"))
    fake_telegram.press(CHAT, "Slecht")
    [update] = await bot.get_updates()
    assert update.callback_query is not None
    assert update.callback_query.data == "slecht"
    assert update.callback_query.message is not None
    assert update.callback_query.message.message_id == 1
    assert fake_telegram.unanswered_callbacks() == [update.callback_query.id]
    await update.callback_query.answer("Dank je")
    [answer] = fake_telegram.callback_answers()
    assert (answer.data, answer.text, answer.chat_id) == ("slecht", "Dank je", CHAT)
    with pytest.raises(BadRequest, match=r"(?i)query is too old"):
        await update.callback_query.answer()


async def test_press_on_a_deleted_message_arrives_inaccessible(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    sent = await bot.send_message(CHAT, "kies", reply_markup=keyboard("A"))
    await bot.delete_message(CHAT, sent.message_id)
    fake_telegram.push_callback(CHAT, "a", sent.message_id)
    [update] = await bot.get_updates()
    assert update.callback_query is not None
    assert update.callback_query.message is not None
    assert not update.callback_query.message.is_accessible


async def test_send_photo_uploads_multipart_and_can_be_downloaded(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    message = await bot.send_photo(CHAT, PNG_1x1, caption="Je stemming", protect_content=True)
    [sent] = fake_telegram.sent(CHAT)
    assert (sent.kind, sent.caption, sent.photo, sent.protect_content) == (
        "photo",
        "Je stemming",
        PNG_1x1,
        True,
    )
    assert (message.photo[-1].width, message.photo[-1].height) == (1, 1)
    file = await bot.get_file(message.photo[-1].file_id)
    assert bytes(await file.download_as_bytearray()) == PNG_1x1


async def test_commands_are_stored_per_scope_and_language(bot: telegram.Bot) -> None:
    await bot.set_my_commands([("help", "Hulp"), ("stop", "Stoppen")], language_code="nl")
    assert [c.command for c in await bot.get_my_commands(language_code="nl")] == ["help", "stop"]
    assert await bot.get_my_commands() == ()
    with pytest.raises(BadRequest):
        await bot.set_my_commands([("Bad Command", "x")])
    assert await bot.close()
    assert await bot.log_out()


# ---------------------------------------------------------------------- getUpdates


async def test_offset_confirms_updates(bot: telegram.Bot, fake_telegram: FakeTelegram) -> None:
    first = fake_telegram.push_text(CHAT, "een")
    second = fake_telegram.push_command(CHAT, "/start", "CODE42")
    updates = await bot.get_updates()
    assert [u.update_id for u in updates] == [first, second]
    assert updates[1].message is not None
    assert updates[1].message.text == "/start CODE42"
    assert updates[1].message.entities[0].type == "bot_command"
    assert [u.update_id for u in await bot.get_updates()] == [first, second]  # not confirmed
    assert await bot.get_updates(offset=second + 1) == ()
    assert fake_telegram.pending_updates() == 0


async def test_limit_and_negative_offset(bot: telegram.Bot, fake_telegram: FakeTelegram) -> None:
    ids = [fake_telegram.push_text(CHAT, str(i)) for i in range(5)]
    assert [u.update_id for u in await bot.get_updates(limit=2)] == ids[:2]
    assert [u.update_id for u in await bot.get_updates(offset=-1)] == ids[-1:]


async def test_long_poll_is_woken_at_once_by_a_push(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    started = time.perf_counter()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.1)
    assert not poll.done()
    fake_telegram.push_text(CHAT, "hoi")
    [update] = await asyncio.wait_for(poll, 2)
    assert update.message is not None
    assert update.message.text == "hoi"
    assert time.perf_counter() - started < 1
    assert fake_telegram.delivered_at(update.update_id) is not None


async def test_long_poll_honours_its_timeout(bot: telegram.Bot) -> None:
    started = time.perf_counter()
    assert await bot.get_updates(timeout=dtm.timedelta(seconds=0.3)) == ()
    assert 0.25 < time.perf_counter() - started < 1.5


async def test_a_newer_poll_ends_the_older_one_with_conflict(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.1)
    # A second process: one Bot never polls twice at once (its getUpdates pool holds one).
    async with telegram.Bot(fake_telegram.token, base_url=fake_telegram.base_url) as second:
        newer = asyncio.create_task(second.get_updates(timeout=dtm.timedelta(seconds=0.2)))
        with pytest.raises(Conflict, match="terminated by other getUpdates"):
            await asyncio.wait_for(older, 2)
        assert await newer == ()


async def test_allowed_updates_filters_kinds(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    await bot.send_message(CHAT, "kies", reply_markup=keyboard("A"))
    fake_telegram.press(CHAT, "A")
    text = fake_telegram.push_text(CHAT, "hoi")
    assert [u.update_id for u in await bot.get_updates(allowed_updates=["message"])] == [text]


async def test_same_update_twice_and_redelivery(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    twice = fake_telegram.push_text(CHAT, "hoi", times=2)
    assert [u.update_id for u in await bot.get_updates()] == [twice, twice]
    assert await bot.get_updates(offset=twice + 1) == ()
    fake_telegram.redeliver(twice)
    assert [u.update_id for u in await bot.get_updates(offset=twice + 1)] == [twice]
    assert await bot.get_updates(offset=twice + 1) == ()


@pytest.mark.parametrize("kind", sorted(SAMPLES))
async def test_sample_updates_parse_in_ptb(
    bot: telegram.Bot, fake_telegram: FakeTelegram, kind: str
) -> None:
    fake_telegram.push_message(CHAT, **SAMPLES[kind])
    [update] = await bot.get_updates()
    assert update.message is not None
    field = "forward_origin" if kind == "forwarded" else "text" if kind == "long_text" else kind
    assert getattr(update.message, field)


async def test_edited_message_and_raw_updates(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.push_text(CHAT, "foutje")
    fake_telegram.push_edit(CHAT, 1, "goedje")
    raw = fake_telegram.push_update(
        {
            "message": {
                "chat": {"id": CHAT, "type": "private"},
                "from": {"id": CHAT, "is_bot": False, "first_name": "T"},
                "dice": {"emoji": "🎲", "value": 3},
            }
        }
    )
    updates = await bot.get_updates()
    assert updates[1].edited_message is not None
    assert updates[1].edited_message.text == "goedje"
    assert updates[2].update_id == raw
    assert updates[2].message is not None
    assert updates[2].message.dice is not None
    assert [m.text for m in fake_telegram.visible(CHAT)] == ["goedje", None]


# ---------------------------------------------------------------------- faults


async def test_429_raises_retry_after_with_the_given_seconds(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.fail_next("sendMessage", 429, retry_after=3)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(CHAT, "hoi")
    assert caught.value.retry_after == dtm.timedelta(seconds=3)
    assert fake_telegram.sent(CHAT) == []
    await bot.send_message(CHAT, "hoi")  # only the next call failed
    assert fake_telegram.texts(CHAT) == ["hoi"]
    assert fake_telegram.stats.rate_limited == 1


async def test_blocked_user_answers_403_for_that_chat_only(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.block(CHAT)
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(CHAT, "hoi")
    await bot.send_message(OTHER_CHAT, "hoi")
    fake_telegram.unblock(CHAT)
    await bot.send_message(CHAT, "hoi")
    assert fake_telegram.stats.messages_accepted == 2


async def test_fault_for_one_chat_leaves_others_alone(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.fail_next("*", 403, chat_id=CHAT)
    await bot.send_message(OTHER_CHAT, "hoi")
    with pytest.raises(Forbidden):
        await bot.send_message(CHAT, "hoi")


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_raise_network_error(
    bot: telegram.Bot, fake_telegram: FakeTelegram, status: int
) -> None:
    fake_telegram.fail_next("sendMessage", status, times=2)
    for _ in range(2):
        with pytest.raises(NetworkError):
            await bot.send_message(CHAT, "hoi")
    await bot.send_message(CHAT, "hoi")
    assert fake_telegram.texts(CHAT) == ["hoi"]
    assert [c.status for c in fake_telegram.calls("sendMessage")] == [status, status, 200]


async def test_dropped_connection_raises_network_error(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.drop_next("sendMessage")
    with pytest.raises(NetworkError):
        await bot.send_message(CHAT, "een")
    assert fake_telegram.sent(CHAT) == []
    fake_telegram.drop_next("sendMessage", after=True)
    with pytest.raises(NetworkError):
        await bot.send_message(CHAT, "twee")
    assert fake_telegram.texts(CHAT) == ["twee"]  # sent, but the bot never heard so
    await bot.send_message(CHAT, "twee")  # a naive retry duplicates it
    assert fake_telegram.duplicates() == {(CHAT, "twee"): 2}


async def test_slow_answers_and_timeouts(fake_telegram: FakeTelegram) -> None:
    request = HTTPXRequest(read_timeout=0.2)
    async with telegram.Bot(
        fake_telegram.token, base_url=fake_telegram.base_url, request=request
    ) as bot:
        fake_telegram.delay_next("sendMessage", 0.1)
        started = time.perf_counter()
        await bot.send_message(CHAT, "traag")
        assert time.perf_counter() - started >= 0.1
        fake_telegram.delay_next("sendMessage", 0.5, after=True)
        with pytest.raises(TimedOut):
            await bot.send_message(CHAT, "te traag")
    assert fake_telegram.texts(CHAT) == ["traag", "te traag"]


# ---------------------------------------------------------------------- rate limits and counters


async def test_rate_limit_per_chat(bot: telegram.Bot, fake_telegram: FakeTelegram) -> None:
    fake_telegram.enforce_rate_limits(per_chat=1, overall=30, window=0.3)
    await bot.send_message(CHAT, "een")
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(CHAT, "twee")
    assert caught.value.retry_after == dtm.timedelta(seconds=1)
    await bot.send_message(OTHER_CHAT, "een")  # another chat has its own budget
    await asyncio.sleep(0.35)
    await bot.send_message(CHAT, "twee")
    assert fake_telegram.stats.rate_limited == 1
    assert fake_telegram.stats.messages_accepted == 3


async def test_rate_limit_overall(bot: telegram.Bot, fake_telegram: FakeTelegram) -> None:
    fake_telegram.enforce_rate_limits()
    for chat in range(30):
        await bot.send_message(chat + 1, "hoi")
    with pytest.raises(RetryAfter):
        await bot.send_message(31, "hoi")
    fake_telegram.disable_rate_limits()
    await bot.send_message(31, "hoi")
    assert fake_telegram.stats.messages_accepted == 31


async def test_duplicates_are_counted_per_chat_and_text(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    await bot.send_message(CHAT, "Goedemorgen")
    await bot.send_message(OTHER_CHAT, "Goedemorgen")
    await bot.send_message(CHAT, "Hoe gaat het?")
    assert fake_telegram.duplicates() == {}
    await bot.send_message(CHAT, "Goedemorgen")
    assert fake_telegram.duplicates() == {(CHAT, "Goedemorgen"): 2}
    assert fake_telegram.count_sent(OTHER_CHAT, "Goedemorgen") == 1
    assert fake_telegram.stats.duplicates == 1


# ---------------------------------------------------------------------- waiting


def test_wait_for_times_out_with_a_clear_error(fake_telegram: FakeTelegram) -> None:
    with pytest.raises(
        WaitTimeout, match=re.escape("waited 0.1 s for 1 sent messages to the chat, saw 0")
    ):
        fake_telegram.wait_for(1, timeout=0.1, chat_id=CHAT)


async def test_wait_for_refuses_to_block_an_event_loop(fake_telegram: FakeTelegram) -> None:
    with pytest.raises(FakeTelegramError, match="wait_for_async"):
        fake_telegram.wait_for(1, timeout=0.1)


def test_wait_for_wakes_when_another_thread_sends(fake_telegram: FakeTelegram) -> None:
    def send_later() -> None:
        time.sleep(0.05)
        with httpx.Client(base_url=fake_telegram.url) as client:
            client.post(
                f"/bot{fake_telegram.token}/sendMessage", data={"chat_id": CHAT, "text": "hoi"}
            )

    sender = threading.Thread(target=send_later)
    sender.start()
    [sent] = fake_telegram.wait_for(1, timeout=2, chat_id=CHAT)
    sender.join()
    assert sent.text == "hoi"


async def test_wait_for_async_with_a_predicate(
    bot: telegram.Bot, fake_telegram: FakeTelegram
) -> None:
    waiting = asyncio.create_task(
        fake_telegram.wait_for_async(lambda: "twee" in fake_telegram.texts(CHAT), timeout=2)
    )
    await bot.send_message(CHAT, "een")
    await bot.send_message(CHAT, "twee")
    assert [m.text for m in await waiting] == ["een", "twee"]
    with pytest.raises(WaitTimeout):
        await fake_telegram.wait_for_async(3, timeout=0.05)


# ---------------------------------------------------------------------- Application end to end


async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Echo her text back, protected."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(
        f"echo: {update.effective_message.text}", protect_content=True
    )


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer /start with its argument."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(f"code {context.args}", reply_markup=keyboard("Ja"))


async def pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a button press and say which one."""
    query = update.callback_query
    assert query is not None
    await query.answer()
    await context.bot.send_message(query.from_user.id, f"pressed {query.data}")


def build_app(fake: FakeTelegram) -> Application[Any, Any, Any, Any, Any, Any]:
    """An Application on the fake with the three handlers above."""
    app = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    app.add_handler(CallbackQueryHandler(pressed))
    return app


async def test_application_polling_echo(fake_telegram: FakeTelegram) -> None:
    app = build_app(fake_telegram)
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=dtm.timedelta(seconds=2))
        fake_telegram.push_text(CHAT, "hoi")
        fake_telegram.push_command(OTHER_CHAT, "/start", "ABC")
        await fake_telegram.wait_for_async(1, chat_id=CHAT)
        await fake_telegram.wait_for_async(1, chat_id=OTHER_CHAT)
        fake_telegram.press(OTHER_CHAT, "Ja")
        await fake_telegram.wait_for_async(2, chat_id=OTHER_CHAT)
        await app.updater.stop()
        await app.stop()
    [echoed] = fake_telegram.sent(CHAT)
    assert (echoed.text, echoed.protect_content) == ("echo: hoi", True)
    assert fake_telegram.texts(OTHER_CHAT) == ["code ['ABC']", "pressed ja"]
    assert len(fake_telegram.callback_answers()) == 1
    assert fake_telegram.calls("deleteWebhook")  # run_polling clears any webhook first


# ---------------------------------------------------------------------- webhook


class _Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint that records what it gets and fails on request."""

    protocol_version = "HTTP/1.1"
    received: list[tuple[str | None, dict[str, Any]]]
    fail_first: list[int]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.fail_first.pop(0) if self.fail_first else 200
        if status == 200:
            self.received.append(
                (self.headers.get("X-Telegram-Bot-Api-Secret-Token"), json.loads(body))
            )
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    """A stdlib webhook endpoint on a free port; yields its URL and its handler class."""
    handler = type("Receiver", (_Receiver,), {"received": [], "fail_first": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()
    thread.join()


async def test_webhook_delivery_with_secret_and_retries(
    bot: telegram.Bot, fake_telegram: FakeTelegram, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    queued = fake_telegram.push_text(CHAT, "al in de rij")
    handler.fail_first.extend([500, 503])
    assert await bot.set_webhook(url, secret_token="geheim-123")
    pushed = fake_telegram.push_text(CHAT, "hoi")
    await fake_telegram.wait_for_async(
        lambda: len(handler.received) == 2 and fake_telegram.pending_updates() == 0, timeout=3
    )
    assert [(secret, body["update_id"]) for secret, body in handler.received] == [
        ("geheim-123", queued),
        ("geheim-123", pushed),
    ]
    assert [a.status for a in fake_telegram.webhook_attempts()] == [500, 503, 200, 200]
    info = await bot.get_webhook_info()
    assert (info.url, info.pending_update_count) == (url, 0)
    assert info.last_error_message is not None
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates()
    assert await bot.delete_webhook()
    back = fake_telegram.push_text(CHAT, "weer polling")
    assert [u.update_id for u in await bot.get_updates()] == [back]


async def test_webhook_refuses_bad_secret_tokens(
    bot: telegram.Bot, receiver: tuple[str, type[_Receiver]]
) -> None:
    with pytest.raises(BadRequest, match=r"(?i)secret token"):
        await bot.set_webhook(receiver[0], secret_token="met spaties")


async def test_application_webhook_checks_the_secret(fake_telegram: FakeTelegram) -> None:
    app = build_app(fake_telegram)
    port = free_port()
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_webhook(
            listen="127.0.0.1",
            port=port,
            url_path="hook",
            webhook_url=f"http://127.0.0.1:{port}/hook",
            secret_token="juist",
        )
        fake_telegram.push_text(CHAT, "via webhook")
        await fake_telegram.wait_for_async(1, chat_id=CHAT)
        await app.bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="onjuist")
        refused = fake_telegram.push_text(CHAT, "vals")
        await fake_telegram.wait_for_async(
            lambda: any(a.update_id == refused for a in fake_telegram.webhook_attempts()),
            timeout=2,
        )
        await app.updater.stop()
        await app.stop()
    assert fake_telegram.texts(CHAT) == ["echo: via webhook"]
    statuses = [a.status for a in fake_telegram.webhook_attempts() if a.update_id == refused]
    assert statuses[0] == 403


# ---------------------------------------------------------------------- lifecycle


async def test_stop_ends_a_pending_long_poll_quickly() -> None:
    fake = FakeTelegram().start()
    async with telegram.Bot(fake.token, base_url=fake.base_url) as bot:
        poll = asyncio.create_task(bot.get_updates(timeout=30))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await asyncio.to_thread(fake.stop)
        assert time.perf_counter() - started < 1
        try:
            result = await asyncio.wait_for(poll, 2)
        except NetworkError:  # the answer may race the closing socket
            result = ()
        assert result == ()


# ---------------------------------------------------------------------- in a child process


async def test_remote_fake_serves_the_same_api_from_a_child_process() -> None:
    async with RemoteFakeTelegram() as fake:
        assert fake.token == DEFAULT_TOKEN
        async with telegram.Bot(fake.token, base_url=fake.base_url) as bot:
            update_id = fake.push_text(CHAT, "hoi")
            [update] = await bot.get_updates()
            assert update.update_id == update_id
            await bot.send_message(CHAT, "hallo", protect_content=True)
            [sent] = await fake.wait_for_async(1, chat_id=CHAT, timeout=2)
            assert (sent.text, sent.protect_content) == ("hallo", True)
            await fake.wait_for_async(lambda: fake.stats.messages_accepted == 1, timeout=2)
            fake.fail_next("sendMessage", 429, retry_after=2)
            with pytest.raises(RetryAfter):
                await bot.send_message(CHAT, "te snel")
        assert fake.delivered_at(update_id) is not None
        assert fake.internal_errors == []
