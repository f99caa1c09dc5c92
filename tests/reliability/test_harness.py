"""Exactly once under real faults: real ``hpo worker`` processes, a seeded fault schedule, and
the invariants of ``tests.reliability.invariants`` read back through stock Optuna.

The seeds are fixed: they inject every fault kind on PostgreSQL (through the ``FaultProxy``),
every process fault on a shared journal file, and every fault that fits gRPC on workers behind
``hpo proxy`` (through the ``FaultProxy``; the proxy process itself crashed and restarted),
overlapping, while studies run back to back.
A failure prints the schedule, what was injected, every violation and the workers' log tails.
The long soak is ``python -m bench.faults``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.reliability.faults import FaultKind, restarts_postgres
from tests.reliability.harness import (
    GRPC_KINDS,
    JOURNAL_KINDS,
    POSTGRES_KINDS,
    HarnessConfig,
    HarnessResult,
    quiet_optuna,
    run_harness,
)
from tests.reliability.invariants import load_events

# (seed, schedule seconds, mean gap between faults): schedules that hold every kind of their
# store (worker faults twice, past the workers' start-up), checked to inject them all on this
# loaded 2-core machine.
POSTGRES_RUN = (216, 50.0, 3.0)
JOURNAL_RUN = (82, 30.0, 4.0)
# Behind hpo proxy, also: a RESET clear of the restarts and refusals (it finds connections
# open), and no RESET or PROXY_RESTART while a LATENCY holds replies in the FaultProxy. A cut
# there loses a reply in flight often, and a lost reply to an ask or a FAIL is README's one gap
# on grpc:// (not idempotent), which this test is not about; a cut without LATENCY lands on
# one rarely (none in 73 RESETs of 3 busy workers, measured).
GRPC_RUN = (1703, 32.0, 2.5)


def _assert_exactly_once(result: HarnessResult, kinds: frozenset[FaultKind]) -> None:
    injected = set(result.fault_counts())
    missing = sorted(k.value for k in kinds - injected)
    assert not result.violations, result.describe()
    assert not missing, f"kinds never injected: {missing}\n{result.describe()}"
    counts = result.counts()
    assert counts["live_wrongly_failed"] == 0, result.describe()


@pytest.mark.slow
@restarts_postgres
def test_every_trial_finishes_exactly_once_under_every_fault_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    seed, duration_s, mean_gap_s = POSTGRES_RUN
    config = HarnessConfig(
        backend="postgresql",
        kinds=POSTGRES_KINDS,
        seed=seed,
        duration_s=duration_s,
        mean_gap_s=mean_gap_s,
        n_trials=20,
    )
    with quiet_optuna():
        result = run_harness(config, tmp_path, postgres_url=postgres_url, study_prefix="ci-pg")
    _assert_exactly_once(result, POSTGRES_KINDS)
    assert result.lost_acks_fired >= 1, result.describe()


@pytest.mark.slow
def test_every_trial_finishes_exactly_once_under_process_faults_on_a_journal_file(
    tmp_path: Path,
) -> None:
    seed, duration_s, mean_gap_s = JOURNAL_RUN
    config = HarnessConfig(
        backend="journal",
        kinds=JOURNAL_KINDS,
        seed=seed,
        duration_s=duration_s,
        mean_gap_s=mean_gap_s,
        n_trials=20,
    )
    with quiet_optuna():
        result = run_harness(config, tmp_path, study_prefix="ci-journal")
    _assert_exactly_once(result, JOURNAL_KINDS)


@pytest.mark.slow
def test_every_trial_finishes_exactly_once_under_faults_behind_hpo_proxy(tmp_path: Path) -> None:
    """Workers on grpc:// reach a real ``hpo proxy`` (serving a journal file) through the
    ``FaultProxy``: network faults, worker faults, and the proxy process killed and restarted
    on its port (PG_RESTART on this backend)."""
    seed, duration_s, mean_gap_s = GRPC_RUN
    config = HarnessConfig(
        backend="grpc",
        kinds=GRPC_KINDS,
        seed=seed,
        duration_s=duration_s,
        mean_gap_s=mean_gap_s,
        n_trials=20,
    )
    with quiet_optuna():
        result = run_harness(config, tmp_path, study_prefix="ci-grpc")
    _assert_exactly_once(result, GRPC_KINDS)


def _pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _pid_namespaces(), reason="unshare --pid needs root")
def test_workers_in_containers_with_default_options_draw_different_params(
    tmp_path: Path,
) -> None:
    """Every worker is PID 1 of its own namespace, as in containers; with default options
    each still draws its own sampler stream (the harness checks that no two chains drew the
    same params). See also tests/hpo/store/test_leases.py, which compares first draws directly."""
    config = HarnessConfig(
        backend="journal",
        kinds=frozenset(),
        duration_s=1.0,
        n_trials=9,
        n_folds=2,
        epochs=1,
        step_s=0.1,
        pid_namespace=True,
    )
    with quiet_optuna():
        result = run_harness(config, tmp_path, study_prefix="ci-containers")
    assert not result.violations, result.describe()
    pids = {e["pid"] for lines in load_events(tmp_path / "events").values() for e in lines}
    assert pids == {1}
    (run,) = result.studies
    assert run.check is not None and len({str(t.params) for t in run.check.trials}) == 9
