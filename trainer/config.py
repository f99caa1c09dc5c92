"""Plain, frozen inputs and outputs of the trainer. No torch here: the CLI imports these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from trainer.steps import StepGrid

Metric = Literal["accuracy", "f1_macro", "roc_auc", "loss"]
Pooling = Literal["cls", "mean"]
Anchor = Literal["zero", "pretrained"]
# How the cross-entropy weighs classes: "balanced" is n_rows / (n_classes * rows_of_class),
# counted on the rows a model trains on (see trainer/loss.py).
ClassWeights = Literal["none", "balanced"]
# What a run trains in: fp32, or bf16 autocast over fp32 weights (see trainer.precision).
Precision = Literal["fp32", "bf16"]
# What a study asks for: ``auto`` is resolved per device by ``resolve_precision``.
PrecisionRequest = Literal["auto", "fp32", "bf16"]

# Key of an epoch's wall seconds (training and evaluation) in its curve entry; not a metric.
EPOCH_SECONDS = "epoch_s"


class Reporter(Protocol):
    """What the trainer needs from whoever watches it; an ``optuna.Trial`` satisfies it as is."""

    def report(self, value: float, step: int) -> None: ...  # step: ``TrainerConfig.step_grid``

    def should_prune(self) -> bool: ...


@dataclass(frozen=True)
class Hyperparams:
    """One point of the search space, fully resolved (sampled values over spec defaults).

    Names match the study spec, the Optuna params and the exported config.
    """

    lr: float
    dropout: float
    l1: float
    l2: float
    batch_size: int = 16
    epochs: int = 3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    freeze_layers: int = 0
    pooling: Pooling = "cls"
    class_weights: ClassWeights = "none"
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and which columns hold them."""

    source: str
    text: tuple[str, ...]
    label: str
    labels: tuple[str, ...] | None = None
    subsample: int | None = None
    subsample_seed: int = 0
    split: str = "train"


@dataclass(frozen=True)
class TrainerConfig:
    """Everything except the hyperparameters: model, data, CV layout, device, caches.

    ``precision`` is already resolved (``resolve_precision``): ``bf16`` runs the model's
    forward under bf16 autocast; weights, loss, penalty and metrics stay fp32.
    ``steps_per_fold`` places reports on a study's step grid (``trainer.steps``): the most
    epochs any trial of the study may run; None for this run's own epochs.
    """

    model_name_or_path: str
    data: DataConfig
    max_seq_len: int = 128
    n_folds: int = 5
    split_seed: int = 0
    max_grad_norm: float = 1.0
    anchor: Anchor = "zero"
    metric: Metric = "accuracy"
    device: str = "auto"
    eval_batch_size: int = 64
    cache_dir: str | None = None
    torch_compile: bool = False
    precision: Precision = "fp32"
    steps_per_fold: int | None = None

    def step_grid(self, epochs: int) -> StepGrid:
        """The steps a run of ``epochs`` epochs reports at."""
        return StepGrid(n_folds=self.n_folds, steps_per_fold=self.steps_per_fold or epochs)


@dataclass(frozen=True)
class FoldResult:
    """The outcome of one fold.

    ``curve`` holds one metrics dict per finished epoch, in epoch order; ``score`` is the
    configured metric after the last finished epoch.
    """

    fold: int
    score: float
    metrics: Mapping[str, float]
    curve: tuple[Mapping[str, float], ...]
    train_examples: int
    train_s: float
    pruned: bool = False


@dataclass(frozen=True)
class CVResult:
    """Cross-validation outcome. Fold scores in fold order; direction as the metric's."""

    fold_scores: tuple[float, ...]
    mean: float
    std: float
    curves: tuple[tuple[Mapping[str, float], ...], ...]
    pruned: bool
    wall_s: float
    train_examples_per_s: float
    peak_memory_mb: float
    folds: tuple[FoldResult, ...] = field(default=())
