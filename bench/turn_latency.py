"""Turn latency: simulated girls chatting through the real Application against the fake Bot API.

Each girl repeats a four-turn cycle (`/checkin`, tap "good", tap "yes, safe", "dank je"). She
reads the bot's replies and takes a moment before her next turn (`--think`, seconds on
average, drawn at random between 0 and twice that; 0 makes every girl answer at once). For
every turn it measures the time from the moment the fake delivered the update to the bot
until the first reply arrived at the fake. The same is measured for a bare
python-telegram-bot echo bot against the same fake, in the same run.

The issue's baseline is PTB as it comes (httpx); our bot carries PTB's requests over aiohttp
(bot/telegram/transport.py), so the echo bot also runs on that transport, as a second row:
the ratio against it is the cost of our own work alone.

The fake Bot API and the girls run in this process; each bot runs in a child process of its
own, as it would against the real Telegram, so that the bot's figures (and its peak RSS) are
its own and not the load generator's. "CPU ms/turn" is the bot process's CPU time while it
served, per turn, and "busy" the share of one core it used meanwhile: its Python runs one
thread at a time, so as "busy" nears 100% the turns queue and the latency grows far faster
than the CPU per turn (the figures then follow the VM's speed more than the code's); when
the girls ask for more turns than the bot can serve, turns/s is its capacity and the
latency is mostly queueing. "fake busy" is the same share for this process (the fake and the
girls): near 100%, the fake's own queue would be in every row's figures.

    .venv/bin/python bench/turn_latency.py                      # 50 girls x 12 turns (~2 min)
    .venv/bin/python bench/turn_latency.py --clients 200 --turns 20   # the issue's run (~7 min)
    .venv/bin/python bench/turn_latency.py --clients 200 --turns 20 --rounds 3  # (~20 min)
    .venv/bin/python bench/turn_latency.py --backends sqlite --think 0  # saturation
    .venv/bin/python bench/turn_latency.py --backends postgres --inside  # where a turn waits

The VM's speed can drift by a factor of two or more within minutes, and the bots run one
after another: with `--rounds N` every bot runs N times, in turns (every other round in the
opposite order), and each of our rows is set against the echo bot of its own round; the end
shows those ratios and p99s over the rounds, their medians, and in how many rounds every
target was met.

`--inside` also times each turn's transaction inside the bot, with SQLAlchemy's events, and
splits its time into the turn thread's own CPU, the waits inside its statements and COMMIT
(for the database's answer, and then for the GIL again), and the rest: waits for the GIL
between statements. The events cost the bot a little CPU, so compare the other figures from
runs without it.

Telegram's own pacing (1 message/s per chat) is lifted in the bot's settings and not enforced
by the fake: this measures the bot's work, not Telegram's limits. Targets (issue 5): our p50
within 3x of the echo bot's, p99 under 50 ms, RSS under 200 MB. A benchmark prints figures;
it never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "true")

from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

if TYPE_CHECKING:
    from care.context import Care

PG_ADMIN_DSN = os.environ.get(
    "AFTERCARE_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL = os.environ.get(
    "AFTERCARE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
)
FIRST_CHAT = 900_000_000
PATIENCE = 600.0
"""Seconds a girl waits for the bot's answer before the benchmark gives up."""

# (what she does, how many bot messages it brings)
CYCLE: list[tuple[str, str, int]] = [
    ("command", "/checkin", 1),
    ("press", "0", 2),
    ("press", "0", 1),
    ("text", "dank je", 1),
]


# ---------------------------------------------------------------------------- the girls


