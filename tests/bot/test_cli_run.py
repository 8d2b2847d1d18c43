"""`aftercare run` as a real process against the fake Bot API: it serves, and SIGTERM stops it
cleanly after the reply in hand went out."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from care.settings import DEFAULT_CONFIG
from nlu.config import default_cache_dir
from tests.fakes.telegram_api import FakeTelegram

CHAT = 4_242_001


def test_aftercare_run_serves_and_stops_on_sigterm(
    tmp_path: Path, fake_telegram: FakeTelegram
) -> None:
    config = DEFAULT_CONFIG.read_text(encoding="utf-8").replace(
        "cache_dir: var/nlu-cache", f"cache_dir: {default_cache_dir()}"
    )
    (tmp_path / "config.yml").write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")} | {
        "AFTERCARE_CONFIG": str(tmp_path / "config.yml"),
        "PTB_TIMEDELTA": "true",
    }
    command = [sys.executable, "-c", "from bot.cli import main; main()"]

    def aftercare(*args: str) -> str:
        done = subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return done.stdout

    aftercare("init")
    aftercare("org", "add", "Het Anker")
    aftercare("worker", "add", "--org", "Het Anker", "--name", "Anna")
    invited = aftercare("client", "invite", "--worker", "Anna", "--alias", "roos-9")
    code = re.search(r"use once\): (\S+)", invited)
    assert code is not None, invited
    env |= {
        "AFTERCARE_TELEGRAM_TOKEN": fake_telegram.token,
        "AFTERCARE_TELEGRAM_BASE_URL": fake_telegram.base_url,
    }
    bot = subprocess.Popen(
        [*command, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        fake_telegram.push_command(CHAT, "/start", code.group(1))
        fake_telegram.wait_for(2, 60, chat_id=CHAT)
        update_id = fake_telegram.push_text(CHAT, "hoi")
        # Taken for good (confirmed): a stop must now finish it. (One only delivered when the
        # stop comes is fetched again at the next start: test_runtime checks that.)
        fake_telegram.wait_for(lambda: fake_telegram.confirmed(update_id), 30)
        bot.send_signal(signal.SIGTERM)
        _, stderr = bot.communicate(timeout=60)
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait()
    assert bot.returncode == 0, stderr[-2000:]
    assert "bot.stopped" in stderr
    if sys.platform != "win32":
        assert "loop=uvloop" in stderr, "it served on uvloop's event loop"
    texts = fake_telegram.texts(CHAT)
    assert texts[0] == "Hoi! 👋 Fijn dat je er bent."
    assert len(texts) >= 3, "the reply to 'hoi' went out before the process ended"
    assert "hoi" not in stderr.lower(), "no message text in the logs"
    assert str(CHAT) not in stderr and fake_telegram.token not in stderr
