"""Range checks on the trainer's inputs, before any data or weights are loaded. No torch here."""

from __future__ import annotations

import math
from typing import get_args

from trainer.config import (
    Anchor,
    ClassWeights,
    Hyperparams,
    Metric,
    Pooling,
    Precision,
    TrainerConfig,
)
from trainer.errors import ConfigError


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {expected}")


def check_inputs(hparams: Hyperparams, config: TrainerConfig, *, cv: bool = True) -> None:
    """Fail fast, naming the field, the value and what was expected. ``cv=False``: training
    that does not cross-validate (the production model), so ``n_folds`` is not used.

    Raises:
        ConfigError: the first out-of-range value found.
    """
    h = hparams
    _require(math.isfinite(h.lr) and h.lr > 0, "lr", h.lr, "a finite number > 0")
    _require(0.0 <= h.dropout < 1.0, "dropout", h.dropout, "a number in [0, 1)")
    for name, value in (("l1", h.l1), ("l2", h.l2), ("weight_decay", h.weight_decay)):
        _require(math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
    _require(h.batch_size >= 1, "batch_size", h.batch_size, "an integer >= 1")
    _require(h.epochs >= 1, "epochs", h.epochs, "an integer >= 1")
    _require(0.0 <= h.warmup_ratio <= 1.0, "warmup_ratio", h.warmup_ratio, "a number in [0, 1]")
    _require(h.freeze_layers >= 0, "freeze_layers", h.freeze_layers, "an integer >= 0")
    _require(h.pooling in get_args(Pooling), "pooling", h.pooling, f"one of {get_args(Pooling)}")
    _require(
        h.class_weights in get_args(ClassWeights),
        "class_weights",
        h.class_weights,
        f"one of {get_args(ClassWeights)}",
    )
    c = config
    _require(c.max_seq_len >= 2, "max_seq_len", c.max_seq_len, "an integer >= 2")
    _require(not cv or c.n_folds >= 2, "n_folds", c.n_folds, "an integer >= 2")
    _require(c.max_grad_norm > 0, "max_grad_norm", c.max_grad_norm, "a number > 0")
    _require(c.eval_batch_size >= 1, "eval_batch_size", c.eval_batch_size, "an integer >= 1")
    _require(c.anchor in get_args(Anchor), "anchor", c.anchor, f"one of {get_args(Anchor)}")
    _require(c.metric in get_args(Metric), "metric", c.metric, f"one of {get_args(Metric)}")
    _require(
        c.precision in get_args(Precision),
        "precision",
        c.precision,
        f"one of {get_args(Precision)}",
    )
    _require(
        c.steps_per_fold is None or c.steps_per_fold >= h.epochs,
        "steps_per_fold",
        c.steps_per_fold,
        f"None or an integer >= epochs ({h.epochs})",
    )
    _require(len(c.data.text) in (1, 2), "data.text", c.data.text, "one or two column names")
