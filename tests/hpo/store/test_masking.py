"""Passwords never printed: connection errors, CLI errors, URLs and key=value strings are masked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpo.errors import StorageError
from hpo.store import (
    mask_secrets,
    mask_url,
    open_storage,
)
from tests.hpo.conftest import write_spec


def test_password_is_masked_in_connection_errors(postgres_url: str) -> None:
    bad = "postgresql://postgres:hunter2-secret@127.0.0.1:5432/no_such_database_xyz"
    with pytest.raises(StorageError) as info:
        open_storage(bad)
    message = str(info.value)
    assert "hunter2-secret" not in message
    assert "postgres:***@127.0.0.1" in message
    assert "no_such_database_xyz" in message


def test_cli_error_is_one_masked_line(tmp_path: Path, spec_dict: dict[str, Any]) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo.cli",
            "create",
            str(spec_path),
            "--storage",
            "postgresql://bob:hunter2-secret@127.0.0.1:1/db",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(
        "error: cannot open storage 'postgresql://bob:***@127.0.0.1:1/db'"
    )


def test_masking_covers_urls_and_key_values() -> None:
    url = "postgresql://alice:p%40ss@db.example:5432/hpo"
    assert mask_url(url) == "postgresql://alice:***@db.example:5432/hpo"
    text = f"failed: {url} (password=p%40ss)"
    assert "p%40ss" not in mask_secrets(text, url)
