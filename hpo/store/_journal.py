"""Optuna's journal file store with heartbeats (Optuna gives them only to RDB stores), the
budget enforced, and guarded transitions.

Every process replays the same append-only log in the same order, so a state change on a trial
that is already finished is rejected for everyone, and raises ``UpdateFinishedTrialError`` in the
process that wrote it: of two sweepers failing one trial, one wins. What needs a check *and* a
write as one step (taking a budget slot, failing a stale trial with its reason, one re-queued
copy per failed trial) runs as a transaction: under an exclusive ``flock`` on a side file
(``<journal>.hpo-tx``; the kernel releases it when its holder dies, and nobody breaks it on a
timer, unlike the journal's own symlink lock), read the log to its end, check, append. Every
operation that starts or re-queues a trial is such a transaction, so they exclude each other
across processes; a plain Optuna client writing the same file is not excluded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from hpo.store._base import BUDGET_KEY, HEARTBEAT_KEY, NO_SLOT, REQUEUE_OF_KEY, NoSlotLeft
from hpo.store._heartbeat import AttrHeartbeat

LOCK_GRACE_S = 5
_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class HeartbeatJournalStorage(JournalStorage, AttrHeartbeat):
    """A journal file store whose running trials record a heartbeat as a system attribute.

    It implements Optuna's ``BaseHeartbeat``. A heartbeat is the wall-clock time of the writing
    host; the journal file lives on one host, so clocks agree.
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
        # Optuna's symlink lock around each append (so plain Optuna clients exclude us too), but
        # a lock left by a writer killed mid-append is broken after 5 s instead of 30 s.
        lock = JournalFileSymlinkLock(file_path, grace_period=LOCK_GRACE_S)
        super().__init__(JournalFileBackend(file_path, lock_obj=lock))
        self._thread_lock = threading.RLock()  # type: ignore[assignment]
        self.file_path = file_path

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._thread_lock = threading.RLock()  # type: ignore[assignment]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Check and append as one step: no other transaction, in any process, in between."""
        import fcntl

        with self._thread_lock, open(self.file_path + ".hpo-tx", "a") as side:
            fcntl.flock(side, fcntl.LOCK_EX)
            try:
                self._sync_with_backend()
                yield
            finally:
                fcntl.flock(side, fcntl.LOCK_UN)

    def _check_budget(self, study_id: int) -> None:
        budget = self._replay_result.get_study(study_id).system_attrs.get(BUDGET_KEY)
        if budget is None:
            return
        trials = self._replay_result.get_all_trials(study_id, states=_TAKEN)
        if len(trials) >= int(budget):
            raise NoSlotLeft(f"study {study_id}: {NO_SLOT}")

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._transaction():
            if template_trial is None:
                self._check_budget(study_id)
            elif REQUEUE_OF_KEY in template_trial.system_attrs:
                failed = template_trial.system_attrs[REQUEUE_OF_KEY]
                for trial in self._replay_result.get_all_trials(study_id, states=None):
                    if trial.system_attrs.get(REQUEUE_OF_KEY) == failed:
                        return trial._trial_id  # one copy per failed trial
            return super().create_new_trial(study_id, template_trial)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with self._transaction():  # popping a waiting trial takes a budget slot
            trial = self._replay_result._trials.get(trial_id)
            if trial is not None and trial.state == TrialState.WAITING:
                self._check_budget(self._replay_result._trial_id_to_study_id[trial_id])
            return super().set_trial_state_values(trial_id, state, values)

    def fail_if_stale(self, trial_id: int, user_attrs: dict[str, Any]) -> bool:
        """Fail ``trial_id`` if it is still running and silent past the grace period, with
        ``user_attrs`` written first. True only for the call that failed it."""
        with self._transaction():
            trial = self._replay_result._trials.get(trial_id)
            if trial is None or trial.state != TrialState.RUNNING or not self._silent(trial):
                return False
            for key, value in user_attrs.items():
                self.set_trial_user_attr(trial_id, key, value)
            return super().set_trial_state_values(trial_id, TrialState.FAIL)

    def _silent(self, trial: FrozenTrial) -> bool:
        """Silent past the grace period: since its last beat, or its start if it never beat (a
        worker killed between taking a trial and its first beat is not hidden). A re-queued
        trial may carry its predecessor's last beat: count from its own start."""
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        beat = float(trial.system_attrs.get(HEARTBEAT_KEY, started))
        return time.time() - max(beat, started) > self._grace_period_s

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [trial._trial_id for trial in running if self._silent(trial)]