async def chat(
    fake: FakeTelegram, chat_id: int, turns: int, echo: bool, think: float
) -> list[float]:
    """One girl's turns; returns the latency of each in seconds."""
    latencies: list[float] = []
    sent = len(fake.sent(chat_id))
    pause = random.Random(chat_id)
    for turn in range(turns):
        if think > 0:
            await asyncio.sleep(pause.uniform(0, 2 * think))
        kind, value, expect = CYCLE[turn % len(CYCLE)]
        if echo:
            expect = 1
        if kind == "command":
            update_id = fake.push_command(chat_id, value)
        elif kind == "text":
            update_id = fake.push_text(chat_id, value)
        else:
            last = [m for m in fake.sent(chat_id) if m.buttons]
            data = last[-1].buttons[int(value)][1]
            update_id = fake.push_callback(chat_id, data, last[-1].message_id)
        # She waits for the answer however long it takes (an overloaded bot shows as latency).
        messages = await fake.wait_for_async(sent + expect, PATIENCE, chat_id=chat_id)
        delivered = fake.delivered_at(update_id)
        first = messages[sent]
        if delivered is not None:
            latencies.append(max(first.received_at - delivered, 0.0))
        sent = len(messages)
    return latencies


async def drive(
    fake: FakeTelegram, clients: int, turns: int, echo: bool, think: float
) -> dict[str, Any]:
    """All girls at once; returns the figures (RSS comes from the bot's process)."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(chat(fake, FIRST_CHAT + n, turns, echo, think) for n in range(clients))
    )
    elapsed = time.perf_counter() - started
    latencies = sorted(x for one in results for x in one)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "turns": len(latencies),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": quantiles[98] * 1e3,
        "turns_per_s": len(latencies) / elapsed,
        "seconds": elapsed,
    }


# ---------------------------------------------------------------------------- the echo bot


async def until_stopped() -> None:
    """Wait for SIGTERM (the parent ends a scenario with it)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


_cpu_at_ready = 0.0
_sys_at_ready = 0.0
_switches_at_ready = 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _switches() -> int:
    """Context switches of this process so far (its threads waiting, and being made to)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


_gc_pauses: list[float] = []
"""Seconds of each of the garbage collector's passes over the oldest generation, from ready."""
_gc_began = 0.0


def _time_full_collections(phase: str, info: dict[str, int]) -> None:
    global _gc_began
    if info.get("generation") != 2:
        return
    if phase == "start":
        _gc_began = time.perf_counter()
    else:
        _gc_pauses.append(time.perf_counter() - _gc_began)


def ready() -> None:
    """Tell the parent the bot is serving (its CPU time and its full collections count from
    here)."""
    global _cpu_at_ready, _sys_at_ready, _switches_at_ready
    _cpu_at_ready = _cpu_seconds()
    _sys_at_ready = _sys_seconds()
    _switches_at_ready = _switches()
    gc.callbacks.append(_time_full_collections)
    print("ready", flush=True)


