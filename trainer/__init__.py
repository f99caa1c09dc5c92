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
    from trainer.cv import run_cv
    from trainer.data import Examples, load_examples, make_folds
    from trainer.final import train_final

_LAZY = {
    "run_cv": "trainer.cv",
    "load_examples": "trainer.data",
    "make_folds": "trainer.data",
    "Examples": "trainer.data",
    "train_final": "trainer.final",
}

__all__ = [
    "CVResult",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Examples",
    "FoldResult",
    "Hyperparams",
    "ModelError",
    "NonFiniteLossError",
    "Precision",
    "PrecisionRequest",
    "Reporter",
    "TrainerConfig",
    "TrainerError",
    "load_examples",
    "make_folds",
    "resolve_precision",
    "run_cv",
    "train_final",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
