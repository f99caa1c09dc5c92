"""Heartbeats for our own worker loop, failing of stale trials, and re-queueing of lost work.

Optuna beats and sweeps only inside ``study.optimize()``, and fails a stale trial only when some
worker next asks for one. Our workers run their own loop, so a background thread does both: it
records the current trial's heartbeat and, on every tick, fails any stale trial in the study,
so a dead worker's trial is re-queued within the grace period even if nobody asks meanwhile.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpo import records
from hpo.store import error_summary

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRY = 3
STALE_REASON = "heartbeat stale"
INTERRUPTED_REASON = "interrupted"
# Failures that lose a lease: the trial itself was fine, so it is re-queued.
LEASE_LOST_REASONS = (STALE_REASON, INTERRUPTED_REASON)


def requeue(study: optuna.Study, trial: FrozenTrial, *, max_retry: int = DEFAULT_MAX_RETRY) -> bool:
    """Enqueue a WAITING copy of a lost trial: same params, its finished folds, retry history.

    Compatible with Optuna's ``RetryHeartbeatStaleTrialCallback``: the copy carries
    ``failed_trial`` (the first number of the chain) and ``retry_history`` system attrs.

    Returns:
        Whether a copy was enqueued (False once the chain has been retried ``max_retry`` times).
    """
    import optuna

    chain = records.retry_attrs(trial)
    history = chain[records.RETRY_HISTORY]
    if len(history) > max_retry:
        logger.warning(
            "trial %d was lost %d times; not re-queued again", trial.number, len(history)
        )
        return False
    copies = study.get_trials(deepcopy=False)
    if any(t.system_attrs.get(records.REQUEUE_OF_KEY) == trial._trial_id for t in copies):
        return False  # re-queued already (the store also refuses a second copy atomically)
    carried = records.fold_attrs(trial.user_attrs)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=carried,
            system_attrs=chain,  # the store keeps one copy per failed trial
        )
    )
    logger.info(
        "re-queued trial %d with the same params (%d finished folds carried over)",
        trial.number,
        len(carried),
    )
    return True


def sweep_stale(
    study: optuna.Study,
    *,
    suspects: dict[int, float] | None = None,
    confirm_s: float = 0.0,
    between: Callable[[], None] | None = None,
    awake_for_s: Callable[[], float] | None = None,
) -> list[int]:
    """Fail and re-queue the study's stale trials; returns the numbers this call failed.

    A trial is stale when its lease lapsed: silent for the grace period (see the store). Its
    failure is one guarded transition with its reason, so of several sweepers exactly one
    wins and only the winner re-queues it. Liveness is judged with evidence: a sweeper whose
    own store connection came back less than a grace period ago does not judge anyone (during
    an outage nobody could beat, and every live worker beats again within one heartbeat of
    its return), nor after an operation of its own was held up past a heartbeat interval (a
    stalled network raises nothing, but held everyone's beats up as long), and PostgreSQL
    judges no lease within a grace period of its own restart.

    A grace period, not less: the retry delay is capped at a heartbeat, but one attempt is not
    (a SYN resent after 1, 3 and 7 s on a network that drops packets, a 10 s connect timeout),
    so a live owner may be back seconds after a lucky sweeper. The price: on a store that never
    stays up for a grace period, a dead worker's trial waits until it does (the soak's seed 3006
    held three such trials for 4.5 minutes of a store up only in short windows).

    With ``suspects`` (kept by the caller between sweeps), a trial found stale is failed only
    when it is still stale ``confirm_s`` after a sweep first found it: a beat that queued behind
    a stall the sweeper did not itself wait for (a frozen journal writer, a slow store) lands
    within one heartbeat of the stall's end, and clears it.

    ``awake_for_s`` says how long this process has run without a freeze (see ``Heartbeat``): a
    process stopped (SIGSTOP, a paused VM) through an outage makes no store call in it, so its
    store's clock saw no break; it judges no one until it has been awake a grace period.

    ``between`` is called after each trial this sweep failed and re-queued (four store calls or
    more): the sweeper's own heartbeat thread beats there when it is due, so a sweep of many
    stale trials does not silence its own trial.
    """
    repair_requeues(study)  # no liveness judged: those trials are failed already
    storage: Any = study._storage
    grace_s = storage.get_grace_period_s()
    store_reachable_for_s = getattr(storage, "reachable_for_s", lambda: float("inf"))
    awake = awake_for_s or (lambda: float("inf"))

    def reachable_for_s() -> float:
        return float(min(store_reachable_for_s(), awake()))

    if reachable_for_s() < grace_s:
        if suspects is not None:
            suspects.clear()  # found before the break: judge them afresh, a heartbeat apart
        return []
    failed = []
    stale = list(storage._get_stale_trial_ids(study._study_id))
    if suspects is not None:
        now = time.monotonic()
        for trial_id in set(suspects) - set(stale):
            del suspects[trial_id]  # it beat again: alive
        stale = [t for t in stale if now - suspects.setdefault(t, now) >= confirm_s]
    for trial_id in stale:
        if reachable_for_s() < grace_s:  # the listing itself was held up: no evidence now
            break
        if storage.fail_if_stale(trial_id, {records.FAIL_REASON: STALE_REASON}):
            trial = storage.get_trial(trial_id)
            logger.warning("trial %d was silent for %.0f s: failed", trial.number, grace_s)
            requeue(study, trial)
            failed.append(trial.number)
            if between is not None:
                between()
    return failed


def repair_requeues(study: optuna.Study, *, max_retry: int = DEFAULT_MAX_RETRY) -> int:
    """Re-queue the lost trials that were failed but never copied; returns how many.

    A lease's FAIL and its copy are two writes: a sweeper killed between them, or a worker's
    second SIGTERM, leaves a FAIL that no later sweep would copy (its FAIL is not stale any
    more). The store keeps one copy per failed trial, so two repairs make one copy.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    copied = {t.system_attrs.get(records.REQUEUE_OF_KEY) for t in trials}
    repaired = 0
    for t in trials:
        if (
            t.state == TrialState.FAIL
            and records.fail_reason(t) in LEASE_LOST_REASONS
            and t._trial_id not in copied
            and len(records.retry_history(t)) < max_retry
        ):
            repaired += requeue(study, t, max_retry=max_retry)
    return repaired


