"""The explicit penalty terms: l1·Σ|w − a| + l2·Σ(w − a)² over trainable weight matrices.

``a`` is zero, or the pretrained value with ``anchor="pretrained"`` (L2-SP style: fine-tuning
stays close to what pretraining learned). Penalized: every trainable parameter with 2+
dimensions (attention, feed-forward, pooler and head matrices). Not penalized: biases and
LayerNorm (1-D), frozen parameters, and embedding tables. Why not embeddings: rows of words
absent from the data get no loss gradient, so the penalty would be their only gradient and
AdamW, which normalizes step sizes, would move them by about ``lr`` every step whatever the
coefficient; the vocabulary the task never shows would decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainer.config import Anchor

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Penalized:
    """The penalized weights and their anchors (None = zero), in matching order."""

    names: tuple[str, ...]
    weights: tuple[torch.Tensor, ...]
    anchors: tuple[torch.Tensor | None, ...]


def penalized_weights(
    model: nn.Module, anchor: Anchor, pretrained: dict[str, torch.Tensor] | None = None
) -> Penalized:
    """Trainable weights of ``model`` with 2+ dimensions, less embeddings; anchors per ``anchor``.

    With ``anchor="pretrained"``, a weight absent from ``pretrained`` (the fresh head) is
    anchored at zero. Call after freezing and after moving the model to its device.
    """
    from torch import nn

    embedding_tables = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    names, weights, anchors = [], [], []
    for name, weight in model.named_parameters():
        if weight.ndim < 2 or not weight.requires_grad or id(weight) in embedding_tables:
            continue
        names.append(name)
        weights.append(weight)
        reference = None
        if anchor == "pretrained" and pretrained is not None:
            reference = _find_anchor(name, pretrained)
            if reference is not None:
                reference = reference.to(weight.device, weight.dtype)
        anchors.append(reference)
    return Penalized(tuple(names), tuple(weights), tuple(anchors))


def _find_anchor(name: str, pretrained: dict[str, torch.Tensor]) -> torch.Tensor | None:
    if name in pretrained:
        return pretrained[name]
    # Mean pooling wraps the encoder as ``encoder.<x>``; the checkpoint says ``<prefix>.<x>``.
    tail = name.removeprefix("encoder.")
    for key, value in pretrained.items():
        if key.endswith(f".{tail}") or key == tail:
            return value
    return None


def penalty(penalized: Penalized, l1: float, l2: float) -> torch.Tensor | None:
    """The penalty as one scalar tensor on the weights' device; None when l1 = l2 = 0."""
    import torch

    if l1 == 0.0 and l2 == 0.0:
        return None
    terms = []
    for weight, anchor in zip(penalized.weights, penalized.anchors, strict=True):
        delta = weight if anchor is None else weight - anchor
        if l1 != 0.0:
            terms.append(l1 * delta.abs().sum())
        if l2 != 0.0:
            terms.append(l2 * delta.pow(2).sum())
    return torch.stack(terms).sum()


def add_penalty_gradient(penalized: Penalized, l1: float, l2: float) -> torch.Tensor | None:
    """Add the penalty's gradient to the weights' ``.grad`` and return its value (detached).

    What ``penalty(...).backward()`` does, without an autograd graph: a handful of fused
    multi-tensor passes over the weights (two norms, ``l1·sign(w − a)``, ``2·l2·(w − a)``)
    instead of a graph of per-tensor ops and their backward. Call after the data loss's
    ``backward()``; None (nothing added) when l1 = l2 = 0.
    """
    import torch

    if (l1 == 0.0 and l2 == 0.0) or not penalized.weights:
        return None
    with torch.no_grad():
        weights = list(penalized.weights)
        deltas = [
            w if a is None else w - a for w, a in zip(weights, penalized.anchors, strict=True)
        ]
        grads: list[torch.Tensor] = []
        for weight in weights:
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
            grads.append(weight.grad)
        value = torch.zeros((), device=weights[0].device)
        if l1 != 0.0:
            value += l1 * torch.stack(torch._foreach_norm(deltas, 1)).sum()
            torch._foreach_add_(grads, torch._foreach_sign(deltas), alpha=l1)
        if l2 != 0.0:
            value += l2 * torch.stack(torch._foreach_norm(deltas, 2)).square().sum()
            torch._foreach_add_(grads, deltas, alpha=2 * l2)
    return value


def norms(penalized: Penalized) -> dict[str, float]:
    """Σ|w − a| and Σ(w − a)² over the penalized weights (for tests and diagnostics)."""
    import torch

    l1 = l2 = 0.0
    with torch.no_grad():
        for weight, anchor in zip(penalized.weights, penalized.anchors, strict=True):
            delta = weight if anchor is None else weight - anchor
            l1 += float(delta.abs().sum())
            l2 += float(delta.pow(2).sum())
    return {"l1": l1, "l2": l2}
