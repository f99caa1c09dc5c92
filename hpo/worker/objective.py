"""The one adapter between Optuna and the trainer: a trial in, a CV score (or a prune) out.

The trial's params go to the trainer through ``hpo.translate`` (the spec in the trainer's
terms); what the trainer returns is written through ``hpo.records``; reports go straight to the
trial (the trainer places them on the study's step grid).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo import records
from hpo.spec.model import StudySpec
from hpo.spec.space import suggest
from hpo.translate import hyperparams_for, trainer_config, trial_seed

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """Where a trial runs; recorded in the store with the trial."""

    host: str
    device: str
    worker_id: str
    cache_dir: str | None = None


class _CheckedReporter:
    """The trial as the trainer's reporter, calling ``check`` (which may raise to stop the
    trial) before each report."""

    def __init__(self, trial: optuna.Trial, check: Callable[[], None]) -> None:
        self._trial = trial
        self._check = check

    def report(self, value: float, step: int) -> None:
        self._check()
        self._trial.report(value, step)

    def should_prune(self) -> bool:
        return self._trial.should_prune()


def run_trial(
    trial: optuna.Trial,
    spec: StudySpec,
    context: TrialContext,
    check: Callable[[], None] | None = None,
) -> float:
    """Train and cross-validate one trial; record its results as user attrs. ``check``, if
    given, is called before each report (the worker's: raise to stop the trial).

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
        spec.train.seed, records.original_number(trial.study._storage.get_trial(trial._trial_id))
    )
    hparams = hyperparams_for(spec, params, seed)
    done = records.saved_folds(trial.user_attrs)
    records.write_run(
        trial,
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

    result = run_cv(
        hparams,
        trainer_config(
            spec, device=context.device, cache_dir=context.cache_dir, precision=precision
        ),
        reporter=trial if check is None else _CheckedReporter(trial, check),
        done_folds=done,
        on_fold_end=lambda fold: records.write_fold(trial, fold),
    )
    records.write_result(trial, result)
    if result.pruned:
        epochs = sum(len(curve) for curve in result.curves)
        raise optuna.TrialPruned(f"pruned after {epochs} epoch{'' if epochs == 1 else 's'}")
    return result.mean
