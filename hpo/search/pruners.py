"""Pruners by name: a table of constructors that know the study's step grid.

Optuna's Wilcoxon, successive-halving and Hyperband pruners see a trial through
``GridView``: one value per finished fold (its final score), numbered by folds done. Wilcoxon
then tests fold scores, not epochs of one fold as if they were independent samples, and a rung of
successive halving is a number of folds every trial reaches, whatever its epochs, so a rung
value is never read from another fold.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
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


PrunerFactory = Callable[[StepGrid, Mapping[str, Any]], "optuna.pruners.BasePruner"]

PRUNERS: dict[str, PrunerFactory] = {
    "fold_aware": _fold_aware,
    "median": _median,
    "hyperband": _hyperband,
    "successive_halving": _successive_halving,
    "wilcoxon": _wilcoxon,
    "none": _none,
}


def _constructor(name: str) -> Callable[..., Any]:
    import optuna

    from hpo.search.fold_aware import FoldAwarePruner

    classes: dict[str, Callable[..., Any]] = {
        "fold_aware": FoldAwarePruner,
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
        "none": optuna.pruners.NopPruner,
    }
    return classes[name]


def check_pruner_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first option pruner ``name`` does not take or rejects."""
    cls = _constructor(name)
    allowed = set(inspect.signature(cls.__init__).parameters) - {
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
        PRUNERS[name](StepGrid(n_folds=2, steps_per_fold=1), options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"options: {dict(options)} rejected by pruner {name!r}: {e}") from e


def make_pruner(name: str, options: Mapping[str, Any], grid: StepGrid) -> Any:
    """Build the pruner the spec names for a study with this step grid."""
    return PRUNERS[name](grid, options)
