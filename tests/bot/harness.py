"""The whole bot (bootstrap's `serve_telegram`) running against the fake Bot API.

`TelegramWorld` adds to `tests.bot.world.World` what a person in Telegram does and sees:
push a text, a command or a button press into the fake, and wait for the bot's answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bot.bootstrap import Parts, serve_telegram
from care.clock import SystemClock
from care.context import Care
from care.outbox import SenderOptions
from care.settings import RateLimits, Settings
from tests.bot.world import CLIENT_CHAT, WORKER_CHAT, World, make_world, shared_flows, shared_nlu
from tests.fakes.telegram_api import FakeMessage, FakeTelegram

FAST_SENDER = SenderOptions(poll_seconds=0.05, backoff_base_seconds=0.05)


def fast_settings(settings: Settings, **changes: Any) -> Settings:
    """Settings whose per-chat limit does not slow a test down (the fake enforces none)."""
    telegram = settings.telegram.model_copy(
        update={
            "rate_limits": RateLimits(per_chat_per_second=30.0, overall_per_second=200.0),
            **changes,
        }
    )
    return settings.model_copy(update={"telegram": telegram})


@dataclass
class TelegramWorld:
    """The world, the fake Bot API it talks to, and helpers that act as her or her worker."""

    world: World
    fake: FakeTelegram
    parts: Parts
    info: dict[str, Any]
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def care(self) -> Care:
        """Storage and keys."""
        return self.world.care

    async def bot_says(
        self,
        count: int,
        chat_id: int = CLIENT_CHAT,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[FakeMessage]:
        """Wait until the bot has sent `count` messages to the chat in all; return them all."""
        return await self.fake.wait_for_async(count, timeout, chat_id=chat_id)

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until a condition on the fake holds."""
        await self.fake.wait_for_async(condition, timeout)

    def texts(self, chat_id: int = CLIENT_CHAT) -> list[str]:
        """Every text or caption the bot sent to the chat."""
        return self.fake.texts(chat_id)

    async def exchange(
        self, push: Callable[[], int], chat_id: int = CLIENT_CHAT, expect: int = 1
    ) -> list[FakeMessage]:
        """Push something, wait for `expect` new bot messages in the chat, return the new ones."""
        before = len(self.fake.sent(chat_id))
        push()
        sent = await self.bot_says(before + expect, chat_id)
        return sent[before:]

    async def settle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until every pushed update was handled and the outbox is empty."""
        await self.fake.wait_for_async(lambda: self.fake.pending_updates() == 0, timeout)
        await asyncio.sleep(0.15)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.world.pending(mark=False) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)

    async def enroll(self, choose: str = "Nederlands") -> None:
        """She opens her link, picks a language, agrees, skips the nickname."""
        await self.exchange(
            lambda: self.fake.push_command(CLIENT_CHAT, "/start", self.world.client_code), expect=2
        )
        await self.exchange(lambda: self.fake.press(CLIENT_CHAT, choose), expect=4)
        ok = "Ja, prima" if choose == "Nederlands" else "Yes, fine"
        await self.exchange(lambda: self.fake.press(CLIENT_CHAT, ok), expect=1)
        skip = "Geen bijnaam" if choose == "Nederlands" else "No nickname"
        await self.exchange(lambda: self.fake.press(CLIENT_CHAT, skip), expect=2)
        await self.settle()


@pytest.fixture
async def telegram_bot(
    care_ctx: Care, fake_telegram: FakeTelegram, request: pytest.FixtureRequest
) -> AsyncIterator[TelegramWorld]:
    """The bot in polling mode against the fake, with a linked worker and an invited client."""
    marker = request.node.get_closest_marker("bot_settings")
    changes = dict(marker.kwargs) if marker else {}
    care = dataclasses.replace(care_ctx, settings=fast_settings(care_ctx.settings, **changes))
    world = make_world(care, clock=SystemClock())
    parts = Parts(
        care.settings,
        care,
        SystemClock(),
        shared_flows(),
        shared_nlu(),
        world.service.desk,
        world.service,
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    info: dict[str, Any] = {}

    def on_ready(started: dict[str, Any]) -> None:
        info.update(started)
        ready.set()

    task = asyncio.create_task(
        serve_telegram(
            parts,
            stop,
            token=fake_telegram.token,
            base_url=fake_telegram.base_url,
            base_file_url=fake_telegram.base_file_url,
            sender_options=FAST_SENDER,
            ready=on_ready,
        )
    )
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what went wrong
    assert waiter in done, "the bot did not start in time"
    try:
        yield TelegramWorld(world, fake_telegram, parts, info, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


__all__ = ["CLIENT_CHAT", "WORKER_CHAT", "TelegramWorld", "telegram_bot"]
