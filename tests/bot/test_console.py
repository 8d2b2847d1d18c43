"""The console channel, driven by a scripted stdin: what a person sees in the terminal."""

from __future__ import annotations

import asyncio
import io
import os
import queue
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from bot.bootstrap import build
from bot.console import run_console
from care.context import Care
from care.models import Escalation
from care.settings import DEFAULT_CONFIG
from nlu.config import default_cache_dir
from tests.bot.world import shared_flows, shared_nlu

Line = str | Callable[[], str]


class Script:
    """A stdin that hands out lines one by one; a line may be computed when it is read."""

    def __init__(self) -> None:
        self.lines: queue.Queue[Line] = queue.Queue()

    def feed(self, *lines: Line) -> None:
        for line in lines:
            self.lines.put(line)

    def readline(self) -> str:
        line = self.lines.get(timeout=30)
        text = line() if callable(line) else line
        return text + "\n" if text else ""


async def test_the_console_demo_end_to_end(care_ctx: Care) -> None:
    parts = build(care_ctx.settings, care=care_ctx, nlu=shared_nlu(), flows=shared_flows())
    out = io.StringIO()
    script = Script()

    def start_line() -> str:
        code = re.search(r"/start (\S+)", out.getvalue())
        assert code is not None, out.getvalue()
        return f"/start {code.group(1)}"

    script.feed(
        "hallo",  # not enrolled yet: the neutral answer
        start_line,
        "7",  # there is no button 7: a hint, and nothing is sent
        "1",  # Nederlands
        "1",  # Ja, prima
        "Sam",
        "/checkin",
        "3",  # Niet zo goed
        "1",  # Ja, graag (contact)
        "w1",  # the worker: Gezien
        "/demo-reminder",
        "paraplu",
        "/w /clients",
        "/wissen",
        "1",
        "/quit",
    )
    await asyncio.wait_for(run_console(parts, script, out, background=False), 60)
    shown = out.getvalue()
    assert "Jij bent de cliënt 'demo'" in shown
    assert "🤖 Hoi! Deze chat is niet actief." in shown
    assert "🤖 Hoi! 👋 Fijn dat je er bent." in shown
    assert "[1] Nederlands  [2] English" in shown
    assert "(geen knop 7: kies 1–2 / no button 7: choose 1–2)" in shown
    assert "Dank je! Zo noem ik je vanaf nu." in shown
    assert "🤖 Hoi Sam! Hoe gaat het vandaag?" in shown
    assert "👩‍💼 🟡 Normaal — demo" in shown, "the worker's alert shows in the same terminal"
    assert "[w1] Gezien" in shown
    assert "🤖 Anna heeft je bericht gezien." in shown
    assert "Even een herinnering aan je afspraak." in shown and "Stationsplein 1" in shown
    assert "🤖 Oké, top! 👍" in shown and "STIL ALARM" in shown
    assert "• demo – actief" in shown
    assert "berichten gewist" in shown
    assert "Traceback" not in shown
    with care_ctx.sessions() as session:
        reasons = sorted(session.scalars(select(Escalation.reason)))
    assert reasons == ["checkin_wants_contact", "duress"]


def test_aftercare_chat_creates_the_demo_once(tmp_path: Path) -> None:
    config = DEFAULT_CONFIG.read_text(encoding="utf-8").replace(
        "cache_dir: var/nlu-cache", f"cache_dir: {default_cache_dir()}"
    )
    (tmp_path / "config.yml").write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")} | {
        "AFTERCARE_CONFIG": str(tmp_path / "config.yml")
    }

    def aftercare(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from bot.cli import main; main()", *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert aftercare("init").returncode == 0
    codes = []
    for _ in range(2):
        result = aftercare("chat", stdin="/quit\n")
        assert result.returncode == 0, result.stderr
        found = re.search(r"Eerst koppelen: typ  /start (\S+)", result.stdout)
        assert found is not None, result.stdout
        codes.append(found.group(1))
        assert "Traceback" not in result.stderr
    assert codes[0] != codes[1], "a new code each time until she enrolled"
    assert aftercare("org", "list").stdout.count("Demo Het Anker") == 1
    # The terminal is her phone: her duress word raises the silent alarm, and no log line
    # about it shows on the screen (logs go to stderr, which is the same terminal).
    chat = subprocess.Popen(
        [sys.executable, "-c", "from bot.cli import main; main()", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert chat.stdin is not None and chat.stdout is not None
    intro = ""
    while (found := re.search(r"typ  /start (\S+)", intro)) is None:
        line = chat.stdout.readline()
        assert line, intro
        intro += line
    shown, logged = chat.communicate(f"/start {found.group(1)}\n1\nparaplu\n/quit\n", timeout=120)
    assert chat.returncode == 0, logged
    assert "STIL ALARM" in shown
    assert "duress" not in logged
    env["AFTERCARE_TELEGRAM_TOKEN"] = "123:abc"
    result = aftercare("chat", stdin="/quit\n")
    assert result.returncode == 1 and "AFTERCARE_TELEGRAM_TOKEN is set" in result.stderr
