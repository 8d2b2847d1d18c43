"""Cross-validation of the NLU: per-intent scores, a confusion table, danger recall, speed.

Both backends are scored on the same stratified folds of nlu/data. Danger recall counts a
danger example (danger_now, self_harm, feel_unsafe, exploiter_contact) as caught when the
safety lexicon flags it, the classifier settles on a danger intent, or the classifier's doubt
raises a "high" verdict (see `nlu.service`), which is exactly what `Nlu.understand` does.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold

from nlu.data import TrainingData
from nlu.embedded import IntentClassifier, decide
from nlu.errors import RasaEnvironmentError
from nlu.rasa_env import RASA_DIR, pipeline_config, rasa_bin, run_streaming
from nlu.results import DANGER_INTENTS, IntentScore, NluResult, SafetyVerdict
from nlu.safety import SafetyCheck
from nlu.service import Nlu, _doubtful_danger

Folds = list[tuple[list[int], list[int]]]
Progress = Callable[[str], None]
THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(0, 13))


def make_folds(data: TrainingData, folds: int = 5, seed: int = 7) -> Folds:
    """Stratified folds (indices into data.examples), the same for every backend."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = np.array(data.labels)
    return [
        (train.tolist(), test.tolist())
        for train, test in splitter.split(np.zeros(len(labels)), labels)
    ]


@dataclass
class Run:
    """Out-of-fold rankings of one backend for one language, with per-message parse times."""

    backend: str
    lang: str
    texts: list[str]
    truth: list[str]
    rankings: list[tuple[IntentScore, ...]]
    parse_seconds: list[float]
    #: CPU time of the parsing thread (embedded only): on a busy machine the wall-clock p99
    #: mostly measures waiting for a core, this does not.
    cpu_seconds: list[float] = field(default_factory=list)


def run_embedded(data: TrainingData, folds: Folds, progress: Progress | None = None) -> Run:
    """Train the embedded classifier per fold and rank each held-out message one at a time."""
    texts, labels = data.texts, data.labels
    run = Run("embedded", data.lang, [], [], [], [])
    for number, (train, test) in enumerate(folds, start=1):
        if progress:
            progress(f"embedded {data.lang}: fold {number}/{len(folds)}")
        classifier = IntentClassifier.train([texts[i] for i in train], [labels[i] for i in train])
        classifier.rank(texts[test[0]])  # warm-up: the first call pays for lazy imports
        gc.collect()
        gc.disable()  # time the parse, not the collection of the training's garbage
        try:
            for i in test:
                started, started_cpu = time.perf_counter(), time.thread_time()
                ranking = classifier.rank(texts[i])
                run.parse_seconds.append(time.perf_counter() - started)
                run.cpu_seconds.append(time.thread_time() - started_cpu)
                run.texts.append(texts[i])
                run.truth.append(labels[i])
                run.rankings.append(ranking)
        finally:
            gc.enable()
    return run


def run_rasa(data: TrainingData, folds: Folds, progress: Progress | None = None) -> Run:
    """Train a Rasa model per fold in the Rasa environment and parse the held-out messages."""
    python = rasa_bin("python")
    texts, labels = data.texts, data.labels
    with tempfile.TemporaryDirectory(prefix="aftercare-eval-") as work:
        config = Path(work) / "config.yml"
        config.write_text(pipeline_config(data.lang), "utf-8")
        job = {
            "config": str(config),
            "folds": [
                {"train": [[texts[i], labels[i]] for i in train], "test": [texts[i] for i in test]}
                for train, test in folds
            ],
        }
        job_file, result_file = Path(work) / "job.json", Path(work) / "result.json"
        job_file.write_text(json.dumps(job), "utf-8")
        command = [str(python), str(RASA_DIR / "crossval.py"), str(job_file), str(result_file)]

        def on_line(line: str) -> None:
            if progress and line.startswith("fold "):
                progress(f"rasa {data.lang}: {line.strip()}")

        run_streaming(command, Path(work), on_line, what="Rasa cross-validation")
        if not result_file.is_file():
            raise RasaEnvironmentError("Rasa cross-validation finished but wrote no result.")
        result = json.loads(result_file.read_text("utf-8"))
    run = Run("rasa", data.lang, [], [], [], [])
    for (_train, test), fold in zip(folds, result["folds"], strict=True):
        for i, ranking, seconds in zip(test, fold["rankings"], fold["seconds"], strict=True):
            run.texts.append(texts[i])
            run.truth.append(labels[i])
            run.rankings.append(
                tuple(IntentScore(str(n), float(c)) for n, c in ranking if n is not None)
            )
            run.parse_seconds.append(float(seconds))
    return run


