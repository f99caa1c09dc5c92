"""Many workers on one PostgreSQL: more worker processes than the server has connections.

Workers hold no connection between store operations, so 200 of them share PostgreSQL's default
``max_connections=100``. When the server is momentarily full, a refused connection is retried
with jittered backoff and is not an error.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing as mp
import time
import traceback
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pytest
from optuna.trial import TrialState

from hpo import records
from hpo.spec.model import StudySpec, parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from tests.hpo.conftest import MINIMAL_SPEC, unique_name

N_WORKERS = 200
BUDGET = 250  # more than one trial for some workers, every worker racing for the last
N_REPORTS = 3
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 240.0


def _no_training(trial: optuna.Trial, spec: StudySpec, context: Any, check: Any = None) -> float:
    """``run_trial`` without the model: suggest the spec's params, report, maybe prune."""
    from hpo.spec.space import suggest

    params = suggest(trial, spec.search.space)
    score = float(params["dropout"])
    for step in range(N_REPORTS):
        trial.report(score * (step + 1) / N_REPORTS, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"step {step}")
    return score


class _Problems(logging.Handler):
    """Keeps every warning and error a worker logs (a connection error would be one)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def _worker_main(url: str, study_name: str, index: int, out_dir: str) -> None:
    """One forked worker: the real ``Worker`` loop with the training replaced."""
    import hpo.worker.loop
    from hpo.store import CONNECTIONS, RETRIES

    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    problems = _Problems()
    root.addHandler(problems)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    result: dict[str, Any] = {"index": index}
    try:
        # No trainer at all: neither the training nor the start-up precision probe (which
        # imports torch: 200 copies of it do not fit in this machine's memory).
        with (
            mock.patch.object(hpo.worker.loop, "run_trial", _no_training),
            mock.patch.object(hpo.worker.loop, "_check_precision", lambda *_: "fp32"),
        ):
            options = hpo.worker.loop.WorkerOptions(
                storage_url=url, study_name=study_name, stream=index, worker_id=f"w{index}"
            )
            summary = hpo.worker.loop.Worker(options).run()
        result["summary"] = [summary.completed, summary.pruned, summary.failed]
        result["stop_reason"] = summary.stop_reason
    except BaseException:
        result["exception"] = traceback.format_exc()[-2000:]
    result["problems"] = problems.lines[:20]
    result["peak_connections"] = CONNECTIONS.peak
    result["refused"] = RETRIES.refused
    result["outage_errors"] = RETRIES.outage_errors
    Path(out_dir, f"w{index}.json").write_text(json.dumps(result))


@pytest.mark.slow
@pytest.mark.postgres
def test_200_workers_share_100_connections_and_meet_the_budget_exactly(
    postgres_url: str, tmp_path: Path
) -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    data["name"] = unique_name("scale")
    data["search"]["sampler"] = {"name": "random", "seed": 0}
    data["search"]["pruner"] = {"name": "median"}
    data["budget"] = {"n_trials": BUDGET}
    spec = parse_spec(data)
    create_study(spec, open_storage(postgres_url))

    # A fork server that has already imported Optuna and hpo: 200 children cost little memory
    # and start in milliseconds, and none inherits this test process's heap.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__, "tests.reliability._preforked"])
    procs = [
        context.Process(target=_worker_main, args=(postgres_url, spec.name, i, str(tmp_path)))
        for i in range(N_WORKERS)
    ]
    started = time.monotonic()
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(
                timeout=max(1.0, started + START_TIMEOUT_S + RUN_TIMEOUT_S - time.monotonic())
            )
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    elapsed_s = time.monotonic() - started

    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("w*.json"))]
    assert len(results) == N_WORKERS, [p.exitcode for p in procs if p.exitcode]
    crashed = [r for r in results if "exception" in r]
    assert not crashed, crashed[0]["exception"]
    # No process logged a connection error (or any other warning): refusals while the server
    # was full were retried quietly, and none lasted long enough to be reported.
    problems = [(r["index"], line) for r in results for line in r["problems"]]
    assert not problems, problems[:10]
    assert [p.exitcode for p in procs] == [0] * N_WORKERS
    assert max(r["peak_connections"] for r in results) == 1

    trials = optuna.load_study(study_name=spec.name, storage=open_storage(postgres_url)).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == BUDGET
    assert len({t.number for t in trials}) == len(trials) == max(t.number for t in trials) + 1
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The only failures: workers that lost the race for one of the last slots yielded at once.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs[records.FAIL_REASON].startswith("over budget") for t in failed)
    assert not [t for t in trials if records.retry_history(t)]
    assert sum(r["summary"][0] + r["summary"][1] for r in results) == BUDGET
    refused = sum(r["refused"] for r in results)
    print(f"{N_WORKERS} workers, {len(trials)} trials in {elapsed_s:.0f} s; {refused} refusals")
