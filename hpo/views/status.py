"""``hpo status``: a study's counts by state, best so far, running trials, compute and ETA."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hpo import records
from hpo.baselines import baselines_summary
from hpo.spec.model import StudySpec

if TYPE_CHECKING:
    import optuna


def eta_s(trials: Sequence[optuna.trial.FrozenTrial], budget: int) -> float | None:
    """Seconds until the budget is met: the finished trials' mean duration, times the trials
    left, over the trials running now (at least one); None before any trial finished.

    Pruned trials count with their (shorter) durations: the ETA assumes the same share is
    pruned from here on."""
    from optuna.trial import TrialState

    finished = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.datetime_start is not None
        and t.datetime_complete is not None
    ]
    remaining = budget - sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if not finished or remaining <= 0:
        return None
    seconds = [
        (t.datetime_complete - t.datetime_start).total_seconds()  # type: ignore[operator]
        for t in finished
    ]
    mean = sum(seconds) / len(seconds)
    parallel = max(1, sum(t.state == TrialState.RUNNING for t in trials))
    return round(mean * remaining / parallel, 1)


def study_status(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """A JSON-ready summary of the study as the store has it now."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name.lower()] += 1
    finished = counts["complete"] + counts["pruned"]
    now = datetime.now()
    compute_s = sum(
        ((t.datetime_complete or now) - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_start is not None
    )
    running = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        run = records.run_info(trial)
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
        score = records.CVScore.of(b)
        best = {
            "trial": b.number,
            "value": b.value,
            "params": b.params,
            "cv_std": score.std,
            "fold_scores": score.fold_scores or None,
        }
    baselines = baselines_summary(
        study,
        spec,
        best["value"] if best else None,
        (best["fold_scores"] or []) if best else [],
    )
    return {
        "study": spec.name,
        "budget": spec.budget.n_trials,
        "finished": finished,
        "counts": counts,
        "best": best,
        "baselines": baselines,
        "running": running,
        "compute_s": round(compute_s, 1),
        "eta_s": eta_s(trials, spec.budget.n_trials),
    }
