"""A pruner that knows the step layout ``step = fold * steps_per_fold + epoch``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def fold_scores(trial: FrozenTrial, steps_per_fold: int, n_folds: int) -> list[float]:
    """The last reported value inside each of the first ``n_folds`` folds, or fewer if missing."""
    scores = []
    values = trial.intermediate_values
    for fold in range(n_folds):
        steps = [s for s in values if fold * steps_per_fold <= s < (fold + 1) * steps_per_fold]
        if not steps:
            break
        scores.append(values[max(steps)])
    return scores


class FoldAwarePruner(BasePruner):
    """Prune inside a fold from the epoch curve, and between folds from the running fold mean.

    Inside a fold, the trial's value at a step is compared with completed trials' values at the
    same step (same fold, same epoch). When a fold ends, the mean of the trial's fold scores so
    far is compared with completed trials' means over the same folds. Either way the trial is
    pruned when it is outside the best ``keep_percentile`` percent. This can stop a bad trial
    after its first epoch, unlike a Wilcoxon test, which needs 4+ folds to reach p < 0.1.

    Args:
        steps_per_fold: epochs per fold (the largest, if epochs are searched).
        keep_percentile: the share of trials kept at each check, in percent (50 = median rule).
        n_startup_trials: no pruning until this many trials have completed.
        n_warmup_steps: no pruning before this step.
    """

    def __init__(
        self,
        *,
        steps_per_fold: int,
        keep_percentile: float = 50.0,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 0,
    ) -> None:
        if steps_per_fold < 1:
            raise ValueError(f"steps_per_fold must be >= 1, got {steps_per_fold}")
        if not 0.0 < keep_percentile <= 100.0:
            raise ValueError(f"keep_percentile must be in (0, 100], got {keep_percentile}")
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, got {n_warmup_steps}")
        self._steps_per_fold = steps_per_fold
        self._keep_percentile = keep_percentile
        self._n_startup_trials = n_startup_trials
        self._n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._n_warmup_steps:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self._n_startup_trials:
            return False
        fold, epoch = divmod(step, self._steps_per_fold)
        epochs = int(trial.params.get("epochs", self._steps_per_fold))
        if epoch >= min(epochs, self._steps_per_fold) - 1:
            mine = _mean(fold_scores(trial, self._steps_per_fold, fold + 1), fold + 1)
            theirs = [
                _mean(fold_scores(t, self._steps_per_fold, fold + 1), fold + 1) for t in completed
            ]
        else:
            mine = trial.intermediate_values[step]
            theirs = [t.intermediate_values.get(step, math.nan) for t in completed]
        return self._worse_than_kept(mine, theirs, study.direction)

    def _worse_than_kept(
        self, mine: float, theirs: Sequence[float], direction: StudyDirection
    ) -> bool:
        if math.isnan(mine):
            return True
        others = [v for v in theirs if not math.isnan(v)]
        if len(others) < self._n_startup_trials:
            return False
        if direction == StudyDirection.MAXIMIZE:
            return mine < float(np.percentile(others, 100.0 - self._keep_percentile))
        return mine > float(np.percentile(others, self._keep_percentile))


def _mean(scores: Sequence[float], n_required: int) -> float:
    return float(np.mean(scores)) if len(scores) >= n_required else math.nan
