"""Optuna's gRPC storage proxy client with heartbeats, which Optuna gives only to RDB stores.

Workers behind ``hpo proxy`` may run on many hosts whose clocks need not agree, so staleness is
judged on the observer's own clock: a heartbeat is a value that changes with every beat, and a
running trial is stale once its value has not changed for ``grace_period_s`` while this process
watched. A sweeper therefore needs one grace period of watching before it can fail anything,
and never fails a trial because of clock skew.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from hpo.store._base import HEARTBEAT_KEY
from hpo.store._heartbeat import AttrHeartbeat


class HeartbeatGrpcStorageProxy(GrpcStorageProxy, AttrHeartbeat):
    """``GrpcStorageProxy`` implementing Optuna's ``BaseHeartbeat`` through a system attribute.

    ``optuna.storages.fail_stale_trials`` and stale-trial callbacks work on it unchanged.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval_s: int,
        grace_period_s: int,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        self._init_heartbeat(heartbeat_interval_s, grace_period_s, stale_callback)
        super().__init__(host=host, port=port)
        # trial id -> (last heartbeat value seen, this process's monotonic time it was first seen)
        self._seen: dict[int, tuple[object, float]] = {}
        self._seen_lock = threading.Lock()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.monotonic()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        stale = []
        with self._seen_lock:
            watched = {}
            for trial in running:
                beat = trial.system_attrs.get(HEARTBEAT_KEY)
                if beat is None:  # like Optuna's RDB store: a trial that never beat is not judged
                    continue
                last = self._seen.get(trial._trial_id)
                if last is None or last[0] != beat:
                    last = (beat, now)
                watched[trial._trial_id] = last
                if now - last[1] > self._grace_period_s:
                    stale.append(trial._trial_id)
            self._seen = watched  # finished trials are forgotten
        return stale
