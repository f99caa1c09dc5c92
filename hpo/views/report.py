"""``hpo report``: one self-contained HTML file (Plotly inlined, no CDN) about a study."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import records
from hpo.baselines import Baseline, compare, shortfall, stored_baselines
from hpo.spec.model import StudySpec
from hpo.study import step_grid
from hpo.views.export import rank_trials

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

# Params per slice-plot figure: three fit the page's width.
SLICES_PER_ROW = 3

# Section id -> title, in page order. Tests check that every one is present.
SECTIONS = {
    "history": "Optimization history (best so far)",
    "baselines": "Baselines on the same folds",
    "curves": "Fold × epoch curves (✕ marks where a trial was pruned)",
    "importances": "Hyperparameter importances",
    "parallel": "Parallel coordinates",
    "slices": "Slice plots",
    "cv": "Per-trial CV mean ± std",
    "top": "Top trials",
    "best": "Best config",
    "compute": "Compute spent and saved by pruning",
}


def _duration_s(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def compute_summary(study: optuna.Study) -> dict[str, float]:
    """Seconds spent by state, and an estimate of what pruning saved.

    Saved time is estimated per pruned trial as (mean duration of complete trials) minus its own
    duration: what it would have cost had it run to the end.
    """
    from optuna.trial import TrialState

    spent: dict[str, float] = {"complete": 0.0, "pruned": 0.0, "fail": 0.0}
    complete_durations = []
    pruned_durations = []
    for trial in study.get_trials(deepcopy=False):
        seconds = _duration_s(trial)
        key = trial.state.name.lower()
        if seconds is None or key not in spent:
            continue
        spent[key] += seconds
        if trial.state == TrialState.COMPLETE:
            complete_durations.append(seconds)
        elif trial.state == TrialState.PRUNED:
            pruned_durations.append(seconds)
    full = sum(complete_durations) / len(complete_durations) if complete_durations else 0.0
    saved = sum(max(0.0, full - s) for s in pruned_durations)
    return {
        **{f"{k}_s": v for k, v in spent.items()},
        "total_s": sum(spent.values()),
        "saved_by_pruning_s": saved,
    }


def _curves_figure(study: optuna.Study, spec: StudySpec) -> go.Figure:
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    grid = step_grid(spec)
    fig = go.Figure()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        steps = sorted(trial.intermediate_values)
        if not steps:
            continue
        values = [trial.intermediate_values[s] for s in steps]
        pruned = trial.state == TrialState.PRUNED
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=f"trial {trial.number}",
                line={"dash": "dot" if pruned else "solid", "width": 1},
                marker={"size": 4},
                opacity=0.6 if pruned else 0.9,
            )
        )
        if pruned:
            fig.add_trace(
                go.Scatter(
                    x=[steps[-1]],
                    y=[values[-1]],
                    mode="markers",
                    showlegend=False,
                    marker={"symbol": "x", "size": 11, "color": "crimson"},
                    hovertext=f"trial {trial.number} pruned",
                    hoverinfo="text",
                )
            )
    for fold in range(1, grid.n_folds):
        fig.add_vline(x=grid.fold_start(fold) - 0.5, line={"color": "#bbb", "dash": "dash"})
    fig.update_layout(
        xaxis_title=f"step: {grid.steps_per_fold} per fold, each fold's last epoch at its end",
        yaxis_title=spec.objective.metric,
    )
    return fig


def _cv_figure(study: optuna.Study, spec: StudySpec) -> go.Figure:
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    scores = [records.CVScore.of(t) for t in trials]
    fig = go.Figure(
        go.Scatter(
            x=[t.number for t in trials],
            y=[s.mean for s in scores],
            error_y={"type": "data", "array": [s.std or 0.0 for s in scores]},
            mode="markers",
            name="CV mean ± std",
        )
    )
    fig.update_layout(xaxis_title="trial", yaxis_title=f"CV {spec.objective.metric}")
    return fig


def _with_baselines(fig: go.Figure, baselines: tuple[Baseline, ...]) -> go.Figure:
    """Each baseline's CV mean as a dotted horizontal line, labelled."""
    for baseline in baselines:
        fig.add_hline(
            y=baseline.mean,
            line={"dash": "dot", "color": "#888", "width": 1},
            annotation_text=f"{baseline.title} {baseline.mean:.4f}",
            annotation_position="bottom right",
        )
    return fig


