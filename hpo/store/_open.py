"""Open the study store from a URL, with heartbeats on, and never leak its password.

URL forms:
  * a file path, or ``journal:///abs/path``: Optuna's journal file (the embedded default);
  * ``sqlite:///path.db``: SQLite through SQLAlchemy;
  * ``postgresql://user:pass@host:5432/db``: PostgreSQL through psycopg2;
  * ``grpc://host:port``: Optuna's gRPC storage proxy (``hpo proxy``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import StorageError
from hpo.store._base import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_OUTAGE_TIMEOUT_S,
    DEFAULT_STORAGE,
    ENV_STORAGE,
    StaleCallback,
    error_summary,
    is_connection_limit,
    is_transient,
)
from hpo.store._connections import count_connections
from hpo.store._masking import mask_url

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


def resolve_storage_url(cli_value: str | None, env: Mapping[str, str] | None = None) -> str:
    """The store to use: the CLI flag, else ``$HPO_STORAGE``, else the embedded default."""
    if cli_value:
        return cli_value
    env = os.environ if env is None else env
    return env.get(ENV_STORAGE) or DEFAULT_STORAGE


def storage_kind(url: str) -> str:
    """One of ``journal``, ``sqlite``, ``postgresql``, ``grpc``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "journal", "file"):
        return "journal"
    if scheme.startswith("sqlite"):
        return "sqlite"
    if scheme.startswith(("postgresql", "postgres")):
        return "postgresql"
    if scheme == "grpc":
        return "grpc"
    raise StorageError(
        f"storage {mask_url(url)!r}: unsupported scheme {scheme!r}; expected a file path, "
        "sqlite:///…, postgresql://… or grpc://host:port"
    )


def normalize_postgres_url(url: str) -> str:
    """Point ``postgresql://`` and ``postgres://`` at psycopg2 (SQLAlchemy 2.1 picks psycopg 3)."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    return f"postgresql+psycopg2://{rest}"


def open_storage(
    url: str,
    *,
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S,
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S,
    stale_trial_callback: StaleCallback | None = None,
    outage_timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
    keep_connection: bool = False,
    wait_if_unreachable: bool = False,
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the store at ``url`` with heartbeats enabled.

    Args:
        url: see the module docstring.
        heartbeat_interval_s: how often a running trial records that its worker is alive.
        grace_period_s: a running trial silent for longer than this is stale.
        stale_trial_callback: called for each trial failed as stale (e.g. to re-queue it).
        outage_timeout_s: how long operations retry a lost or refused database connection.
            Opening retries only refusals at the connection limit (the server is up, just
            full); any other failure to open is reported at once.
        keep_connection: PostgreSQL only: keep one connection open between operations (for
            a long-lived server such as ``hpo proxy``) instead of one per operation (workers).
        wait_if_unreachable: retry a lost or refused connection at open too, for up to
            ``outage_timeout_s`` (workers: one started or restarted during an outage rides it
            out as a running one does, instead of exiting). One-shot commands leave it off
            and report an unreachable store at once.

    Raises:
        StorageError: the store cannot be opened; the message names the masked URL, and the
            connection limit when that is why.
    """
    kind = storage_kind(url)
    opener: Callable[[], optuna.storages.BaseStorage]
    if kind == "journal":
        opener = partial(
            _open_journal, url, heartbeat_interval_s, grace_period_s, stale_trial_callback
        )
    elif kind == "grpc":
        opener = partial(
            _open_grpc,
            url,
            heartbeat_interval_s,
            grace_period_s,
            stale_trial_callback,
            outage_timeout_s,
        )
    else:
        opener = partial(
            _open_rdb,
            url,
            kind,
            heartbeat_interval_s,
            grace_period_s,
            stale_trial_callback,
            outage_timeout_s,
            keep_connection,
        )
    from hpo.store._retry import Backoff

    backoff = Backoff(f"store {mask_url(url)}", timeout_s=outage_timeout_s)
    while True:
        try:
            storage = opener()
        except StorageError:
            raise
        except Exception as e:  # third-party errors are translated here, at the boundary
            if is_connection_limit(e) or (wait_if_unreachable and is_transient(e)):
                backoff.failed(e)  # raises StorageError (naming max_connections) once it lasts
                continue
            detail = error_summary(e, url)
            raise StorageError(f"cannot open storage {mask_url(url)!r}: {detail}") from None
        backoff.succeeded()
        return storage


def journal_path(url: str) -> Path:
    """The file behind a journal URL."""
    for prefix in ("journal://", "file://"):
        if url.startswith(prefix):
            return Path(url[len(prefix) :])
    return Path(url)


