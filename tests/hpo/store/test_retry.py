"""Retries: refusals at the connection limit recognised, retried quietly, and named in one
line when they last."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from hpo.errors import StorageError
from hpo.store import (
    open_storage,
)


def _refused(message: str = "sorry, too many clients already") -> Exception:
    """What Optuna raises when PostgreSQL is at max_connections: the driver's refusal, wrapped
    in SQLAlchemy's error, wrapped in a StorageInternalError about "invalid data"."""
    import psycopg2
    import sqlalchemy.exc

    driver = psycopg2.OperationalError(
        f'connection to server at "127.0.0.1", port 5432 failed: FATAL:  {message}\n'
    )
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, driver)
    try:
        try:
            raise wrapped
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length. "
            ) from e
    except optuna.exceptions.StorageInternalError as e:
        return e


@pytest.mark.parametrize(
    "message",
    [
        "sorry, too many clients already",
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
        'too many connections for role "hpo"',
    ],
)
def test_refusal_at_the_connection_limit_is_recognised_through_optunas_wrapper(
    message: str,
) -> None:
    from hpo.store import is_connection_limit, is_transient

    error = _refused(message)
    assert is_connection_limit(error)
    assert is_transient(error)


def test_other_errors_are_not_taken_for_the_connection_limit() -> None:
    import sqlalchemy.exc

    from hpo.store import is_connection_limit

    lost = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection")
    )
    assert not is_connection_limit(lost)
    assert not is_connection_limit(ValueError("invalid data in the commit"))


def test_short_refusals_are_retried_quietly_with_jitter(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from hpo.store import RETRIES, RetryingStorage

    calls: list[int] = []

    class Full(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            calls.append(1)
            if len(calls) <= 3:
                raise _refused()
            return []

    slept: list[float] = []
    refused_before = RETRIES.refused
    caplog.set_level(logging.DEBUG, logger="hpo.store._retry")
    assert RetryingStorage(Full(), sleep=slept.append).get_all_studies() == []  # type: ignore[abstract]
    assert len(calls) == 4
    assert RETRIES.refused - refused_before == 3
    assert len(set(slept)) == 3  # jittered, growing delays
    assert all(0 < s < 1 for s in slept)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_lasting_refusal_names_max_connections_in_one_line() -> None:
    from hpo.store import RetryingStorage

    class Full(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            raise _refused()

    storage = RetryingStorage(  # type: ignore[abstract]
        Full(), outage_timeout_s=0.0, describe="store postgresql://u:***@h/db", sleep=lambda s: None
    )
    with pytest.raises(StorageError) as info:
        storage.get_all_studies()
    message = str(info.value)
    assert "\n" not in message
    assert "connection limit" in message and "max_connections" in message
    assert "hpo proxy" in message
    assert "invalid data" not in message


def test_open_storage_names_max_connections_when_the_server_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hpo.store._open

    def full(*args: Any) -> Any:
        raise _refused()

    monkeypatch.setattr(hpo.store._open, "_open_rdb", full)
    with pytest.raises(StorageError, match="max_connections") as info:
        open_storage("postgresql://bob:hunter2-secret@127.0.0.1:5432/db", outage_timeout_s=0.0)
    assert "hunter2-secret" not in str(info.value)
    assert "postgresql://bob:***@127.0.0.1:5432/db" in str(info.value)