def _baselines_html(
    baselines: tuple[Baseline, ...], best: optuna.trial.FrozenTrial | None, spec: StudySpec
) -> str:
    if not baselines:
        return (
            "<p>No baselines are stored with this study (it was created before hpo scored "
            "them); <code>hpo create SPEC</code> adds them.</p>"
        )
    score = records.CVScore.of(best) if best is not None else None
    comparisons = (
        compare(score.mean, score.fold_scores, baselines, spec.direction)
        if score is not None and score.mean is not None
        else ()
    )
    by_name = {c.baseline.name: c for c in comparisons}
    rows = []
    for b in baselines:
        c = by_name.get(b.name)
        rows.append(
            [
                b.title,
                f"{b.mean:.4f}",
                f"{b.std:.4f}",
                ", ".join(f"{s:.3f}" for s in b.fold_scores),
                f"{b.seconds:.1f} s",
                "-" if c is None else f"{c.margin:+.4f} ({c.folds_won}/{c.n_folds} folds)",
            ]
        )
    header = ["baseline", "CV mean", "CV std", "fold scores", "time", "best trial (+ is better)"]
    verdict = shortfall(comparisons)
    note = f"<p><strong>{html.escape(verdict)}</strong></p>" if verdict else ""
    return _table(rows, header) + note


def _slice_figures(study: optuna.Study) -> list[go.Figure]:
    """Slice plots, ``SLICES_PER_ROW`` params to a figure: Optuna's one figure is 300 px wide
    per param, wider than the page from four params on."""
    from optuna import visualization as vis
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({name for trial in complete for name in trial.params})
    if len(names) <= 1:
        return [vis.plot_slice(study)]
    rows = [names[i : i + SLICES_PER_ROW] for i in range(0, len(names), SLICES_PER_ROW)]
    return [vis.plot_slice(study, params=row) for row in rows]


def _figures(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """Section id -> plotly figure, a list of them, or an HTML note when the study has too
    little data."""
    from optuna import visualization as vis
    from optuna.trial import TrialState

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    baselines = stored_baselines(study)
    figures: dict[str, Any] = {
        "history": _with_baselines(vis.plot_optimization_history(study), baselines),
        "curves": _curves_figure(study, spec),
        "parallel": vis.plot_parallel_coordinate(study),
        "slices": _slice_figures(study),
        "cv": _with_baselines(_cv_figure(study, spec), baselines),
    }
    if n_complete >= 2:
        figures["importances"] = vis.plot_param_importances(study)
    else:
        figures["importances"] = "<p>Importances need at least two completed trials.</p>"
    return figures


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(study: optuna.Study, spec: StudySpec, *, top: int = 10) -> str:
    """The whole HTML page as a string; Plotly's JS is inlined once."""
    import plotly.io as pio

    figures = _figures(study, spec)
    ranked = rank_trials(study, spec)
    top_rows = [
        [
            str(t.number),
            f"{t.value:.4f}",
            f"{score.std or 0.0:.4f}",
            ", ".join(f"{s:.3f}" for s in score.fold_scores),
            ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
            ),
        ]
        for t in ranked[:top]
        for score in [records.CVScore.of(t)]
    ]
    best = ranked[0] if ranked else None
    compute = compute_summary(study)
    parts = {
        "baselines": _baselines_html(stored_baselines(study), best, spec),
        "top": _table(top_rows, ["trial", "CV mean", "CV std", "fold scores", "params"]),
        "best": "<pre>"
        + html.escape(
            json.dumps(
                {"trial": best.number, "params": best.params, "spec": spec.to_json_dict()}
                if best
                else {},
                indent=2,
            )
        )
        + "</pre>",
        "compute": _table(
            [
                [k.removesuffix("_s").replace("_", " "), f"{v / 60:.1f} min"]
                for k, v in compute.items()
            ],
            ["", "time"],
        ),
    }
    include_js: bool | str = True
    for key, content in figures.items():
        if isinstance(content, str):
            parts[key] = content
            continue
        html_parts = []
        for fig in content if isinstance(content, list) else [content]:
            # As wide as the page, whatever width the figure was made with; follows resizes.
            fig.update_layout(width=None, autosize=True)
            html_parts.append(
                pio.to_html(
                    fig,
                    full_html=False,
                    include_plotlyjs=include_js,
                    config={"responsive": True},
                )
            )
            include_js = False  # inline the library once, on the first figure
        parts[key] = "\n".join(html_parts)
    body = "\n".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>{parts[key]}</section>'
        for key, title in SECTIONS.items()
    )
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(spec.name)}: hpo report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:90%}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>Study {html.escape(spec.name)}</h1>
<p>{html.escape(spec.objective.metric)} ({html.escape(spec.direction)}), {spec.cv.n_folds}-fold CV,
budget {spec.budget.n_trials} trials. Generated {generated}.</p>
{body}
</body></html>
"""


def write_report(study: optuna.Study, spec: StudySpec, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(build_report(study, spec), encoding="utf-8")
    tmp.replace(path)
    return path
