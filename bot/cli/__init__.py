"""The `aftercare` command: one Click group; each area adds its sub-commands from its own module."""

from __future__ import annotations

from bot.cli import admin as _admin  # noqa: F401  (registers sub-commands)
from bot.cli import dialogues as _dialogues  # noqa: F401
from bot.cli import nlu as _nlu  # noqa: F401
from bot.cli import run as _run  # noqa: F401
from bot.cli.app import main

__all__ = ["main"]