def _open_journal(
    url: str, interval: int, grace: int, callback: StaleCallback | None
) -> optuna.storages.BaseStorage:
    from hpo.store._journal import HeartbeatJournalStorage

    path = journal_path(url).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return HeartbeatJournalStorage(
        str(path), heartbeat_interval_s=interval, grace_period_s=grace, stale_callback=callback
    )


def _open_rdb(
    url: str,
    kind: str,
    interval: int,
    grace: int,
    callback: StaleCallback | None,
    outage_timeout_s: float,
    keep_connection: bool,
) -> optuna.storages.BaseStorage:
    import warnings

    import optuna

    engine_kwargs: dict[str, Any]
    if kind == "postgresql":
        url = normalize_postgres_url(url)
        from sqlalchemy.pool import NullPool

        # No pooled connections: a worker holds none while it trains (hundreds of workers fit
        # under PostgreSQL's default max_connections=100) and opens one per store operation,
        # a few milliseconds against minutes of training. RetryingStorage serializes a
        # process's operations, so it never holds more than one at a time.
        engine_kwargs = {
            "poolclass": NullPool,
            "connect_args": {
                "connect_timeout": 10,
                "application_name": f"hpo-{os.getpid()}",
                # A connection whose peer vanished fails instead of hanging past the retry window.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                # ... and so does one whose statement goes unacknowledged (keepalives probe
                # only an idle connection): a partition mid-query errors, and is retried.
                "tcp_user_timeout": 20_000,
                # Server side: a session left idle inside a transaction (its client died, froze
                # or was cut off between a statement and its COMMIT) is ended after a grace
                # period, releasing the row and study locks every other worker would wait on
                # (a live client starved of CPU by 200 neighbours sat idle in one past 10 s);
                # and the server probes idle clients as the client probes the server.
                "options": (
                    f"-c idle_in_transaction_session_timeout={max(2, grace)}s "
                    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                    "-c tcp_keepalives_count=3 -c tcp_user_timeout=20000"
                ),
            },
            # The budget check relies on each statement seeing what committed before it.
            "isolation_level": "READ COMMITTED",
        }
        if keep_connection:
            from sqlalchemy.pool import QueuePool

            # One kept connection, checked before use (it may not survive a restart); opening
            # the store briefly needs a second, which is closed as soon as it is returned.
            engine_kwargs.update(
                poolclass=QueuePool, pool_size=1, max_overflow=1, pool_pre_ping=True
            )
    else:
        db_path = url.split(":///", 1)[1] if ":///" in url else ""
        if db_path and db_path != ":memory:":
            Path(db_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    rdb_class: type[optuna.storages.RDBStorage] = optuna.storages.RDBStorage
    if kind == "postgresql":
        from hpo.store._postgres import LeanPostgresStorage

        # Same tables and rows as Optuna's, a few statements per trial instead of ~70.
        rdb_class = LeanPostgresStorage
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = rdb_class(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=callback,
        )
    logger.debug("opened %s in %.2f s", mask_url(url), time.monotonic() - started)
    count_connections(storage.engine)
    from hpo.store._retry import RetryingStorage

    # Keep Optuna's trial cache (load_study adds it only to a bare RDBStorage), then retry.
    # The delegates are generated, so mypy cannot see that the class is concrete.
    return RetryingStorage(  # type: ignore[abstract]
        optuna.storages._CachedStorage(storage),
        describe=f"store {mask_url(url)}",
        outage_timeout_s=outage_timeout_s,
        # Back within a heartbeat of an outage's end: a live trial must beat again well before
        # a sweeper that came back first may judge it (hpo.worker.heartbeat.sweep_stale).
        max_delay_s=float(interval),
    )


def _open_grpc(
    url: str, interval: int, grace: int, callback: StaleCallback | None, outage_timeout_s: float
) -> optuna.storages.BaseStorage:
    from hpo.store._grpc import HeartbeatGrpcStorageProxy
    from hpo.store._retry import RetryingStorage

    hostport = url.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StorageError(f"storage {url!r}: expected grpc://host:port")
    proxy = HeartbeatGrpcStorageProxy(
        host=host,
        port=int(port),
        heartbeat_interval_s=interval,
        grace_period_s=grace,
        stale_callback=callback,
    )
    # A proxy that restarts (or a network blip) is ridden out like a database outage.
    return RetryingStorage(  # type: ignore[abstract]
        proxy,
        describe=f"store {url}",
        outage_timeout_s=outage_timeout_s,
        max_delay_s=float(interval),
    )
