"""`aftercare nlu ...`: parse, train and evaluate the language understanding."""

from __future__ import annotations

from bot.cli.app import main


@main.group()
def nlu() -> None:
    """Parse messages, train models and measure how well the NLU understands."""
