"""The root Click group of the `aftercare` command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Aftercare companion: run the bot and manage its data, content and NLU.

    Settings come from config.yml (or the file named by AFTERCARE_CONFIG); secrets only from
    environment variables. Every sub-command explains itself with --help.
    """
