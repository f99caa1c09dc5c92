"""An outage everyone saw is no reason to fail anyone's trial: after the database comes back,
the first worker to reconnect does not fail the others' live trials."""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study, load_study
from hpo.worker.heartbeat import Heartbeat
from tests.reliability.faultproxy import FaultProxy

BEAT_S, GRACE_S = 1, 3


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_a_ten_second_outage_fails_no_live_trial(
    postgres_url: str, spec_dict: dict[str, Any], fault: str
) -> None:
    """Three workers' trials, beat 1 s, grace 3 s, the database unreachable for 10 s (before:
    2 of 3 live trials were failed and re-queued by whoever came back first)."""
    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    host, port = "127.0.0.1", int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy((host, port)) as proxy:
        url = proxy.url_for(postgres_url)
        workers = []
        for _ in range(3):
            storage = open_storage(
                url, heartbeat_interval_s=BEAT_S, grace_period_s=GRACE_S, outage_timeout_s=60
            )
            study, _ = load_study(storage, spec_dict["name"])
            trial = study.ask()
            beat = Heartbeat(study, BEAT_S).__enter__()
            beat.watch(trial._trial_id)
            workers.append((study, trial, beat))
        try:
            time.sleep(GRACE_S + 1)  # every worker has been up a grace period: sweeps are on
            getattr(proxy, fault)()
            time.sleep(10)
            proxy.admit() if fault == "refuse" else proxy.heal()
            time.sleep(3 * GRACE_S)  # long enough for a wrongful sweep to happen
        finally:
            for _, _, beat in workers:
                beat.__exit__(None, None, None)
    plain = optuna.storages.RDBStorage(
        postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    )
    trials = optuna.load_study(study_name=spec_dict["name"], storage=plain).trials
    assert [t.state for t in trials] == [TrialState.RUNNING] * 3, [
        (t.number, t.state, records.fail_reason(t)) for t in trials
    ]
