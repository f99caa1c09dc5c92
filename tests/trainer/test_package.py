"""The package surface: a cheap ``import trainer``, lazy exports, input checks before any work."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import trainer
from trainer import ConfigError, DataConfig, Hyperparams, TrainerConfig, run_cv

HEAVY = ("torch", "transformers", "datasets", "sklearn", "pandas", "optuna")


def test_importing_trainer_loads_no_heavy_library() -> None:
    code = (
        "import sys, trainer, trainer.config, trainer.resources, trainer.errors\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_public_name_is_the_object_its_home_module_defines() -> None:
    """``trainer.X`` is the same object whether it was imported eagerly or on first use, and
    ``__all__`` lists every public name: none missing, none that does not resolve."""
    import importlib
    import typing

    lazy = trainer._LAZY  # name -> home module, imported on first use
    for name in trainer.__all__:
        home = lazy.get(name) or getattr(trainer, name).__module__
        if typing.get_origin(getattr(trainer, name)) is typing.Literal:
            home = "trainer.config"  # a type alias carries no module of its own
        assert getattr(trainer, name) is getattr(importlib.import_module(home), name), name
    assert set(lazy) <= set(trainer.__all__)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        trainer.no_such_name  # noqa: B018


HP = Hyperparams(lr=1e-3, dropout=0.1, l1=0.0, l2=0.0)
CONFIG = TrainerConfig(
    model_name_or_path="./never-loaded",
    data=DataConfig(source="./never-read.csv", text=("text",), label="label"),
)


@pytest.mark.parametrize(
    ("hp", "config", "message"),
    [
        (dataclasses.replace(HP, lr=0.0), CONFIG, "lr=0.0: expected a finite number > 0"),
        (dataclasses.replace(HP, dropout=1.0), CONFIG, "dropout=1.0: expected a number in [0, 1)"),
        (dataclasses.replace(HP, l1=-1e-3), CONFIG, "l1=-0.001: expected a finite number >= 0"),
        (dataclasses.replace(HP, l2=float("nan")), CONFIG, "l2=nan"),
        (dataclasses.replace(HP, epochs=0), CONFIG, "epochs=0: expected an integer >= 1"),
        (dataclasses.replace(HP, batch_size=0), CONFIG, "batch_size=0"),
        (dataclasses.replace(HP, warmup_ratio=1.5), CONFIG, "warmup_ratio=1.5"),
        (dataclasses.replace(HP, freeze_layers=-1), CONFIG, "freeze_layers=-1"),
        (dataclasses.replace(HP, pooling="max"), CONFIG, "pooling='max': expected one of"),  # type: ignore[arg-type]
        (dataclasses.replace(HP, class_weights="inverse"), CONFIG, "class_weights='inverse'"),  # type: ignore[arg-type]
        (HP, dataclasses.replace(CONFIG, n_folds=1), "n_folds=1: expected an integer >= 2"),
        (HP, dataclasses.replace(CONFIG, metric="auc"), "metric='auc'"),  # type: ignore[arg-type]
        (HP, dataclasses.replace(CONFIG, anchor="init"), "anchor='init'"),  # type: ignore[arg-type]
        (HP, dataclasses.replace(CONFIG, max_seq_len=0), "max_seq_len=0"),
        # The trainer takes a resolved precision; "auto" is resolve_precision's to decide.
        (HP, dataclasses.replace(CONFIG, precision="auto"), "precision='auto': expected one of"),  # type: ignore[arg-type]
    ],
)
def test_out_of_range_inputs_fail_before_any_work_naming_field_and_value(
    hp: Hyperparams, config: TrainerConfig, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        run_cv(hp, config)
    assert message in str(info.value)
