"""The live view `hpo run` shows: where each running trial is, on the study's step grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from hpo.spec.model import parse_spec
from hpo.spec.space import suggest
from hpo.store import open_storage
from hpo.study import create_study, step_grid
from hpo.views.live import render_status


def test_a_running_trial_shows_its_fold_and_its_own_epoch(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """With epochs searched in {1, 2} the grid has two steps per fold; a 1-epoch trial reports
    only on each fold's last one, and the view calls that epoch 1 of 1 (not 2, not 1 of 2)."""
    spec_dict["search"]["space"]["epochs"] = {"choices": [1, 2]}
    spec = parse_spec(spec_dict)
    storage = open_storage(str(tmp_path / "journal.log"))
    create_study(spec, storage)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    grid = step_grid(spec)
    assert grid.steps_per_fold == 2
    for epochs in (1, 2):
        study.enqueue_trial({"lr": 1e-4, "dropout": 0.1, "l1": 1e-7, "l2": 1e-4, "epochs": epochs})
    one, two, fresh = study.ask(), study.ask(), study.ask()
    for trial in (one, two):
        suggest(trial, spec.search.space)
    one.report(0.61, grid.step(1, 0, 1))  # fold 2 of 3, its only epoch
    two.report(0.72, grid.step(0, 0, 2))  # fold 1 of 3, epoch 1 of 2
    console = Console(record=True, width=200)
    console.print(render_status(study, spec, time.monotonic()))
    cells = {}
    for line in console.export_text().splitlines():
        row = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if row[0] in {"0", "1", "2"}:
            cells[row[0]] = row[2:5]  # fold, epoch, last score
    assert cells == {
        "0": ["2/3", "1/1", "0.6100"],
        "1": ["1/3", "1/2", "0.7200"],
        str(fresh.number): ["-", "-", "-"],  # asked, nothing reported yet: no params needed
    }
