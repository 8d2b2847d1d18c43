"""`aftercare dialogues ...`: commands for content editors."""

from __future__ import annotations

from bot.cli.app import main


@main.group()
def dialogues() -> None:
    """Check, try, publish and roll back the dialogue flows in dialogues/content/."""
