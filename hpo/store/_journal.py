"""Optuna's journal file store with heartbeats (Optuna gives them only to RDB stores), the
budget enforced, and guarded transitions.

Every process replays the same append-only log in the same order, so a state change on a trial
that is already finished is rejected for everyone, and raises ``UpdateFinishedTrialError`` in the
process that wrote it: of two sweepers failing one trial, one wins. What needs a check *and* a
write as one step (taking a budget slot, failing a stale trial with its reason, one re-queued
copy per failed trial) runs as a transaction: under the journal's file lock (made re-entrant in
this process), read the log to its end, check, append. That lock is an ``flock`` of our own
(``<journal>.flock``: the kernel releases it when its holder dies, and nobody breaks it on a
timer) around Optuna's symlink lock, taken by every write of our processes, so transactions
exclude each other across processes; a plain Optuna client takes only the symlink lock.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial, TrialState

from hpo.store._base import BUDGET_KEY, HEARTBEAT_KEY, NO_SLOT, REQUEUE_OF_KEY, SHIELD, NoSlotLeft
from hpo.store._heartbeat import AttrHeartbeat

logger = logging.getLogger(__name__)

LOCK_GRACE_S = 5
_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class _ReentrantLock(BaseJournalFileLock):
    """The journal's file lock, re-entrant for the thread of this process that holds it.

    Our processes first take an ``flock`` on ``<journal>.flock``, then Optuna's symlink lock
    (so plain Optuna clients are excluded too). The kernel releases an ``flock`` the moment its
    holder dies (kill -9), and a holder that is frozen or slow keeps it, so our processes never
    break each other's lock: Optuna breaks a symlink lock that made no progress for a grace
    period, which let a second writer in while a frozen holder still held it (its check and
    append were no longer one step) and then failed that holder's release. The symlink lock is
    broken only where its holder died or is a plain Optuna client; a holder whose lock was
    broken that way carries on (its append is one ``write``) with a warning.

    ``held_up`` is called when taking the lock, or taking and holding it, lasted ``slow_s``.
    """

    def __init__(
        self,
        inner: BaseJournalFileLock,
        flock_path: str,
        *,
        slow_s: float = math.inf,
        held_up: Callable[[], None] = lambda: None,
    ) -> None:
        self._inner = inner
        self._flock_path = flock_path
        self._slow_s = slow_s
        self._held_up = held_up
        self._threads = threading.RLock()
        self._depth = 0
        self._fd = -1
        self._asked_at = 0.0

    def acquire(self) -> bool:
        SHIELD.enter()  # a stop signal waits for the release (see StoreCallShield)
        try:
            self._threads.acquire()
        except BaseException:
            SHIELD.leave()
            raise
        try:
            if self._depth == 0:
                self._asked_at = time.monotonic()
                # Opened per acquire: a forked child never shares the parent's lock.
                fd = os.open(self._flock_path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    self._inner.acquire()
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
                if time.monotonic() - self._asked_at > self._slow_s:
                    self._held_up()
            self._depth += 1
        except BaseException:
            self._threads.release()
            SHIELD.leave()
            raise
        return True

    def release(self) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                fd, self._fd = self._fd, -1
                try:
                    self._inner.release()
                except RuntimeError:
                    logger.warning(
                        "the journal's lock file was removed while this process held it (a "
                        "plain Optuna client past its grace period?)"
                    )
                finally:
                    os.close(fd)  # releases the flock
                if time.monotonic() - self._asked_at > self._slow_s:
                    self._held_up()
        finally:
            self._threads.release()
            SHIELD.leave()


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
        # Optuna's symlink lock (so plain Optuna clients exclude us too) inside an flock of our
        # own (see _ReentrantLock); a symlink left by a writer killed mid-append is broken after
        # 5 s instead of Optuna's default 30 s.
        self._reachable_since = time.monotonic()
        self._file_lock = _ReentrantLock(
            JournalFileSymlinkLock(file_path, grace_period=LOCK_GRACE_S),
            file_path + ".flock",
            slow_s=heartbeat_interval_s,
            held_up=self._held_up,
        )
        super().__init__(JournalFileBackend(file_path, lock_obj=self._file_lock))
        self._thread_lock = threading.RLock()  # type: ignore[assignment]
        self.file_path = file_path

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._thread_lock = threading.RLock()  # type: ignore[assignment]

    def _sync_with_backend(self) -> None:
        """Optuna's replay of the file's new lines, with a stop signal held off until it ends:
        raised halfway, a line would count as read but never be applied, and this process's
        view (its trial ids among them) would differ from everyone's from then on."""
        with SHIELD.call():
            super()._sync_with_backend()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Check and append as one step: no other process appends in between."""
        with self._thread_lock:
            self._file_lock.acquire()
            try:
                self._sync_with_backend()
                yield
            finally:
                self._file_lock.release()

    def record_heartbeat(self, trial_id: int) -> None:
        """The beat's time is read once the file lock is held: a beat that queued behind a
        frozen or slow writer is as fresh as the moment it is written, not as old as the stall
        (a sweeper that got the lock first would have taken it for a silent owner)."""
        with self._thread_lock:
            self._file_lock.acquire()
            try:
                self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
            finally:
                self._file_lock.release()

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

    def _held_up(self) -> None:
        self._reachable_since = time.monotonic()

    def reachable_for_s(self) -> float:
        """Seconds since a write of this process last waited for (or held) the file lock past a
        heartbeat interval: every other process's beats waited as long, so a sweeper judges no
        lease until a grace period has passed without such a wait (see ``hpo.worker.heartbeat``)."""
        return time.monotonic() - self._reachable_since

    def fail_if_stale(self, trial_id: int, user_attrs: dict[str, Any]) -> bool:
        """Fail ``trial_id`` if it is still running and silent past the grace period, with
        ``user_attrs`` written first. True only for the call that failed it; never when taking
        the lock held this call up (the owner's beats were held up too)."""
        with self._transaction():
            if self.reachable_for_s() < self._grace_period_s:
                return False
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
