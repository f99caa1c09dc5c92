"""Cross-validated fine-tuning of pretrained transformer classifiers, as a pure library.

Never imports optuna and reads no global state. ``import trainer`` is cheap (no torch): the
heavy entry points load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.config import (
    CVResult,
    DataConfig,
    FoldResult,
    Hyperparams,
    Precision,
    PrecisionRequest,
    Reporter,
    TrainerConfig,
)
from trainer.errors import (
    ConfigError,
    DataError,
    ModelError,
    NonFiniteLossError,
    TrainerError,
)
from trainer.precision import resolve_precision

if TYPE_CHECKING:
    from trainer.baselines import BaselineScore, score_baseline, score_baselines
    from trainer.checkpoint import CheckpointInfo, PositionLimit, inspect_checkpoint
    from trainer.cv import run_cv
    from trainer.data import (
        Examples,
        LoadReport,
        load_examples,
        load_folds,
        load_with_report,
        make_folds,
    )
    from trainer.final import train_final
    from trainer.loss import class_weights
    from trainer.profile import DataProfile, LengthStats, length_stats, profile_examples
    from trainer.tokens import token_lengths

_LAZY = {
    "BaselineScore": "trainer.baselines",
    "score_baseline": "trainer.baselines",
    "score_baselines": "trainer.baselines",
    "run_cv": "trainer.cv",
    "load_examples": "trainer.data",
    "load_with_report": "trainer.data",
    "make_folds": "trainer.data",
    "load_folds": "trainer.data",
    "Examples": "trainer.data",
    "LoadReport": "trainer.data",
    "train_final": "trainer.final",
    "class_weights": "trainer.loss",
    "CheckpointInfo": "trainer.checkpoint",
    "PositionLimit": "trainer.checkpoint",
    "inspect_checkpoint": "trainer.checkpoint",
    "DataProfile": "trainer.profile",
    "LengthStats": "trainer.profile",
    "length_stats": "trainer.profile",
    "profile_examples": "trainer.profile",
    "token_lengths": "trainer.tokens",
}

__all__ = [
    "BaselineScore",
    "CVResult",
    "CheckpointInfo",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataProfile",
    "Examples",
    "FoldResult",
    "Hyperparams",
    "LengthStats",
    "LoadReport",
    "ModelError",
    "NonFiniteLossError",
    "PositionLimit",
    "Precision",
    "PrecisionRequest",
    "Reporter",
    "TrainerConfig",
    "TrainerError",
    "class_weights",
    "inspect_checkpoint",
    "length_stats",
    "load_examples",
    "load_folds",
    "load_with_report",
    "make_folds",
    "profile_examples",
    "resolve_precision",
    "run_cv",
    "score_baseline",
    "score_baselines",
    "token_lengths",
    "train_final",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
