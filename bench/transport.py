"""Bot API transport: CPU per call of PTB's own httpx request against ours (aiohttp).

A child process makes `--calls` sendMessage calls through python-telegram-bot's `Bot`, a few at
a time, against the fake Bot API in this process, once with PTB's `HTTPXRequest` and once with
`bot.telegram.transport.AiohttpRequest`, in turns (`--rounds`), and prints the child's CPU
time per call. The fake answers at once, so the figures are the client's own work: what a
bot pays per Bot API call on one CPU. A third row sends the same texts as the bot does, through
`bot.telegram.TelegramChannel` on aiohttp (which reads only the message id of Telegram's
answer, where `Bot.send_message` builds a whole `Message`).

    .venv/bin/python bench/transport.py              # 2 rounds x 1500 calls (~20 s)

A benchmark prints figures; it never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "true")

from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

KINDS = ("httpx", "aiohttp", "channel")
AT_ONCE = 4
"""Calls in flight together (the outbox keeps a few going)."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def child(kind: str, token: str, base_url: str, calls: int) -> dict[str, float]:
    """Make the calls; return CPU and wall time per call in ms."""
    from telegram import Bot
    from telegram.request import BaseRequest, HTTPXRequest

    from bot.telegram import TelegramChannel
    from bot.telegram.transport import AiohttpRequest
    from care.models import RecipientKind
    from care.outbox import Outgoing

    request: BaseRequest = HTTPXRequest() if kind == "httpx" else AiohttpRequest()
    async with Bot(token, base_url=base_url, request=request) as bot:
        channel = TelegramChannel(bot)

        async def send(chat_id: int, text: str) -> None:
            if kind != "channel":
                await bot.send_message(chat_id, text)
                return
            message = Outgoing(0, RecipientKind.CLIENT, 0, chat_id, "text", text)
            await channel.deliver(message)

        for n in range(50):  # warm: connections open, code paths run once
            await send(1 + n, "hallo")
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(n: int) -> None:
            async with gate:
                await send(1 + n % 50, "Hoi! Hoe gaat het vandaag met je?")

        cpu, wall = _cpu(), time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(calls)))
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return {"cpu_ms": cpu * 1e3 / calls, "wall_ms": wall * 1e3 / calls}


def main() -> None:
    """As the parent: run each transport in a child, in turns, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = asyncio.run(child(args.child, args.token, args.base_url, args.calls))
        print(json.dumps(figures))
        return
    print(f"Bot API transport: {args.calls} sendMessage calls, {AT_ONCE} at a time, fake Bot API")
    print(f"{'':10} {'round':>5} {'CPU ms/call':>12} {'wall ms/call':>13}")
    best: dict[str, float] = {}
    for round_ in range(1, args.rounds + 1):
        for kind in KINDS:
            with FakeTelegram() as fake:
                command = [sys.executable, __file__, "--child", kind, "--calls", str(args.calls)]
                command += ["--token", fake.token, "--base-url", fake.base_url]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{kind:10} {round_:>5} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            best[kind] = min(best.get(kind, figures["cpu_ms"]), figures["cpu_ms"])
            print(f"{kind:10} {round_:>5} {figures['cpu_ms']:>12.2f} {figures['wall_ms']:>13.2f}")
    if len(best) == len(KINDS):
        print(f"aiohttp needs {best['aiohttp'] / best['httpx']:.2f}x the CPU of httpx per call")
        print(f"the channel needs {best['channel'] / best['aiohttp']:.2f}x the CPU of send_message")


if __name__ == "__main__":
    main()
