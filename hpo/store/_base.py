"""What every part of the store shares: names, defaults, and how errors are classified.

The store package reads in this order: ``_base`` (this), ``_masking``, ``_connections`` (one
kept PostgreSQL connection per burst of operations), ``_retry`` (riding out outages),
``_heartbeat`` (leases: beats, staleness, the sweep), the backends ``_journal``, ``_postgres``
and ``_grpc``, and ``_open`` (a URL to a store). The front module ``hpo.store`` re-exports the
public names; nothing outside the package imports these private modules.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from hpo.errors import StorageError, exception_chain

# The store's bookkeeping keys (their meaning: hpo.records). Trial system attributes that make
# retried writes idempotent and transitions attributable: the request that created or popped
# the trial, that finished it, and the trial a re-queued copy replaces (one copy per failed
# trial). Study system attributes: the budget (running + finished trials never exceed it, so it
# is exact) and the lease terms every worker uses (a sweeper judges other workers' leases by its
# own terms, so they must be the same).
from hpo.records import BUDGET_KEY as BUDGET_KEY
from hpo.records import FINISH_KEY as FINISH_KEY
from hpo.records import HEARTBEAT_KEY as HEARTBEAT_KEY
from hpo.records import LEASE_KEY as LEASE_KEY
from hpo.records import REQUEST_KEY as REQUEST_KEY
from hpo.records import REQUEUE_OF_KEY as REQUEUE_OF_KEY
from hpo.store._masking import mask_secrets

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

ENV_STORAGE = "HPO_STORAGE"
DEFAULT_STORAGE = ".hpo/journal.log"
DEFAULT_HEARTBEAT_INTERVAL_S = 10
DEFAULT_GRACE_PERIOD_S = 30
DEFAULT_OUTAGE_TIMEOUT_S = 300.0

StaleCallback = Callable[["optuna.Study", "FrozenTrial"], None]


def error_summary(error: BaseException, url: str | None = None) -> str:
    """The first line of an error (of the driver's error, if wrapped), passwords masked."""
    cause = getattr(error, "orig", None) or error.__cause__ or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return mask_secrets(lines[0] if lines else type(cause).__name__, url)


# PostgreSQL's words when it is at max_connections (or a role's / database's own limit).
_CONNECTION_LIMIT_MARKERS = (
    "too many clients",
    "remaining connection slots are reserved",
    "too many connections for",
)
_TOO_MANY_CONNECTIONS_SQLSTATE = "53300"


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or anything in its chain) is a lost or refused database connection,
    or an unreachable ``hpo proxy``."""
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
    return any(isinstance(e, transient) or _grpc_unavailable(e) for e in exception_chain(error))


def _grpc_unavailable(error: BaseException) -> bool:
    """An ``hpo proxy`` that is down or restarting (gRPC status UNAVAILABLE), or a call that
    went unanswered past its deadline (DEADLINE_EXCEEDED: a half-open connection)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio is a dependency
        return False
    code = getattr(error, "code", None)
    return (
        isinstance(error, grpc.RpcError)
        and callable(code)
        and code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    )


def is_connection_limit(error: BaseException) -> bool:
    """Whether the database refused a connection because it is at its connection limit.

    Looks through the whole chain: Optuna wraps the driver's error in a
    ``StorageInternalError`` that speaks of "invalid data in the commit".
    """
    for e in exception_chain(error):
        if getattr(e, "pgcode", None) == _TOO_MANY_CONNECTIONS_SQLSTATE:
            return True
        text = str(e).lower()
        if any(marker in text for marker in _CONNECTION_LIMIT_MARKERS):
            return True
    return False


def connection_limit_message(describe: str, refused_s: float) -> str:
    """One line: the server is full, and what to do about it."""
    return (
        f"{describe} refused connections for {refused_s:.0f} s: the database is at its "
        "connection limit (PostgreSQL max_connections); raise max_connections, run fewer "
        "workers, or put `hpo proxy` in front of the database"
    )


class ConnectionStats:
    """Open database connections of this process, and the most ever open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0


CONNECTIONS = ConnectionStats()


NO_SLOT = "no trial slot left in the study's budget"


class NoSlotLeft(StorageError):
    """The study's budget is taken: finished plus running trials already reach it.

    Raised by the store when a trial would start (a new one, or a waiting one popped); a worker
    waits (a running trial may still fail and free its slot) or stops.
    """


_REQUEST = threading.local()


_NOT_DRAWN = ""  # in an operation whose request id nobody has asked for yet


def begin_request() -> bool:
    """One logical store operation begins: every attempt of it (retries after a lost reply)
    carries the same request id, which the backends record with what the operation wrote. The
    id is drawn on first use (most operations never need one). False when nested in an
    enclosing operation (it is part of that one); pass the result to ``end_request``."""
    if getattr(_REQUEST, "id", None) is not None:
        return False
    _REQUEST.id = _NOT_DRAWN
    _REQUEST.retried = False
    return True


def end_request(began: bool) -> None:
    """The operation ``begin_request`` began (if it did) is over."""
    if began:
        _REQUEST.id = None


@contextmanager
def request_scope() -> Iterator[str]:
    """``begin_request``/``end_request`` as a block, yielding the operation's request id."""
    began = begin_request()
    try:
        yield current_request()
    finally:
        end_request(began)


def current_request() -> str:
    """The id of the operation under way (a fresh one outside an operation)."""
    request = getattr(_REQUEST, "id", None)
    if request is None:
        return uuid.uuid4().hex
    if request == _NOT_DRAWN:
        request = _REQUEST.id = uuid.uuid4().hex
    return str(request)


def mark_retried() -> None:
    """An attempt of the operation under way failed: it is about to be tried again."""
    _REQUEST.retried = True


def retried() -> bool:
    """Whether an attempt of the operation under way failed before (so one of them may have
    written something whose reply was lost). True outside ``request_scope``: nothing known."""
    return getattr(_REQUEST, "id", None) is None or bool(getattr(_REQUEST, "retried", True))


class StoreCallShield:
    """Holds off a signal handler's exception while the main thread is inside a store call.

    A worker stops a running trial by raising from its SIGTERM/SIGINT handler, which Python runs
    between any two bytecodes of the main thread. Landing inside a store call, such an exception
    can cut a lock's release in half (Optuna's journal lock then raises ``FileNotFoundError``
    instead, and the trial fails for that) or leave a write neither done nor known to be
    undone. So a handler asks ``deferring(exc)`` first: inside a call it keeps the exception,
    which is raised the moment the outermost call returns; outside one it returns False and the
    handler raises at once. Only the main thread counts (signal handlers run there).

    A process asked to stop also sets ``stopping``: a store call that is retrying through an
    outage then gives up (``StorageError``) rather than holding the stop for up to the outage
    timeout; what it leaves RUNNING is the sweepers' to re-queue when its lease expires.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._pending: BaseException | None = None
        # Set by the stop handler: retries of an unreachable store give up at once instead of
        # riding out the outage (``Backoff``), so a stopped worker does not wait minutes.
        self.stopping = threading.Event()

    @contextmanager
    def call(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        """A store call (or a lock it takes) begins; pair with ``leave``."""
        if threading.current_thread() is threading.main_thread():
            self._depth += 1

    def leave(self) -> None:
        """The call ends: a kept exception is raised if it was the outermost one."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending

    def deferring(self, exc: BaseException) -> bool:
        """True (and ``exc`` kept for the end of the call) if a store call is under way."""
        if self._depth == 0:
            return False
        self._pending = exc
        return True


SHIELD = StoreCallShield()
