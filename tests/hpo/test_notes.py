"""What optuna-dashboard shows of our studies: the metric's name and our notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna_dashboard import get_note

from hpo import records
from hpo.notes import write_study_notes, write_trial_note
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import set_up_study
from tests.hpo.views.test_analysis import tiny_study


def test_a_set_up_study_names_its_metric_and_notes_its_spec_and_baselines(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    spec = parse_spec(spec_dict)
    url = str(tmp_path / "journal.log")
    set_up_study(spec, open_storage(url))
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    assert study.metric_names == ["cv_accuracy"]
    note = get_note(study)
    assert "Objective: **cv_accuracy**" in note
    assert "| TF-IDF + logistic regression |" in note
    assert "Resolved spec:" in note and f"name: {spec.name}" in note


def test_a_trial_note_has_every_fold_and_epoch_and_the_margin_over_the_baselines(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    url = str(tmp_path / "journal.log")
    name = tiny_study(url, spec_dict)
    spec = parse_spec(spec_dict)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    study.set_user_attr(
        records.BASELINES,
        {
            "scores": [
                {
                    "name": "majority",
                    "title": "majority class",
                    "mean": 0.5,
                    "std": 0.0,
                    "fold_scores": [0.5, 0.5, 0.5],
                    "seconds": 0.0,
                }
            ]
        },
    )
    write_study_notes(study, spec)
    complete, _, pruned, _ = study.trials
    write_trial_note(study, optuna.Trial(study, complete._trial_id), spec)
    write_trial_note(study, optuna.Trial(study, pruned._trial_id), spec)
    note = get_note(optuna.Trial(study, complete._trial_id))
    assert "| 0 | 0.7000 | 0.8000 | 0.8000 |" in note
    assert "| 2 | 0.7200 | 0.8100 | 0.8100 |" in note
    assert "**cv_accuracy 0.8100 ± 0.0082**" in note
    assert "- 0.3100 over majority class (3 of 3 folds won)" in note
    cut = get_note(optuna.Trial(study, pruned._trial_id))
    assert "| 1 | 0.5200 |  | pruned |" in cut
    assert "±" not in cut  # no CV mean for a trial that never finished its folds
