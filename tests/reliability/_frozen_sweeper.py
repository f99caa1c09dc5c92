"""The two processes of the frozen-sweeper regression test (``test_regressions.py``):
``python -m tests.reliability._frozen_sweeper owner|sweeper DIR``.

Both reach a journal file through ``RetryingStorage`` and a stand-in network: while ``DIR/outage``
exists every store call waits ``ATTEMPT_S`` and raises ``ConnectionError``, as a connect into a
blackhole waits for its timeout. The owner holds one trial with a heartbeat and tells it after
``OWNER_S``; the sweeper only runs its heartbeat thread (which sweeps) for ``SWEEPER_S``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import optuna

from hpo.store._journal import HeartbeatJournalStorage
from hpo.store._retry import RetryingStorage
from hpo.worker.heartbeat import Heartbeat

INTERVAL_S, GRACE_S, ATTEMPT_S = 1, 3, 2.5
OWNER_S, SWEEPER_S = 16.0, 16.0


class _Network:
    """The journal store behind a network that is down while the flag file exists."""

    def __init__(self, journal: HeartbeatJournalStorage, flag: Path) -> None:
        self._backend = journal  # what RetryingStorage reaches our own operations through
        self._flag = flag

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._flag.exists():
                time.sleep(ATTEMPT_S)
                raise ConnectionError("store unreachable (a blackhole, emulated)")
            return attr(*args, **kwargs)

        return call


def journal(directory: Path) -> HeartbeatJournalStorage:
    return HeartbeatJournalStorage(
        str(directory / "journal.log"), heartbeat_interval_s=INTERVAL_S, grace_period_s=GRACE_S
    )


def open_study(directory: Path) -> optuna.Study:
    network = _Network(journal(directory), directory / "outage")
    storage = RetryingStorage(network, describe="store", max_delay_s=float(INTERVAL_S))  # type: ignore[arg-type]
    return optuna.load_study(study_name="s", storage=storage)


def main(role: str, directory: Path) -> None:
    study = open_study(directory)
    if role == "sweeper":
        with Heartbeat(study, INTERVAL_S):
            print("sweeping", flush=True)
            time.sleep(SWEEPER_S)
        return
    trial = study.ask()
    with Heartbeat(study, INTERVAL_S) as heartbeat:
        heartbeat.watch(trial._trial_id)
        print("asked", flush=True)
        time.sleep(OWNER_S)
        study.tell(trial, 1.0)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
