"""kill -9 of a worker mid-trial: its trial is failed within the grace period by the other
worker's heartbeat sweep (nobody asks meanwhile), re-queued, and resumed from its finished
folds; the budget is met exactly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from tests.hpo.worker.test_loop import _logs, start_worker, tiny_spec

HEARTBEAT = ["--heartbeat-s", "1", "--grace-s", "4"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_killed_worker_trial_is_requeued_and_resumed_from_finished_folds(
    backend: str,
    tmp_path: Path,
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = (
        str(tmp_path / "journal.log")
        if backend == "journal"
        else request.getfixturevalue("postgres_url")
    )
    data = tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 2})
    data["cv"]["n_folds"] = 3
    data["train"]["epochs"] = 40  # several seconds per fold
    data["search"]["pruner"] = {"name": "none"}
    spec = parse_spec(data)
    create_study(spec, open_storage(url))
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url))

    victim_log, survivor_log = tmp_path / "victim.log", tmp_path / "survivor.log"
    victim = start_worker(spec.name, url, victim_log, "--stream", "0", *HEARTBEAT)
    survivor = start_worker(spec.name, url, survivor_log, "--stream", "1", *HEARTBEAT)
    deadline = time.monotonic() + 120
    target = None
    while target is None:  # the victim's trial, once its first fold is saved
        assert time.monotonic() < deadline, _logs(victim_log, survivor_log)
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            worker = records.run_info(trial).get("worker", "")
            if f"-{victim.pid}-" in worker and records.fold_key(0) in trial.user_attrs:
                target = trial
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    # The survivor is busy training its own trial: nobody asks for a trial meanwhile.
    while study._storage.get_trial(target._trial_id).state == TrialState.RUNNING:
        assert time.monotonic() - killed_at < 20, _logs(survivor_log)
        time.sleep(0.2)
    # heartbeat grace + one interval + the journal's lock grace (the victim may die holding the
    # file lock) + slack
    assert time.monotonic() - killed_at <= 4 + 1 + 5 + 2
    killed = study._storage.get_trial(target._trial_id)
    done = sorted(records.stored_folds(killed.user_attrs))
    assert 1 <= len(done) < 3

    assert survivor.wait(timeout=300) == 0, _logs(survivor_log)
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(url)).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2  # the budget, exactly
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    resumed = [t for t in complete if t.params == target.params]
    assert len(resumed) == 1
    resumed_trial = resumed[0]
    assert resumed_trial.system_attrs[records.RETRY_HISTORY] == [target.number]
    assert resumed_trial.user_attrs[records.RUN]["resumed_folds"] == done
    # Finished folds were carried over, not retrained: identical records, timings included.
    for fold in done:
        key = records.fold_key(fold)
        assert resumed_trial.user_attrs[key] == killed.user_attrs[key]
        score = killed.user_attrs[key]["score"]
        assert resumed_trial.user_attrs[records.FOLD_SCORES][fold] == score
    assert len(resumed_trial.user_attrs[records.FOLD_SCORES]) == 3
