"""Training the embedded classifier with scikit-learn, which only this module imports.

`nlu.embedded` imports this module only when a model has to be trained, so the running bot
(which loads its models from the cache) never loads scikit-learn. The vectorizers use
scikit-learn's own analyzers with the settings of `nlu.embedded`, whose analyzers produce the
same features; `to_classifier` copies the fitted numbers into an `IntentClassifier`, which
scores with numpy alone. Tests check that both agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from nlu.embedded import (
    _WORDS_AND_SYMBOLS,
    CHAR_NGRAMS,
    WORD_NGRAMS,
    FeatureBlock,
    IntentClassifier,
    prepare,
)


def pipeline() -> Pipeline:
    """The untrained pipeline; its feature blocks are named after `nlu.embedded.ANALYZERS`."""
    features = FeatureUnion(
        [
            (
                "words",
                TfidfVectorizer(
                    preprocessor=prepare,
                    token_pattern=_WORDS_AND_SYMBOLS,
                    ngram_range=WORD_NGRAMS,
                    sublinear_tf=True,
                ),
            ),
            (
                "chars",
                TfidfVectorizer(
                    preprocessor=prepare,
                    analyzer="char_wb",
                    ngram_range=CHAR_NGRAMS,
                    sublinear_tf=True,
                ),
            ),
        ]
    )
    model = LogisticRegression(C=20.0, max_iter=3000)
    return Pipeline([("features", features), ("model", model)])


def fit(texts: Sequence[str], labels: Sequence[str]) -> Pipeline:
    """A pipeline fitted on the given examples."""
    fitted = pipeline()
    fitted.fit(list(texts), list(labels))
    return fitted


def to_classifier(fitted: Pipeline) -> IntentClassifier:
    """The numbers of a fitted pipeline as an `IntentClassifier` (which needs no scikit-learn)."""
    features = fitted.named_steps["features"]
    model = fitted.named_steps["model"]
    blocks = []
    for name, vectorizer in features.transformer_list:
        ordered = sorted(vectorizer.vocabulary_.items(), key=lambda item: int(item[1]))
        vocabulary = {str(feature): int(column) for feature, column in ordered}
        blocks.append(FeatureBlock(name, vocabulary, np.asarray(vectorizer.idf_, np.float64)))
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        # Two intents: scikit-learn keeps one row z for the second, P = sigmoid(z), and a
        # softmax over (0, z) gives the same probabilities.
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros(1), intercept])
    return IntentClassifier([str(c) for c in model.classes_], blocks, coef.T, intercept)


def train(texts: Sequence[str], labels: Sequence[str]) -> IntentClassifier:
    """Fit a classifier on the given examples."""
    return to_classifier(fit(texts, labels))


def main() -> None:
    """`python -m nlu.training OUT`: train on the examples read as JSON from stdin
    (`{"texts": [...], "labels": [...]}`) and save the classifier to OUT. `nlu.embedded` runs
    this in a child process, so that scikit-learn never enters the bot's own memory."""
    import json
    import sys
    from pathlib import Path

    examples = json.load(sys.stdin)
    train(examples["texts"], examples["labels"]).save(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
