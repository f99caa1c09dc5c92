"""Pruners: the fold-aware default stops a bad trial inside its first fold or between folds."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from hpo._fold_aware import FoldAwarePruner, fold_scores
from hpo.pruners import PRUNERS, StepLayout, check_pruner_options, make_pruner
from hpo.spec import PrunerName

EPOCHS = 2
N_FOLDS = 5


def _curve(fold_values: list[float]) -> dict[int, float]:
    """Intermediate values for folds whose two epochs end at the given scores."""
    values = {}
    for fold, score in enumerate(fold_values):
        values[fold * EPOCHS] = score - 0.05
        values[fold * EPOCHS + 1] = score
    return values


def _study_with_completed(n: int, fold_value: float, pruner: optuna.pruners.BasePruner) -> Any:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(n):
        study.add_trial(
            optuna.trial.create_trial(
                value=fold_value,
                intermediate_values=_curve([fold_value] * N_FOLDS),
            )
        )
    return study


def _pruned_at(study: optuna.Study, values: list[float]) -> int | None:
    """Report ``values`` step by step; the step at which the study's pruner stops the trial."""
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
        if trial.should_prune():
            return step
    return None


def test_fold_aware_prunes_a_bad_trial_after_its_first_epoch() -> None:
    study = _study_with_completed(4, 0.8, FoldAwarePruner(steps_per_fold=EPOCHS))
    assert _pruned_at(study, [0.5, 0.55, 0.5, 0.55]) == 0


def test_fold_aware_prunes_between_folds_on_the_running_mean() -> None:
    study = _study_with_completed(4, 0.8, FoldAwarePruner(steps_per_fold=EPOCHS))
    # Epoch 0 looks fine (0.8 > 0.75), the fold ends worse than everybody's fold score.
    assert _pruned_at(study, [0.8, 0.7, 0.9, 0.9]) == 1


def test_fold_aware_keeps_a_good_trial() -> None:
    study = _study_with_completed(4, 0.8, FoldAwarePruner(steps_per_fold=EPOCHS))
    assert _pruned_at(study, [0.9, 0.95] * N_FOLDS) is None


def test_fold_aware_waits_for_startup_trials() -> None:
    study = _study_with_completed(3, 0.8, FoldAwarePruner(steps_per_fold=EPOCHS))
    assert _pruned_at(study, [0.1, 0.1]) is None


def test_fold_aware_minimizes_for_loss() -> None:
    study = optuna.create_study(direction="minimize", pruner=FoldAwarePruner(steps_per_fold=1))
    for _ in range(4):
        study.add_trial(optuna.trial.create_trial(value=0.3, intermediate_values={0: 0.3, 1: 0.3}))
    assert _pruned_at(study, [0.9]) == 0
    assert _pruned_at(study, [0.2, 0.2]) is None


def test_wilcoxon_alone_cannot_prune_before_fold_four() -> None:
    """Why fold_aware is the default: Wilcoxon's smallest p-value with k folds is 2^-k."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.WilcoxonPruner())
    study.add_trial(
        optuna.trial.create_trial(value=0.9, intermediate_values=dict.fromkeys(range(N_FOLDS), 0.9))
    )
    assert _pruned_at(study, [0.1, 0.1, 0.1, 0.1]) == 3
    fold_aware = _study_with_completed(4, 0.9, FoldAwarePruner(steps_per_fold=1))
    assert _pruned_at(fold_aware, [0.1, 0.1, 0.1, 0.1]) == 0


def test_fold_scores_take_each_folds_last_epoch() -> None:
    trial = optuna.trial.create_trial(value=0.0, intermediate_values=_curve([0.6, 0.7]))
    assert fold_scores(trial, EPOCHS, 3) == [0.6, 0.7]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_named_pruner_builds(name: PrunerName) -> None:
    pruner = make_pruner(name, {}, StepLayout(n_folds=3, steps_per_fold=2))
    assert isinstance(pruner, optuna.pruners.BasePruner)


def test_pruner_names_match_the_spec() -> None:
    from typing import get_args

    assert set(PRUNERS) == set(get_args(PrunerName))


def test_pruner_options_are_checked() -> None:
    check_pruner_options("median", {"n_startup_trials": 2})
    with pytest.raises(ValueError, match="unknown option"):
        check_pruner_options("median", {"patience": 2})
