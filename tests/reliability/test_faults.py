"""Trial-level faults: OOM and NaN fail the trial with a reason and the worker goes on;
a worker whose every trial fails stops instead of burning the budget."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import trainer
from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from hpo.worker.loop import Worker, WorkerError, WorkerOptions
from tests.hpo.worker.test_loop import tiny_spec


def _study(tmp_path: Path, model: Path, csv: Path, **overrides: Any) -> tuple[str, str]:
    url = str(tmp_path / "journal.log")
    spec = parse_spec(tiny_spec(model, csv, **overrides))
    create_study(spec, open_storage(url))
    return url, spec.name


def test_oom_fails_the_trial_with_its_reason_and_the_worker_goes_on(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name = _study(tmp_path, tiny_bert_dir, synthetic_csv, budget={"n_trials": 2})
    real_run_cv = trainer.run_cv
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("injected: cannot allocate 4.0 GiB")
        return real_run_cv(*args, **kwargs)

    monkeypatch.setattr(trainer, "run_cv", flaky)
    summary = Worker(WorkerOptions(storage_url=url, study_name=name, device="cpu")).run()
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert (
        failed[0].user_attrs[records.FAIL_REASON]
        == "MemoryError: injected: cannot allocate 4.0 GiB"
    )
    assert summary.completed + summary.pruned == 2 and summary.failed == 1


def test_nan_loss_fails_the_trial_with_its_reason(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    data: dict[str, Any] = {"n_trials": 1}
    url, name = _study(tmp_path, tiny_bert_dir, synthetic_csv, budget=data)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    # A learning rate far outside any sane range blows the loss up to inf / NaN.
    study.enqueue_trial({"lr": 1e6, "dropout": 0.0, "l1": 1e-9, "l2": 1e-7}, skip_if_exists=False)
    worker = Worker(WorkerOptions(storage_url=url, study_name=name, device="cpu", max_trials=1))
    worker.run()
    trial = optuna.load_study(study_name=name, storage=open_storage(url)).trials[0]
    assert trial.state == TrialState.FAIL
    assert re.match(
        r"NonFiniteLossError: fold \d+ epoch \d+: training loss is (nan|inf)",
        trial.user_attrs[records.FAIL_REASON],
    ), trial.user_attrs[records.FAIL_REASON]


def test_worker_whose_trials_all_fail_stops_with_a_clear_error(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name = _study(tmp_path, tiny_bert_dir, synthetic_csv, budget={"n_trials": 20})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(trainer, "run_cv", broken)
    with pytest.raises(WorkerError, match="the last 3 trials all failed"):
        Worker(WorkerOptions(storage_url=url, study_name=name, device="cpu")).run()
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    assert len(trials) == 3 and all(t.state == TrialState.FAIL for t in trials)
