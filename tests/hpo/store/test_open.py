"""Which store a URL opens: the resolution order, the driver, unknown schemes."""

from __future__ import annotations

import pytest

from hpo.errors import StorageError
from hpo.store import (
    DEFAULT_STORAGE,
    normalize_postgres_url,
    open_storage,
    resolve_storage_url,
)


def test_storage_resolution_order() -> None:
    assert resolve_storage_url("x.log", {"HPO_STORAGE": "y.log"}) == "x.log"
    assert resolve_storage_url(None, {"HPO_STORAGE": "y.log"}) == "y.log"
    assert resolve_storage_url(None, {}) == DEFAULT_STORAGE


def test_bare_postgres_url_uses_psycopg2() -> None:
    assert normalize_postgres_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_postgres_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_postgres_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(StorageError, match="unsupported scheme 'mysql'"):
        open_storage("mysql://u:secret@h/db")
