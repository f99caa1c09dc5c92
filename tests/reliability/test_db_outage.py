"""The store rides out a PostgreSQL restart: operations wait, retry, and nothing is lost."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import RetryingStorage, is_transient, open_storage
from hpo.study import create_study


def _cluster_command(action: str) -> list[str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]


def _restart_postgres_in_background(down_s: float) -> threading.Thread:
    def cycle() -> None:
        subprocess.run(_cluster_command("stop"), check=True, capture_output=True)
        time.sleep(down_s)
        subprocess.run(_cluster_command("start"), check=True, capture_output=True)

    thread = threading.Thread(target=cycle)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.skipif(not Path("/etc/postgresql").is_dir(), reason="needs a local cluster to restart")
def test_trial_survives_a_postgres_restart(
    postgres_url: str, spec_dict: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(postgres_url)
    create_study(parse_spec(spec_dict), storage)
    study = optuna.load_study(study_name=spec_dict["name"], storage=storage)
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    trial.report(0.5, 0)

    caplog.set_level(logging.WARNING, logger="hpo.store._retry")
    outage = _restart_postgres_in_background(down_s=3.0)
    time.sleep(0.5)  # the server is going down
    for step in range(1, 4):  # these writes straddle the outage
        trial.report(0.5 + step / 10, step)
    study.tell(trial, 0.9)
    outage.join()

    fresh = optuna.load_study(study_name=spec_dict["name"], storage=open_storage(postgres_url))
    trials = fresh.trials
    assert len(trials) == 1  # nothing duplicated
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == 0.9
    assert trials[0].intermediate_values == {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages


def test_outage_longer_than_the_limit_is_a_clear_error() -> None:
    import sqlalchemy.exc

    class Down(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            raise sqlalchemy.exc.OperationalError("select", {}, Exception("server closed"))

    slept: list[float] = []
    storage = RetryingStorage(Down(), outage_timeout_s=0.0, sleep=slept.append)
    from hpo.errors import StorageError

    with pytest.raises(StorageError, match="unreachable"):
        storage.get_all_studies()


def test_non_connection_errors_are_not_retried() -> None:
    calls = []

    class Broken(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            calls.append(1)
            raise KeyError("no such study")

    with pytest.raises(KeyError):
        RetryingStorage(Broken(), sleep=lambda s: None).get_all_studies()
    assert calls == [1]
    assert not is_transient(KeyError("x"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/etc/postgresql").is_dir(), reason="needs a local cluster to restart")
def test_study_completes_through_a_postgres_restart(
    postgres_url: str, tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    from tests.hpo.worker.test_loop import _logs, start_worker, tiny_spec

    data = tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 6})
    data["train"]["epochs"] = 10
    spec = parse_spec(data)
    create_study(spec, open_storage(postgres_url))
    study = optuna.load_study(study_name=spec.name, storage=open_storage(postgres_url))
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [
        start_worker(spec.name, postgres_url, log, "--stream", str(i)) for i, log in enumerate(logs)
    ]
    deadline = time.monotonic() + 120
    while not study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        assert time.monotonic() < deadline, _logs(*logs)
        time.sleep(0.2)
    _restart_postgres_in_background(down_s=3.0).join()
    assert [p.wait(timeout=300) for p in procs] == [0, 0], _logs(*logs)

    trials = optuna.load_study(study_name=spec.name, storage=open_storage(postgres_url)).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The only failures allowed: a worker that lost the race for the last slot yields its trial.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs[records.FAIL_REASON].startswith("over budget") for t in failed)
    assert len({t.number for t in trials}) == len(trials)
