"""The `aftercare` command: one Click group, sub-commands live one module per area."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Aftercare companion: run the bot and manage its data, content and NLU."""
