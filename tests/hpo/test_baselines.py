"""Baselines stored with a study, and the run summary that sets the best trial against them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from rich.console import Console

import hpo.baselines
from hpo import records
from hpo.baselines import record_baselines
from hpo.cli import main
from hpo.local.run import summarize
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study, load_study
from tests.hpo.conftest import write_spec

DISTS = {
    "lr": FloatDistribution(1e-5, 1e-3, log=True),
    "dropout": FloatDistribution(0.0, 0.3),
    "l1": FloatDistribution(1e-8, 1e-4, log=True),
    "l2": FloatDistribution(1e-6, 1e-2, log=True),
}


def _add_trial(study: optuna.Study, fold_scores: list[float]) -> None:
    mean = sum(fold_scores) / len(fold_scores)
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-4, "dropout": 0.1, "l1": 1e-7, "l2": 1e-4},
            distributions=DISTS,
            value=mean,
            user_attrs={
                records.FOLD_SCORES: fold_scores,
                records.CV_MEAN: mean,
                records.CV_STD: 0.0,
            },
        )
    )


def _summary(study: optuna.Study, spec: Any, tmp_path: Path) -> str:
    console = Console(record=True, width=300)
    summarize(study, spec, console, tmp_path / "best.yaml")
    return console.export_text()


def test_create_stores_baselines_once_on_the_studys_folds(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "journal.log")
    assert main(["create", str(write_spec(tmp_path / "s.yaml", spec_dict)), "--storage", url]) == 0
    study, spec = load_study(open_storage(url), spec_dict["name"])
    stored = study.user_attrs[records.BASELINES]
    assert stored["metric"] == "accuracy" and stored["n_folds"] == 3
    scores = {s["name"]: s for s in stored["scores"]}
    assert set(scores) == {"majority", "tfidf_lr"}
    # 80 + 80 rows in folds of 53 or 54: each training part's majority is its held-out minority
    assert scores["majority"]["mean"] == pytest.approx(0.5, abs=0.01)
    assert len(scores["tfidf_lr"]["fold_scores"]) == 3

    def never(spec: Any) -> dict[str, Any]:
        raise AssertionError("baselines scored twice")

    monkeypatch.setattr(hpo.baselines, "compute_baselines", never)
    assert record_baselines(open_storage(url), spec) == stored  # `hpo create` again, `hpo run`


def test_data_that_cannot_be_read_here_leaves_the_study_without_baselines(
    tmp_path: Path, spec_dict: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    spec = parse_spec({**spec_dict, "data": {**spec_dict["data"], "source": "/nowhere/x.csv"}})
    storage = open_storage(str(tmp_path / "journal.log"))
    create_study(spec, storage)
    with caplog.at_level(logging.WARNING, logger="hpo.baselines"):
        assert record_baselines(storage, spec) is None
    assert "baselines not scored: /nowhere/x.csv: no such file" in caplog.text
    study, _ = load_study(storage, spec.name)
    _add_trial(study, [0.8, 0.8, 0.8])
    assert "baselines" not in _summary(study, spec, tmp_path)


def _a_trial_that_loses_to_tfidf(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> tuple[optuna.Study, Any, dict[str, Any]]:
    """A study with its baselines stored and one trial at 0.78 / 0.80 / 0.82: below TF-IDF +
    LR on these texts (words of the class in every one). Returns (study, spec, baselines)."""
    spec = parse_spec(spec_dict)
    storage = open_storage(str(tmp_path / "journal.log"))
    create_study(spec, storage)
    stored = record_baselines(storage, spec)
    assert stored is not None
    tfidf = next(s for s in stored["scores"] if s["name"] == "tfidf_lr")
    assert tfidf["mean"] > 0.9  # a linear model's task
    study, _ = load_study(storage, spec.name)
    _add_trial(study, [0.78, 0.80, 0.82])
    return study, spec, stored


def test_run_summary_says_plainly_when_the_fine_tuned_model_loses_to_tfidf(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    study, spec, stored = _a_trial_that_loses_to_tfidf(tmp_path, spec_dict)
    tfidf = next(s for s in stored["scores"] if s["name"] == "tfidf_lr")
    text = _summary(study, spec, tmp_path)
    assert (
        "the fine-tuned model does not beat TF-IDF + logistic regression "
        f"({tfidf['mean']:.4f}) on these folds"
    ) in text
    majority = next(s for s in stored["scores"] if s["name"] == "majority")
    margin = 0.8 - majority["mean"]
    assert f"majority class {majority['mean']:.4f} ({margin:+.4f}, better on 3/3 folds)" in text


def test_the_live_view_sets_the_best_trial_so_far_against_the_baselines(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """While `hpo run` works, not only in its final summary: the best trial so far, its
    margins, and the plain sentence while it loses to TF-IDF + LR."""
    import time

    from hpo.views.live import render_status

    study, spec, stored = _a_trial_that_loses_to_tfidf(tmp_path, spec_dict)
    tfidf = next(s for s in stored["scores"] if s["name"] == "tfidf_lr")
    console = Console(record=True, width=300)
    console.print(render_status(study, spec, time.monotonic()))
    text = console.export_text()
    assert "vs baselines on the same folds (+ is better): " in text
    assert f"TF-IDF + logistic regression {tfidf['mean']:.4f} ({0.8 - tfidf['mean']:+.4f}" in text
    assert "the fine-tuned model does not beat TF-IDF + logistic regression" in text


def test_run_summary_gives_the_margin_when_the_fine_tuned_model_wins(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    spec = parse_spec(spec_dict)
    storage = open_storage(str(tmp_path / "journal.log"))
    study_id = create_study(spec, storage)
    baselines = {
        "metric": "accuracy",
        "n_folds": 3,
        "split_seed": 0,
        "scores": [
            {
                "name": "tfidf_lr",
                "title": "TF-IDF + logistic regression",
                "mean": 0.75,
                "std": 0.0,
                "fold_scores": [0.70, 0.75, 0.80],
                "seconds": 0.1,
            }
        ],
    }
    storage.set_study_user_attr(study_id, records.BASELINES, baselines)
    study, _ = load_study(storage, spec.name)
    _add_trial(study, [0.78, 0.80, 0.79])
    text = _summary(study, spec, tmp_path)
    assert "TF-IDF + logistic regression 0.7500 (+0.0400, better on 2/3 folds)" in text
    assert "does not beat" not in text
