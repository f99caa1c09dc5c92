"""The penalty terms: which weights, what value, and the pretrained anchor (L2-SP)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.model import build_model, freeze_lower, load_pretrained
from trainer.regularization import norms, penalized_weights, penalty


def _model(model_dir: Path) -> torch.nn.Module:
    pretrained = load_pretrained(str(model_dir))
    return build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_penalty_covers_weight_matrices_not_biases_norms_or_embeddings(
    arch: str, request: pytest.FixtureRequest
) -> None:
    model = _model(request.getfixturevalue(f"tiny_{arch}_dir"))
    names = set(penalized_weights(model, "zero").names)
    params = dict(model.named_parameters())
    assert names and all(params[n].ndim >= 2 for n in names)
    assert not any("embeddings" in n or "LayerNorm" in n or "layer_norm" in n for n in names)
    assert "classifier.weight" in names  # the fresh head is penalized too
    matrices = {n for n, p in params.items() if p.ndim >= 2 and "embeddings" not in n}
    assert names == matrices


def test_penalty_value_is_l1_sum_abs_plus_l2_sum_squares(tiny_bert_dir: Path) -> None:
    model = _model(tiny_bert_dir)
    penalized = penalized_weights(model, "zero")
    abs_sum = sum(float(w.detach().abs().sum()) for w in penalized.weights)
    sq_sum = sum(float(w.detach().pow(2).sum()) for w in penalized.weights)
    assert norms(penalized) == pytest.approx({"l1": abs_sum, "l2": sq_sum})
    value = penalty(penalized, 0.01, 0.5)
    assert value is not None
    assert float(value.detach()) == pytest.approx(0.01 * abs_sum + 0.5 * sq_sum, rel=1e-5)
    only_l2 = penalty(penalized, 0.0, 0.5)
    assert only_l2 is not None and float(only_l2.detach()) == pytest.approx(0.5 * sq_sum, rel=1e-5)
    assert penalty(penalized, 0.0, 0.0) is None  # nothing computed, nothing added


def test_pretrained_anchor_penalizes_only_the_distance_from_the_checkpoint(
    tiny_bert_dir: Path,
) -> None:
    model = _model(tiny_bert_dir)
    anchored = penalized_weights(
        model, "pretrained", load_pretrained(str(tiny_bert_dir)).state_dict
    )
    head = [a for n, a in zip(anchored.names, anchored.anchors, strict=True) if "classifier" in n]
    assert head == [None]  # the fresh head has no pretrained value: anchored at zero
    # Before training every encoder weight sits on its anchor: only the head contributes.
    expected = float(model.classifier.weight.detach().pow(2).sum())
    assert norms(anchored)["l2"] == pytest.approx(expected, rel=1e-5)


def test_frozen_weights_are_not_penalized(tiny_bert_dir: Path) -> None:
    model = _model(tiny_bert_dir)
    freeze_lower(model, 1)
    names = penalized_weights(model, "zero").names
    assert not any(".layer.0." in n for n in names)
    assert any(".layer.1." in n for n in names)


@pytest.mark.parametrize("anchor", ["zero", "pretrained"])
def test_penalty_gradient_is_what_autograd_gives(tiny_bert_dir: Path, anchor: str) -> None:
    from trainer.regularization import add_penalty_gradient

    pretrained = load_pretrained(str(tiny_bert_dir))
    model = _model(tiny_bert_dir)
    with torch.no_grad():  # move away from the anchor, some weights exactly onto it
        for i, p in enumerate(model.parameters()):
            p.add_(torch.randn_like(p) * 0.01 if i % 3 else torch.zeros_like(p))
    penalized = penalized_weights(model, anchor, pretrained.state_dict)  # type: ignore[arg-type]
    reference = penalty(penalized, 0.01, 0.5)
    assert reference is not None
    reference.backward()
    expected = [w.grad.clone() for w in penalized.weights]  # type: ignore[union-attr]
    for w in penalized.weights:
        w.grad = torch.ones_like(w)  # added to what the data loss left there
    value = add_penalty_gradient(penalized, 0.01, 0.5)
    assert value is not None and float(value) == pytest.approx(float(reference.detach()), rel=1e-5)
    for w, g in zip(penalized.weights, expected, strict=True):
        torch.testing.assert_close(w.grad, g + 1)
    assert add_penalty_gradient(penalized, 0.0, 0.0) is None