@dataclass
class Report:
    """The scores of one run at one confidence threshold."""

    backend: str
    lang: str
    threshold: float
    labels: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    macro_f1: float
    accuracy: float
    confusion: list[list[int]]
    danger_recall: float
    danger_recall_classifier: float
    danger_recall_lexicon: float
    false_alarm_rate: float
    parse_mean_ms: float
    parse_p99_ms: float
    parse_p99_cpu_ms: float | None
    lexicon_mean_ms: float | None
    lexicon_p99_ms: float | None
    best_threshold: float
    best_macro_f1: float


def _predictions(run: Run, threshold: float) -> list[NluResult]:
    return [decide(ranking, threshold) for ranking in run.rankings]


def _macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    _p, _r, f1, _s = precision_recall_fscore_support(
        truth, predicted, labels=list(labels), zero_division=0
    )
    return float(np.mean(f1))


def score(run: Run, threshold: float, safety: SafetyCheck) -> Report:
    """Score a run: per-intent P/R/F1, confusion, danger recall (with the lexicon), speed."""
    labels = sorted(set(run.truth))
    results = _predictions(run, threshold)
    predicted = [result.intent for result in results]
    precision, recall, f1, support = precision_recall_fscore_support(
        run.truth, predicted, labels=labels, zero_division=0
    )
    lexicon_seconds: list[float] = []
    verdicts: list[SafetyVerdict] = []
    for text in run.texts:
        started = time.perf_counter()
        verdicts.append(safety.check(text, run.lang))
        lexicon_seconds.append(time.perf_counter() - started)
    caught = caught_classifier = caught_lexicon = dangers = alarms = others = 0
    for truth, result, verdict in zip(run.truth, results, verdicts, strict=True):
        by_classifier = result.intent in DANGER_INTENTS or _doubtful_danger(result).is_danger
        flagged = verdict.is_danger or by_classifier
        if truth in DANGER_INTENTS:
            dangers += 1
            caught += flagged
            caught_classifier += by_classifier
            caught_lexicon += verdict.is_danger
        else:
            others += 1
            alarms += flagged
    best = max(THRESHOLDS, key=lambda t: _macro_f1(run.truth, _intents(run, t), labels))
    parse_ms = np.array(run.parse_seconds) * 1000
    lexicon_ms = np.array(lexicon_seconds) * 1000
    return Report(
        backend=run.backend,
        lang=run.lang,
        threshold=threshold,
        labels=labels,
        precision=[float(x) for x in precision],
        recall=[float(x) for x in recall],
        f1=[float(x) for x in f1],
        support=[int(x) for x in support],
        macro_f1=float(np.mean(f1)),
        accuracy=float(np.mean([t == p for t, p in zip(run.truth, predicted, strict=True)])),
        confusion=confusion_matrix(run.truth, predicted, labels=labels).tolist(),
        danger_recall=caught / max(dangers, 1),
        danger_recall_classifier=caught_classifier / max(dangers, 1),
        danger_recall_lexicon=caught_lexicon / max(dangers, 1),
        false_alarm_rate=alarms / max(others, 1),
        parse_mean_ms=float(parse_ms.mean()),
        parse_p99_ms=float(np.percentile(parse_ms, 99)),
        parse_p99_cpu_ms=(
            float(np.percentile(np.array(run.cpu_seconds) * 1000, 99)) if run.cpu_seconds else None
        ),
        lexicon_mean_ms=float(lexicon_ms.mean()),
        lexicon_p99_ms=float(np.percentile(lexicon_ms, 99)),
        best_threshold=best,
        best_macro_f1=_macro_f1(run.truth, _intents(run, best), labels),
    )


def _intents(run: Run, threshold: float) -> list[str]:
    return [result.intent for result in _predictions(run, threshold)]


