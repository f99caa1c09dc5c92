"""Optuna's pruners on our step grid: never at the last step, and some at fold granularity.

No pruner is asked at the last step (the last fold's last epoch): that compute is spent.

Optuna's pruners read a trial's intermediate values as steps of one resource. Ours are
fold × epoch, so Wilcoxon would take the epochs of one fold as independent samples, and
successive halving would compare a rung value at whatever step a trial happened to report
(another fold's, when epochs are searched or a resumed trial skips steps). Seen through the
``folds_only`` view, a trial has the values ``{1: fold 0's score, 2: fold 1's score, …}``
(resource = folds done), asked only at fold ends.
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from trainer.steps import StepGrid


def fold_view(trial: FrozenTrial, grid: StepGrid) -> FrozenTrial:
    """A copy of ``trial`` whose intermediate values are its fold scores, keyed 1, 2, …"""
    view = copy.copy(trial)
    scores = grid.fold_scores(trial.intermediate_values)
    view.intermediate_values = {fold + 1: score for fold, score in enumerate(scores)}
    return view


class _StudyView:
    """The study as the inner pruner should see it: its best trial through the fold view."""

    def __init__(self, study: optuna.Study, grid: StepGrid) -> None:
        self._study_view_target = study
        self._grid = grid

    @property
    def best_trial(self) -> FrozenTrial:
        return fold_view(self._study_view_target.best_trial, self._grid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study_view_target, name)


class GridView(BasePruner):
    """Ask ``inner`` at every step but the last; with ``folds_only``, only at fold ends and with
    one value per finished fold."""

    def __init__(self, inner: BasePruner, grid: StepGrid, *, folds_only: bool) -> None:
        self.inner = inner
        self._grid = grid
        self._folds_only = folds_only

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step >= self._grid.last_step:
            return False
        if not self._folds_only:
            return self.inner.prune(study, trial)
        if not self._grid.is_fold_end(step):
            return False
        view = fold_view(trial, self._grid)
        if not view.intermediate_values:
            return False
        return self.inner.prune(_StudyView(study, self._grid), view)  # type: ignore[arg-type]