def own_figures() -> dict[str, float]:
    """This process's peak resident set size and the CPU time it used while serving."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rss_mb": rss,
        "cpu_s": _cpu_seconds() - _cpu_at_ready,
        "sys_s": _sys_seconds() - _sys_at_ready,
        "switches": _switches() - _switches_at_ready,
        "gc_full": len(_gc_pauses),
        "gc_longest_ms": max(_gc_pauses, default=0.0) * 1e3,
    }


async def run_echo(token: str, base_url: str, ours: bool = False) -> dict[str, Any]:
    """A bare PTB bot: echoes text and commands, answers button presses, always with buttons.
    With `ours`, on our aiohttp transport (bot.telegram.transport) instead of PTB's httpx."""
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
    from telegram.ext import Application, ContextTypes, TypeHandler

    markup = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("a", callback_data="a"),
                InlineKeyboardButton("b", callback_data="b"),
            ]
        ]
    )

    async def echo(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert isinstance(update, Update)
        if update.callback_query is not None:
            await update.callback_query.answer()
            assert update.effective_chat is not None
            await context.bot.send_message(update.effective_chat.id, "ok", reply_markup=markup)
        elif update.message is not None and update.message.text:
            await update.message.reply_text(update.message.text, reply_markup=markup)

    builder = Application.builder().token(token).base_url(base_url).concurrent_updates(True)
    if ours:
        from bot.telegram.transport import on_transport

        builder = on_transport(builder)
    app = builder.build()
    app.add_handler(TypeHandler(Update, echo))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(allowed_updates=Update.ALL_TYPES)
        ready()
        await until_stopped()
        await app.updater.stop()
        await app.stop()
    return own_figures()


# ---------------------------------------------------------------------------- our bot


def make_database(backend: str, folder: Path) -> tuple[str, str | None]:
    from care.db import upgrade

    if backend == "sqlite":
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        return url, None
    import psycopg

    name = f"aftercare_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL.format(db=name)
    upgrade(url)
    return url, name


def drop_database(name: str | None) -> None:
    if name is None:
        return
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_care(url: str, clients: int) -> Care:
    """Our storage on a migrated database: one worker with `clients` girls, the n-th linked to
    chat FIRST_CHAT + n; Telegram's pacing (1 message/s per chat) lifted, since the
    benchmarks measure the bot's work, not Telegram's limits. (Also used by turn_cost.py.)"""
    from care import directory
    from care.context import Care
    from care.crypto import keyring_from_set, new_key_set
    from care.db import make_engine, make_sessionmaker
    from care.models import Client, Worker
    from care.settings import DEFAULT_CONFIG, WEEKDAYS, RateLimits, load_settings
    from care.vault import Vault

    base = load_settings(DEFAULT_CONFIG, environ={})
    # Above what the settings accept (Telegram's own limits): nothing here may pace a send.
    lifted = RateLimits.model_construct(per_chat_per_second=1000.0, overall_per_second=1000.0)
    telegram = base.telegram.model_copy(update={"rate_limits": lifted})
    settings = base.model_copy(update={"telegram": telegram})
    keyring = keyring_from_set(new_key_set(), "bench")
    engine = make_engine(url)
    care = Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))
    with care.sessions.begin() as session:
        org = directory.add_organisation(session, "Bench")
        issued = directory.add_worker(session, care.vault, org.name, "Anna")
        worker = session.get(Worker, issued.id)
        assert worker is not None
        # Her scheduled check-ins (mon,thu 16:00 by default) must not fall inside a run: on
        # those days at 16:00, 200 check-ins at once put a message before each girl's reply.
        # Hers are on one weekday only, three days from today: past the end of any run.
        away = datetime.now(ZoneInfo("Europe/Amsterdam")) + timedelta(days=3)
        for n in range(clients):
            invited = directory.invite_client(
                session, care.vault, worker, alias=f"girl-{n}", language="nl"
            )
            directory.link_chat(session, care.vault, invited.code, FIRST_CHAT + n)
            client = session.get(Client, invited.id)
            assert client is not None
            client.checkin_days = WEEKDAYS[away.weekday()]
    return care


class TurnTimer:
    """`--inside`: each transaction on the turn threads (the event loop's default executor;
    the outbox sender's named threads are left out), from its BEGIN until its COMMIT is done:
    wall time, the thread's CPU, and how long its statements and COMMIT took, in wall time and
    in the thread's CPU."""

    def __init__(self, care: Care) -> None:
        from sqlalchemy import event

        self.rows: list[tuple[float, float, float, float, int]] = []
        self._local = threading.local()
        engine = care.engine
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._before_commit)
        event.listen(care.sessions, "after_commit", self._committed)

    @staticmethod
    def _on_turn_thread() -> bool:
        # The loop's default executor: asyncio names its threads asyncio_N, uvloop (the
        # bot's loop, `bootstrap.run_served`) uvloop_N.
        return threading.current_thread().name.startswith(("asyncio_", "uvloop_"))

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.thread_time()

    def _begin(self, _connection: object) -> None:
        if self._on_turn_thread():
            # [began wall, began cpu, database wall, database cpu, statements]
            self._local.turn = [*self._now(), 0.0, 0.0, 0]

    def _before(self, *_args: object) -> None:
        self._local.statement = self._now()

    def _after(self, *_args: object) -> None:
        turn = getattr(self._local, "turn", None)
        if turn is None:
            return
        wall, cpu = self._now()
        began_wall, began_cpu = self._local.statement
        turn[2] += wall - began_wall
        turn[3] += cpu - began_cpu
        turn[4] += 1

    def _before_commit(self, _connection: object) -> None:
        self._local.statement = self._now()

    def _committed(self, _session: object) -> None:
        turn = getattr(self._local, "turn", None)
        if turn is None:
            return
        self._local.turn = None
        wall, cpu = self._now()
        began_wall, began_cpu = self._local.statement
        database_wall = turn[2] + wall - began_wall
        database_cpu = turn[3] + cpu - began_cpu
        self.rows.append((wall - turn[0], cpu - turn[1], database_wall, database_cpu, turn[4]))

    def figures(self) -> dict[str, float]:
        """Medians and means in ms over the transactions timed (none: empty)."""
        if not self.rows:
            return {}
        walls, cpus, db_walls, db_cpus, statements = zip(*self.rows, strict=True)
        n = len(self.rows)
        return {
            "inside_turns": n,
            "inside_wall_p50_ms": statistics.median(walls) * 1e3,
            "inside_wall_ms": sum(walls) / n * 1e3,
            "inside_cpu_ms": sum(cpus) / n * 1e3,
            "inside_db_wait_ms": (sum(db_walls) - sum(db_cpus)) / n * 1e3,
            "inside_statements": sum(statements) / n,
        }


