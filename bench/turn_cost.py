"""Turn cost: the CPU of our own work per turn, without Telegram and without queueing.

One girl at a time runs the check-in cycle (`/checkin`, two button presses, a text) through
`ConversationService.handle` and the outbox sender, whose channel answers at once; a turn
ends when its replies are delivered, and the next begins a moment later (when the sent marks
are committed). So the figure is the work of one turn: the NLU, the turn's transaction, the
hand-over to the sender, the sends and their marks. The baseline, measured in the same run,
is the cheapest message the service handles: a text from a chat nobody is linked to (one
look-up and a neutral answer, nothing stored). It also prints the wall-clock time from each
of her turns to its first reply (no load, so no queueing: the turn's own work and its round
trips to the database) and the SQL statements and transactions per turn, the sender's marks
included; on PostgreSQL also the round trips: each statement is one, and each transaction
adds two, BEGIN and COMMIT; an autocommitted statement adds none. Unlike the times, these
counts do not move with the machine's mood.

`bench/turn_latency.py` measures the whole bot under load, where the VM's speed moves the
figures by a third from one hour to the next; here the quartiles usually lie within a few per
cent, though on some days the VM's speed moves from minute to minute and then the ratio to the
baseline is the figure to compare. To count instructions instead of seconds, run it under
callgrind with two numbers of rounds and divide the difference by the extra turns (80 per
round with the defaults; `--her-turns-only` leaves the strangers' texts out; the sender's
threads make the count vary a little with timing):

    .venv/bin/python bench/turn_cost.py
    .venv/bin/python bench/turn_cost.py --backend postgres   # the PostgreSQL of the tests
    valgrind --tool=callgrind .venv/bin/python bench/turn_cost.py --rounds 1 --her-turns-only
    valgrind --tool=callgrind .venv/bin/python bench/turn_cost.py --rounds 3 --her-turns-only

A benchmark prints figures; it never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.turn_latency import FIRST_CHAT, bench_care, drop_database, make_database  # noqa: E402
from bot.bootstrap import build, make_sender  # noqa: E402
from care.conversation import Inbound  # noqa: E402
from care.outbox import Button, Delivered, Outgoing  # noqa: E402
from nlu import NluConfig, build_nlu  # noqa: E402
from nlu.config import default_cache_dir  # noqa: E402

STRANGER = 800_000_000
CHUNK = 20
"""Turns per measured chunk: the figures are the median and quartiles over chunks."""
SETTLE = 0.02
"""Seconds between turns, for the sent marks to be committed (waiting costs no CPU)."""
PATIENCE = 30.0
TRACE_WIDTH = 110
"""Characters of each statement that `--trace` prints."""

# (what she does, the value, how many messages the bot answers with)
CYCLE = [("command", "checkin", 1), ("choice", "", 2), ("choice", "", 1), ("text", "dank je", 1)]


class InstantChannel:
    """Delivers at once; counts the messages of each chat and keeps its last buttons."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.buttons: dict[int, tuple[tuple[Button, ...], ...]] = {}
        self.count: dict[int, int] = {}
        self.last_at: dict[int, float] = {}  # perf_counter() of each chat's latest delivery
        self.arrived = asyncio.Event()

    async def deliver(self, message: Outgoing) -> Delivered:
        if message.buttons:
            self.buttons[message.chat_id] = message.buttons
        self.count[message.chat_id] = self.count.get(message.chat_id, 0) + 1
        self.last_at[message.chat_id] = time.perf_counter()
        self.arrived.set()
        return Delivered((next(self._ids),))

    async def wait_for(self, chat: int, count: int) -> None:
        deadline = time.monotonic() + PATIENCE
        while self.count.get(chat, 0) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(deadline - time.monotonic(), 0.01))


@dataclass
class Figures:
    """What one run measured."""

    cpu: list[float] = field(default_factory=list)
    """CPU ms per turn of each chunk of her turns."""
    baseline: list[float] = field(default_factory=list)
    """CPU ms per turn of each chunk of strangers' texts."""
    first_reply: list[float] = field(default_factory=list)
    """Ms from each of her turns to its first reply."""
    statements: int = 0
    """SQL statements her measured turns sent (the sender's marks included)."""
    transactions: int = 0
    """Transactions they began (an autocommitted statement is none): on PostgreSQL each costs
    two round trips besides its statements, BEGIN and COMMIT (or ROLLBACK)."""
    trace: list[str] = field(default_factory=list)
    """The first measured cycle of the first girl: each turn, then its statements (their SQL
    with placeholders, never a value)."""


async def measure(clients: int, rounds: int, backend: str, baseline: bool = True) -> Figures:
    """Run the girls' turns, then (unless not `baseline`) the strangers' texts, on a new
    database."""
    with tempfile.TemporaryDirectory() as tmp:
        url, pg_name = make_database(backend, Path(tmp))
        try:
            return await _measure(url, clients, rounds, baseline)
        finally:
            drop_database(pg_name)


