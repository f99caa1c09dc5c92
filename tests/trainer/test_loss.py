"""Class weights: sklearn's balanced formula, counted on a fold's training rows only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import make_trainer_config, write_synthetic_csv
from trainer import Hyperparams
from trainer.fold import train_fold
from trainer.loss import class_weights
from trainer.prepare import Prepared, prepare

HP = Hyperparams(lr=5e-3, dropout=0.0, l1=0.0, l2=0.0, epochs=1, batch_size=8, warmup_ratio=0.0)


def test_balanced_weights_follow_sklearns_formula() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 30 + [1] * 6 + [2] * 4)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights("balanced", labels, 3), expected, rtol=1e-6)
    assert class_weights("none", labels, 3) is None


def test_a_class_absent_from_the_training_rows_gets_weight_zero() -> None:
    weights = class_weights("balanced", np.array([0, 0, 1]), 3)
    assert weights is not None
    assert weights[2] == 0.0 and weights[0] == pytest.approx(3 / (3 * 2))


def _imbalanced_csv(path: Path, n_pos: int = 96, n_neg: int = 24) -> Path:
    """The synthetic task, ``n_pos`` pos rows then ``n_neg`` neg rows."""
    full = write_synthetic_csv(path.with_suffix(".all.csv"), n_rows=2 * max(n_pos, n_neg))
    lines = full.read_text().splitlines()
    pos = [row for row in lines[1:] if row.endswith(",pos")][:n_pos]
    neg = [row for row in lines[1:] if row.endswith(",neg")][:n_neg]
    path.write_text("\n".join([lines[0], *pos, *neg]) + "\n")
    return path


def test_a_folds_weights_come_from_its_training_rows_not_the_held_out_ones(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.fold

    csv = _imbalanced_csv(tmp_path / "d.csv", n_pos=60, n_neg=60)
    config = make_trainer_config(tiny_bert_dir, csv, tmp_path / "tokens")
    base = prepare(config)
    labels = base.examples.labels
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    # Training rows 3:1 (45 pos, 15 neg); held-out rows 1:3 (15 pos, 45 neg).
    train_idx = np.sort(np.concatenate([pos[:45], neg[:15]]))
    held_idx = np.sort(np.concatenate([pos[45:], neg[15:]]))
    prepared = Prepared(
        base.examples, base.tokens, base.pretrained, [(train_idx, held_idx)], base.device
    )
    seen: list[Any] = []
    real_step_loss = trainer.fold._step_loss

    def spy(*args: Any, class_weight: torch.Tensor | None = None, **kwargs: Any) -> Any:
        seen.append(class_weight)
        return real_step_loss(*args, class_weight=class_weight, **kwargs)

    monkeypatch.setattr(trainer.fold, "_step_loss", spy)
    train_fold(dataclasses.replace(HP, class_weights="balanced"), config, prepared, 0)
    assert seen and all(w is seen[0] for w in seen)
    # neg is class 0: 60 / (2 * 15) = 2.0; pos: 60 / (2 * 45) = 2/3. All rows would give 1, 1.
    torch.testing.assert_close(seen[0], torch.tensor([2.0, 2.0 / 3.0]))

    seen.clear()
    train_fold(HP, config, prepared, 0)
    assert seen and all(w is None for w in seen)


def test_balanced_weights_change_the_training_loss_on_imbalanced_data(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    csv = _imbalanced_csv(tmp_path / "d.csv")
    config = make_trainer_config(tiny_bert_dir, csv, tmp_path / "tokens")
    prepared = prepare(config)
    plain = train_fold(HP, config, prepared, 0).result
    again = train_fold(HP, config, prepared, 0).result
    balanced = train_fold(
        dataclasses.replace(HP, class_weights="balanced"), config, prepared, 0
    ).result
    assert plain.metrics["train_loss"] == again.metrics["train_loss"]  # deterministic
    assert balanced.metrics["train_loss"] != pytest.approx(plain.metrics["train_loss"], rel=1e-3)


def test_the_weighted_loss_is_the_weighted_mean_cross_entropy(tiny_bert_dir: Path) -> None:
    import torch.nn.functional as F

    from trainer.fold import _step_loss
    from trainer.model import build_model, load_pretrained
    from trainer.regularization import penalized_weights

    pretrained = load_pretrained(str(tiny_bert_dir))
    model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(5, pretrained.config.vocab_size, (8, 12), generator=generator),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
    }
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    weight = torch.tensor([0.5, 2.0])
    loss, _ = _step_loss(model, inputs, labels, penalized_weights(model, "zero"), HP, 1)
    weighted, _ = _step_loss(
        model, inputs, labels, penalized_weights(model, "zero"), HP, 1, class_weight=weight
    )
    with torch.no_grad():
        each = F.cross_entropy(model(**inputs).logits, labels, reduction="none")
    assert float(loss) == pytest.approx(float(each.mean()), rel=1e-5)
    expected = (weight[labels] * each).sum() / weight[labels].sum()
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5)
