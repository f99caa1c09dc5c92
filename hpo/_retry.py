"""A store wrapper that rides out database outages: retry with backoff, one log line each way.

PostgreSQL restarts, failovers and terminated connections surface as SQLAlchemy / psycopg2
connection errors. Every store operation is retried on those until ``outage_timeout_s``; any
other error passes through at once.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from hpo.errors import StorageError
from hpo.storage import error_summary

logger = logging.getLogger(__name__)

DEFAULT_OUTAGE_TIMEOUT_S = 300.0
_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 15.0


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or anything in its chain) is a lost or refused database connection."""
    import sqlalchemy.exc

    transient: tuple[type[BaseException], ...] = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.DisconnectionError,
        ConnectionError,
    )
    try:
        import psycopg2

        transient += (psycopg2.OperationalError, psycopg2.InterfaceError)
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        pass
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, transient):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """Delegates every operation to ``inner``, retrying transient connection errors.

    Retried writes are idempotent in Optuna's stores (same key, same value), except a state
    change that did commit before the connection dropped: its retry finds the trial already
    finished in the requested state, which counts as success.
    """

    def __init__(
        self,
        inner: BaseStorage,
        *,
        outage_timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
        describe: str = "store",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._inner = inner
        self._outage_timeout_s = outage_timeout_s
        self._describe = describe
        self._sleep = sleep
        self._lock = threading.RLock()

    @property
    def inner(self) -> BaseStorage:
        return self._inner

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # One operation at a time per process (main loop and heartbeat thread alike): with an
        # unpooled engine, that caps a worker at one database connection.
        with self._lock:
            try:
                return self._call_unlocked(name, *args, **kwargs)
            finally:
                # Optuna's RDB store can leave its session (and so a connection) open between
                # operations; closing it here means no connection is held while we train.
                self._release_session()

    def _release_session(self) -> None:
        try:
            self._inner.remove_session()
        except Exception as e:  # a dead connection cannot be closed cleanly; it is gone anyway
            logger.debug("closing the store session failed: %s", error_summary(e))

    def _call_unlocked(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._inner, name)
        started: float | None = None
        delay = _FIRST_DELAY_S
        while True:
            try:
                result = method(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if started is not None and name == "set_trial_state_values":
                    trial = self._inner.get_trial(args[0])
                    requested = kwargs.get("state", args[1] if len(args) > 1 else None)
                    if trial.state == requested:  # our own write committed before the drop
                        return True
                raise
            except Exception as e:
                if not is_transient(e):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    logger.warning(
                        "%s unreachable (%s); retrying for up to %.0f s",
                        self._describe,
                        error_summary(e),
                        self._outage_timeout_s,
                    )
                if now - started > self._outage_timeout_s:
                    down_s = now - started
                    raise StorageError(
                        f"{self._describe} unreachable for {down_s:.0f} s: {error_summary(e)}"
                    ) from None
                self._sleep(delay)
                delay = min(delay * 2, _MAX_DELAY_S)
                continue
            if started is not None:
                logger.warning(
                    "%s reachable again after %.1f s", self._describe, time.monotonic() - started
                )
            return result

    # Heartbeat support follows the inner store's.
    def record_heartbeat(self, trial_id: int) -> None:
        self._call("record_heartbeat", trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return list(self._call("_get_stale_trial_ids", study_id))

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
