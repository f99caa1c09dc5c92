"""Cheap baselines scored on a study's own folds and metric, so a tuned model has a yardstick.

Two predictors, each fitted on a fold's training rows and scored on its held-out rows, with the
same :func:`trainer.metrics.classification_metrics` the trainer uses on its logits:

- ``majority``: predicts the training rows' class frequencies for every text (its argmax is the
  majority class; as probabilities they give the honest loss and ROC-AUC of knowing nothing).
- ``tfidf_lr``: TF-IDF of word 1–2-grams (sublinear tf; one vectorizer per text column for
  sentence pairs) and an L2 logistic regression at scikit-learn's defaults (C=1). Not tuned:
  a few seconds on the CPU, not a search of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trainer.config import Metric, TrainerConfig
from trainer.data import Examples, load_folds
from trainer.metrics import classification_metrics

BaselineName = Literal["majority", "tfidf_lr"]

BASELINE_TITLES: dict[BaselineName, str] = {
    "majority": "majority class",
    "tfidf_lr": "TF-IDF + logistic regression",
}

# log(0) for a class a predictor never gives any probability: finite, so metrics stay defined.
_LOG_FLOOR = -30.0

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BaselineScore:
    """One baseline's cross-validation on a study's folds.

    ``fold_scores`` in fold order, of the study's metric (its direction: loss is lower-better);
    ``std`` is the population std, as for trials; ``seconds`` is fitting and scoring all folds.
    """

    name: BaselineName
    metric: Metric
    fold_scores: tuple[float, ...]
    mean: float
    std: float
    seconds: float

    @property
    def title(self) -> str:
        return BASELINE_TITLES[self.name]


def _majority_logits(examples: Examples, train: np.ndarray, held: np.ndarray) -> np.ndarray:
    n_classes = len(examples.label_names)
    counts = np.bincount(examples.labels[train], minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_prior = np.maximum(np.log(counts / counts.sum()), _LOG_FLOOR)
    return np.tile(log_prior, (len(held), 1))


def _tfidf_lr_logits(examples: Examples, train: np.ndarray, held: np.ndarray) -> np.ndarray:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_parts, held_parts = [], []
    for column in examples.texts:
        texts = np.asarray(column, dtype=object)
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        train_parts.append(vectorizer.fit_transform(texts[train]))
        held_parts.append(vectorizer.transform(texts[held]))
    model = LogisticRegression(max_iter=1000)
    model.fit(hstack(train_parts).tocsr(), examples.labels[train])
    log_probs = model.predict_log_proba(hstack(held_parts).tocsr())
    # Columns follow model.classes_; a class missing from the training rows gets the floor.
    logits = np.full((len(held), len(examples.label_names)), _LOG_FLOOR)
    logits[:, model.classes_] = np.maximum(log_probs, _LOG_FLOOR)
    return logits


_PREDICTORS = {"majority": _majority_logits, "tfidf_lr": _tfidf_lr_logits}


def score_baseline(
    name: BaselineName, examples: Examples, folds: Folds, metric: Metric
) -> BaselineScore:
    """Cross-validate one baseline on ``folds`` (``(train, held_out)`` index pairs) of
    ``examples``, scored by ``metric`` on each fold's held-out rows."""
    predictor = _PREDICTORS[name]
    started = time.perf_counter()
    scores = []
    for train, held in folds:
        logits = predictor(examples, train, held)
        scores.append(classification_metrics(logits, examples.labels[held])[metric])
    return BaselineScore(
        name=name,
        metric=metric,
        fold_scores=tuple(float(s) for s in scores),
        mean=float(np.mean(scores)),
        std=float(np.std(scores)),
        seconds=time.perf_counter() - started,
    )


def score_baselines(config: TrainerConfig) -> tuple[BaselineScore, ...]:
    """Every baseline on the study's rows and folds (:func:`trainer.data.load_folds`, what
    :func:`trainer.run_cv` splits) under ``config.metric``; reads the data, no model.

    Raises:
        DataError: the data cannot be loaded or split (as for ``run_cv``).
    """
    examples, folds = load_folds(config)
    return tuple(score_baseline(name, examples, folds, config.metric) for name in BASELINE_TITLES)
