"""One database connection per process, kept for a burst of store operations, closed when idle.

A worker's store operations come in bursts (the ask and its suggests; a report and the pruner's
reads) separated by minutes of training. Opening a PostgreSQL connection costs the server a
process fork and the client a round of authentication, a good share of what a small operation
costs; keeping the connection for the length of a burst, and not a moment more, saves that
without holding anything while the worker trains.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy

from hpo.store._base import CONNECTIONS

DEFAULT_LINGER_S = 0.2
DEFAULT_MAX_HOLD_S = 2.0
POLITE_AFTER_REFUSAL_S = 30.0


class LingeringConnection:
    """At most one open connection, reused by operations that follow each other closely.

    Closed when idle for ``linger_s`` (by a reaper thread), after each operation once it has
    been open for ``max_hold_s`` (so busy processes take turns on a full server), and after
    each operation for ``POLITE_AFTER_REFUSAL_S`` after the server refused a connection.
    """

    def __init__(self, engine: sqlalchemy.Engine, *, linger_s: float, max_hold_s: float) -> None:
        self._engine = engine
        self._linger_s = linger_s
        self._max_hold_s = max_hold_s
        self._lock = threading.RLock()
        self._conn: sqlalchemy.Connection | None = None
        self._opened = 0.0
        self._last_used = 0.0
        self._polite_until = 0.0
        self._reaper: threading.Thread | None = None
        self._owner: int | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_in_child(ref))

    def _forget(self) -> None:
        """In a forked child: the connection belongs to the parent; never touch it here."""
        self._lock = threading.RLock()
        self._conn = None
        self._owner = None
        self._reaper = None

    def current(self) -> sqlalchemy.Connection | None:
        """The connection if this thread is inside ``use()`` already, else None."""
        return self._conn if self._owner == threading.get_ident() else None

    @contextmanager
    def use(self) -> Iterator[sqlalchemy.Connection]:
        with self._lock:
            if self._conn is None:
                try:
                    self._conn = self._engine.connect()
                except sqlalchemy.exc.OperationalError as e:
                    from hpo.store._base import is_connection_limit

                    if is_connection_limit(e):
                        self._polite_until = time.monotonic() + POLITE_AFTER_REFUSAL_S
                    raise
                self._opened = time.monotonic()
                self._start_reaper()
            self._owner = threading.get_ident()
            try:
                yield self._conn
            except BaseException:
                self._close()  # it may be broken or mid-transaction; the next use reconnects
                raise
            finally:
                self._owner = None
                self._last_used = time.monotonic()

    def operation_done(self) -> None:
        """After each store operation: close now unless the connection may linger."""
        with self._lock:
            now = time.monotonic()
            if self._conn is not None and (
                self._linger_s <= 0
                or now < self._polite_until
                or now - self._opened >= self._max_hold_s
            ):
                self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # dead already: gone
                conn.close()

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._conn is not None and time.monotonic() - self._last_used >= self._linger_s:
                self._close()

    def _start_reaper(self) -> None:
        if (self._reaper is not None and self._reaper.is_alive()) or self._linger_s <= 0:
            return
        ref = weakref.ref(self)
        interval_s = self._linger_s / 2

        def reap() -> None:
            while True:
                time.sleep(interval_s)
                owner = ref()
                if owner is None:
                    return
                owner._close_if_idle()
                del owner

        self._reaper = threading.Thread(target=reap, name="hpo-db-linger", daemon=True)
        self._reaper.start()


class ReleasingSessions:
    """Optuna's scoped sessions, but the lingering connection is closed before one is made:
    stock code paths then never hold a second connection."""

    def __init__(self, sessions: Any, release: Callable[[], None]) -> None:
        self._sessions = sessions
        self._release = release

    def __call__(self) -> Any:
        self._release()
        return self._sessions()

    def remove(self) -> None:
        self._sessions.remove()


def _forget_in_child(ref: weakref.ref[LingeringConnection]) -> None:
    owner = ref()
    if owner is not None:
        owner._forget()


def count_connections(engine: Any) -> None:
    """Count this process's open connections of ``engine`` in ``CONNECTIONS``."""
    from sqlalchemy import event

    def opened(*_: Any) -> None:
        CONNECTIONS.open += 1
        CONNECTIONS.peak = max(CONNECTIONS.peak, CONNECTIONS.open)

    def closed(*_: Any) -> None:
        CONNECTIONS.open -= 1

    event.listen(engine, "connect", opened)
    event.listen(engine, "close", closed)
    event.listen(engine, "close_detached", closed)
