"""The embedded backend: a small text classifier trained in-process from nlu/data.

Features are TF-IDF weighted word uni/bigrams (emoji and punctuation count as words) and
character n-grams within word boundaries (2-5), which carry chat spelling and typos; a
multinomial logistic regression gives calibrated-enough probabilities. One model per language,
cached on disk by a digest of the training files, the feature code version and scikit-learn's
version, so a second start loads in milliseconds instead of training.

Training uses scikit-learn (`nlu.training`, imported only when a model has to be trained).
Scoring needs numpy alone: the analyzers below are our own and produce exactly the features
scikit-learn's vectorizers produce, and the cache holds plain arrays (an .npz, no pickles). So
the running bot never loads scikit-learn, scipy or joblib (about 80 MB and 1.4 s at start).
Tests check that the analyzers and the probabilities agree with scikit-learn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from nlu.data import DATA_DIR, TrainingData, load_training_data
from nlu.errors import UnknownLanguageError
from nlu.results import OUT_OF_SCOPE, IntentScore, NluResult
from nlu.text import clean, skeleton

logger = logging.getLogger(__name__)

#: Bump when features or model change, so cached models from older code are not loaded.
MODEL_VERSION = "2"
#: A chat message says what it means early on; 10,000 characters need not all be read.
MAX_CHARS = 1_000
#: Words are runs of letters and digits; every other non-space character is a word of its own.
_WORDS_AND_SYMBOLS = r"(?u)[^\W_]+|[^\w\s]"
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
_TOKENS = re.compile(_WORDS_AND_SYMBOLS)
_WHITESPACE_RUNS = re.compile(r"\s\s+")

Floats = npt.NDArray[np.float64]


def prepare(text: str) -> str:
    """What the classifier reads: cleaned text with repeated letters collapsed."""
    return skeleton(clean(text[:MAX_CHARS]))


def word_ngrams(prepared: str) -> list[str]:
    """The word n-grams of prepared text: its tokens, then each pair of neighbours joined by a
    space (scikit-learn's "word" analyzer with our token pattern and ngram_range (1, 2))."""
    tokens: list[str] = _TOKENS.findall(prepared)
    low, high = WORD_NGRAMS
    return [
        " ".join(tokens[start : start + n])
        for n in range(low, high + 1)
        for start in range(len(tokens) - n + 1)
    ]


def char_wb_ngrams(prepared: str) -> list[str]:
    """The character n-grams (2-5) inside each word padded with one space on either side
    (scikit-learn's "char_wb" analyzer). A padded word no longer than n counts once, whole,
    and then yields no longer n-grams."""
    low, high = CHAR_NGRAMS
    grams: list[str] = []
    for word in _WHITESPACE_RUNS.sub(" ", prepared).split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if n >= size:
                grams.append(padded)
                break
            grams.extend(padded[start : start + n] for start in range(size - n + 1))
    return grams


#: The analyzer of each feature block, by the block's name (the names `nlu.training` uses).
ANALYZERS: dict[str, Callable[[str], list[str]]] = {
    "words": word_ngrams,
    "chars": char_wb_ngrams,
}


@dataclass(frozen=True, slots=True)
class FeatureBlock:
    """One TF-IDF block of the features: its analyzer's name (a key of `ANALYZERS`), the
    vocabulary (feature -> column within the block) and the idf of each column."""

    analyzer: str
    vocabulary: Mapping[str, int]
    idf: Floats


class IntentClassifier:
    """A trained classifier for one language; `rank` gives every intent with its probability.

    It holds plain numbers: per feature block a vocabulary and idf weights, then the logistic
    regression's weights (features x intents) and intercept. `nlu.training` builds one from a
    fitted scikit-learn pipeline; `load` reads one from the cache. Both score identically.
    """

    def __init__(
        self,
        labels: Sequence[str],
        blocks: Sequence[FeatureBlock],
        weights: npt.ArrayLike,
        intercept: npt.ArrayLike,
    ) -> None:
        self._labels = tuple(str(label) for label in labels)
        if not self._labels or len(set(self._labels)) != len(self._labels):
            raise ValueError("The intents must be given, each once.")
        self._spec = tuple(blocks)
        self._blocks: list[tuple[Callable[[str], list[str]], dict[str, int], Floats, int]] = []
        offset = 0
        for block in self._spec:
            analyzer = ANALYZERS.get(block.analyzer)
            vocabulary = {str(feature): int(column) for feature, column in block.vocabulary.items()}
            idf = np.asarray(block.idf, dtype=np.float64)
            if analyzer is None:
                raise ValueError(f"Unknown analyzer {block.analyzer!r}.")
            if set(vocabulary.values()) != set(range(len(vocabulary))):
                raise ValueError("A vocabulary must number its columns 0, 1, 2, ...")
            if idf.shape != (len(vocabulary),) or not np.isfinite(idf).all():
                raise ValueError("Every column needs one finite idf weight.")
            self._blocks.append((analyzer, vocabulary, idf, offset))
            offset += len(vocabulary)
        self._weights: Floats = np.ascontiguousarray(weights, dtype=np.float64)
        self._intercept: Floats = np.asarray(intercept, dtype=np.float64)
        if self._weights.shape != (offset, len(self._labels)) or self._intercept.shape != (
            len(self._labels),
        ):
            raise ValueError("The weights do not fit the features and intents.")
        if not (np.isfinite(self._weights).all() and np.isfinite(self._intercept).all()):
            raise ValueError("The weights must be finite.")

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[str]) -> IntentClassifier:
        """Fit a fresh classifier on the given examples (this imports scikit-learn)."""
        from nlu.training import train

        return train(texts, labels)

    @property
    def intents(self) -> tuple[str, ...]:
        """The intents this classifier knows."""
        return self._labels

    def rank(self, text: str) -> tuple[IntentScore, ...]:
        """Every intent with its probability, the most likely first."""
        prepared = prepare(text)
        indices: list[int] = []
        values: list[float] = []
        for analyzer, vocabulary, idf, offset in self._blocks:
            counts: dict[int, int] = {}
            for feature in analyzer(prepared):
                column = vocabulary.get(feature)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            if not counts:
                continue
            # sublinear tf (1 + log count) times idf, then each block scaled to unit length
            columns = np.fromiter(counts, dtype=np.intp, count=len(counts))
            weights = (1.0 + np.log(np.fromiter(counts.values(), dtype=float))) * idf[columns]
            weights /= np.sqrt(np.dot(weights, weights))
            indices.extend((columns + offset).tolist())
            values.extend(weights.tolist())
        scores = self._intercept.copy()
        if indices:
            scores += np.asarray(values) @ self._weights[indices]
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
        order = np.argsort(-scores)
        return tuple(IntentScore(self._labels[i], float(scores[i])) for i in order)

    def rank_many(self, texts: Sequence[str]) -> list[tuple[IntentScore, ...]]:
        """`rank` for each text (for evaluation)."""
        return [self.rank(text) for text in texts]

    def save(self, path: Path) -> None:
        """Write the classifier to `path` (an .npz without pickles), atomically."""
        meta = {
            "labels": list(self._labels),
            "blocks": [
                {
                    "analyzer": block.analyzer,
                    "features": sorted(block.vocabulary, key=block.vocabulary.__getitem__),
                }
                for block in self._spec
            ],
        }
        arrays: dict[str, Any] = {
            "meta": np.frombuffer(json.dumps(meta).encode("ascii"), dtype=np.uint8),
            "weights": self._weights,
            "intercept": self._intercept,
        }
        for number, (_analyzer, _vocabulary, idf, _offset) in enumerate(self._blocks):
            arrays[f"idf_{number}"] = idf
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, allow_pickle=False, **arrays)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    @classmethod
    def load(cls, path: Path) -> IntentClassifier:
        """Read a classifier written by `save`; a damaged file raises an exception."""
        # The file is opened here: given a path, numpy leaves it open when the zip is damaged.
        with path.open("rb") as file, np.load(file, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive["meta"]).decode("ascii"))
            blocks = []
            for number, block in enumerate(meta["blocks"]):
                features = [str(feature) for feature in block["features"]]
                vocabulary = {feature: column for column, feature in enumerate(features)}
                if len(vocabulary) != len(features):
                    raise ValueError("A feature is listed twice.")
                blocks.append(
                    FeatureBlock(str(block["analyzer"]), vocabulary, archive[f"idf_{number}"])
                )
            return cls(meta["labels"], blocks, archive["weights"], archive["intercept"])


