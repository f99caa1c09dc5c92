"""Workers through ``hpo proxy`` (grpc://): reaching PostgreSQL, stale trials whatever the
clocks, a proxy restart."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.records import SPEC as SPEC_ATTR
from hpo.spec.model import parse_spec
from hpo.store import (
    open_storage,
)
from hpo.study import create_study, load_study


@contextlib.contextmanager
def running_proxy(postgres_url: str, port: int | None = None) -> Iterator[str]:
    """``hpo proxy`` on ``port`` (default: a free one) in front of ``postgres_url``; yields
    its grpc:// URL."""
    import socket

    from tests.hpo.conftest import free_port

    port = port or free_port()
    hpo_cli = str(Path(sys.executable).parent / "hpo")
    proxy = subprocess.Popen(
        [hpo_cli, "proxy", "--storage", postgres_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proxy.poll() is None, proxy.communicate()[1]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "hpo proxy did not listen within 60 s"
                time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_workers_reach_postgres_through_hpo_proxy(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    with running_proxy(postgres_url) as url:
        remote = open_storage(url)
        create_study(parse_spec(spec_dict), remote)
        study, spec = load_study(remote, spec_dict["name"])
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        trial.report(0.5, 0)
        study.tell(trial, 0.75)
    direct = optuna.load_study(study_name=spec.name, storage=open_storage(postgres_url))
    [stored] = direct.trials
    assert stored.state == TrialState.COMPLETE and stored.value == 0.75
    assert stored.params == {"lr": lr} and stored.intermediate_values == {0: 0.5}
    assert direct.user_attrs[SPEC_ATTR]["name"] == spec.name


def test_a_silent_trial_is_failed_and_requeued_through_hpo_proxy_whatever_the_clocks(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    from hpo.store import HEARTBEAT_KEY

    requeued: list[int] = []
    with running_proxy(postgres_url) as url:
        worker = open_storage(url, heartbeat_interval_s=1, grace_period_s=2)
        sweeper = open_storage(
            url,
            heartbeat_interval_s=1,
            grace_period_s=2,
            stale_trial_callback=lambda study, trial: requeued.append(trial.number),
        )
        create_study(parse_spec(spec_dict), worker)
        study, _ = load_study(worker, spec_dict["name"])
        watcher, _ = load_study(sweeper, spec_dict["name"])
        alive, dead = study.ask(), study.ask()
        worker.record_heartbeat(dead._trial_id)  # beats once, then its worker dies
        started = time.monotonic()
        beat = 0
        while time.monotonic() - started < 4.5:
            # The live worker's clock is decades behind: only a changing beat counts.
            beat += 1
            worker.set_trial_system_attr(alive._trial_id, HEARTBEAT_KEY, float(beat))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(watcher)
            time.sleep(0.5)
        states = {t.number: t.state for t in watcher.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == TrialState.RUNNING
    assert requeued == [dead.number]


def test_workers_ride_out_a_restart_of_hpo_proxy(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    import threading

    from tests.hpo.conftest import free_port

    port = free_port()
    with running_proxy(postgres_url, port) as url:
        remote = open_storage(url, outage_timeout_s=60)
        create_study(parse_spec(spec_dict), remote)
        study, _ = load_study(remote, spec_dict["name"])
        study.tell(study.ask(), 0.5)
    # The proxy is down now; it comes back on the same port 2 s later.
    back = threading.Event()
    done = threading.Event()

    def restart() -> None:
        time.sleep(2)
        with running_proxy(postgres_url, port):
            back.set()
            done.wait(timeout=60)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        trial = study.ask()  # retried while the proxy is away
        assert back.is_set()
        study.tell(trial, 0.75)
        values = sorted(t.value for t in study.get_trials(deepcopy=False))
    finally:
        done.set()
        thread.join(timeout=60)
    assert values == [0.5, 0.75]


def test_a_trial_that_beat_after_the_sweep_listed_it_is_not_failed_through_hpo_proxy(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A sweep lists every running trial, then fails the stale ones one by one; an owner whose
    connection came back in between keeps its trial (review of the exactly-once change)."""
    from hpo.store._grpc import HeartbeatGrpcStorageProxy

    with running_proxy(postgres_url) as url:
        host, port = url.removeprefix("grpc://").split(":")
        sweeper = HeartbeatGrpcStorageProxy(
            host=host, port=int(port), heartbeat_interval_s=1, grace_period_s=1
        )
        create_study(parse_spec(spec_dict), open_storage(url))
        study, _ = load_study(open_storage(url), spec_dict["name"])
        back, dead = study.ask(), study.ask()
        study_id = sweeper.get_study_id_from_name(spec_dict["name"])
        assert sweeper._get_stale_trial_ids(study_id) == []  # first seen now
        time.sleep(1.5)
        assert sorted(sweeper._get_stale_trial_ids(study_id)) == sorted(
            [back._trial_id, dead._trial_id]
        )
        study._storage.record_heartbeat(back._trial_id)  # its owner is back
        assert not sweeper.fail_if_stale(back._trial_id, {"reason": "silent"})
        assert sweeper.fail_if_stale(dead._trial_id, {"reason": "silent"})
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {back.number: TrialState.RUNNING, dead.number: TrialState.FAIL}


def test_workers_through_hpo_proxy_and_workers_on_postgresql_do_not_share_a_study(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """Through ``hpo proxy`` a worker beats into a trial attribute; on ``postgresql://`` the
    sweepers judge the ``trial_heartbeats`` table: on one study each failed the others' live
    trials (review of the exactly-once change). The second kind refuses to start."""
    import pytest

    from hpo.worker.loop import Worker, WorkerError, WorkerOptions

    name = spec_dict["name"]
    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    Worker(WorkerOptions(storage_url=postgres_url, study_name=name))
    with running_proxy(postgres_url) as url, pytest.raises(WorkerError, match="hpo proxy"):
        Worker(WorkerOptions(storage_url=url, study_name=name))
