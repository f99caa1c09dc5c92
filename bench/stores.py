"""Which embedded store to use by default: SQLite vs Optuna's journal file, under N processes.

    python -m bench.stores --workers 1 8 32 64 --seconds 10 --repeats 2 --out BENCHMARKS.md

For each store kind and process count N, a fresh study is created in a temporary directory
and N spawned OS processes each open the store, load the study, wait at a common start line,
then loop for the same wall-clock window::

    trial = study.ask(); x = trial.suggest_float("x", -10, 10); study.tell(trial, x * x)

The ``ours-*`` kinds open the store with ``hpo.store.open_storage`` (heartbeats on) and add,
per trial, what our worker writes besides ask/tell: one ``record_heartbeat`` and two
``trial.report`` calls. Exceptions are caught and counted per process, never fatal.

Measured per run: trials/s (COMPLETE trials whose completion time falls inside the window,
divided by the window), ask latency p50/p99 over every successful ask, errors, retries that
our retrying SQLite wrapper logged (lock waits it hid), and how many processes reported back.
Contenders are interleaved (for each repeat, for each N: A B C D) and medians over the
repeats are reported.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import logging
import multiprocessing as mp
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench._common import (
    StartLine,
    bench_args,
    command_line,
    end_all,
    percentile,
    section_body,
    update_section,
)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("bench.stores")

KINDS: tuple[str, ...] = ("sqlite", "journal", "ours-sqlite", "ours-journal")
STUDY_NAME = "bench"
HEADING = "Embedded store: SQLite vs journal file"
EXIT_GRACE_S = 30.0  # for every process to exit once all have reported


@dataclass
class WorkerResult:
    """What one process measured; sent back to the parent through a queue."""

    ask_latencies_s: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_error: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    ready: bool = False
    finished: bool = False

    def add_error(self, error: BaseException) -> None:
        """Count ``error`` by type; keep the first message per type, with its root cause."""
        name = type(error).__name__
        self.errors[name] += 1
        if name not in self.first_error:
            cause = error
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            message = _first_line(error)
            if cause is not error:
                message += f" [cause: {type(cause).__name__}: {_first_line(cause)}]"
            self.first_error[name] = message


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, at most 200 characters."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


@dataclass
class RunResult:
    """One store kind at one process count, one repeat."""

    kind: str
    processes: int
    trials_per_s: float
    complete_after_window: int
    ask_p50_ms: float
    ask_p99_ms: float
    errors: collections.Counter[str]
    first_error: dict[str, str]
    retries: int
    finished: int


class _RetryCounter(logging.Handler):
    """Counts the "unreachable; retrying" warnings of ``hpo.store.RetryingStorage``."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1


def open_store(kind: str, directory: Path) -> optuna.storages.BaseStorage:
    """Open the store of ``kind`` whose files live in ``directory`` (created on first open).

    ``sqlite`` is what a plain Optuna client gets from ``sqlite:///…`` (a cached RDBStorage,
    SQLite's default 5 s lock timeout, no heartbeat); ``journal`` is a plain JournalStorage on a
    JournalFileBackend (Optuna's default symlink lock); ``ours-*`` come from ``open_storage``.
    """
    import optuna

    db_url = f"sqlite:///{directory / 'store.db'}"
    log_path = str(directory / "store.log")
    if kind == "sqlite":
        return optuna.storages.get_storage(db_url)
    if kind == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(log_path))
    from hpo.store import open_storage

    if kind == "ours-sqlite":
        return open_storage(db_url)
    if kind == "ours-journal":
        return open_storage(log_path)
    raise ValueError(f"unknown store kind {kind!r}; expected one of {KINDS}")


def _worker(kind: str, directory: str, seconds: float, line: StartLine) -> None:
    """One benchmark process: open, wait for the start line, loop until the window closes."""
    import optuna

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    retry_counter = _RetryCounter()
    logging.getLogger("hpo").addHandler(retry_counter)
    logging.getLogger("hpo").propagate = False  # counted here, not printed by 64 processes
    result = WorkerResult()
    try:
        storage = open_store(kind, Path(directory))
        study = optuna.load_study(
            study_name=STUDY_NAME, storage=storage, sampler=optuna.samplers.RandomSampler()
        )
        result.ready = True
    except Exception as e:
        result.add_error(e)
    started = line.ready(result.ready)
    if started is None:
        line.report(result)
        return
    deadline = started + seconds
    ours = kind.startswith("ours-")
    while time.time() < deadline:
        try:
            began = time.perf_counter()
            trial = study.ask()
            result.ask_latencies_s.append(time.perf_counter() - began)
            x = trial.suggest_float("x", -10, 10)
            if ours:
                storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
                trial.report(abs(x), 0)
                trial.report(x * x, 1)
            study.tell(trial, x * x)
        except Exception as e:
            result.add_error(e)
    result.retries = retry_counter.count
    result.finished = True
    line.report(result)