async def _measure(url: str, clients: int, rounds: int, baseline: bool) -> Figures:
    care = bench_care(url, clients)
    figures = Figures()
    counting = tracing = False

    def count(
        _conn: object, _cursor: object, statement: str, _params: object, context: Any, *_: object
    ) -> None:
        if counting:
            figures.statements += 1
            if tracing:
                figures.trace.append("    " + " ".join(statement.split())[:TRACE_WIDTH])

    def began(conn: Connection) -> None:
        if counting and conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            figures.transactions += 1

    event.listen(care.engine, "before_cursor_execute", count)
    event.listen(care.engine, "begin", began)
    parts = build(care.settings, care=care, nlu=build_nlu(NluConfig(cache_dir=default_cache_dir())))
    await parts.warm()
    channel = InstantChannel()
    sender = make_sender(parts, channel)
    await sender.start()
    ids = itertools.count(1)

    async def her_turn(chat: int, kind: str, value: str, replies: int) -> float:
        if kind == "choice":
            choice = channel.buttons[chat][0][0].id
            inbound = Inbound(chat_id=chat, kind="choice", choice_id=choice, update_id=next(ids))
        elif kind == "command":
            inbound = Inbound(
                chat_id=chat, kind="command", command=value, update_id=next(ids), message_id=1
            )
        else:
            inbound = Inbound(
                chat_id=chat, kind="text", text=value, update_id=next(ids), message_id=1
            )
        before = channel.count.get(chat, 0)
        began = time.perf_counter()
        await parts.service.handle(inbound)
        await channel.wait_for(chat, before + 1)
        first = channel.last_at[chat] - began
        await channel.wait_for(chat, before + replies)
        return first

    async def strangers_text(chat: int) -> None:
        inbound = Inbound(chat_id=chat, kind="text", text="hoi", update_id=next(ids))
        await parts.service.handle(inbound)

    ours, base, walls = figures.cpu, figures.baseline, figures.first_reply
    spent = 0.0
    turns = 0
    for cycle in range(rounds + 1):  # the first round warms up and is not counted
        for n in range(clients):
            for kind, value, replies in CYCLE:
                counting = bool(cycle)
                tracing = cycle == 1 and n == 0
                if tracing:
                    figures.trace.append(f"  {kind} {value}".rstrip())
                began = time.process_time()
                wall = await her_turn(FIRST_CHAT + n, kind, value, replies)
                spent += time.process_time() - began
                if cycle:
                    walls.append(wall * 1e3)
                turns += 1
                await asyncio.sleep(SETTLE)
                if turns == CHUNK:
                    if cycle:
                        ours.append(spent * 1e3 / CHUNK)
                    spent, turns = 0.0, 0
    await asyncio.sleep(SETTLE)
    counting = tracing = False
    for n in range(len(ours) * CHUNK if baseline else 0):
        began = time.process_time()
        await strangers_text(STRANGER + n)
        spent += time.process_time() - began
        await asyncio.sleep(SETTLE)
        if (n + 1) % CHUNK == 0:
            base.append(spent * 1e3 / CHUNK)
            spent = 0.0
    await sender.stop()
    await parts.aclose()
    care.close()
    return figures


def quartiles(figures: list[float]) -> str:
    low, mid, high = statistics.quantiles(figures, n=4) if len(figures) > 1 else figures * 3
    return f"{mid:5.2f} ms (quartiles {low:.2f}-{high:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="girls, one at a time")
    parser.add_argument("--rounds", type=int, default=5, help="check-in cycles per girl")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--trace", action="store_true", help="also print the SQL of one check-in cycle"
    )
    parser.add_argument(
        "--her-turns-only",
        action="store_true",
        help="no strangers' texts (the baseline): for counting her turns' instructions",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.clients * max(args.rounds, 1) * len(CYCLE) < CHUNK:
        parser.error(f"measure at least {CHUNK} turns: raise --clients or --rounds")
    figures = asyncio.run(
        measure(args.clients, max(args.rounds, 1), args.backend, not args.her_turns_only)
    )
    ours, base, walls = figures.cpu, figures.baseline, figures.first_reply
    print(
        f"turn cost: {len(ours) * CHUNK} turns of the check-in cycle, one at a time, "
        f"{args.backend}, no Telegram"
    )
    print(f"  CPU, her turn                      {quartiles(ours)}")
    if base:
        print(f"  CPU, a stranger's text (baseline)  {quartiles(base)}")
        ratio = statistics.median(ours) / statistics.median(base)
        print(f"  her turn costs {ratio:.1f}x the baseline")
    print(f"  her turn to its first reply        {quartiles(walls)} (wall clock)")
    print(f"  SQL statements per turn            {figures.statements / len(walls):5.2f}")
    print(f"  transactions per turn              {figures.transactions / len(walls):5.2f}")
    if args.backend == "postgres":
        trips = (figures.statements + 2 * figures.transactions) / len(walls)
        print(f"  round trips per turn               {trips:5.2f} (statements, BEGINs and COMMITs)")
    if args.trace:
        print("one check-in cycle, each turn and the statements it sent (the sender's included):")
        print("\n".join(figures.trace))


if __name__ == "__main__":
    main()
