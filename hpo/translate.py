"""The study spec in the trainer's terms: its config, a trial's hyperparameters and seed.

Pure functions of the spec (and a trial's params and number): the worker, ``hpo train``, the
preflight checks, the baselines and the analysis helpers all build the trainer's inputs here, so
a trial is trained the same way wherever it is rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.spec.model import StudySpec
from hpo.study import step_grid
from trainer.config import DataConfig, Hyperparams, Precision, TrainerConfig
from trainer.seeds import derive_seed


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The training seed of a trial: a pure function of (study seed, trial number)."""
    return derive_seed(study_seed, 7_919 * trial_number + 17)


def hyperparams_for(spec: StudySpec, params: Mapping[str, Any], seed: int) -> Hyperparams:
    """Sampled params over the spec's training defaults; names are shared end to end."""
    train = spec.train
    values: dict[str, Any] = {
        "batch_size": train.batch_size,
        "epochs": train.epochs,
        "warmup_ratio": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "freeze_layers": train.freeze_layers,
        "pooling": train.pooling,
        "class_weights": train.class_weights,
        **params,
        "seed": seed,
    }
    return Hyperparams(**values)


def trainer_config(
    spec: StudySpec,
    *,
    device: str = "auto",
    cache_dir: str | None = None,
    precision: Precision = "fp32",
) -> TrainerConfig:
    """The trainer's view of a spec: model, data, CV layout, device.

    ``precision`` is the resolved one (``resolve_precision`` of ``spec.train.precision`` on
    this device): the spec's ``auto`` is decided per device, not here.
    """
    data = spec.data
    return TrainerConfig(
        model_name_or_path=spec.model.name_or_path,
        data=DataConfig(
            source=data.source,
            text=data.text,
            label=data.label,
            labels=data.labels,
            subsample=data.subsample,
            subsample_seed=spec.cv.split_seed,
            split=data.split,
        ),
        max_seq_len=spec.model.max_seq_len,
        n_folds=spec.cv.n_folds,
        split_seed=spec.cv.split_seed,
        max_grad_norm=spec.train.max_grad_norm,
        anchor=spec.train.anchor,
        metric=spec.objective.metric,
        device=device,
        eval_batch_size=spec.train.eval_batch_size,
        cache_dir=cache_dir,
        torch_compile=spec.train.torch_compile,
        precision=precision,
        steps_per_fold=step_grid(spec).steps_per_fold,
    )
