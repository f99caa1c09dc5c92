"""A study as pandas tables, for notebooks: one row per trial, and the per-epoch curves.

    from hpo.views.analysis import trials_frame, curves_frame
    trials = trials_frame("rotten-tomatoes-demo")            # $HPO_STORAGE or .hpo/journal.log
    curves = curves_frame("rotten-tomatoes-demo", storage="postgresql://…")

Both read the store through :func:`hpo.store.open_storage` and :func:`hpo.study.load_study`, the
same way ``hpo status`` does; they never write to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo import records
from hpo.spec.model import StudySpec
from hpo.study import load_study, step_grid
from hpo.translate import hyperparams_for

if TYPE_CHECKING:
    import optuna
    import pandas as pd

# Leading columns of trials_frame, before the fold scores, the params and the run columns.
TRIAL_COLUMNS = ("number", "state", "value", "cv_mean", "cv_std")
RUN_COLUMNS = ("duration_s", "worker", "host", "device", "precision", "last_step")
CURVE_COLUMNS = ("trial", "state", "fold", "epoch", "step", "score")


def _open(
    study_name: str, storage: str | optuna.storages.BaseStorage | None
) -> tuple[optuna.Study, StudySpec]:
    from hpo.store import open_storage, resolve_storage_url

    if storage is None or isinstance(storage, str):
        storage = open_storage(resolve_storage_url(storage))
    return load_study(storage, study_name)


def _fold_scores(trial: optuna.trial.FrozenTrial, n_folds: int) -> list[float | None]:
    """Fold scores in fold order; None for a fold the trial did not finish."""
    finished = trial.user_attrs.get(records.FOLD_SCORES)
    if isinstance(finished, list) and len(finished) == n_folds:
        return [float(s) for s in finished]
    done = records.saved_folds(trial.user_attrs)  # recorded as they ended (pruned, running)
    return [done[fold].score if fold in done else None for fold in range(n_folds)]


def trials_frame(
    study_name: str, storage: str | optuna.storages.BaseStorage | None = None
) -> pd.DataFrame:
    """One row per trial, in trial-number order.

    Columns: ``number``, ``state`` (``complete``, ``pruned``, ``fail``, ``running``,
    ``waiting``), ``value`` (what the study optimizes: the CV mean of complete trials),
    ``cv_mean``, ``cv_std``, ``fold_0`` … ``fold_{k-1}`` (the metric on each held-out fold,
    NaN for a fold not finished), one column per searched parameter (NaN where a trial has
    not sampled it), ``duration_s`` (start to end; NaN while running), and where it ran:
    ``worker``, ``host``, ``device``, ``precision``; ``last_step`` is its last reported
    step on the study's step grid.

    Args:
        study_name: the study.
        storage: a store URL, an open store, or None for ``$HPO_STORAGE`` / the default.
    """
    import pandas as pd

    study, spec = _open(study_name, storage)
    n_folds = spec.cv.n_folds
    param_names = sorted({name for t in study.get_trials(deepcopy=False) for name in t.params})
    rows: list[dict[str, Any]] = []
    for trial in study.get_trials(deepcopy=False):
        run = records.run_info(trial)
        duration = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_start and trial.datetime_complete
            else None
        )
        row: dict[str, Any] = {
            "number": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value,
            "cv_mean": trial.user_attrs.get(records.CV_MEAN),
            "cv_std": trial.user_attrs.get(records.CV_STD),
        }
        row |= {f"fold_{i}": s for i, s in enumerate(_fold_scores(trial, n_folds))}
        row |= {name: trial.params.get(name) for name in param_names}
        row |= {
            "duration_s": duration,
            "worker": run.get("worker"),
            "host": run.get("host"),
            "device": run.get("device"),
            "precision": run.get("precision"),
            "last_step": trial.last_step,
        }
        rows.append(row)
    columns = [
        *TRIAL_COLUMNS,
        *(f"fold_{i}" for i in range(n_folds)),
        *param_names,
        *RUN_COLUMNS,
    ]
    frame = pd.DataFrame(rows, columns=columns)
    numeric = ["value", "cv_mean", "cv_std", "duration_s", *(f"fold_{i}" for i in range(n_folds))]
    frame[numeric] = frame[numeric].astype("float64")
    return frame


def curves_frame(
    study_name: str, storage: str | optuna.storages.BaseStorage | None = None
) -> pd.DataFrame:
    """Every reported score in long format: one row per (trial, fold, epoch), in trial, then
    step order.

    Columns: ``trial`` (number), ``state``, ``fold`` and ``epoch`` (0-based; epochs of this
    trial, which may differ between trials when ``epochs`` is searched), ``step`` (on the
    study's step grid, where the same step is the same point of a fold in every trial, see
    ``trainer.steps``) and ``score`` (the study's metric on the fold's held-out rows).
    """
    import pandas as pd

    study, spec = _open(study_name, storage)
    grid = step_grid(spec)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if not trial.intermediate_values:
            continue
        epochs = hyperparams_for(spec, trial.params, seed=0).epochs
        for step in sorted(trial.intermediate_values):
            rows.append(
                {
                    "trial": trial.number,
                    "state": trial.state.name.lower(),
                    "fold": grid.fold_of(step),
                    "epoch": grid.epoch_of(step, epochs),
                    "step": step,
                    "score": trial.intermediate_values[step],
                }
            )
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS)).astype(
        {"trial": "int64", "fold": "int64", "epoch": "int64", "step": "int64", "score": "float64"}
    )
