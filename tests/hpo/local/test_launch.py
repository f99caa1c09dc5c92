"""``hpo launch`` on one host and ``hpo dashboard`` on the embedded store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.local.launch import build_slots, parse_gpus
from hpo.spec.model import parse_spec
from hpo.store import ENV_STORAGE, open_storage
from hpo.study import create_study
from tests.hpo.conftest import dashboard_study_names, free_port
from tests.hpo.worker.test_loop import REPO, tiny_spec


def test_gpu_lists_are_parsed_and_checked() -> None:
    assert parse_gpus("0,1,3") == ["0", "1", "3"]
    assert parse_gpus("all", visible=2) == ["0", "1"]
    with pytest.raises(HpoError, match="no CUDA device"):
        parse_gpus("all", visible=0)
    with pytest.raises(HpoError, match="expected 'all' or a comma list"):
        parse_gpus("gpu0")


def test_one_slot_per_gpu_pinned_and_the_url_never_in_argv() -> None:
    url = "postgresql://u:pw@h/db"
    slots = build_slots("s", url, gpus=["0", "3"], cpus=None, per_gpu=2, environ={})
    assert [s.name for s in slots] == ["gpu0.0", "gpu0.1", "gpu3.0", "gpu3.1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "3", "3"]
    assert all(s.env[ENV_STORAGE] == url and url not in " ".join(s.args) for s in slots)
    assert all(s.args[-2:] == ["--device", "cuda:0"] for s in slots)


def test_gpu_ids_count_within_the_gpus_this_host_process_was_given() -> None:
    # A Slurm job or container that sees physical GPUs 2 and 3 as its cuda:0 and cuda:1.
    environ = {"CUDA_VISIBLE_DEVICES": "2,3"}
    slots = build_slots("s", "j.log", gpus=parse_gpus("all", visible=2), cpus=None, environ=environ)
    assert [s.name for s in slots] == ["gpu0", "gpu1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["2", "3"]  # never another job's 0
    uuids = {"CUDA_VISIBLE_DEVICES": "GPU-aaaa, GPU-bbbb"}
    slots = build_slots("s", "j.log", gpus=["1"], cpus=None, environ=uuids)
    assert slots[0].env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
    with pytest.raises(HpoError, match=r"GPU 2 is not visible here: CUDA_VISIBLE_DEVICES='2,3'"):
        build_slots("s", "j.log", gpus=["2"], cpus=None, environ=environ)


@pytest.mark.slow
def test_launch_runs_cpu_workers_to_the_budget_with_prefixed_logs(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    url = str(tmp_path / "journal.log")
    spec = parse_spec(tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 4}))
    create_study(spec, open_storage(url))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo.cli",
            "launch",
            "--study",
            spec.name,
            "--storage",
            url,
            "--cpus",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("[cpu0] ") for line in lines)
    assert any(line.startswith("[cpu1] ") for line in lines)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4


def test_hpo_dashboard_serves_the_embedded_store_on_localhost(
    tmp_path: Path, spec_dict: dict[str, object]
) -> None:
    url = str(tmp_path / "journal.log")
    create_study(parse_spec(spec_dict), open_storage(url))
    port = free_port()
    names = dashboard_study_names(
        [sys.executable, "-m", "hpo.cli", "dashboard", "--port", str(port)],
        port,
        env={**os.environ, ENV_STORAGE: url},
    )
    assert spec_dict["name"] in names


@pytest.mark.parametrize("array_task", ["3", None])
def test_the_slurm_script_gives_array_tasks_their_index_and_other_jobs_a_random_stream(
    tmp_path: Path, array_task: str | None
) -> None:
    """An array task's stream is its index (distinct, repeatable); a plain sbatch job passes
    none, so the worker draws a random one. It used to fall back to stream 0 for every job
    outside an array: identical points (review of the exactly-once change)."""
    import stat

    fake = tmp_path / "bin" / "hpo"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    secret = tmp_path / "storage"
    secret.write_text("postgresql://hpo:PASSWORD@db:5432/hpo")
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    env["HPO_STORAGE_FILE"] = str(secret)
    env.pop("SLURM_ARRAY_TASK_ID", None)
    if array_task is not None:
        env["SLURM_ARRAY_TASK_ID"] = array_task
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "slurm.sh"), "demo"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[:4] == ["worker", "--study", "demo", "--device"]
    if array_task is None:
        assert "--stream" not in out
    else:
        assert out[out.index("--stream") + 1] == array_task
    assert "PASSWORD" not in " ".join(out)