def decide(ranking: tuple[IntentScore, ...], threshold: float) -> NluResult:
    """Turn a ranking into a result: below `threshold` the message is out of scope."""
    if not ranking:
        return NluResult.out_of_scope()
    best = ranking[0]
    if best.name != OUT_OF_SCOPE and best.confidence < threshold:
        return NluResult(OUT_OF_SCOPE, round(1.0 - best.confidence, 4), ranking)
    return NluResult(best.name, best.confidence, ranking)


def has_words(text: str) -> bool:
    """False for empty or whitespace-only text, which no classifier needs to see."""
    return bool(clean(text[:MAX_CHARS]).strip())


class EmbeddedBackend:
    """The default backend: one classifier per language, no network."""

    name = "embedded"

    def __init__(
        self, classifiers: Mapping[str, IntentClassifier], threshold: float, default_lang: str
    ) -> None:
        if default_lang not in classifiers:
            raise UnknownLanguageError(f"No classifier for the default language '{default_lang}'.")
        self._classifiers = dict(classifiers)
        self._threshold = threshold
        self._default_lang = default_lang

    @classmethod
    def load(
        cls,
        languages: Iterable[str],
        cache_dir: Path,
        threshold: float,
        data_dir: Path = DATA_DIR,
    ) -> EmbeddedBackend:
        """Load each language's classifier from the cache, training it first when needed."""
        langs = list(languages)
        classifiers = {
            lang: load_or_train(load_training_data(lang, data_dir), cache_dir) for lang in langs
        }
        return cls(classifiers, threshold, langs[0])

    def parse_now(self, text: str, lang: str) -> NluResult:
        """Classify synchronously (about a millisecond); unknown languages use the default."""
        if not has_words(text):
            return NluResult.out_of_scope()
        classifier = self._classifiers.get(lang) or self._classifiers[self._default_lang]
        return decide(classifier.rank(text), self._threshold)

    async def parse(self, text: str, lang: str) -> NluResult:
        """The backend interface: same as `parse_now`, which is too quick to need a thread."""
        return self.parse_now(text, lang)

    async def start(self) -> None:
        """Nothing to start: the models are loaded when the backend is built."""

    async def aclose(self) -> None:
        """Nothing to close."""


