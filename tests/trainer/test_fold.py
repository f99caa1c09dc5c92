"""One fold: penalties, dropout, frozen layers, the out-of-memory retry, bf16."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.helpers import HP, config_for
from trainer import Hyperparams
from trainer.fold import train_fold
from trainer.model import build_model, load_pretrained
from trainer.prepare import prepare
from trainer.regularization import norms, penalized_weights


def _trained_weights(
    hp: Hyperparams, model_dir: Path, csv: Path, tmp_path: Path, anchor: str = "zero"
) -> dict[str, float]:
    config = config_for(model_dir, csv, tmp_path, anchor=anchor)
    prepared = prepare(config)
    model = train_fold(hp, config, prepared, 0).model
    zero = norms(penalized_weights(model, "zero"))
    anchored = norms(penalized_weights(model, "pretrained", prepared.pretrained.state_dict))
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


def test_frozen_layers_stay_bit_identical(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    prepared = prepare(config)
    model = train_fold(
        dataclasses.replace(HP, freeze_layers=1, epochs=2), config, prepared, 0
    ).model
    trained = model.state_dict()
    original = prepared.pretrained.state_dict
    frozen = [k for k in original if ".embeddings." in k or ".encoder.layer.0." in k]
    moved = [k for k in original if ".encoder.layer.1." in k]
    assert frozen and moved
    assert all(torch.equal(trained[k], original[k]) for k in frozen)
    assert not all(torch.equal(trained[k], original[k]) for k in moved)


def test_a_fold_out_of_accelerator_memory_starts_over_in_micro_batches(
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import trainer.fold

    widths: list[int] = []
    real_build = trainer.fold.build_model

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

    monkeypatch.setattr(trainer.fold, "build_model", build_small_memory_model)
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    hp = dataclasses.replace(HP, batch_size=16, epochs=3)
    result = train_fold(hp, config, prepare(config), 0).result
    assert not result.pruned and len(result.curve) == 3
    assert result.score >= 0.9  # same batch, steps and schedule: it still learns
    assert max(widths) == 4
    assert result.train_examples == 3 * len(prepare(config).folds[0][0])
    assert "split into 4 micro-batches" in caplog.text


@pytest.mark.parametrize("class_weight", [None, [0.4, 2.5]], ids=["unweighted", "weighted"])
def test_micro_batches_give_the_whole_batch_gradient(
    class_weight: list[float] | None, tiny_bert_dir: Path
) -> None:
    from trainer.fold import _step_loss

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

    import trainer.fold

    built: list[weakref.ref[torch.nn.Module]] = []
    alive_at_free: list[bool] = []
    real_build = trainer.fold.build_model

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

    monkeypatch.setattr(trainer.fold, "build_model", build_once_too_big)
    monkeypatch.setattr(trainer.fold, "free_memory", free_memory)
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    result = train_fold(dataclasses.replace(HP, epochs=1), config, prepare(config), 0).result
    assert len(result.curve) == 1
    # The caching allocator can hand memory back only once nothing holds the first attempt.
    assert alive_at_free == [False]


def test_bf16_keeps_weights_gradients_loss_and_penalty_in_fp32(tiny_bert_dir: Path) -> None:
    from trainer.fold import _step_loss

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
