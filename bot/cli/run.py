"""`aftercare run` and `aftercare chat`: the bot itself.

`run` serves Telegram (polling by default, webhook when `telegram.mode` is webhook) when
AFTERCARE_TELEGRAM_TOKEN is set; without a token it starts the console demo, so that
`make run` works on a fresh machine. `chat` is the console channel on the local database.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from bot.cli.app import care, main, settings

log = logging.getLogger(__name__)


async def _serve(token: str) -> None:
    from bot.bootstrap import build, serve_telegram, stop_on_signals

    s = settings()
    parts = build(s, care=care())
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        await serve_telegram(parts, stop, token=token, base_url=s.telegram.base_url)
    finally:
        await parts.nlu.aclose()


async def _console(alias: str | None) -> None:
    from bot.bootstrap import build
    from bot.console import run_console

    root = logging.getLogger()
    if root.level > logging.DEBUG:
        # The terminal is her chat: only errors show on it (-v shows everything). A warning
        # such as `duress.raised` on her screen would give the silent alarm away.
        root.setLevel(logging.ERROR)
    parts = build(settings(), care=care())
    try:
        await run_console(parts, sys.stdin, sys.stdout, alias=alias)
    finally:
        await parts.nlu.aclose()


@main.command()
def run() -> None:
    """Run the bot: Telegram when AFTERCARE_TELEGRAM_TOKEN is set, else the console demo.

    SIGTERM (or Ctrl-C) stops it gracefully: the update in hand is finished and the outbox
    is flushed before the process exits.
    """
    s = settings()
    if s.telegram.token is None:
        click.echo(
            "No AFTERCARE_TELEGRAM_TOKEN set: starting the local console demo (`aftercare chat`).",
            err=True,
        )
        asyncio.run(_console(None))
        return
    from bot.bootstrap import run_served

    run_served(_serve(s.telegram.token.get_secret_value()))


@main.command()
@click.option("--client", "alias", help="Speak as this client (not linked to Telegram).")
def chat(alias: str | None) -> None:
    """Chat with the bot in this terminal, on the local database (no Telegram).

    The first time, a demo organisation, worker and client are created. Her worker's alerts
    show in the same terminal; `/w COMMAND` speaks as the worker.
    """
    if settings().telegram.token is not None:
        raise click.ClickException(
            "AFTERCARE_TELEGRAM_TOKEN is set: the console would take messages meant for "
            "Telegram. Unset it to chat locally."
        )
    asyncio.run(_console(alias))


__all__ = ["main"]
