"""The live view of a study: counts, best so far, running trials, elapsed and ETA."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

from hpo import records
from hpo.spec.model import StudySpec
from hpo.study import step_grid
from hpo.translate import hyperparams_for
from hpo.views.status import eta_s

if TYPE_CHECKING:
    import optuna
    from rich.console import RenderableType


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _against_baselines(
    study: optuna.Study, spec: StudySpec, best: optuna.trial.FrozenTrial
) -> list[str]:
    """The best trial so far against the study's baselines on the same folds, and the plain
    sentence when it does not beat the linear one (nothing when no baselines are stored)."""
    from hpo.baselines import compare, describe, shortfall, stored_baselines

    bars = stored_baselines(study)
    if not bars or best.value is None:
        return []
    score = records.CVScore.of(best)
    assert score.mean is not None  # best.value is not None
    comparisons = compare(score.mean, score.fold_scores, bars, spec.direction)
    lines = [describe(comparisons)]
    verdict = shortfall(comparisons)
    if verdict:
        lines.append(f"[bold yellow]{verdict}[/]")
    return lines


def render_status(study: optuna.Study, spec: StudySpec, started: float) -> RenderableType:
    """A rich renderable summarizing the study as the store has it now."""
    from optuna.trial import TrialState
    from rich.console import Group
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    complete, pruned = by_state[TrialState.COMPLETE], by_state[TrialState.PRUNED]
    running, failed = by_state[TrialState.RUNNING], by_state[TrialState.FAIL]
    finished = len(complete) + len(pruned)
    budget = spec.budget.n_trials
    elapsed = time.monotonic() - started
    left_s = eta_s(trials, budget)
    eta = "" if left_s is None else f"  ETA {_fmt_s(left_s)}"

    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]{spec.name}[/]",
        f"finished {finished}/{budget}",
        f"running {len(running)}",
        f"complete {len(complete)}",
        f"pruned {len(pruned)}",
        f"failed {len(failed)}",
        f"elapsed {_fmt_s(elapsed)}{eta}",
    )
    parts: list[RenderableType] = [head]
    if complete:
        best = study.best_trial
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
        )
        parts.append(
            f"best: trial {best.number}  {spec.objective.metric} {best.value:.4f}"
            f" ± {records.CVScore.of(best).std or 0.0:.4f}  ({params})"
        )
        parts.extend(_against_baselines(study, spec, best))
    if running:
        grid = step_grid(spec)
        table = Table(title="running", title_justify="left", expand=False)
        for column in ("trial", "worker", "fold", "epoch", "last score", "age"):
            table.add_column(column)
        now = datetime.now()
        for t in sorted(running, key=lambda t: t.number):
            step = t.last_step
            where = "-", "-", "-"
            if step is not None:  # it has reported, so its params are all sampled
                epochs = hyperparams_for(spec, t.params, seed=0).epochs  # may vary by trial
                where = (
                    f"{grid.fold_of(step) + 1}/{grid.n_folds}",
                    f"{grid.epoch_of(step, epochs) + 1}/{epochs}",
                    f"{t.intermediate_values[step]:.4f}",
                )
            run = records.run_info(t)
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            table.add_row(
                str(t.number),
                str(run.get("worker", "?")),
                *where,
                _fmt_s(age),
            )
        parts.append(table)
    return Group(*parts)
