"""Baselines on a study's own folds: the numbers a hand computation gives on the same folds."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from trainer import DataConfig, TrainerConfig, load_folds, score_baselines


def _toy(path: Path, rows: list[tuple[str, str]], columns: tuple[str, ...] = ("text",)) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "label"])
        for row in rows:
            writer.writerow(row)
    return path


def _config(
    source: Path, metric: str, n_folds: int, columns: tuple[str, ...] = ("text",)
) -> TrainerConfig:
    return TrainerConfig(
        model_name_or_path="unused: baselines read no model",
        data=DataConfig(source=str(source), text=columns, label="label"),
        n_folds=n_folds,
        split_seed=3,
        metric=metric,  # type: ignore[arg-type]
    )


# 8 "pos" and 4 "neg" rows in 4 stratified folds: every held-out fold is 2 pos + 1 neg and every
# training part 6 pos + 3 neg, so the majority predictor gives P(pos) = 2/3 to every text.
TOY = [(f"good movie {i}", "pos") for i in range(8)] + [(f"bad movie {i}", "neg") for i in range(4)]
MAJORITY_BY_HAND = {
    "accuracy": 2 / 3,
    # pos: precision 2/3, recall 1 -> F1 0.8; neg is never predicted -> F1 0
    "f1_macro": 0.4,
    "loss": -(2 * math.log(2 / 3) + math.log(1 / 3)) / 3,
    "roc_auc": 0.5,  # one score for every text ranks nothing
}


@pytest.mark.parametrize("metric", sorted(MAJORITY_BY_HAND))
def test_majority_baseline_equals_the_hand_computation_on_every_fold(
    metric: str, tmp_path: Path
) -> None:
    config = _config(_toy(tmp_path / "toy.csv", TOY), metric, n_folds=4)
    majority = {s.name: s for s in score_baselines(config)}["majority"]
    assert majority.metric == metric
    assert majority.fold_scores == pytest.approx([MAJORITY_BY_HAND[metric]] * 4)
    assert majority.mean == pytest.approx(MAJORITY_BY_HAND[metric])
    assert majority.std == pytest.approx(0.0, abs=1e-12)
    assert majority.seconds >= 0.0


def test_tfidf_lr_equals_scikit_learn_by_hand_on_the_studys_folds(tmp_path: Path) -> None:
    """The same folds built independently (StratifiedKFold with the study's seed, on the rows
    in file order) and the same model fitted by hand give the same fold scores."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(0)
    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "dull", "poor"]}
    rows = []
    for i in range(60):
        label = ["pos", "neg", "neg"][i % 3]
        # a third of the rows carry the other class's word: the model is not perfect
        own = words[label if i % 7 else ("neg" if label == "pos" else "pos")]
        rows.append((f"the {rng.choice(own)} film {rng.choice(['a', 'b', 'c'])}", label))
    config = _config(_toy(tmp_path / "toy.csv", rows), "f1_macro", n_folds=3)
    tfidf = {s.name: s for s in score_baselines(config)}["tfidf_lr"]

    texts = np.array([t for t, _ in rows], dtype=object)
    labels = np.array([0 if y == "neg" else 1 for _, y in rows])  # label names sorted: neg, pos
    by_hand = []
    for train, held in StratifiedKFold(3, shuffle=True, random_state=3).split(texts, labels):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        model = LogisticRegression(max_iter=1000).fit(
            vectorizer.fit_transform(texts[train]), labels[train]
        )
        predicted = model.predict(vectorizer.transform(texts[held]))
        by_hand.append(f1_score(labels[held], predicted, average="macro"))
    assert tfidf.fold_scores == pytest.approx(by_hand)
    assert tfidf.mean == pytest.approx(np.mean(by_hand))
    # and those are the folds the trainer cross-validates on
    _, folds = load_folds(config)
    hand_folds = StratifiedKFold(3, shuffle=True, random_state=3).split(texts, labels)
    for (train, held), (hand_train, hand_held) in zip(folds, hand_folds, strict=True):
        assert list(train) == list(hand_train) and list(held) == list(hand_held)


def test_tfidf_lr_learns_a_separable_task_and_reads_sentence_pairs(
    synthetic_csv: Path, tmp_path: Path
) -> None:
    scores = {s.name: s for s in score_baselines(_config(synthetic_csv, "accuracy", n_folds=2))}
    assert scores["majority"].mean == pytest.approx(0.5)
    assert scores["tfidf_lr"].mean > 0.9

    pairs = [(f"a {w} film", f"b {w} play", w) for w in ["good", "bad"] * 10]
    pair_csv = _toy(tmp_path / "pairs.csv", pairs, columns=("premise", "hypothesis"))
    pair_scores = score_baselines(
        _config(pair_csv, "loss", n_folds=2, columns=("premise", "hypothesis"))
    )
    assert all(len(s.fold_scores) == 2 and math.isfinite(s.mean) for s in pair_scores)
