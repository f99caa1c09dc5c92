"""The step grid: how (fold, epoch) of any trial becomes one intermediate-value step, and back.

Every trial of a study reports on one grid of ``n_folds × steps_per_fold`` steps, where
``steps_per_fold`` is the most epochs any trial may run. A trial that runs fewer epochs places
each epoch at the same *fraction of its schedule*: epoch ``e`` of ``E`` lands on position
``ceil((e + 1) · S / E) − 1`` of its fold. So the last epoch of every fold is always the fold's
last position (fold ends compare exactly across trials), and mid-fold positions compare trials
at about the same point of their learning-rate schedule, never a 1-epoch trial's final,
annealed score with a 3-epoch trial's first epoch. When epochs are not searched, the grid is
``fold · epochs + epoch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StepGrid:
    """Steps of a study: ``n_folds`` folds of ``steps_per_fold`` positions each."""

    n_folds: int
    steps_per_fold: int

    def __post_init__(self) -> None:
        if self.n_folds < 1 or self.steps_per_fold < 1:
            raise ValueError(
                f"StepGrid needs n_folds >= 1 and steps_per_fold >= 1, got "
                f"{self.n_folds} and {self.steps_per_fold}"
            )

    @property
    def n_steps(self) -> int:
        return self.n_folds * self.steps_per_fold

    @property
    def last_step(self) -> int:
        """The last fold's end: a trial that reports here has spent all its compute."""
        return self.n_steps - 1

    def step(self, fold: int, epoch: int, epochs: int) -> int:
        """The step of epoch ``epoch`` (0-based) of ``epochs`` in fold ``fold``."""
        if not 0 <= epoch < epochs <= self.steps_per_fold:
            raise ValueError(
                f"epoch {epoch} of {epochs} does not fit {self.steps_per_fold} steps per fold"
            )
        position = -(-(epoch + 1) * self.steps_per_fold // epochs) - 1  # ceil, then 0-based
        return fold * self.steps_per_fold + position

    def fold_of(self, step: int) -> int:
        return step // self.steps_per_fold

    def epoch_of(self, step: int, epochs: int) -> int:
        """The epoch (0-based) of a trial that runs ``epochs`` whose report is ``step``: the
        inverse of ``step`` (``floor(position · epochs / steps_per_fold)``)."""
        return self.position_of(step) * epochs // self.steps_per_fold

    def position_of(self, step: int) -> int:
        """The step's position inside its fold, 0 … ``steps_per_fold - 1``."""
        return step % self.steps_per_fold

    def fold_start(self, fold: int) -> int:
        return fold * self.steps_per_fold

    def fold_end(self, fold: int) -> int:
        return fold * self.steps_per_fold + self.steps_per_fold - 1

    def is_fold_end(self, step: int) -> bool:
        return self.position_of(step) == self.steps_per_fold - 1

    def fold_scores(self, values: Mapping[int, float]) -> list[float]:
        """Each fold's final score, in fold order, up to the first fold not finished."""
        scores = []
        for fold in range(self.n_folds):
            value = values.get(self.fold_end(fold))
            if value is None:
                break
            scores.append(value)
        return scores
