"""The bot process the fault tests kill: an outbox sender with the real Telegram channel.

    python -m tests.faults.child   (AFTERCARE_DATABASE_URL, AFTERCARE_KEYS, FAKE_BASE_URL,
                                    FAKE_TOKEN in the environment)

It sends until it is killed, or until SIGTERM (then it stops gracefully).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

os.environ.setdefault("PTB_TIMEDELTA", "true")


from bot.telegram import TelegramChannel, make_bot
from care.context import Care
from care.crypto import keyring_from_set
from care.db import make_engine, make_sessionmaker
from care.outbox import OutboxSender, SenderOptions
from care.settings import DEFAULT_CONFIG, load_settings
from care.vault import Vault

OPTIONS = SenderOptions(claim_seconds=2.0, poll_seconds=0.1)


async def main() -> None:
    """Send until told to stop."""
    settings = load_settings(DEFAULT_CONFIG, environ={})
    keyring = keyring_from_set(json.loads(os.environ["AFTERCARE_KEYS"]), "test keys")
    engine = make_engine(os.environ["AFTERCARE_DATABASE_URL"])
    care = Care(settings, engine, make_sessionmaker(engine), keyring, Vault(keyring))
    bot = make_bot(os.environ["FAKE_TOKEN"], os.environ["FAKE_BASE_URL"])
    await bot.initialize()
    sender = OutboxSender(care, TelegramChannel(bot), options=OPTIONS)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await sender.start()
    print("ready", flush=True)
    await stop.wait()
    await sender.stop(flush=False)
    await bot.shutdown()
    care.close()


if __name__ == "__main__":
    asyncio.run(main())
