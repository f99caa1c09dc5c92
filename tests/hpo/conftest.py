"""Fixtures for the hpo tests: store URLs for every backend, specs on disk."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

POSTGRES_URL = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

MINIMAL_SPEC: dict[str, Any] = {
    "name": "tiny",
    "model": {"name_or_path": "prajjwal1/bert-tiny", "max_seq_len": 32},
    "data": {"source": "imdb", "text": "text", "label": "label"},
    "cv": {"n_folds": 3},
    "search": {
        "space": {
            "lr": {"low": 1e-5, "high": 1e-3, "log": True},
            "dropout": {"low": 0.0, "high": 0.3},
            "l1": {"low": 1e-8, "high": 1e-4, "log": True},
            "l2": {"low": 1e-6, "high": 1e-2, "log": True},
        }
    },
    "budget": {"n_trials": 4},
}


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _postgres_reachable() -> bool:
    import sqlalchemy

    from hpo.store import normalize_postgres_url

    try:
        engine = sqlalchemy.create_engine(
            normalize_postgres_url(POSTGRES_URL), connect_args={"connect_timeout": 3}
        )
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sqlalchemy.exc.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture(params=["journal", "sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One URL per backend; the contract suite runs against each."""
    if request.param == "journal":
        yield str(tmp_path / "store" / "journal.log")
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def spec_dict(tiny_bert_dir: Path, synthetic_csv: Path) -> dict[str, Any]:
    """A fresh, valid spec as a mapping, with a unique study name and local model and data
    (``hpo create`` loads the data to check it)."""
    import copy

    data = copy.deepcopy(MINIMAL_SPEC)
    data["name"] = unique_name()
    data["model"]["name_or_path"] = str(tiny_bert_dir)
    data["data"] = {"source": str(synthetic_csv), "text": "text", "label": "label"}
    return data


def write_spec(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard_study_names(
    command: list[str], port: int, env: dict[str, str] | None = None
) -> list[str]:
    """Start a dashboard process, wait for its API on 127.0.0.1, return the studies it lists."""
    import json
    import subprocess
    import time
    import urllib.request

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as response:
                    body = json.load(response)
                return [s["study_name"] for s in body["study_summaries"]]
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{command[0]} did not answer on 127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
