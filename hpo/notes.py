"""What optuna-dashboard shows of a study in our terms: the metric's name, the study's note (the
resolved spec and the baselines to beat) and each finished trial's note (its folds, epoch by
epoch, against the baselines).

Notes are optuna-dashboard's own (``optuna_dashboard.save_note``: Markdown kept in the study's
system attributes), so plain optuna-dashboard renders them and plain Optuna ignores them. The
metric name is Optuna's ``Study.set_metric_names``. Writing a note is best effort: a study or a
trial never fails because its note could not be written.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from hpo import records
from hpo.baselines import Baseline, baselines_from_json, compare
from hpo.spec.model import StudySpec
from hpo.study import step_grid

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


def metric_name(spec: StudySpec) -> str:
    """The objective's name as the dashboard shows it: ``cv_<metric>`` (the mean over folds)."""
    return f"cv_{spec.objective.metric}"


def study_note(spec: StudySpec, baselines: Sequence[Baseline]) -> str:
    """Markdown: the objective, the baselines on the study's folds, the resolved spec."""
    lines = [
        f"## {spec.name}",
        "",
        f"Objective: **{metric_name(spec)}**, the {spec.objective.metric} averaged over "
        f"{spec.cv.n_folds} cross-validation folds ({spec.direction}).",
        "",
    ]
    if baselines:
        lines += ["To beat, on the same folds:", "", "| baseline | mean | std | folds |"]
        lines += ["|---|--:|--:|---|"]
        lines += [
            f"| {b.title} | {b.mean:.4f} | {b.std:.4f} | "
            + ", ".join(f"{s:.4f}" for s in b.fold_scores)
            + " |"
            for b in baselines
        ]
        lines.append("")
    spec_yaml = yaml.safe_dump(spec.to_json_dict(), sort_keys=False).rstrip()
    lines += ["Resolved spec:", "", "```yaml", spec_yaml, "```"]
    return "\n".join(lines)


def trial_note(
    spec: StudySpec,
    user_attrs: Mapping[str, Any],
    intermediate: Mapping[int, float],
    epochs: int,
    baselines: Sequence[Baseline],
) -> str:
    """Markdown: the trial's score per fold and epoch, its CV mean, and the baselines' margins."""
    grid = step_grid(spec)
    metric = spec.objective.metric
    header = "| fold | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " | final |"
    lines = [header, "|--:|" + "--:|" * (epochs + 1)]
    finals: list[float] = []
    stored = records.stored_folds(user_attrs)
    for fold in range(spec.cv.n_folds):
        cells = []
        for epoch in range(epochs):
            value = intermediate.get(grid.step(fold, epoch, epochs))
            cells.append("" if value is None else f"{value:.4f}")
        saved = stored.get(fold, {})
        final = saved.get("score")
        if not any(cells) and final is None:
            continue
        if saved.get("pruned"):
            final_cell = "pruned"
        elif isinstance(final, (int, float)):
            finals.append(float(final))
            final_cell = f"{final:.4f}"
        else:
            final_cell = ""
        lines.append(f"| {fold} | " + " | ".join(cells) + f" | {final_cell} |")
    mean, std = user_attrs.get(records.CV_MEAN), user_attrs.get(records.CV_STD)
    summary = [f"{metric} per fold and epoch (held-out fold):", "", *lines, ""]
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
        summary.append(f"**{metric_name(spec)} {mean:.4f} ± {std:.4f}**")
        for c in compare(float(mean), finals, baselines, spec.direction):
            word = "over" if c.margin >= 0 else "under"
            summary.append(
                f"- {abs(c.margin):.4f} {word} {c.baseline.title} "
                f"({c.folds_won} of {c.n_folds} folds won)"
            )
    return "\n".join(summary)


def write_study_notes(study: optuna.Study, spec: StudySpec) -> None:
    """Set the metric name and (re)write the study's note; best effort."""
    import optuna
    from optuna_dashboard import save_note

    try:
        if study.metric_names != [metric_name(spec)]:
            with warnings.catch_warnings():  # experimental since Optuna 3.2; stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([metric_name(spec)])
        baselines = baselines_from_json(study.user_attrs.get(records.BASELINES))
        save_note(study, study_note(spec, baselines))
    except Exception as e:
        logger.warning("could not write the study's dashboard note: %s", e)


def write_trial_note(study: optuna.Study, trial: optuna.Trial, spec: StudySpec) -> None:
    """Write a finished trial's note from what it stored; best effort."""
    from optuna_dashboard import save_note

    try:
        frozen = study._storage.get_trial(trial._trial_id)
        epochs = int(frozen.params.get("epochs", spec.train.epochs))
        baselines = baselines_from_json(study.user_attrs.get(records.BASELINES))
        body = trial_note(spec, frozen.user_attrs, frozen.intermediate_values, epochs, baselines)
        save_note(trial, body)
    except Exception as e:
        logger.warning("could not write trial %d's dashboard note: %s", trial.number, e)
