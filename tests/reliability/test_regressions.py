"""Regression tests for bugs the fault harness (``tests.reliability.harness``) found, each
named for what a user relies on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from hpo.spec import parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from hpo.worker import Worker, WorkerOptions
from tests.reliability.faultproxy import FaultProxy


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[FaultProxy]:
    parts = urlsplit(postgres_url)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as p:
        yield p


@pytest.mark.postgres
def test_a_worker_started_while_the_database_is_unreachable_waits_for_it(
    proxy: FaultProxy, postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A worker (re)started during an outage exited 1 ("cannot open storage"): under `hpo
    launch` a short database restart used up its restarts; now it rides the outage out."""
    spec_dict["train"] = {"precision": "fp32"}
    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    proxy.refuse()
    threading.Timer(2.0, proxy.admit).start()
    started = time.monotonic()
    worker = Worker(
        WorkerOptions(
            storage_url=proxy.url_for(postgres_url), study_name=spec_dict["name"], device="cpu"
        )
    )
    assert time.monotonic() - started >= 1.5
    assert worker.spec.name == spec_dict["name"]


def test_an_operation_answered_late_counts_as_a_break_in_reachability() -> None:
    """A stalled network raises nothing; the late answer itself is the evidence."""
    import optuna

    from hpo.store import RetryingStorage

    class Stalled(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            time.sleep(0.3)
            return []

    storage = RetryingStorage(Stalled(), slow_s=0.2)  # type: ignore[abstract]
    time.sleep(0.3)
    assert storage.reachable_for_s() >= 0.3
    storage.get_all_studies()
    assert storage.reachable_for_s() < 0.1


@pytest.mark.postgres
def test_a_sweeper_held_up_by_a_stalled_network_fails_no_live_trial_when_it_is_back(
    proxy: FaultProxy, postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A blackhole raises nothing: a sweep stalled through one came back and at once failed
    the trials whose heartbeats had been stalled with it (found by the harness, seed 2)."""
    from optuna.trial import TrialState

    from hpo.heartbeat import sweep_stale
    from hpo.study import load_study

    leases = {"heartbeat_interval_s": 1, "grace_period_s": 2}
    direct = open_storage(postgres_url, **leases)
    create_study(parse_spec(spec_dict), direct)
    owner, _ = load_study(direct, spec_dict["name"])
    sweeper, _ = load_study(open_storage(proxy.url_for(postgres_url), **leases), spec_dict["name"])
    trial = owner.ask()
    time.sleep(2.5)  # the sweeper's store has answered for a grace period
    direct.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    proxy.blackhole()  # from here on the owner's beats are stalled too: it sends none
    swept: list[int] = []
    sweep = threading.Thread(target=lambda: swept.extend(sweep_stale(sweeper)))
    sweep.start()
    time.sleep(3.5)
    proxy.heal()
    sweep.join(15)
    assert not sweep.is_alive()
    assert swept == []
    assert direct.get_trial(trial._trial_id).state == TrialState.RUNNING
