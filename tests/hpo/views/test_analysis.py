"""The notebook path: a study as pandas tables, and examples/analysis.ipynb run on a tiny study."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import ENV_STORAGE, open_storage
from hpo.study import create_study, step_grid
from hpo.views.analysis import curves_frame, trials_frame
from trainer import FoldResult

REPO = Path(__file__).resolve().parents[3]
NOTEBOOK = REPO / "examples" / "analysis.ipynb"
DISTS = {
    "lr": FloatDistribution(1e-5, 1e-3, log=True),
    "dropout": FloatDistribution(0.0, 0.3),
    "l1": FloatDistribution(1e-8, 1e-4, log=True),
    "l2": FloatDistribution(1e-6, 1e-2, log=True),
    "epochs": CategoricalDistribution([1, 2]),
}


def _fold(fold: int, curve: list[float], pruned: bool = False) -> dict[str, Any]:
    """A fold's record as the worker writes it (``hpo.records.fold_key``)."""
    return records.fold_to_json(
        FoldResult(
            fold=fold,
            score=curve[-1],
            metrics={"accuracy": curve[-1], "loss": 0.5},
            curve=tuple({"accuracy": s, "loss": 0.5, "epoch_s": 1.0} for s in curve),
            train_examples=106,
            train_s=2.0,
            pruned=pruned,
        )
    )


def _trial(
    spec: Any, number: int, epochs: int, curves: list[list[float]], state: str
) -> optuna.trial.FrozenTrial:
    """A trial with the user attrs and intermediate values a worker records: ``curves`` holds
    each reported fold's per-epoch scores; a pruned trial's last fold is unfinished."""
    grid = step_grid(spec)
    values = {
        grid.step(fold, epoch, epochs): score
        for fold, curve in enumerate(curves)
        for epoch, score in enumerate(curve)
    }
    pruned = state == "pruned"
    attrs: dict[str, Any] = {
        records.fold_key(i): _fold(i, curve, pruned=pruned and i == len(curves) - 1)
        for i, curve in enumerate(curves)
    }
    attrs[records.RUN] = {
        "host": "h1",
        "device": "cpu",
        "worker": f"w{number % 2}",
        "precision": "fp32",
    }
    value = values[max(values)] if pruned else None  # Optuna tells a pruned trial its last value
    if not pruned:
        scores = [curve[-1] for curve in curves]
        value = sum(scores) / len(scores)
        std = (sum((s - value) ** 2 for s in scores) / len(scores)) ** 0.5
        attrs |= {records.FOLD_SCORES: scores, records.CV_MEAN: value, records.CV_STD: std}
    return optuna.trial.create_trial(
        params={
            "lr": 1e-4 * (number + 1),
            "dropout": 0.1,
            "l1": 1e-7,
            "l2": 1e-4,
            "epochs": epochs,
        },
        distributions=DISTS,
        value=value,
        state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
        intermediate_values=values,
        user_attrs=attrs,
    )


def tiny_study(url: str, spec_dict: dict[str, Any]) -> str:
    """A study of 3 folds with epochs searched in {1, 2}: two complete trials (2 and 1 epochs),
    one pruned inside its second fold, one failed. Returns its name."""
    spec_dict["search"]["space"]["epochs"] = {"choices": [1, 2]}
    spec = parse_spec(spec_dict)
    storage = open_storage(url)
    create_study(spec, storage)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    study.add_trial(_trial(spec, 0, 2, [[0.70, 0.80], [0.75, 0.82], [0.72, 0.81]], "complete"))
    study.add_trial(_trial(spec, 1, 1, [[0.90], [0.60], [0.91]], "complete"))
    study.add_trial(_trial(spec, 2, 2, [[0.50, 0.55], [0.52]], "pruned"))
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3, "dropout": 0.0, "l1": 1e-7, "l2": 1e-4, "epochs": 2},
            distributions=DISTS,
            state=optuna.trial.TrialState.FAIL,
        )
    )
    return spec.name


def test_trials_frame_has_a_row_per_trial_with_fold_scores_params_and_where_it_ran(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    url = str(tmp_path / "journal.log")
    name = tiny_study(url, spec_dict)
    frame = trials_frame(name, storage=url)
    assert list(frame.columns) == [
        "number", "state", "value", "cv_mean", "cv_std", "fold_0", "fold_1", "fold_2",
        "dropout", "epochs", "l1", "l2", "lr",
        "duration_s", "worker", "host", "device", "precision", "last_step",
    ]  # fmt: skip
    assert list(frame["state"]) == ["complete", "complete", "pruned", "fail"]
    assert frame.loc[1, ["fold_0", "fold_1", "fold_2"]].tolist() == [0.90, 0.60, 0.91]
    assert frame.loc[1, "value"] == pytest.approx((0.90 + 0.60 + 0.91) / 3)
    # the pruned trial finished fold 0; fold 1 was cut short, fold 2 never ran
    assert frame.loc[2, "fold_0"] == 0.55
    assert frame.loc[2, ["fold_1", "fold_2"]].isna().all()
    assert frame["epochs"].tolist() == [2, 1, 2, 2]
    assert frame["worker"].tolist()[:3] == ["w0", "w1", "w0"]
    assert frame["last_step"].tolist()[:3] == [5, 5, 2]


def test_curves_frame_places_every_score_at_its_fold_and_epoch(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "journal.log")
    name = tiny_study(url, spec_dict)
    monkeypatch.setenv(ENV_STORAGE, url)  # storage=None reads $HPO_STORAGE, as hpo does
    curves = curves_frame(name)
    assert list(curves.columns) == ["trial", "state", "fold", "epoch", "step", "score"]
    one_epoch = curves[curves.trial == 1]
    # a 1-epoch trial reports at each fold's end: steps 1, 3, 5 of a grid of 2 per fold
    assert one_epoch[["fold", "epoch", "step"]].values.tolist() == [[0, 0, 1], [1, 0, 3], [2, 0, 5]]
    pruned = curves[curves.trial == 2]
    assert pruned[["fold", "epoch", "score"]].values.tolist() == [
        [0, 0, 0.50],
        [0, 1, 0.55],
        [1, 0, 0.52],
    ]
    assert len(curves) == 6 + 3 + 3  # the failed trial reported nothing


def test_the_analysis_notebook_runs_on_a_tiny_study(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    url = str(tmp_path / "journal.log")
    name = tiny_study(url, spec_dict)
    monkeypatch.setenv(ENV_STORAGE, url)
    monkeypatch.setenv("HPO_STUDY", name)
    # the kernel imports hpo from this checkout, as the tests do
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.monotonic()
    NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert time.monotonic() - started < 30
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert name in text
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 2  # fold-score spread and curves