async def run_ours(
    backend: str, clients: int, token: str, base_url: str, inside: bool = False
) -> dict[str, Any]:
    """The whole bot (bootstrap.serve_telegram) with the embedded NLU; with `inside`, its
    turns' transactions timed too (`TurnTimer`)."""
    from bot.bootstrap import build, serve_telegram
    from nlu import NluConfig, build_nlu
    from nlu.config import default_cache_dir

    with tempfile.TemporaryDirectory() as tmp:
        url, pg_name = make_database(backend, Path(tmp))
        try:
            care = bench_care(url, clients)
            timer = TurnTimer(care) if inside else None
            settings = care.settings
            nlu = build_nlu(NluConfig(cache_dir=default_cache_dir()))
            parts = build(settings, care=care, nlu=nlu)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await serve_telegram(
                parts,
                stop,
                token=token,
                base_url=base_url,
                ready=lambda _: ready(),
            )
            await nlu.aclose()
            care.close()
        finally:
            drop_database(pg_name)
    return {**own_figures(), **(timer.figures() if timer is not None else {})}


# ---------------------------------------------------------------------------- parent


def scenario(
    kind: str, backend: str, clients: int, turns: int, think: float, inside: bool = False
) -> dict[str, Any]:
    """Serve one bot in a child process while the girls chat with it here."""
    with FakeTelegram() as fake:
        command = [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--backend",
            backend,
            "--clients",
            str(clients),
            "--token",
            fake.token,
            "--base-url",
            fake.base_url,
            *(["--inside"] if inside else []),
        ]
        bot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert bot.stdout is not None
            line = bot.stdout.readline().strip()
            if line != "ready":
                _, err = bot.communicate(timeout=60)
                return {"error": err.strip().splitlines()[-1] if err.strip() else "no start"}
            began = _cpu_seconds()
            figures = asyncio.run(
                drive(fake, clients, turns, echo=kind.startswith("echo"), think=think)
            )
            figures["load_cpu_s"] = _cpu_seconds() - began
            methods: dict[str, int] = {}
            for call in fake.calls():
                methods[call.method] = methods.get(call.method, 0) + 1
            figures["calls"] = methods
            bot.send_signal(signal.SIGTERM)
            out, err = bot.communicate(timeout=120)
        finally:
            if bot.poll() is None:
                bot.kill()
                bot.wait()
        if bot.returncode != 0:
            return {"error": err.strip().splitlines()[-1] if err.strip() else "failed"}
        figures.update(json.loads(out.strip().splitlines()[-1]))
        return figures


