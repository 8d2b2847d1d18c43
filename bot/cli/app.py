"""The root Click group of the `aftercare` command, and what every sub-command shares.

Errors of ours (`CareError`) reach the person as one clear line, never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from care.context import Care, open_care
from care.errors import CareError
from care.settings import Settings, load_settings


class _Root(click.Group):
    """Turns our errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CareError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more (never message text or keys).")
def main(verbose: bool) -> None:
    """Aftercare companion: run the bot and manage its data, content and NLU.

    Settings come from config.yml (or the file named by AFTERCARE_CONFIG); secrets only from
    environment variables. Every sub-command explains itself with --help.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request URL, and a Bot API URL contains the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)


def settings() -> Settings:
    """The settings, loaded once per command."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    meta = root.meta
    if "aftercare.settings" not in meta:
        meta["aftercare.settings"] = load_settings()
    loaded: Settings = meta["aftercare.settings"]
    return loaded


def care(*, require_schema: bool = True) -> Care:
    """The database and keys, opened once per command and closed when it ends."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    if "aftercare.care" not in root.meta:
        opened = open_care(settings(), require_schema=require_schema)
        root.meta["aftercare.care"] = opened
        root.call_on_close(opened.close)
    found: Care = root.meta["aftercare.care"]
    return found
