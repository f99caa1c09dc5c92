"""``hpo run``'s local workers: where they train."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo import records
from hpo.local.run import worker_device
from hpo.store import open_storage
from tests.hpo.conftest import write_spec


def test_hpo_run_spreads_its_workers_over_every_gpu() -> None:
    assert [worker_device("auto", i, 4) for i in range(6)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert [worker_device("cuda", i, 2) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]


def test_hpo_run_keeps_an_explicit_device_and_auto_without_gpus() -> None:
    assert worker_device("auto", 3, 0) == "auto"
    assert worker_device("cpu", 3, 4) == "cpu"
    assert worker_device("cuda:1", 0, 4) == "cuda:1"


def _workers_of(study: str) -> list[int]:
    """Pids of the ``hpo worker`` processes of ``study`` still alive on this machine."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # it exited while we looked
            continue
        if b"worker" in argv and study.encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_sigterm_or_sighup_to_hpo_run_stops_its_workers_too(
    tmp_path: Path, spec_dict: dict[str, Any], signum: signal.Signals
) -> None:
    """`kill`, `timeout`, `docker stop` (SIGTERM) or a closed terminal (SIGHUP) end `hpo run`
    as Ctrl-C does: its workers (in their own sessions, so no signal reaches them) stop and
    re-queue their trials, instead of training on with no one watching."""
    spec_dict["train"] = {"epochs": 40, "batch_size": 16, "precision": "fp32"}
    spec_dict["budget"] = {"n_trials": 10}
    spec_path = write_spec(tmp_path / "study.yaml", spec_dict)
    url = str(tmp_path / "journal.log")
    command = [sys.executable, "-m", "hpo.cli", "run", str(spec_path), "--storage", url]
    proc = subprocess.Popen(
        [*command, "--workers", "1", "--device", "cpu"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 240  # a loaded machine: torch imports in the worker
        while time.monotonic() < deadline:
            if Path(url).exists():
                study = optuna.load_study(study_name=spec_dict["name"], storage=open_storage(url))
                if study.get_trials(states=(TrialState.RUNNING,)):
                    break
            time.sleep(0.3)
        else:
            pytest.fail("no trial ever ran")
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
        assert _workers_of(spec_dict["name"]) == []
        trials = optuna.load_study(study_name=spec_dict["name"], storage=open_storage(url)).trials
        assert [records.fail_reason(t) for t in trials if t.state == TrialState.FAIL] == [
            "interrupted"
        ]
        assert not [t for t in trials if t.state == TrialState.RUNNING]
    finally:
        proc.kill()
        for pid in _workers_of(spec_dict["name"]):
            os.kill(pid, signal.SIGKILL)
