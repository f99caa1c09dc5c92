"""Pruners by name: a table of constructors that know the study's step layout."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class StepLayout:
    """How intermediate steps are numbered: ``step = fold * steps_per_fold + epoch``."""

    n_folds: int
    steps_per_fold: int

    @property
    def n_steps(self) -> int:
        return self.n_folds * self.steps_per_fold


def _fold_aware(layout: StepLayout, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    from hpo._fold_aware import FoldAwarePruner

    return FoldAwarePruner(steps_per_fold=layout.steps_per_fold, **options)


def _median(layout: StepLayout, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    kwargs: dict[str, Any] = {"n_startup_trials": 4, "n_warmup_steps": 0}
    kwargs.update(options)
    return optuna.pruners.MedianPruner(**kwargs)


def _hyperband(layout: StepLayout, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    kwargs: dict[str, Any] = {"min_resource": 1, "max_resource": layout.n_steps}
    kwargs.update(options)
    return optuna.pruners.HyperbandPruner(**kwargs)


def _successive_halving(
    layout: StepLayout, options: Mapping[str, Any]
) -> optuna.pruners.BasePruner:
    import optuna

    kwargs: dict[str, Any] = {"min_resource": 1}
    kwargs.update(options)
    return optuna.pruners.SuccessiveHalvingPruner(**kwargs)


def _wilcoxon(layout: StepLayout, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.WilcoxonPruner(**options)


def _none(layout: StepLayout, options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


PrunerFactory = Callable[[StepLayout, Mapping[str, Any]], "optuna.pruners.BasePruner"]

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

    from hpo._fold_aware import FoldAwarePruner

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
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "steps_per_fold"}
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"options.{key}: unknown option for pruner {name!r}; "
                f"expected one of {sorted(allowed)}"
            )
    try:
        PRUNERS[name](StepLayout(n_folds=2, steps_per_fold=1), options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"options: {dict(options)} rejected by pruner {name!r}: {e}") from e


def make_pruner(name: str, options: Mapping[str, Any], layout: StepLayout) -> Any:
    """Build the pruner the spec names for a study with this step layout."""
    return PRUNERS[name](layout, options)
