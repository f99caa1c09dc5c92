"""Pruners by name: one table holds each pruner's constructor, which knows the study's step
grid, and the class whose keyword arguments are the options the spec may set.

Optuna's Wilcoxon, successive-halving and Hyperband pruners see a trial through
``GridView``: one value per finished fold (its final score), numbered by folds done. Wilcoxon
then tests fold scores, not epochs of one fold as if they were independent samples, and a rung of
successive halving is a number of folds every trial reaches, whatever its epochs, so a rung
value is never read from another fold.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.steps import StepGrid

if TYPE_CHECKING:
    import optuna


def _fold_aware(grid: StepGrid, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    from hpo.search.fold_aware import FoldAwarePruner

    return FoldAwarePruner(steps_per_fold=grid.steps_per_fold, n_folds=grid.n_folds, **options)


def _median(grid: StepGrid, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    from hpo.search.grid_view import GridView

    kwargs: dict[str, Any] = {"n_startup_trials": 4, "n_warmup_steps": 0}
    kwargs.update(options)
    return GridView(optuna.pruners.MedianPruner(**kwargs), grid, folds_only=False)


def _hyperband(grid: StepGrid, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    from hpo.search.grid_view import GridView

    kwargs: dict[str, Any] = {"min_resource": 1, "max_resource": grid.n_folds}
    kwargs.update(options)
    return GridView(optuna.pruners.HyperbandPruner(**kwargs), grid, folds_only=True)


def _successive_halving(grid: StepGrid, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    from hpo.search.grid_view import GridView

    kwargs: dict[str, Any] = {"min_resource": 1}
    kwargs.update(options)
    return GridView(optuna.pruners.SuccessiveHalvingPruner(**kwargs), grid, folds_only=True)


def _wilcoxon(grid: StepGrid, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    from hpo.search.grid_view import GridView

    return GridView(optuna.pruners.WilcoxonPruner(**options), grid, folds_only=True)


def _none(grid: StepGrid, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


def _fold_aware_class() -> Callable[..., Any]:
    from hpo.search.fold_aware import FoldAwarePruner

    return FoldAwarePruner


def _optuna_class(class_name: str) -> Callable[[], Callable[..., Any]]:
    """An Optuna pruner class, looked up when asked (importing Optuna is slow; ``hpo --help``
    must not pay for it)."""

    def load() -> Callable[..., Any]:
        import optuna

        cls: Callable[..., Any] = getattr(optuna.pruners, class_name)
        return cls

    return load


PrunerFactory = Callable[[StepGrid, Mapping[str, Any]], "optuna.pruners.BasePruner"]


@dataclass(frozen=True)
class PrunerKind:
    """A pruner the spec may name.

    Attributes:
        build: makes the pruner from (the study's step grid, the spec's options).
        constructor: loads the class whose keyword arguments are the options the spec may set
            (less the step grid, which ``build`` passes itself).
    """

    build: PrunerFactory
    constructor: Callable[[], Callable[..., Any]]


# The one list of pruner names: the spec accepts exactly these keys.
PRUNERS: dict[str, PrunerKind] = {
    "fold_aware": PrunerKind(_fold_aware, _fold_aware_class),
    "median": PrunerKind(_median, _optuna_class("MedianPruner")),
    "hyperband": PrunerKind(_hyperband, _optuna_class("HyperbandPruner")),
    "successive_halving": PrunerKind(_successive_halving, _optuna_class("SuccessiveHalvingPruner")),
    "wilcoxon": PrunerKind(_wilcoxon, _optuna_class("WilcoxonPruner")),
    "none": PrunerKind(_none, _optuna_class("NopPruner")),
}


def check_pruner_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first option pruner ``name`` does not take or rejects."""
    kind = PRUNERS[name]
    allowed = set(inspect.signature(kind.constructor().__init__).parameters) - {
        "self",
        "steps_per_fold",
        "n_folds",
    }
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"options.{key}: unknown option for pruner {name!r}; "
                f"expected one of {sorted(allowed)}"
            )
    try:
        kind.build(StepGrid(n_folds=2, steps_per_fold=1), options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"options: {dict(options)} rejected by pruner {name!r}: {e}") from e


def make_pruner(name: str, options: Mapping[str, Any], grid: StepGrid) -> Any:
    """Build the pruner the spec names for a study with this step grid."""
    return PRUNERS[name].build(grid, options)