def main() -> None:
    """Parse the options; as the parent, run every scenario and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="girls chatting at once")
    parser.add_argument("--turns", type=int, default=12, help="turns per girl")
    parser.add_argument(
        "--think", type=float, default=2.0, help="seconds she takes between turns, on average"
    )
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every bot this many times, in turns, each against the echo bot of its round",
    )
    parser.add_argument(
        "--inside",
        action="store_true",
        help="also time our turns' transactions inside the bot (costs it a little CPU)",
    )
    parser.add_argument("--child", choices=["echo", "echo-aiohttp", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="sqlite", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.ERROR)
    if args.child in ("echo", "echo-aiohttp"):
        ours = args.child == "echo-aiohttp"
        print(json.dumps(asyncio.run(run_echo(args.token, args.base_url, ours))))
        return
    if args.child == "ours":
        from bot.bootstrap import run_served  # the bot's own loop, as `aftercare run` has it

        run = run_ours(args.backend, args.clients, args.token, args.base_url, args.inside)
        profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile stats of the bot go there
        if profile:
            import cProfile

            with cProfile.Profile() as profiler:
                result = run_served(run)
            profiler.dump_stats(profile)
        else:
            result = run_served(run)
        print(json.dumps(result))
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print(
        f"turn latency: {args.clients} girls x {args.turns} turns, {args.think:g} s between "
        "turns on average, fake Bot API, no rate limits"
    )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rounds: list[list[tuple[str, dict[str, Any]]]] = []
    for number in range(args.rounds):
        if args.rounds > 1:
            print(f"\nround {number + 1} of {args.rounds}")
        # Every other round runs the bots in the opposite order, so that a VM whose speed
        # drifts during a round does not always favour the same bot.
        rows = one_round(args, backends, reverse=number % 2 == 1)
        print_round(rows, args.clients * args.turns)
        rounds.append(rows)
    if args.rounds > 1:
        print_over_rounds(rounds)


SCENARIOS = [("PTB echo bot", "echo", "-"), ("PTB echo bot (aiohttp)", "echo-aiohttp", "-")]
"""The baselines: PTB as it comes (httpx), and the same bare bot on our transport (aiohttp):
how much of our time is the transport's."""


def one_round(
    args: argparse.Namespace, backends: list[str], reverse: bool
) -> list[tuple[str, dict[str, Any]]]:
    """Each bot once (the baselines, then ours on each backend; with `reverse`, the other way
    round); answers the rows in the baselines-first order."""
    plan = [*SCENARIOS, *((f"aftercare ({b})", "ours", b) for b in backends)]
    figures: dict[str, dict[str, Any]] = {}
    for name, kind, backend in reversed(plan) if reverse else plan:
        inside = args.inside and kind == "ours"
        figures[name] = scenario(kind, backend, args.clients, args.turns, args.think, inside)
    return [(name, figures[name]) for name, _, _ in plan]


