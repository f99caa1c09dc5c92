"""AdamW with decay / no-decay groups, and the linear warmup-then-decay learning-rate schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.config import Hyperparams

if TYPE_CHECKING:
    import torch
    from torch import nn


def make_optimizer(model: nn.Module, hparams: Hyperparams) -> torch.optim.Optimizer:
    """AdamW; weight decay (0 unless asked) only on 2D+ weights, never biases or LayerNorm."""
    import torch

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = "LayerNorm" in name or "layer_norm" in name or name.endswith(".ln.weight")
        (decay if param.ndim >= 2 and not is_norm else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": hparams.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel is several times faster than the per-tensor loop, on CPU as on CUDA
    # (CPU since torch 2.4); fall back to the multi-tensor path where it is not available.
    try:
        return torch.optim.AdamW(groups, lr=hparams.lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=hparams.lr, foreach=True)


def linear_warmup_decay(step: int, total: int, warmup: int) -> float:
    """LR multiplier at ``step``: up to 1 over ``warmup`` steps, then linearly to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
