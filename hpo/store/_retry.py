"""A store wrapper that rides out database outages: retry with backoff, one log line each way.

PostgreSQL restarts, failovers and terminated connections surface as SQLAlchemy / psycopg2
connection errors. Every store operation is retried on those until ``outage_timeout_s``; any
other error passes through at once.

A server at its connection limit (``max_connections``) refuses new connections with "too many
clients"; Optuna reports that as "invalid data in the commit". We name it for what it is, retry
it with jittered backoff (hundreds of workers must not retry in lockstep), log it only when it
lasts, and say which setting to change when it outlasts the outage timeout.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from hpo.errors import StorageError
from hpo.store._base import (
    DEFAULT_OUTAGE_TIMEOUT_S,
    FINISH_KEY,
    SHIELD,
    begin_request,
    connection_limit_message,
    current_request,
    end_request,
    error_summary,
    is_connection_limit,
    is_transient,
    mark_retried,
    request_scope,
)

logger = logging.getLogger(__name__)

_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 15.0
# Refusals at the connection limit clear as soon as any worker finishes its operation (a few
# milliseconds), so they are retried sooner and more often, and logged only if they last.
_FIRST_REFUSED_DELAY_S = 0.1
_MAX_REFUSED_DELAY_S = 2.0
_QUIET_REFUSED_S = 30.0


def _sleep_unless_stopping(delay_s: float) -> None:
    """Sleep between retries; a stop request (``SHIELD.stopping``) ends the wait early."""
    SHIELD.stopping.wait(delay_s)


class RetryStats:
    """What this process's retries hid: refused connections and outages, and their wait."""

    def __init__(self) -> None:
        self.refused = 0
        self.outage_errors = 0
        self.waited_s = 0.0


RETRIES = RetryStats()


