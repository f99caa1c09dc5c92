"""A password in the storage URL never lands in logs, exports, reports or the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hpo.store import open_storage
from tests.hpo.worker.test_loop import tiny_spec

PASSWORD = "Sup3r-s3cret-pw"


@pytest.mark.slow
def test_password_appears_nowhere_after_a_whole_run(
    postgres_url: str, tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    # Trust auth accepts any password, so the run works with one in the URL.
    url = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@")
    spec = tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 2})
    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "HPO_STORAGE": url, "HF_HUB_OFFLINE": "1"}
    outputs = []
    for args in (
        ["run", str(spec_path), "--workers", "1", "--device", "cpu"],
        ["status", spec["name"], "--json"],
        ["export", spec["name"], "-o", str(tmp_path / "best.yaml")],
        ["report", spec["name"], "-o", str(tmp_path / "report.html")],
        ["create", str(tmp_path / "missing.yaml")],  # an error path too
    ):
        result = subprocess.run(
            [sys.executable, "-m", "hpo.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        outputs.append(result.stdout + result.stderr)
        if args[0] != "create":
            assert result.returncode == 0, result.stderr[-2000:]
    for text in outputs:
        assert PASSWORD not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("worker-") for p in written)  # the run's logs are searched
    assert (tmp_path / "best.yaml").exists() and (tmp_path / "report.html").exists()
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), path

    study = optuna.load_study(study_name=spec["name"], storage=open_storage(postgres_url))
    stored = json.dumps(
        [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
        + [[t.user_attrs, t.system_attrs, t.params] for t in study.trials],
        default=str,
    )
    assert PASSWORD not in stored
