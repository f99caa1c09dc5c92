"""Regression tests for bugs the fault harness (``tests.reliability.harness``) found, each
named for what a user relies on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from hpo.spec import parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from hpo.worker import Worker, WorkerOptions
from tests.reliability.faultproxy import FaultProxy


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[FaultProxy]:
    parts = urlsplit(postgres_url)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as p:
        yield p


@pytest.mark.postgres
def test_a_worker_started_while_the_database_is_unreachable_waits_for_it(
    proxy: FaultProxy, postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A worker (re)started during an outage exited 1 ("cannot open storage"): under `hpo
    launch` a short database restart used up its restarts; now it rides the outage out."""
    spec_dict["train"] = {"precision": "fp32"}
    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    proxy.refuse()
    threading.Timer(2.0, proxy.admit).start()
    started = time.monotonic()
    worker = Worker(
        WorkerOptions(
            storage_url=proxy.url_for(postgres_url), study_name=spec_dict["name"], device="cpu"
        )
    )
    assert time.monotonic() - started >= 1.5
    assert worker.spec.name == spec_dict["name"]
