"""Admin commands: init, db, keys, org, worker, client, audit."""

from __future__ import annotations

from bot.cli.app import main

__all__ = ["main"]