def print_round(rows: list[tuple[str, dict[str, Any]]], planned: int) -> None:
    """One round's table, what it saw inside each bot, and our rows against the baselines."""
    print(
        f"{'':22} {'turns':>6} {'p50 ms':>8} {'p99 ms':>8} {'turns/s':>8} {'RSS MB':>7}"
        f" {'CPU ms/turn':>11} {'of it sys':>10} {'busy':>5} {'fake busy':>9}"
    )
    for name, figures in rows:
        if "error" in figures:
            print(f"{name:22} failed: {figures['error']}")
            continue
        print(
            f"{name:22} {figures['turns']:>6} {figures['p50_ms']:>8.1f} {figures['p99_ms']:>8.1f}"
            f" {figures['turns_per_s']:>8.1f} {figures['rss_mb']:>7.0f}"
            f" {figures['cpu_s'] * 1e3 / max(figures['turns'], 1):>11.1f}"
            f" {figures['sys_s'] * 1e3 / max(figures['turns'], 1):>10.1f}"
            f" {busy(figures, 'cpu_s'):>5.0%} {busy(figures, 'load_cpu_s'):>9.0%}"
        )
    for name, figures in rows:
        if "calls" in figures:
            per_turn = ", ".join(
                f"{method} {count / max(figures['turns'], 1):.2f}"
                for method, count in sorted(figures["calls"].items(), key=lambda kv: -kv[1])
            )
            print(f"{name}: Bot API calls per turn: {per_turn}")
    for name, figures in rows:
        if "switches" in figures:
            print(
                f"{name}: {figures['switches'] / max(figures['turns'], 1):.0f} context switches"
                " per turn"
            )
    for name, figures in rows:
        if "gc_full" in figures:
            print(
                f"{name}: {figures['gc_full']} full garbage collections while serving, "
                f"the longest {figures['gc_longest_ms']:.1f} ms"
            )
    for name, figures in rows:
        if figures.get("inside_turns"):
            wall, cpu, db = (figures[f"inside_{k}_ms"] for k in ("wall", "cpu", "db_wait"))
            print(
                f"{name}: inside the bot, a turn's transaction took {wall:.1f} ms on average"
                f" (median {figures['inside_wall_p50_ms']:.1f}; {figures['inside_statements']:.1f}"
                f" statements and its COMMIT): {cpu:.1f} ms the turn thread's CPU,"
                f" {db:.1f} ms waiting inside its statements (for the database's answer, then"
                f" for the GIL), {wall - cpu - db:.1f} ms waiting between them (for the GIL)"
            )
    for name, figures in rows:
        if figures.get("turns", planned) < planned:
            print(
                f"{name}: only {figures['turns']} of {planned} turns measured:"
                " the bot sent messages the girls did not ask for, so they ran out of step"
                " (figures not comparable)"
            )
    echo, echo_ours = rows[0][1], rows[1][1]
    for name, figures in rows[2:]:
        verdict = against_echo(figures, echo)
        if verdict is None:
            continue
        ratio, p99, rss = verdict
        print(
            f"{name}: p50 {ratio:.1f}x the echo bot's ({'within' if ratio <= 3 else 'outside'}"
            f" 3x); p99 {'under' if p99 < 50 else 'over'} 50 ms;"
            f" RSS {'under' if rss < 200 else 'over'} 200 MB"
        )
        if echo_ours.get("p50_ms"):
            print(
                f"{name}: p50 {figures['p50_ms'] / echo_ours['p50_ms']:.1f}x the echo bot's"
                " on the same transport (aiohttp)"
            )


def against_echo(
    figures: dict[str, Any], echo: dict[str, Any]
) -> tuple[float, float, float] | None:
    """(p50 over the echo bot's p50, p99 ms, RSS MB) of one of our rows; None when either
    run failed."""
    if not echo.get("p50_ms") or "p50_ms" not in figures:
        return None
    return figures["p50_ms"] / echo["p50_ms"], figures["p99_ms"], figures["rss_mb"]


def print_over_rounds(rounds: list[list[tuple[str, dict[str, Any]]]]) -> None:
    """Our rows over all rounds, each against the echo bot of its own round: the VM's speed
    drifts from minute to minute, and a baseline measured in another round would mostly
    measure the drift."""
    print(f"\nover {len(rounds)} rounds, each against the echo bot of its own round:")
    for at, (name, _) in enumerate(rounds[0][2:], start=2):
        verdicts = [
            v for rows in rounds if (v := against_echo(rows[at][1], rows[0][1])) is not None
        ]
        if not verdicts:
            print(f"{name}: no round measured")
            continue
        ratios, p99s, rsses = (sorted(column) for column in zip(*verdicts, strict=True))
        met = sum(1 for r, p, m in verdicts if r <= 3 and p < 50 and m < 200)
        print(
            f"{name}: p50 {', '.join(f'{r:.1f}x' for r in ratios)} the echo bot's"
            f" (median {statistics.median(ratios):.1f}x); p99"
            f" {', '.join(f'{p:.0f}' for p in p99s)} ms (median {statistics.median(p99s):.0f});"
            f" RSS up to {rsses[-1]:.0f} MB; every target met in {met} of {len(verdicts)}"
            " rounds"
        )


def busy(figures: dict[str, Any], cpu: str) -> float:
    """The share of one core a process used while the girls chatted: its CPU seconds
    (`figures[cpu]`: the bot's, or this process's) over the seconds they chatted."""
    return float(figures[cpu] / max(figures["seconds"], 1e-9))


if __name__ == "__main__":
    main()
