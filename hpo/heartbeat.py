"""Heartbeats for our own worker loop, failing of stale trials, and re-queueing of lost work.

Optuna beats and sweeps only inside ``study.optimize()``, and fails a stale trial only when some
worker next asks for one. Our workers run their own loop, so a background thread does both: it
records the current trial's heartbeat and, on every tick, fails any stale trial in the study,
so a dead worker's trial is re-queued within the grace period even if nobody asks meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from hpo.objective import FAIL_REASON_ATTR, FOLD_ATTR_PREFIX, RETRY_HISTORY_KEY
from hpo.store import REQUEUE_OF_KEY, error_summary

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRY = 3


def requeue(study: optuna.Study, trial: FrozenTrial, *, max_retry: int = DEFAULT_MAX_RETRY) -> bool:
    """Enqueue a WAITING copy of a lost trial: same params, its finished folds, retry history.

    Compatible with Optuna's ``RetryHeartbeatStaleTrialCallback``: the copy carries
    ``failed_trial`` (the first number of the chain) and ``retry_history`` system attrs.

    Returns:
        Whether a copy was enqueued (False once the chain has been retried ``max_retry`` times).
    """
    import optuna

    history = [*trial.system_attrs.get(RETRY_HISTORY_KEY, []), trial.number]
    if len(history) > max_retry:
        logger.warning(
            "trial %d was lost %d times; not re-queued again", trial.number, len(history)
        )
        return False
    copies = study.get_trials(deepcopy=False)
    if any(t.system_attrs.get(REQUEUE_OF_KEY) == trial._trial_id for t in copies):
        return False  # re-queued already (the store also refuses a second copy atomically)
    carried = {k: v for k, v in trial.user_attrs.items() if k.startswith(FOLD_ATTR_PREFIX)}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=carried,
            system_attrs={
                "failed_trial": history[0],
                RETRY_HISTORY_KEY: history,
                REQUEUE_OF_KEY: trial._trial_id,  # the store keeps one copy per failed trial
            },
        )
    )
    logger.info(
        "re-queued trial %d with the same params (%d finished folds carried over)",
        trial.number,
        len(carried),
    )
    return True


def sweep_stale(study: optuna.Study) -> list[int]:
    """Fail and re-queue the study's stale trials; returns the numbers this call failed.

    A trial is stale when its lease lapsed: silent for the grace period (see the store). Its
    failure is one guarded transition with its reason, so of several sweepers exactly one
    wins and only the winner re-queues it. Liveness is judged with evidence: a sweeper whose
    own store connection came back less than a grace period ago does not judge anyone (during
    an outage nobody could beat, and every live worker beats again within one heartbeat of
    its return), nor after an operation of its own was held up past a heartbeat interval (a
    stalled network raises nothing, but held everyone's beats up as long), and PostgreSQL
    judges no lease within a grace period of its own restart.
    """
    storage: Any = study._storage
    grace_s = storage.get_grace_period_s()
    reachable_for_s = getattr(storage, "reachable_for_s", lambda: float("inf"))
    if reachable_for_s() < grace_s:
        return []
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        if reachable_for_s() < grace_s:  # the listing itself was held up: no evidence now
            break
        if storage.fail_if_stale(trial_id, {FAIL_REASON_ATTR: "heartbeat stale"}):
            trial = storage.get_trial(trial_id)
            logger.warning("trial %d was silent for %.0f s: failed", trial.number, grace_s)
            requeue(study, trial)
            failed.append(trial.number)
    return failed


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
        try:
            self._study._storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        except Exception as e:  # a missed beat is retried next tick; the grace period covers it
            logger.warning("heartbeat for trial id %d failed: %s", trial_id, error_summary(e))

    def sweep(self) -> None:
        """Fail and re-queue stale trials now (see ``sweep_stale``)."""
        try:
            sweep_stale(self._study)
        except Exception as e:
            logger.warning("stale-trial sweep failed: %s", error_summary(e))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                trial_id = self._trial_id
            if trial_id is not None:
                self._beat(trial_id)
            self.sweep()
