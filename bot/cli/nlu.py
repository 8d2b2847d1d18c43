"""`aftercare nlu ...`: parse, train and evaluate the language understanding."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import IO, Any

import click

from bot.cli.app import main, settings
from care.settings import resolve_path
from nlu import NluConfig, NluError, Understanding, build_nlu
from nlu.config import BackendName
from nlu.data import load_training_data

BACKENDS = click.Choice(["embedded", "rasa"])


@main.group()
def nlu() -> None:
    """Parse messages, train models and measure how well the NLU understands."""


def _run(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` on a loop of its own that is closed after (it leaves the current loop be)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(work)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Our NLU errors become one clear line on stderr, never a traceback."""
    try:
        yield
    except NluError as exc:
        raise click.ClickException(str(exc)) from None


def _config(backend: BackendName | None = None) -> NluConfig:
    """NluConfig from config.yml's `nlu:` section, with the backend chosen on the command line."""
    s = settings()
    token = s.nlu.rasa_token.get_secret_value() if s.nlu.rasa_token else None
    return NluConfig(
        backend=backend or s.nlu.backend,
        confidence_threshold=s.nlu.confidence_threshold,
        rasa_url=s.nlu.rasa_url,
        rasa_token=token,
        rasa_timeout_s=s.nlu.rasa_timeout_seconds,
        cache_dir=resolve_path(s, s.nlu.cache_dir),
    )


def _as_dict(found: Understanding) -> dict[str, Any]:
    result, safety = found.result, found.safety
    return {
        "intent": {"name": result.intent, "confidence": round(result.confidence, 4)},
        "ranking": [
            {"name": score.name, "confidence": round(score.confidence, 4)}
            for score in result.ranking[:10]
        ],
        "entities": [
            {"entity": e.entity, "value": e.value, "start": e.start, "end": e.end}
            for e in result.entities
        ],
        "safety": {
            "severity": safety.severity,
            "category": safety.category,
            "matched": safety.matched,
        },
        "backend": found.backend,
    }


@nlu.command()
@click.argument("text", required=False)
@click.option("--lang", default="nl", show_default=True, help="Language of the message.")
@click.option("--backend", type=BACKENDS, help="Override config.yml's nlu.backend.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--file",
    "file",
    type=click.File("r", encoding="utf-8"),
    help="Parse one message per line; prints one JSON object per line.",
)
def parse(
    text: str | None, lang: str, backend: BackendName | None, as_json: bool, file: IO[str] | None
) -> None:
    """Show the intent, confidence and safety verdict the NLU gives TEXT."""
    if (text is None) == (file is None):
        raise click.UsageError("Give either TEXT or --file FILE.")
    with _clear_errors():
        _run(_parse(text, file, lang, _config(backend), as_json))


async def _parse(
    text: str | None, file: IO[str] | None, lang: str, config: NluConfig, as_json: bool
) -> None:
    engine = build_nlu(config)
    try:
        await engine.start()
        if file is not None:
            for line in file:
                found = await engine.understand(line.rstrip("\n"), lang)
                click.echo(json.dumps(_as_dict(found), ensure_ascii=False))
            return
        found = await engine.understand(text or "", lang)
        if as_json:
            click.echo(json.dumps(_as_dict(found), ensure_ascii=False, indent=2))
            return
        result, safety = found.result, found.safety
        click.echo(f"intent:  {result.intent} ({result.confidence:.2f})")
        others = ", ".join(f"{s.name} {s.confidence:.2f}" for s in result.ranking[1:4])
        click.echo(f"next:    {others or '-'}")
        if safety.severity:
            click.echo(f"safety:  {safety.severity} {safety.category} (entry {safety.matched})")
        else:
            click.echo("safety:  no danger signal")
        click.echo(f"backend: {found.backend}")
    finally:
        await engine.aclose()