class Heartbeat:
    """A daemon thread that beats for the current trial and sweeps stale trials.

    Use ``watch(trial_id)`` when a trial starts and ``watch(None)`` when it ends.
    """

    def __init__(self, study: optuna.Study, interval_s: float) -> None:
        self._study = study
        self._interval_s = interval_s
        self._trial_id: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
        self._sweeping = threading.Lock()  # one sweep at a time (main loop and this thread)
        self._suspects: dict[int, float] = {}
        self._beaten_at = 0.0
        # Freeze detection, on a clock that also runs while the machine sleeps: when the
        # thread began its wait for the next tick (None while it beats and sweeps), and when
        # this process last came back from a freeze.
        self._waiting_since: float | None = _awake_clock()
        self._awake_since = -math.inf

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 5)

    def watch(self, trial_id: int | None) -> None:
        with self._lock:
            self._trial_id = trial_id
        if trial_id is not None:
            self._beat(trial_id)

    def _beat(self, trial_id: int) -> None:
        import optuna

        self._beaten_at = time.monotonic()
        try:
            self._study._storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        except optuna.exceptions.UpdateFinishedTrialError:
            # Failed elsewhere (our lease lapsed): beat no more for it. The main thread learns
            # it at its next write and says so in one line (``Worker._lost``).
            with self._lock:
                if self._trial_id == trial_id:
                    self._trial_id = None
        except Exception as e:  # a missed beat is retried next tick; the grace period covers it
            logger.warning("heartbeat for trial id %d failed: %s", trial_id, error_summary(e))

    def _check_awake(self) -> None:
        """A tick two intervals overdue means this process was frozen (SIGSTOP, a paused or
        suspended VM) or its thread starved: it may have slept through an outage every worker
        saw, so it judges no lease for a grace period from now (review of the exactly-once
        change: a sweeper stopped through a blackhole woke and failed a live trial whose
        owner's retry was still in flight)."""
        waiting_since = self._waiting_since
        now = _awake_clock()
        if waiting_since is not None and now - waiting_since > 2 * self._interval_s:
            if now - self._awake_since > self._interval_s:
                logger.info(
                    "this worker was frozen for %.0f s: judging no lease for a grace period",
                    now - waiting_since - self._interval_s,
                )
            self._awake_since = now

    def _beat_if_due(self) -> None:
        """Beat for the current trial if the last beat was half an interval ago or more."""
        with self._lock:
            trial_id = self._trial_id
        if trial_id is not None and time.monotonic() - self._beaten_at >= self._interval_s / 2:
            self._beat(trial_id)

    def sweep(self) -> None:
        """Fail and re-queue trials found stale on two sweeps a heartbeat apart (see
        ``sweep_stale``); skipped while another thread of this worker sweeps."""
        self._check_awake()
        if not self._sweeping.acquire(blocking=False):
            return
        try:
            sweep_stale(
                self._study,
                suspects=self._suspects,
                confirm_s=self._interval_s,
                between=self._beat_if_due,
                awake_for_s=lambda: _awake_clock() - self._awake_since,
            )
        except Exception as e:
            logger.warning("stale-trial sweep failed: %s", error_summary(e))
        finally:
            self._sweeping.release()

    def _run(self) -> None:
        while True:
            self._waiting_since = _awake_clock()
            if self._stop.wait(self._interval_s):
                return
            self._check_awake()
            self._waiting_since = None
            with self._lock:
                trial_id = self._trial_id
            if trial_id is not None:
                self._beat(trial_id)
            self.sweep()
            # A sweep held up (a re-queue waiting for the study's lock, which a frozen worker may
            # hold until the server ends its session) is followed by a beat now, or our own
            # silence would reach a grace period plus an interval.
            self._beat_if_due()


def _awake_clock() -> float:
    """Seconds on a clock that runs on while the process is stopped or the machine suspended
    (``CLOCK_BOOTTIME`` where there is one; ``time.monotonic()`` stops during suspend)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()
