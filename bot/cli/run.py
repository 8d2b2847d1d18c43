"""`aftercare run` and `aftercare chat`: the bot itself."""

from __future__ import annotations

from bot.cli.app import main

__all__ = ["main"]
