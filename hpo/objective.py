"""The one adapter between Optuna and the trainer: a trial in, a CV score (or a prune) out."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hpo.space import suggest
from hpo.spec import StudySpec
from hpo.steps import StepGrid
from hpo.study import step_grid
from trainer.config import DataConfig, FoldResult, Hyperparams, Precision, TrainerConfig

if TYPE_CHECKING:
    import optuna

    from trainer.config import CVResult

logger = logging.getLogger(__name__)

FOLD_ATTR_PREFIX = "fold_"
RUN_ATTR = "run"  # where a trial ran: host, device, worker, seed, precision, resumed folds
FAIL_REASON_ATTR = "fail_reason"
RETRY_HISTORY_KEY = "retry_history"  # Optuna's RetryHeartbeatStaleTrialCallback uses this key


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The training seed of a trial: a pure function of (study seed, trial number)."""
    return (study_seed * 1_000_003 + trial_number * 7_919 + 17) % 2**31


def original_number(trial: optuna.trial.FrozenTrial) -> int:
    """The number of the first trial of a retry chain (itself if not a retry)."""
    history = trial.system_attrs.get(RETRY_HISTORY_KEY) or []
    return int(history[0]) if history else trial.number


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
    )


class TrialReporter:
    """Feeds trainer reports to an Optuna trial on the study's step grid (``hpo.steps``).

    The trainer numbers steps ``fold * epochs + epoch`` with this trial's epochs; the grid
    places them so that the same step means the same point of a fold in every trial.
    """

    def __init__(self, trial: optuna.Trial, epochs: int, grid: StepGrid) -> None:
        self._trial = trial
        self._epochs = epochs
        self._grid = grid
        self.n_reports = 0

    def report(self, value: float, step: int) -> None:
        fold, epoch = divmod(step, self._epochs)
        self._trial.report(value, self._grid.step(fold, epoch, self._epochs))
        self.n_reports += 1

    def should_prune(self) -> bool:
        return self._trial.should_prune()


@dataclass(frozen=True)
class TrialContext:
    """Where a trial runs; recorded in the store with the trial."""

    host: str
    device: str
    worker_id: str
    cache_dir: str | None = None


def fold_to_json(fold: FoldResult) -> dict[str, Any]:
    data = asdict(fold)
    data["metrics"] = dict(fold.metrics)
    data["curve"] = [dict(epoch) for epoch in fold.curve]
    return data


def fold_from_json(data: Mapping[str, Any]) -> FoldResult:
    return FoldResult(
        fold=int(data["fold"]),
        score=float(data["score"]),
        metrics=dict(data["metrics"]),
        curve=tuple(dict(epoch) for epoch in data["curve"]),
        train_examples=int(data["train_examples"]),
        train_s=float(data["train_s"]),
        pruned=bool(data.get("pruned", False)),
    )


def saved_folds(trial: optuna.Trial | optuna.trial.FrozenTrial) -> dict[int, FoldResult]:
    """Folds an earlier attempt of this trial finished (carried over when it was re-queued)."""
    done = {}
    for key, value in trial.user_attrs.items():
        if key.startswith(FOLD_ATTR_PREFIX) and isinstance(value, dict):
            fold = fold_from_json(value)
            if not fold.pruned:
                done[fold.fold] = fold
    return done


def run_trial(trial: optuna.Trial, spec: StudySpec, context: TrialContext) -> float:
    """Train and cross-validate one trial; record its results as user attrs.

    Returns:
        The mean CV score of the configured metric.

    Raises:
        optuna.TrialPruned: the pruner stopped the trial; its partial folds are recorded.
    """
    import optuna

    from trainer import resolve_precision, run_cv

    # Once per process and device (the probe is cached); a worker checked it at start.
    precision = resolve_precision(spec.train.precision, context.device)
    params = suggest(trial, spec.search.space)
    seed = trial_seed(
        spec.train.seed, original_number(trial.study._storage.get_trial(trial._trial_id))
    )
    hparams = hyperparams_for(spec, params, seed)
    done = saved_folds(trial)
    trial.set_user_attr(
        RUN_ATTR,
        {
            "host": context.host,
            "device": context.device,
            "worker": context.worker_id,
            "seed": seed,
            "precision": precision,
            "resumed_folds": sorted(done),
        },
    )
    if done:
        logger.info("trial %d resumes with folds %s already done", trial.number, sorted(done))

    def save_fold(fold: FoldResult) -> None:
        trial.set_user_attr(f"{FOLD_ATTR_PREFIX}{fold.fold}", fold_to_json(fold))

    reporter = TrialReporter(trial, hparams.epochs, step_grid(spec))
    result = run_cv(
        hparams,
        trainer_config(
            spec, device=context.device, cache_dir=context.cache_dir, precision=precision
        ),
        reporter=reporter,
        done_folds=done,
        on_fold_end=save_fold,
    )
    record_result(trial, result)
    if result.pruned:
        raise optuna.TrialPruned(f"pruned after {reporter.n_reports} reports")
    return result.mean


def record_result(trial: optuna.Trial, result: CVResult) -> None:
    """Write the CV summary: fold scores in fold order, mean, std, curves, throughput."""
    trial.set_user_attr("fold_scores", list(result.fold_scores))
    trial.set_user_attr("cv_mean", result.mean)
    trial.set_user_attr("cv_std", result.std)
    trial.set_user_attr(
        "stats",
        {
            "wall_s": round(result.wall_s, 3),
            "train_examples_per_s": round(result.train_examples_per_s, 2),
            "peak_memory_mb": round(result.peak_memory_mb, 1),
            "pruned": result.pruned,
            "curves": json.loads(json.dumps([[dict(e) for e in c] for c in result.curves])),
        },
    )
