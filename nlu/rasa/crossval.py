"""Train and parse cross-validation folds inside the Rasa environment (Python 3.10).

Run by `aftercare nlu evaluate --backend rasa|--compare` with the Rasa environment's Python:

    python nlu/rasa/crossval.py JOB.json RESULT.json

JOB.json: {"config": path, "folds": [{"train": [[text, intent], ...], "test": [text, ...]}]}.
RESULT.json: {"folds": [{"rankings": [[[intent, confidence], ...], ...], "seconds": [...]}]}.
One process for all folds, so TensorFlow is imported once. Prints one progress line per step.
This file imports Rasa and nothing of ours; it is not part of the `nlu` package.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _write_nlu_yaml(path: Path, examples: list[list[str]]) -> None:
    by_intent: dict[str, list[str]] = {}
    for text, intent in examples:
        by_intent.setdefault(intent, []).append(" ".join(text.split()))
    lines = ['version: "3.1"', "nlu:"]
    for intent, texts in by_intent.items():
        lines.append(f"- intent: {intent}")
        lines.append("  examples: |")
        lines.extend(f"    - {text}" for text in texts)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def _parse_all(agent: Any, texts: list[str]) -> tuple[list[Any], list[float]]:
    rankings: list[Any] = []
    seconds: list[float] = []
    for text in texts:
        started = time.perf_counter()
        parsed = await agent.parse_message(text)
        seconds.append(time.perf_counter() - started)
        ranking = parsed.get("intent_ranking") or [parsed.get("intent") or {}]
        rankings.append([[r.get("name"), float(r.get("confidence") or 0.0)] for r in ranking])
    return rankings, seconds


def main(job_path: str, result_path: str) -> None:
    """Train one model per fold, parse its test texts, write rankings and timings."""
    from rasa.core.agent import Agent  # type: ignore[import-not-found]
    from rasa.model_training import train_nlu  # type: ignore[import-not-found]

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    results = []
    total = len(job["folds"])
    loop = asyncio.new_event_loop()
    for number, fold in enumerate(job["folds"], start=1):
        print(f"fold {number}/{total}: training", flush=True)
        with tempfile.TemporaryDirectory(prefix="aftercare-cv-") as work:
            data = Path(work) / "nlu.yml"
            _write_nlu_yaml(data, fold["train"])
            model = train_nlu(job["config"], str(data), str(Path(work) / "models"), f"fold{number}")
            if model is None:
                raise SystemExit(f"fold {number}: Rasa produced no model")
            print(f"fold {number}/{total}: parsing {len(fold['test'])} messages", flush=True)
            agent = Agent.load(model)
            rankings, seconds = loop.run_until_complete(_parse_all(agent, fold["test"]))
        results.append({"rankings": rankings, "seconds": seconds})
    loop.close()
    Path(result_path).write_text(json.dumps({"folds": results}), encoding="utf-8")
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
