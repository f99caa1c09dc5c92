"""The study store: a URL in, an Optuna storage out, with heartbeats, retries and no leaked
password. Read the package in the order ``_base``'s docstring gives."""

from typing import TYPE_CHECKING

from hpo.store._base import (
    BUDGET_KEY,
    CONNECTIONS,
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_OUTAGE_TIMEOUT_S,
    DEFAULT_STORAGE,
    ENV_STORAGE,
    FINISH_KEY,
    HEARTBEAT_KEY,
    LEASE_KEY,
    REQUEST_KEY,
    REQUEUE_OF_KEY,
    SHIELD,
    NoSlotLeft,
    StaleCallback,
    connection_limit_message,
    error_summary,
    is_connection_limit,
    is_transient,
)
from hpo.store._masking import mask_secrets, mask_url
from hpo.store._open import (
    journal_path,
    normalize_postgres_url,
    open_storage,
    resolve_storage_url,
    storage_kind,
)

if TYPE_CHECKING:
    from hpo.store._grpc import serve_proxy
    from hpo.store._postgres import LeanPostgresStorage
    from hpo.store._retry import RETRIES, Backoff, RetryingStorage

# Heavy names (they import Optuna and SQLAlchemy) load on first use, so ``import hpo`` stays fast.
_LAZY = {
    "RETRIES": "hpo.store._retry",
    "Backoff": "hpo.store._retry",
    "RetryingStorage": "hpo.store._retry",
    "LeanPostgresStorage": "hpo.store._postgres",
    "serve_proxy": "hpo.store._grpc",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpo.store' has no attribute {name!r}")


__all__ = [
    "BUDGET_KEY",
    "CONNECTIONS",
    "DEFAULT_GRACE_PERIOD_S",
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_OUTAGE_TIMEOUT_S",
    "DEFAULT_STORAGE",
    "ENV_STORAGE",
    "FINISH_KEY",
    "HEARTBEAT_KEY",
    "LEASE_KEY",
    "REQUEST_KEY",
    "REQUEUE_OF_KEY",
    "RETRIES",
    "SHIELD",
    "Backoff",
    "LeanPostgresStorage",
    "NoSlotLeft",
    "RetryingStorage",
    "StaleCallback",
    "connection_limit_message",
    "error_summary",
    "is_connection_limit",
    "is_transient",
    "journal_path",
    "mask_secrets",
    "mask_url",
    "normalize_postgres_url",
    "open_storage",
    "resolve_storage_url",
    "serve_proxy",
    "storage_kind",
]