@nlu.command()
@click.option("--backend", type=BACKENDS, default="embedded", show_default=True)
@click.option("--lang", "langs", multiple=True, help="Only this language (repeatable).")
def train(backend: BackendName, langs: tuple[str, ...]) -> None:
    """Train the models from nlu/data (cached by a hash of the data; a second run is instant)."""
    config = _config(backend)
    languages = langs or config.languages
    with _clear_errors():
        for lang in languages:
            started = time.monotonic()
            if backend == "embedded":
                from nlu.embedded import cache_path, load_or_train

                data = load_training_data(lang)
                cached = cache_path(data, config.cache_dir).is_file()
                click.echo(f"embedded {lang}: {'loading' if cached else 'training'} ...", nl=False)
                load_or_train(data, config.cache_dir)
                click.echo(f" done in {time.monotonic() - started:.1f} s")
                continue
            from nlu.rasa_env import model_path, train_model

            target = model_path(lang, config.cache_dir)
            if target.is_file():
                click.echo(f"rasa {lang}: up to date ({target})")
                continue
            click.echo(f"rasa {lang}: training (15 s or so on 2 cores)")
            train_model(lang, config.cache_dir, on_line=_RasaProgress(lang))
            click.echo(f"rasa {lang}: done in {time.monotonic() - started:.0f} s -> {target}")


async def _holdout(config: NluConfig, langs: tuple[str, ...]) -> None:
    from nlu.evaluate import check_holdout

    engine = build_nlu(config)
    try:
        for lang in langs or config.languages:
            held = await check_holdout(engine, lang)
            click.echo(
                f"held-out danger messages ({lang}, embedded): {held.caught}/{held.total} caught "
                f"(recall {held.recall:.3f}); harmless look-alikes flagged: "
                f"{len(held.false_alarms)}/{held.harmless}"
            )
    finally:
        await engine.aclose()


class _RasaProgress:
    """Turns Rasa's training log into a short progress display."""

    _COMPONENT = re.compile(r"Starting to train component '(\w+)'")
    _EPOCH = re.compile(r"Epochs:\s+\d+%.*?\|\s*(\d+)/(\d+)")

    def __init__(self, lang: str) -> None:
        self._lang = lang
        self._last_epoch = ""

    def __call__(self, line: str) -> None:
        component = self._COMPONENT.search(line)
        if component:
            click.echo(f"  {self._lang}: {component.group(1)}")
        epochs = self._EPOCH.findall(line)
        if epochs:
            done, total = epochs[-1]
            if done != self._last_epoch:
                self._last_epoch = done
                click.echo(f"\r  {self._lang}: epoch {done}/{total}", nl=False)
                if done == total:
                    click.echo("")


@nlu.command()
@click.option("--backend", type=BACKENDS, default="embedded", show_default=True)
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 20))
@click.option("--lang", "langs", multiple=True, help="Only this language (repeatable).")
@click.option("--compare", is_flag=True, help="Run embedded and rasa on the same folds.")
@click.option("--threshold", type=float, help="Confidence threshold (default: config.yml).")
@click.option("--details/--no-details", default=True, help="Per-intent and confusion tables.")
def evaluate(
    backend: BackendName,
    folds: int,
    langs: tuple[str, ...],
    compare: bool,
    threshold: float | None,
    details: bool,
) -> None:
    """Cross-validate on nlu/data: per-intent P/R/F1, confusion, danger recall, parse time."""
    from nlu.evaluate import (
        format_comparison,
        format_report,
        make_folds,
        run_embedded,
        run_rasa,
        score,
    )
    from nlu.safety import SafetyCheck

    config = _config(backend)
    cut = config.confidence_threshold if threshold is None else threshold
    backends: list[BackendName] = ["embedded", "rasa"] if compare else [backend]
    reports = []
    with _clear_errors():
        safety = SafetyCheck.load(config.languages)
        for lang in langs or config.languages:
            data = load_training_data(lang)
            plan = make_folds(data, folds)
            for name in backends:
                runner = run_embedded if name == "embedded" else run_rasa
                run = runner(data, plan, lambda line: click.echo(line, err=True))
                report = score(run, cut, safety)
                reports.append(report)
                if details:
                    click.echo(format_report(report) + "\n")
    click.echo(f"{folds}-fold cross-validation, threshold {cut:.2f}, same folds for each backend")
    click.echo(format_comparison(reports))
    with _clear_errors():
        _run(_holdout(replace(config, backend="embedded", confidence_threshold=cut), langs))
    if compare:
        for lang in langs or config.languages:
            pair = {r.backend: r for r in reports if r.lang == lang}
            gap = (pair["embedded"].macro_f1 - pair["rasa"].macro_f1) * 100
            click.echo(f"{lang}: embedded minus rasa macro F1 = {gap:+.1f} points")