def format_report(report: Report) -> str:
    """A plain-text report: per-intent table, confusion table and the summary figures."""
    lines = [f"== {report.backend} / {report.lang} (threshold {report.threshold:.2f}) =="]
    lines.append(f"{'intent':<24}{'precision':>10}{'recall':>8}{'f1':>8}{'n':>5}")
    for i, label in enumerate(report.labels):
        lines.append(
            f"{label:<24}{report.precision[i]:>10.3f}{report.recall[i]:>8.3f}"
            f"{report.f1[i]:>8.3f}{report.support[i]:>5}"
        )
    lines.append("")
    lines.append("confusion (rows: true intent, columns: predicted, numbered as the rows)")
    header = " " * 27 + "".join(f"{n:>4}" for n in range(1, len(report.labels) + 1))
    lines.append(header)
    for i, (label, row) in enumerate(zip(report.labels, report.confusion, strict=True), 1):
        cells = "".join(f"{count:>4}" if count else "   ." for count in row)
        lines.append(f"{i:>2} {label:<24}{cells}")
    lines.append("")
    lines.extend(_summary_lines(report))
    return "\n".join(lines)


def _summary_lines(report: Report) -> list[str]:
    lines = [
        f"macro F1                  {report.macro_f1:.3f}   accuracy {report.accuracy:.3f}",
        f"best threshold            {report.best_threshold:.2f} "
        f"(macro F1 {report.best_macro_f1:.3f})",
        f"danger recall             {report.danger_recall:.3f}   (classifier alone "
        f"{report.danger_recall_classifier:.3f}, lexicon alone {report.danger_recall_lexicon:.3f})",
        f"false alarms (non-danger) {report.false_alarm_rate:.3f}",
        f"parse time (classifier)   mean {report.parse_mean_ms:.3f} ms, p99 "
        f"{report.parse_p99_ms:.3f} ms"
        + (
            f" (CPU time p99 {report.parse_p99_cpu_ms:.3f} ms)"
            if report.parse_p99_cpu_ms is not None
            else ""
        ),
    ]
    if report.lexicon_mean_ms is not None and report.lexicon_p99_ms is not None:
        lines.append(
            f"safety lexicon            mean {report.lexicon_mean_ms:.3f} ms, p99 "
            f"{report.lexicon_p99_ms:.3f} ms"
        )
    return lines


def format_comparison(reports: Sequence[Report]) -> str:
    """Side by side: one row per backend and language with the headline figures."""
    lines = [
        f"{'backend':<10}{'lang':<6}{'macro F1':>9}{'accuracy':>10}{'danger recall':>15}"
        f"{'false alarms':>14}{'parse mean ms':>15}{'parse p99 ms':>14}{'p99 CPU ms':>12}",
    ]
    for r in reports:
        lines.append(
            f"{r.backend:<10}{r.lang:<6}{r.macro_f1:>9.3f}{r.accuracy:>10.3f}"
            f"{r.danger_recall:>15.3f}{r.false_alarm_rate:>14.3f}"
            f"{r.parse_mean_ms:>15.3f}{r.parse_p99_ms:>14.3f}"
            + (f"{r.parse_p99_cpu_ms:>12.3f}" if r.parse_p99_cpu_ms is not None else f"{'-':>12}")
        )
    return "\n".join(lines)


HOLDOUT = Path(__file__).resolve().parent / "eval" / "danger_holdout.yml"


@dataclass
class HoldoutResult:
    """Danger recall on the held-out messages, and false alarms on harmless look-alikes."""

    lang: str
    caught: int
    total: int
    missed: list[tuple[str, str]]
    false_alarms: list[str]
    harmless: int

    @property
    def recall(self) -> float:
        """Share of the held-out danger messages the NLU flags."""
        return self.caught / max(self.total, 1)


def load_holdout(lang: str, path: Path = HOLDOUT) -> tuple[list[tuple[str, str]], list[str]]:
    """The held-out (text, category) danger messages and harmless messages of `lang`."""
    document = YAML(typ="safe", pure=True).load(path.read_text("utf-8")) or {}
    section = document.get(lang) or {}
    danger = [(str(text), str(category)) for text, category in section.get("danger") or []]
    return danger, [str(text) for text in section.get("harmless") or []]


async def check_holdout(nlu: Nlu, lang: str, path: Path = HOLDOUT) -> HoldoutResult:
    """Run the held-out messages through `Nlu.understand`, exactly as the bot would."""
    danger, harmless = load_holdout(lang, path)
    missed: list[tuple[str, str]] = []
    for text, category in danger:
        found = await nlu.understand(text, lang)
        if not (found.safety.is_danger or found.result.intent in DANGER_INTENTS):
            missed.append((text, category))
    alarms = []
    for text in harmless:
        found = await nlu.understand(text, lang)
        if found.safety.is_danger or found.result.intent in DANGER_INTENTS:
            alarms.append(text)
    return HoldoutResult(
        lang, len(danger) - len(missed), len(danger), missed, alarms, len(harmless)
    )