@cache
def _sklearn_version() -> str:
    """scikit-learn's installed version, read from its metadata (importing it costs 80 MB)."""
    from importlib.metadata import version

    return version("scikit-learn")


def cache_path(data: TrainingData, cache_dir: Path) -> Path:
    """Where the classifier for this exact training data and code version is cached."""
    name = f"embedded-{data.lang}-{data.digest[:16]}-v{MODEL_VERSION}-sk{_sklearn_version()}"
    return cache_dir / f"{name}.npz"


TRAIN_SECONDS = 600.0
"""How long training in a child process may take before the bot trains in its own process."""


def _train_apart(data: TrainingData) -> IntentClassifier | None:
    """Train in a child process (`python -m nlu.training`) and load what it wrote.

    Importing scikit-learn and fitting costs about 100 MB that a process never gives back, so
    a bot that trained in its own process (on its first start, or after the training data
    changed) would carry it for as long as it runs. None when the child failed; the caller
    then trains here, as before.
    """
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    examples = json.dumps({"texts": list(data.texts), "labels": list(data.labels)})
    with tempfile.TemporaryDirectory(prefix="aftercare-nlu-") as folder:
        out = Path(folder) / "model.npz"
        try:
            done = subprocess.run(  # noqa: S603  (our own fixed command line)
                [sys.executable, "-m", "nlu.training", str(out)],
                input=examples,
                capture_output=True,
                text=True,
                env=env,
                timeout=TRAIN_SECONDS,
                check=False,
            )
            if done.returncode == 0:
                return IntentClassifier.load(out)
            last = done.stderr.strip().splitlines()[-1:] or ["no message"]
            reason = f"exit code {done.returncode}: {last[0][:200]}"
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            reason = type(exc).__name__
    logger.warning(
        "nlu.embedded_child_training_failed", extra={"lang": data.lang, "reason": reason}
    )
    return None


def load_or_train(data: TrainingData, cache_dir: Path) -> IntentClassifier:
    """The cached classifier for `data`, or a newly trained one that is then cached."""
    path = cache_path(data, cache_dir)
    if path.is_file():
        try:
            return IntentClassifier.load(path)
        except Exception:  # a damaged or foreign cache file: train again
            logger.warning("nlu.embedded_cache_unreadable", extra={"lang": data.lang})
    classifier = _train_apart(data) or IntentClassifier.train(data.texts, data.labels)
    try:
        classifier.save(path)
    except OSError:
        logger.warning("nlu.embedded_cache_not_written", extra={"lang": data.lang})
    logger.info("nlu.embedded_trained", extra={"lang": data.lang, "examples": len(data.examples)})
    return classifier