def run_once(kind: str, processes: int, seconds: float) -> RunResult:
    """Run ``processes`` processes against a fresh study of ``kind`` for ``seconds``."""
    import optuna

    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        directory = Path(tmp)
        storage = open_store(kind, directory)
        optuna.create_study(study_name=STUDY_NAME, storage=storage)
        ctx = mp.get_context("spawn")
        line = StartLine(ctx)
        procs = [
            ctx.Process(target=_worker, args=(kind, str(directory), seconds, line), daemon=True)
            for _ in range(processes)
        ]
        reported, ready, started = line.run(procs, seconds)
        if ready < processes:
            logger.warning("%s N=%d: only %d processes got ready", kind, processes, ready)
        end_all(procs, EXIT_GRACE_S, f"{kind} N={processes}")
        window_end = started + seconds
        final = optuna.load_study(study_name=STUDY_NAME, storage=open_store(kind, directory))
        trials = final.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    end = dt.datetime.fromtimestamp(window_end)
    in_window = sum(1 for t in trials if t.datetime_complete and t.datetime_complete <= end)
    latencies = [x for r in reported for x in r.ask_latencies_s]
    errors = sum((r.errors for r in reported), collections.Counter[str]())
    first_error: dict[str, str] = {}
    for r in reported:
        for name, message in r.first_error.items():
            first_error.setdefault(name, message)
    return RunResult(
        kind=kind,
        processes=processes,
        trials_per_s=in_window / seconds,
        complete_after_window=len(trials) - in_window,
        ask_p50_ms=percentile(latencies, 50) * 1e3,
        ask_p99_ms=percentile(latencies, 99) * 1e3,
        errors=errors,
        first_error=first_error,
        retries=sum(r.retries for r in reported),
        finished=sum(r.finished for r in reported),
    )


def _errors_cell(runs: Sequence[RunResult]) -> str:
    """Errors per repeat, e.g. ``0, 3 (OperationalError)``."""
    per_round = ", ".join(str(sum(r.errors.values())) for r in runs)
    names = sorted({name for r in runs for name in r.errors})
    return f"{per_round} ({', '.join(names)})" if names else per_round


def render_table(runs: dict[tuple[str, int], list[RunResult]], workers: Sequence[int]) -> str:
    """The markdown table: medians over repeats, with the per-repeat trials/s and errors."""
    lines = [
        "| store | processes | trials/s (median) | trials/s per round | ask p50 (ms) "
        "| ask p99 (ms) | errors per round | lock retries per round | processes finished |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n in workers:
        for kind in KINDS:
            rs = runs[(kind, n)]
            lines.append(
                f"| {kind} | {n} | {statistics.median(r.trials_per_s for r in rs):.1f} "
                f"| {' / '.join(f'{r.trials_per_s:.1f}' for r in rs)} "
                f"| {statistics.median(r.ask_p50_ms for r in rs):.1f} "
                f"| {statistics.median(r.ask_p99_ms for r in rs):.1f} "
                f"| {_errors_cell(rs)} "
                f"| {', '.join(str(r.retries) for r in rs)} "
                f"| {min(r.finished for r in rs)}/{n} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the CLI, run every contender interleaved, print the table, update ``--out``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = bench_args(parser, argv)
    warnings.simplefilter("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    runs: dict[tuple[str, int], list[RunResult]] = collections.defaultdict(list)
    for repeat in range(args.repeats):
        for n in args.workers:
            for kind in KINDS:
                run = run_once(kind, n, args.seconds)
                runs[(kind, n)].append(run)
                logger.info(
                    "round %d %-12s N=%-3d %7.1f trials/s (+%d after window) ask p50 %.1f "
                    "p99 %.1f ms errors %s retries %d finished %d/%d",
                    repeat + 1,
                    kind,
                    n,
                    run.trials_per_s,
                    run.complete_after_window,
                    run.ask_p50_ms,
                    run.ask_p99_ms,
                    dict(run.errors) or 0,
                    run.retries,
                    run.finished,
                    n,
                )
                for name, message in run.first_error.items():
                    logger.info("  first %s: %s", name, message)
    logger.info("total %.0f s", time.monotonic() - started)
    table = render_table(runs, args.workers)
    print(table)
    if args.out:
        command = command_line("bench.stores", parser, args)
        update_section(HEADING, section_body(command, [], __doc__, table), args.out)
        logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
