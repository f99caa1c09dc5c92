"""``hpo status``: a study's counts by state, best so far, running trials, compute and ETA."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from hpo.baselines import baselines_summary
from hpo.objective import RUN_ATTR
from hpo.spec import StudySpec

if TYPE_CHECKING:
    import optuna


def study_status(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """A JSON-ready summary of the study as the store has it now."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name.lower()] += 1
    finished = counts["complete"] + counts["pruned"]
    now = datetime.now()
    compute_s = 0.0
    durations = []
    for trial in trials:
        if trial.datetime_start is None:
            continue
        end = trial.datetime_complete or now
        seconds = (end - trial.datetime_start).total_seconds()
        compute_s += seconds
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            durations.append(seconds)
    running = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        run = trial.user_attrs.get(RUN_ATTR, {})
        running.append(
            {
                "trial": trial.number,
                "host": run.get("host"),
                "worker": run.get("worker"),
                "device": run.get("device"),
                "precision": run.get("precision"),
                "age_s": round((now - trial.datetime_start).total_seconds(), 1)
                if trial.datetime_start
                else None,
                "last_step": trial.last_step,
            }
        )
    best: dict[str, Any] | None = None
    if counts["complete"]:
        b = study.best_trial
        best = {
            "trial": b.number,
            "value": b.value,
            "params": b.params,
            "cv_std": b.user_attrs.get("cv_std"),
            "fold_scores": b.user_attrs.get("fold_scores"),
        }
    baselines = baselines_summary(
        study,
        spec,
        best["value"] if best else None,
        (best["fold_scores"] or []) if best else [],
    )
    remaining = max(0, spec.budget.n_trials - finished)
    eta_s = None
    if durations and remaining:
        parallel = max(1, len(running))
        eta_s = round(sum(durations) / len(durations) * remaining / parallel, 1)
    return {
        "study": spec.name,
        "budget": spec.budget.n_trials,
        "finished": finished,
        "counts": counts,
        "best": best,
        "baselines": baselines,
        "running": running,
        "compute_s": round(compute_s, 1),
        "eta_s": eta_s,
    }