class Backoff:
    """Retry state of one operation: jittered exponential delays, one log line each way.

    Call ``failed(e)`` for each transient error (it sleeps, or raises ``StorageError`` once
    the errors have lasted ``timeout_s``) and ``succeeded()`` after the operation worked.
    """

    def __init__(
        self,
        describe: str,
        *,
        timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
        max_delay_s: float = _MAX_DELAY_S,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.describe = describe
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.started: float | None = None
        self._sleep = sleep or _sleep_unless_stopping
        self._delay_s = 0.0
        self._warned = False

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        refused = is_connection_limit(error)
        if self.started is None:
            self.started = now
            self._delay_s = _FIRST_REFUSED_DELAY_S if refused else _FIRST_DELAY_S
        down_s = now - self.started
        if refused:
            RETRIES.refused += 1
        else:
            RETRIES.outage_errors += 1
        if SHIELD.stopping.is_set():
            raise StorageError(
                f"{self.describe} unreachable ({error_summary(error)}); not retrying: "
                "this process is stopping"
            ) from None
        if down_s > self.timeout_s:
            if refused:
                raise StorageError(connection_limit_message(self.describe, down_s)) from None
            raise StorageError(
                f"{self.describe} unreachable for {down_s:.0f} s: {error_summary(error)}"
            ) from None
        if not self._warned and (not refused or down_s >= min(_QUIET_REFUSED_S, self.timeout_s)):
            self._warned = True
            if refused:
                logger.warning(
                    "%s refuses connections: the database is at its connection limit "
                    "(max_connections); retrying for up to %.0f s",
                    self.describe,
                    self.timeout_s,
                )
            else:
                logger.warning(
                    "%s unreachable (%s); retrying for up to %.0f s",
                    self.describe,
                    error_summary(error),
                    self.timeout_s,
                )
        # Jitter: workers refused together must not come back together.
        # Never past max_delay_s: a live worker must retry within a heartbeat of the store's
        # return, connection limit or not (one attempt can take longer: a connect timeout; hence
        # sweepers wait a whole grace period after a break, see hpo.worker.heartbeat).
        ceiling = min(_MAX_REFUSED_DELAY_S, self.max_delay_s) if refused else self.max_delay_s
        delay_s = min(self._delay_s * random.uniform(0.5, 1.5), ceiling)
        RETRIES.waited_s += delay_s
        self._sleep(delay_s)
        self._delay_s = min(self._delay_s * 2, ceiling)

    def succeeded(self) -> None:
        if self.started is None:
            return
        elapsed_s = time.monotonic() - self.started
        if self._warned:
            logger.warning("%s reachable again after %.1f s", self.describe, elapsed_s)
        else:
            logger.debug(
                "%s: connection accepted after %.2f s of refusals", self.describe, elapsed_s
            )


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Delegates every operation to ``inner``, retrying transient connection errors.

    Every attempt of one operation carries the same request id (``request_scope``), and every
    operation that is not idempotent by itself records it with what it wrote (PostgreSQL), so a
    retry after a lost reply finds its own work: the trial it created or popped, the state
    change it made. A trial found finished by *another* request is another's win
    (``UpdateFinishedTrialError``), never counted as ours. Attribute and report writes are
    idempotent (same key, same value).

    ``reachable_for_s()`` says how long the store has answered without a break (no error, no
    operation stalled longer than ``max_delay_s``): a sweeper judges other workers' leases
    only after a full grace period of it (see ``hpo.worker.heartbeat.sweep_stale``).
    """

    def __init__(
        self,
        inner: BaseStorage,
        *,
        outage_timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
        describe: str = "store",
        max_delay_s: float = _MAX_DELAY_S,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._inner = inner
        self._max_delay_s = max_delay_s
        self._outage_timeout_s = outage_timeout_s
        self._describe = describe
        self._sleep = sleep
        self._lock = threading.RLock()
        self._reachable_since = time.monotonic()
        self._asked = self._reachable_since

    def reachable_for_s(self) -> float:
        """Seconds since this store last recovered from an outage (or was opened)."""
        return time.monotonic() - self._reachable_since

    @property
    def inner(self) -> BaseStorage:
        return self._inner

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # One operation at a time per process (main loop and heartbeat thread alike): with an
        # unpooled engine, that caps a worker at one database connection.
        # Plain try/finally rather than three context managers: this runs on every store call.
        SHIELD.enter()
        try:
            asked = time.monotonic()  # a wait for the other thread's operation is a stall too
            with self._lock:
                self._asked = asked
                began = begin_request()
                try:
                    return self._call_unlocked(name, *args, **kwargs)
                finally:
                    end_request(began)
                    # Optuna's RDB store can leave its session (and so a connection) open
                    # between operations; closing it here means none is held while we train.
                    self._release_session()
        finally:
            SHIELD.leave()

    def _release_session(self) -> None:
        # Optuna's _CachedStorage does not pass remove_session on to the RDBStorage inside.
        store = getattr(self._inner, "_backend", self._inner)
        try:
            store.remove_session()
        except Exception as e:  # a dead connection cannot be closed cleanly; it is gone anyway
            logger.debug("closing the store session failed: %s", error_summary(e))

    def _call_unlocked(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # Our own operations (not Optuna's API) live on the store under Optuna's trial cache.
        target = self._inner if hasattr(self._inner, name) else self._store()
        method = getattr(target, name)
        backoff = Backoff(
            self._describe,
            timeout_s=self._outage_timeout_s,
            max_delay_s=self._max_delay_s,
            sleep=self._sleep,
        )
        try:
            while True:
                try:
                    result = method(*args, **kwargs)
                except optuna.exceptions.UpdateFinishedTrialError:
                    if backoff.started is not None and name == "set_trial_state_values":
                        trial = self._call_unlocked("get_trial", args[0])  # retried too
                        state = kwargs["state"] if "state" in kwargs else args[1]
                        if _finished_by_us(trial, state):
                            backoff.succeeded()
                            return True  # our own write committed before its reply was lost
                    raise
                except Exception as e:
                    if not is_transient(e):
                        raise
                    mark_retried()
                    backoff.failed(e)
                    continue
                backoff.succeeded()
                return result
        finally:
            self._after(backoff)

    def _after(self, backoff: Backoff) -> None:
        """After an operation, however it ended (an answer, or an error such as ``NoSlotLeft``
        that came after riding out an outage): an outage (errors), or a stall (a partition
        answers nothing, so an operation just hangs until it heals; or the wait for this
        process's other thread's operation), restarts the reachability clock."""
        now = time.monotonic()
        if backoff.started is not None or now - self._asked > self._max_delay_s:
            self._reachable_since = now

    # Heartbeat support follows the inner store's.
    def record_heartbeat(self, trial_id: int) -> None:
        self._call("record_heartbeat", trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return list(self._call("_get_stale_trial_ids", study_id))

    def fail_if_stale(self, trial_id: int, user_attrs: dict[str, Any]) -> bool:
        """The inner store's guarded stale-trial failure; after a lost reply, True only if the
        failure found is this request's."""
        if not hasattr(self._store(), "fail_if_stale"):  # SQLite: Optuna's own guarded FAIL
            with self._lock:
                try:
                    for key, value in user_attrs.items():
                        self._call("set_trial_user_attr", trial_id, key, value)
                    return bool(self._call("set_trial_state_values", trial_id, TrialState.FAIL))
                except optuna.exceptions.UpdateFinishedTrialError:
                    return False
        with self._lock, request_scope() as request:
            if self._call("fail_if_stale", trial_id, user_attrs):
                return True
            # Lost: another sweeper (or the owner) was first, or our own first attempt committed
            # and its reply was lost (then the failure carries our request id).
            trial = self._call("get_trial", trial_id)
            return bool(trial.system_attrs.get(FINISH_KEY) == request)

    def heartbeat_place(self) -> str:
        """Where this store's heartbeats go and are judged from: PostgreSQL and SQLite judge the
        ``trial_heartbeats`` table, the journal file and ``hpo proxy`` clients a trial system
        attribute. Workers of one study must agree, or each fails the others' live trials."""
        from optuna.storages import RDBStorage

        return "table" if isinstance(self._store(), RDBStorage) else "attribute"

    def _store(self) -> Any:
        """The store itself, under Optuna's trial cache if there is one."""
        return getattr(self._inner, "_backend", self._inner)

    def get_grace_period_s(self) -> float:
        inner = self._store()
        if hasattr(inner, "get_grace_period_s"):
            return float(inner.get_grace_period_s())
        return float(inner.grace_period or 2 * inner.heartbeat_interval)  # SQLite: RDBStorage

    def get_heartbeat_interval(self) -> int | None:
        if not isinstance(self._inner, BaseHeartbeat):
            return None
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
        if not isinstance(self._inner, BaseHeartbeat):
            return None
        return self._inner.get_heartbeat_stale_trial_callback()

    def remove_session(self) -> None:
        self._inner.remove_session()


def _finished_by_us(trial: optuna.trial.FrozenTrial, state: TrialState) -> bool:
    """Whether the finished ``trial`` got there by this request's own state change, whose reply
    was lost. COMPLETE and PRUNED are told only by the trial's owner (a sweeper only fails, and
    the owner's later writes are refused once it has), so finding the state asked for means the
    first attempt committed. A FAIL may be the owner's or a sweeper's: the store records which
    request made it."""
    if state in (TrialState.COMPLETE, TrialState.PRUNED):
        return trial.state == state
    return bool(trial.system_attrs.get(FINISH_KEY) == current_request())


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``{name}`` of the inner store, retried on connection errors."
    return method


_CONCRETE_READS = [
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_n_trials",
    "get_best_trial",
    "check_trial_is_updatable",
]
for _name in [*sorted(BaseStorage.__abstractmethods__), *_CONCRETE_READS]:
    setattr(RetryingStorage, _name, _delegate(_name))
abc.update_abstractmethods(RetryingStorage)  # type: ignore[type-abstract]
