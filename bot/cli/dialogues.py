"""`aftercare dialogues ...`: commands for content editors.

aftercare dialogues validate [PATH]      check flows: `file:line: message. Fix: ...`
aftercare dialogues try FLOW [--lang en] chat with the working copy in the terminal
aftercare dialogues graph FLOW           the flow as a Mermaid diagram
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Callable
from pathlib import Path

import click

from bot.cli.app import care, main
from care import flow_versions
from dialogues import (
    CONTENT_DIR,
    ChoiceInput,
    CommandInput,
    ContentError,
    Context,
    DialogueError,
    EndFlow,
    Escalate,
    Event,
    Input,
    Library,
    NotifyWorker,
    Report,
    Say,
    SetField,
    SetLanguage,
    SetStatus,
    Step,
    TextInput,
    TimeoutInput,
    Wipe,
    load_flow_file,
    resume,
    start,
    validate_dir,
)
from dialogues.graph import to_mermaid
from dialogues.validate import validate_file
from nlu import NluConfig, build_nlu, defined_intents


@main.group()
def dialogues() -> None:
    """Check, try, publish and roll back the dialogue flows in dialogues/content/."""


def known_intents() -> frozenset[str]:
    """The intents the NLU training data defines (the validator's check against nlu/data)."""
    return defined_intents()


def _print_report(report: Report, what: str) -> None:
    for finding in report.findings:
        click.echo(finding.format(), err=finding.is_error)
    errors, warnings = len(report.errors), len(report.warnings)
    click.echo(f"{what}: {errors} error(s), {warnings} warning(s)")


@dialogues.command("validate")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def validate(path: Path | None) -> None:
    """Check flow files (default: all of dialogues/content/) and list every problem.

    Each problem is printed as `file:line: error|warning: message. Fix: ...`. Exits with 1 when
    there are errors, 0 when there are only warnings or nothing.
    """
    target = path or CONTENT_DIR
    intents = known_intents()
    if target.is_file():
        report = validate_file(target, known_intents=intents, display_root=Path.cwd())
        _print_report(report, f"{target.name} checked")
    else:
        report = validate_dir(target, known_intents=intents, display_root=Path.cwd())
        _print_report(report, f"{len(report.flows)} flow(s) checked")
    if not report.ok:
        raise SystemExit(1)


def sample_context(lang: str, office_hours: bool) -> Context:
    """Made-up values for trying flows in the terminal."""
    time = "dinsdag 14 mei, 15:00" if lang == "nl" else "Tuesday 14 May, 15:00"
    return {
        "alias": "Sam",
        "worker_name": "Noor",
        "appointment_time": time,
        "appointment_place": "Stationsstraat 12",
        "org_name": "Team Noord",
        "org_phone": "030 123 45 67",
        "office_hours": office_hours,
        "has_alias": True,
        "has_appointment": True,
    }


def describe(event: Event) -> str:
    """One line about an event for the terminal, e.g. `-> escalation: high, reason x`."""
    if isinstance(event, Escalate):
        return f"-> escalation: {event.severity}, reason {event.reason}"
    if isinstance(event, NotifyWorker):
        return f"-> notice to worker: {event.reason}"
    if isinstance(event, SetField):
        return f"-> field {event.name} = {event.value}"
    if isinstance(event, EndFlow):
        return f"-> end of flow {event.flow}"
    if isinstance(event, Wipe):
        return "-> wipe her data and the chat"
    if isinstance(event, SetLanguage):
        return f"-> language: {event.lang}"
    if isinstance(event, SetStatus):
        return f"-> status: {event.status}"
    lines = [f"bot> {line}" for line in event.text.splitlines()]
    lines += [f"  [{n}] {choice.label}" for n, choice in enumerate(event.choices, start=1)]
    return "\n".join(lines)


TRY_HELP = (
    "Type a message, a button number, /command, #intent (pretend the NLU found it), "
    "!critical or !high[:category] (a safety signal), /timeout, or /quit."
)


class _LiveNlu:
    """The real NLU (embedded backend by default), on one event loop for the whole session."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._nlu = build_nlu(NluConfig())

    def __call__(self, text: str, lang: str) -> TextInput:
        found = self._runner.run(self._nlu.understand(text, lang))
        return TextInput(
            text,
            intent=found.result.intent,
            confidence=found.result.confidence,
            safety=found.safety.severity,
            safety_category=found.safety.category,
        )

    def close(self) -> None:
        self._runner.run(self._nlu.aclose())
        self._runner.close()


def parse_try_line(
    line: str, last: Say | None, understand: Callable[[str, str], TextInput] | None, lang: str
) -> Input | None:
    """What a line typed in `try` means; None when it means nothing."""
    text = line.strip()
    if not text:
        return None
    if text.isdigit() and last is not None:
        number = int(text)
        if 1 <= number <= len(last.choices):
            return ChoiceInput(last.choices[number - 1].id)
        return ChoiceInput(f"forged.{text}")
    if text == "/timeout":
        return TimeoutInput()
    if text.startswith("/"):
        return CommandInput(text[1:].split()[0] if text[1:] else "")
    if text.startswith("#"):
        return TextInput("", intent=text[1:].strip(), confidence=1.0)
    if text.startswith("!"):
        severity, _, category = text[1:].partition(":")
        if severity in ("critical", "high"):
            return TextInput("", safety=severity, safety_category=category or None)  # type: ignore[arg-type]
    if understand is not None:
        found = understand(text, lang)
        click.echo(
            f"   (nlu: {found.intent} {found.confidence:.2f}"
            + (f"; safety {found.safety} {found.safety_category}" if found.safety else "")
            + ")"
        )
        return found
    return TextInput(text)


@dialogues.command("try")
@click.argument("flow")
@click.option("--lang", type=click.Choice(["nl", "en"]), default="nl", show_default=True)
@click.option("--after-hours", is_flag=True, help="Pretend it is outside office hours.")
@click.option("--no-nlu", is_flag=True, help="Do not load the NLU; use #intent instead.")
def try_flow(flow: str, lang: str, after_hours: bool, no_nlu: bool) -> None:
    """Chat with the working copy of FLOW in the terminal, showing every event."""
    report = validate_dir(CONTENT_DIR, known_intents=known_intents(), display_root=Path.cwd())
    if not report.ok:
        _print_report(report, "the working copy has errors")
        raise SystemExit(1)
    library = report.library()
    if flow not in library.flows:
        raise click.UsageError(f"no flow '{flow}'; there are: {', '.join(sorted(library.flows))}")
    understand = None if no_nlu else _LiveNlu()
    click.echo(TRY_HELP + ("" if understand else " (No live NLU: use #intent.)"))
    try:
        _chat(library, flow, lang, not after_hours, understand)
    finally:
        if understand is not None:
            understand.close()


def _chat(
    library: Library, flow: str, lang: str, office_hours: bool, understand: _LiveNlu | None
) -> None:
    context = sample_context(lang, office_hours=office_hours)
    try:
        step = start(library.active(flow), context, lang, flows=library)
    except DialogueError as error:
        raise click.ClickException(str(error)) from None
    last = _show(step)
    while True:
        try:
            line = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.Abort):
            break
        if line.strip() == "/quit":
            break
        input = parse_try_line(line, last, understand, step.session.lang)
        if input is None:
            continue
        try:
            step = resume(step.session, input, library, context)
        except DialogueError as error:
            raise click.ClickException(str(error)) from None
        last = _show(step) or last


def _show(step: Step) -> Say | None:
    last = None
    for event in step.events:
        click.echo(describe(event))
        if isinstance(event, Say) and event.choices:
            last = event
    return last


@dialogues.command("graph")
@click.argument("flow")
@click.option("--lang", type=click.Choice(["nl", "en"]), default="nl", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write to this file.")
def graph(flow: str, lang: str, output: Path | None) -> None:
    """Print FLOW as a Mermaid flowchart (paste it into any Mermaid viewer)."""
    path = CONTENT_DIR / f"{flow}.yml"
    if not path.is_file():
        raise click.UsageError(f"no flow file {path.name} in {CONTENT_DIR}")
    try:
        loaded = load_flow_file(path, path.name)
    except ContentError as error:
        for finding in error.findings:
            click.echo(finding.format(), err=True)
        raise SystemExit(1) from None
    text = to_mermaid(loaded.spec, lang)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


@dialogues.command("publish")
@click.option("--note", help="Why this version (shown in history).")
@click.option("--publisher", default=None, help="Who publishes (default: your user name).")
@click.option(
    "--path",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The content folder (default: dialogues/content/).",
)
def publish_cmd(note: str | None, publisher: str | None, path: Path | None) -> None:
    """Validate everything, then store each changed flow as a new active version.

    Unchanged content creates nothing; content with errors is never published.
    """
    who = publisher or getpass.getuser()
    c = care()
    with c.sessions.begin() as session:
        created = flow_versions.publish(
            session, path or CONTENT_DIR, who, note, known_intents=known_intents()
        )
        for version in created:
            click.echo(f"published {version.flow} v{version.number}")
    if not created:
        click.echo("nothing changed; nothing published")


@dialogues.command("history")
@click.argument("flow")
def history_cmd(flow: str) -> None:
    """List the published versions of FLOW (* marks the active one)."""
    c = care()
    with c.sessions() as session:
        for version in flow_versions.history(session, flow):
            mark = "*" if version.is_active else " "
            when = version.published_at.strftime("%Y-%m-%d %H:%M UTC")
            note = f"  {version.note}" if version.note else ""
            click.echo(
                f"{mark} v{version.number}  {when}  {version.publisher}  "
                f"{version.content_hash[:12]}{note}"
            )


@dialogues.command("diff")
@click.argument("flow")
@click.argument("a", type=int)
@click.argument("b", type=int)
def diff_cmd(flow: str, a: int, b: int) -> None:
    """Show what changed in FLOW from version A to version B."""
    c = care()
    with c.sessions() as session:
        text = flow_versions.diff(session, flow, a, b)
    click.echo(text or f"{flow} v{a} and v{b} are the same", nl=not text)


@dialogues.command("rollback")
@click.argument("flow")
@click.argument("version", type=int)
@click.option("--publisher", default=None, help="Who rolls back (default: your user name).")
def rollback_cmd(flow: str, version: int, publisher: str | None) -> None:
    """Make VERSION of FLOW active again for new conversations (running ones keep theirs)."""
    c = care()
    with c.sessions.begin() as session:
        flow_versions.rollback(session, flow, version, actor=publisher or getpass.getuser())
    click.echo(f"{flow} v{version} is active for new conversations")
