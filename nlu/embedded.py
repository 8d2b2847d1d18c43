"""The embedded backend: a scikit-learn text classifier trained in-process from nlu/data.

Features are TF-IDF weighted word uni/bigrams (emoji and punctuation count as words) and
character n-grams within word boundaries (2-5), which carry chat spelling and typos; a
multinomial logistic regression gives calibrated-enough probabilities. One model per language,
cached on disk by a digest of the training files, the feature code version and scikit-learn's
version, so a second start loads in milliseconds instead of training.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from nlu.data import DATA_DIR, TrainingData, load_training_data
from nlu.errors import UnknownLanguageError
from nlu.results import OUT_OF_SCOPE, IntentScore, NluResult
from nlu.text import clean, skeleton

logger = logging.getLogger(__name__)

#: Bump when features or model change, so cached models from older code are not loaded.
MODEL_VERSION = "1"
#: A chat message says what it means early on; 10,000 characters need not all be read.
MAX_CHARS = 1_000
_WORDS_AND_SYMBOLS = r"(?u)[^\W_]+|[^\w\s]"


def prepare(text: str) -> str:
    """What the classifier reads: cleaned text with repeated letters collapsed."""
    return skeleton(clean(text[:MAX_CHARS]))


def _pipeline() -> Pipeline:
    features = FeatureUnion(
        [
            (
                "words",
                TfidfVectorizer(
                    preprocessor=prepare,
                    token_pattern=_WORDS_AND_SYMBOLS,
                    ngram_range=(1, 2),
                    sublinear_tf=True,
                ),
            ),
            (
                "chars",
                TfidfVectorizer(
                    preprocessor=prepare,
                    analyzer="char_wb",
                    ngram_range=(2, 5),
                    sublinear_tf=True,
                ),
            ),
        ]
    )
    model = LogisticRegression(C=20.0, max_iter=3000)
    return Pipeline([("features", features), ("model", model)])


class IntentClassifier:
    """A trained classifier for one language; `rank` gives every intent with its probability."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._labels: tuple[str, ...] = tuple(str(c) for c in pipeline.classes_)
        self._features: Any = pipeline.named_steps["features"]
        self._model: Any = pipeline.named_steps["model"]
        # The fast path for one message: scikit-learn's transform and predict_proba spend most
        # of a millisecond on validation and sparse-matrix bookkeeping for a single row, so
        # the same arithmetic is done here on plain dicts (a test checks both agree).
        self._blocks: list[tuple[Any, dict[str, int], Any, int]] = []
        offset = 0
        for _name, vectorizer in self._features.transformer_list:
            vocabulary = {str(k): int(v) for k, v in vectorizer.vocabulary_.items()}
            self._blocks.append((vectorizer.build_analyzer(), vocabulary, vectorizer.idf_, offset))
            offset += len(vocabulary)
        self._weights = np.ascontiguousarray(np.asarray(self._model.coef_).T)
        self._intercept = np.asarray(self._model.intercept_)

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[str]) -> IntentClassifier:
        """Fit a fresh classifier on the given examples."""
        pipeline = _pipeline()
        pipeline.fit(list(texts), list(labels))
        return cls(pipeline)

    @property
    def intents(self) -> tuple[str, ...]:
        """The intents this classifier knows."""
        return self._labels

    def rank(self, text: str) -> tuple[IntentScore, ...]:
        """Every intent with its probability, the most likely first."""
        indices: list[int] = []
        values: list[float] = []
        for analyzer, vocabulary, idf, offset in self._blocks:
            counts: dict[int, int] = {}
            for feature in analyzer(text):
                column = vocabulary.get(feature)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            if not counts:
                continue
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
        """`rank` for many texts at once (faster for evaluation)."""
        probabilities = self._model.predict_proba(self._features.transform(list(texts)))
        ranked: list[tuple[IntentScore, ...]] = []
        for row in np.asarray(probabilities):
            order = np.argsort(-row)
            ranked.append(tuple(IntentScore(self._labels[i], float(row[i])) for i in order))
        return ranked


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
    """The default backend: one scikit-learn classifier per language, no network."""

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


def cache_path(data: TrainingData, cache_dir: Path) -> Path:
    """Where the classifier for this exact training data and code version is cached."""
    name = f"embedded-{data.lang}-{data.digest[:16]}-v{MODEL_VERSION}-sk{sklearn.__version__}"
    return cache_dir / f"{name}.joblib"


def load_or_train(data: TrainingData, cache_dir: Path) -> IntentClassifier:
    """The cached classifier for `data`, or a newly trained one that is then cached."""
    path = cache_path(data, cache_dir)
    if path.is_file():
        try:
            return IntentClassifier(joblib.load(path))
        except Exception:  # a damaged or foreign cache file: train again
            logger.warning("nlu.embedded_cache_unreadable", extra={"lang": data.lang})
    classifier = IntentClassifier.train(data.texts, data.labels)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        os.close(handle)
        joblib.dump(classifier._pipeline, temporary)
        os.replace(temporary, path)
    except OSError:
        logger.warning("nlu.embedded_cache_not_written", extra={"lang": data.lang})
    logger.info("nlu.embedded_trained", extra={"lang": data.lang, "examples": len(data.examples)})
    return classifier
