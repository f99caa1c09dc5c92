"""Optuna's journal file store with heartbeats, which Optuna itself gives only to RDB stores."""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from hpo.store._base import HEARTBEAT_KEY
from hpo.store._heartbeat import AttrHeartbeat

LOCK_GRACE_S = 5


class HeartbeatJournalStorage(JournalStorage, AttrHeartbeat):
    """A journal file store whose running trials record a heartbeat as a system attribute.

    It implements Optuna's ``BaseHeartbeat``, so ``optuna.storages.fail_stale_trials`` and
    ``RetryHeartbeatStaleTrialCallback`` work on it unchanged. A heartbeat is the wall-clock
    time of the writing host; the journal file lives on one host, so clocks agree.
    """

    def __init__(
        self,
        file_path: str,
        *,
        heartbeat_interval_s: int,
        grace_period_s: int,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        self._init_heartbeat(heartbeat_interval_s, grace_period_s, stale_callback)
        # Optuna's symlink lock (so plain Optuna clients exclude us too), but a lock left by a
        # writer killed mid-append is broken after 5 s instead of Optuna's default 30 s.
        lock = JournalFileSymlinkLock(file_path, grace_period=LOCK_GRACE_S)
        super().__init__(JournalFileBackend(file_path, lock_obj=lock))
        self.file_path = file_path

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_KEY)
            # Like Optuna's RDB store: a trial that never beat is not judged (no heartbeat on).
            if beat is None:
                continue
            # A re-queued trial may carry its predecessor's last beat: count from its own start.
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            if now - max(float(beat), started) > self._grace_period_s:
                stale.append(trial._trial_id)
        return stale
