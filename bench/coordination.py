"""Coordination cost on PostgreSQL: our store vs plain Optuna vs Optuna through ``hpo proxy``.

    python -m bench.coordination --workers 1 8 32 64 200 --proxy-workers 1 8 64 \\
        --seconds 10 --rounds 2

N worker processes (forked from a server that has already imported Optuna) each open the store,
load one fresh study, wait for a common start line, then loop for the same window, with no
training at all:

    trial = study.ask()                                   # timed: ask latency
    4 x trial.suggest_float(...)
    3 x trial.report(v, step); trial.should_prune()       # MedianPruner
    study.tell(trial, v)                                  # or PRUNED

Contenders, interleaved (for each round, for each N: plain, ours, proxy), medians over rounds:

* ``plain``: ``optuna.load_study(storage="postgresql+psycopg2://…")``: Optuna's default cached
  ``RDBStorage`` with SQLAlchemy's default connection pool;
* ``ours``: ``hpo.store.open_storage`` (no pooled connection, one store operation at a time,
  retries, our lean statements);
* ``proxy``: plain Optuna clients on ``GrpcStorageProxy`` to one proxy process serving our store,
  as ``hpo proxy`` does (SQL counted in the proxy process).

Each process counts its SQL statements and commits (SQLAlchemy ``before_cursor_execute`` and
``commit`` engine events) and its CPU time (``time.process_time``) over the window; errors are
counted by cause, never fatal. Each N runs for a window of max(seconds, N ×
seconds-per-worker). Trials/s counts trials finished inside the window. The database
is vacuumed before each run (``_vacuum``), as autovacuum would be on a default server. A second
part times a fresh ``load_study`` and the first TPE ask (+4 suggests) in a new process against a
study with ~2000 finished trials, ours vs plain.
"""

from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing as mp
import os
import random
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import (
    BENCHMARKS_MD,
    FIGURES,
    StartLine,
    bench_args,
    command_line,
    end_all,
    figure,
    load_average,
    median,
    percentile,
    section_body,
    update_section,
)

logger = logging.getLogger("bench.coordination")

HEADING = "Coordination: PostgreSQL, ours vs plain Optuna"
CONTENDERS = ("plain", "ours", "proxy")
DEFAULT_URL = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BIG_STUDY = "bench-coordination-2000"
BIG_STUDY_TRIALS = 2000
N_PARAMS = 4
N_REPORTS = 3


@dataclass
class ProcessResult:
    """What one benchmark process measured; sent back through a queue."""

    ready: bool = False
    trials: int = 0
    ask_ms: list[float] = field(default_factory=list)
    statements: int = 0
    commits: int = 0
    cpu_s: float = 0.0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Run:
    """One contender at one N, one round."""

    contender: str
    workers: int
    trials_per_s: float
    ask_p50_ms: float
    ask_p99_ms: float
    statements_per_trial: float
    commits_per_trial: float
    cpu_ms_per_trial: float
    server_cpu_ms_per_trial: float
    errors: collections.Counter[str]
    started: int


def _cause(error: BaseException) -> str:
    """An error's cause in a few words: the connection limit, a lost connection, or its type."""
    from hpo.store import is_connection_limit, is_transient

    if is_connection_limit(error):
        return "refused: too many clients"
    if is_transient(error):
        return "connection error"
    return type(error).__name__


def _plain_url(url: str) -> str:
    from hpo.store import normalize_postgres_url

    return normalize_postgres_url(url)


def _open(contender: str, url: str, proxy_port: int | None) -> Any:
    """The store a process of ``contender`` uses, and the engine to count on (or None)."""
    import optuna

    if contender == "plain":
        storage = optuna.storages.get_storage(_plain_url(url))
        return storage, storage._backend.engine  # type: ignore[attr-defined]
    if contender == "ours":
        from hpo.store import open_storage

        storage = open_storage(url)
        return storage, storage.inner._backend.engine  # type: ignore[attr-defined]
    assert proxy_port is not None
    return optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=proxy_port), None


class _Counter:
    """SQL statements and commits on one engine, from when ``reset`` is called."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.statements = 0
        self.commits = 0
        if engine is not None:
            event.listen(engine, "before_cursor_execute", self._statement)
            event.listen(engine, "commit", self._commit)

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1

    def reset(self) -> None:
        self.statements = self.commits = 0


def _one_trial(study: Any, index: int, result: ProcessResult) -> None:
    import optuna

    began = time.perf_counter()
    trial = study.ask()
    result.ask_ms.append((time.perf_counter() - began) * 1e3)
    xs = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(N_PARAMS)]
    value = sum(xs)
    for step in range(N_REPORTS):
        trial.report(value * (step + 1), step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
    study.tell(trial, value)


def _worker(
    contender: str,
    url: str,
    study_name: str,
    proxy_port: int | None,
    index: int,
    seconds: float,
    line: StartLine,
) -> None:
    """One benchmark process: open, load, wait for the start line, loop for the window."""
    import optuna

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("hpo").setLevel(logging.ERROR)  # refusals are counted, not printed
    result = ProcessResult()
    try:
        storage, engine = _open(contender, url, proxy_port)
        counter = _Counter(engine)
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(seed=index),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
        )
        result.ready = True
    except Exception as e:
        result.errors[f"open: {_cause(e)}"] += 1
    started = line.ready(result.ready)
    if started is None:
        line.report(result)
        return
    deadline = started + seconds
    counter.reset()
    cpu_started = time.process_time()
    while time.time() < deadline:
        try:
            _one_trial(study, index, result)
        except Exception as e:
            result.errors[_cause(e)] += 1
            continue
        if time.time() <= deadline:
            result.trials += 1
    result.cpu_s = time.process_time() - cpu_started
    result.statements, result.commits = counter.statements, counter.commits
    line.report(result)


def _proxy_server(url: str, port: int, line: StartLine, stop: Any) -> None:
    """``hpo proxy`` in a process that also counts its SQL and CPU from the start line on."""
    import optuna
    from optuna.storages._grpc.server import make_server

    from hpo.store import open_storage

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, keep_connection=True)  # as `hpo proxy` opens it
    counter = _Counter(storage.inner._backend.engine)  # type: ignore[attr-defined]
    server = make_server(storage, "127.0.0.1", port)
    server.start()
    line.put("proxy-ready", True)
    line.wait_for_start()
    counter.reset()
    cpu_started = time.process_time()
    stop.wait()  # set once every worker has reported
    cpu_s = time.process_time() - cpu_started
    server.stop(grace=1.0)
    line.put("proxy", (counter.statements, counter.commits, cpu_s))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _create_study(url: str, name: str) -> None:
    import optuna

    from hpo.store import open_storage

    optuna.create_study(study_name=name, storage=open_storage(url))


def _vacuum(url: str) -> None:
    """``VACUUM ANALYZE`` the database, as autovacuum would between runs on a default server.

    Each run leaves thousands of updated trial rows behind; with autovacuum off (as on the CI
    server here) their dead versions slowed every later run, plain and ours alike (64 workers:
    15 → 4 trials/s over four runs), so whichever contender ran later lost."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(_plain_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


def run_once(context: Any, contender: str, workers: int, url: str, seconds: float) -> Run:
    """``workers`` processes of ``contender`` on a fresh study for ``seconds``."""
    _vacuum(url)
    name = f"bench-coord-{contender}-{workers}-{time.time_ns()}"
    _create_study(url, name)
    line = StartLine(context)
    proxy_port = None
    proxy = None
    stop_proxy = context.Event()
    if contender == "proxy":
        proxy_port = _free_port()
        proxy = context.Process(target=_proxy_server, args=(url, proxy_port, line, stop_proxy))
        proxy.start()
        message, _ = line.get(line.READY_TIMEOUT_S)
        assert message == "proxy-ready", message
    procs = [
        context.Process(target=_worker, args=(contender, url, name, proxy_port, i, seconds, line))
        for i in range(workers)
    ]
    reported, _, _ = line.run(procs, seconds)
    proxy_counts = (0, 0, 0.0)
    if proxy is not None:
        stop_proxy.set()
        message, proxy_counts = line.get(60)
    end_all([*procs, *([proxy] if proxy else [])], 30, f"{contender} N={workers}")
    trials = sum(r.trials for r in reported)
    per_trial = max(trials, 1)
    asks = [x for r in reported for x in r.ask_ms]
    errors = sum((r.errors for r in reported), collections.Counter[str]())
    statements = sum(r.statements for r in reported) + proxy_counts[0]
    commits = sum(r.commits for r in reported) + proxy_counts[1]
    return Run(
        contender=contender,
        workers=workers,
        trials_per_s=trials / seconds,
        ask_p50_ms=percentile(asks, 50),
        ask_p99_ms=percentile(asks, 99),
        statements_per_trial=statements / per_trial,
        commits_per_trial=commits / per_trial,
        cpu_ms_per_trial=sum(r.cpu_s for r in reported) * 1e3 / per_trial,
        server_cpu_ms_per_trial=proxy_counts[2] * 1e3 / per_trial,
        errors=errors,
        started=sum(r.ready for r in reported),
    )


# Part two: a fresh process loads a big study and asks TPE for its first trial.


def _ensure_big_study(url: str) -> None:
    """A study of ``BIG_STUDY_TRIALS`` finished trials (4 params, 3 reports), made once."""
    import optuna
    from optuna.distributions import FloatDistribution

    storage = optuna.storages.get_storage(_plain_url(url))  # pooled: fast to fill
    try:
        study = optuna.load_study(study_name=BIG_STUDY, storage=storage)
        if len(study.get_trials(deepcopy=False)) >= BIG_STUDY_TRIALS:
            return
        optuna.delete_study(study_name=BIG_STUDY, storage=storage)
    except KeyError:
        pass
    study = optuna.create_study(study_name=BIG_STUDY, storage=storage)
    dist = FloatDistribution(0.0, 1.0)
    logger.info("filling %s with %d trials (once)", BIG_STUDY, BIG_STUDY_TRIALS)
    rng = random.Random(0)
    for _ in range(BIG_STUDY_TRIALS):
        xs = {f"x{i}": rng.random() for i in range(N_PARAMS)}
        value = sum(xs.values())
        study.add_trial(
            optuna.trial.create_trial(
                params=xs,
                distributions={k: dist for k in xs},
                value=value,
                intermediate_values={s: value * (s + 1) for s in range(N_REPORTS)},
            )
        )


def _cold_start(contender: str, url: str, results: Any) -> None:
    """In a fresh process: time ``load_study`` and the first TPE ask with its suggests."""
    import optuna

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    began = time.perf_counter()
    storage, _ = _open(contender, url, None)
    study = optuna.load_study(
        study_name=BIG_STUDY, storage=storage, sampler=optuna.samplers.TPESampler(seed=0)
    )
    loaded = time.perf_counter()
    trial = study.ask()
    for i in range(N_PARAMS):
        trial.suggest_float(f"x{i}", 0.0, 1.0)
    asked = time.perf_counter()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # keeps the study at its size
    results.put((loaded - began, asked - loaded))


def cold_starts(context: Any, url: str, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(load_study s, first ask s) per contender, ``rounds`` fresh processes each, interleaved."""
    _ensure_big_study(url)
    times: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for _ in range(rounds):
        for contender in ("plain", "ours"):
            results = context.Queue()
            proc = context.Process(target=_cold_start, args=(contender, url, results))
            proc.start()
            times[contender].append(results.get(timeout=600))
            proc.join()
    return times


# Report.

# Run fields whose medians are the table's cells after "vs plain", in order.
FIELDS = (
    "ask_p50_ms",
    "ask_p99_ms",
    "statements_per_trial",
    "commits_per_trial",
    "cpu_ms_per_trial",
)


def _errors_cell(runs: Sequence[Run]) -> str:
    total = sum((r.errors for r in runs), collections.Counter[str]())
    if not total:
        return "0"
    return "; ".join(f"{n} {cause}" for cause, n in total.most_common())


def render_table(runs: dict[tuple[str, int], list[Run]], workers: Sequence[int]) -> str:
    """Medians over rounds; ratios against plain Optuna at the same N."""
    lines = [
        "| N | store | trials/s | per round | vs plain | ask p50 ms | ask p99 ms "
        "| SQL stmts/trial | commits/trial | client CPU ms/trial | proxy CPU ms/trial "
        "| started | errors (all rounds) |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for n in workers:
        plain = median([r.trials_per_s for r in runs.get(("plain", n), [])])
        for contender in CONTENDERS:
            rs = runs.get((contender, n))
            if not rs:
                continue
            rate = median([r.trials_per_s for r in rs])
            ratio = f"{rate / plain:.2f}x" if contender != "plain" and plain > 0 else ""
            server = median([r.server_cpu_ms_per_trial for r in rs])
            medians = " | ".join(f"{median([getattr(r, f) for r in rs]):.1f}" for f in FIELDS)
            lines.append(
                f"| {n} | {contender} | {rate:.1f} "
                f"| {' / '.join(f'{r.trials_per_s:.1f}' for r in rs)} | {ratio} | {medians} "
                f"| {f'{server:.1f}' if contender == 'proxy' else ''} "
                f"| {min(r.started for r in rs)}/{n} | {_errors_cell(rs)} |"
            )
    return "\n".join(lines)


def render_cold(times: dict[str, list[tuple[float, float]]]) -> str:
    lines = [
        f"| store | load_study s (median) | first TPE ask + {N_PARAMS} suggests s (median) "
        "| per round (load / ask) |",
        "|---|--:|--:|---|",
    ]
    for contender in ("plain", "ours"):
        ts = times.get(contender, [])
        lines.append(
            f"| {contender} | {median([t[0] for t in ts]):.2f} | {median([t[1] for t in ts]):.2f} "
            f"| {', '.join(f'{a:.2f} / {b:.2f}' for a, b in ts)} |"
        )
    return "\n".join(lines)


def plot(runs: dict[tuple[str, int], list[Run]], workers: Sequence[int], path: Path) -> None:
    """Trials/s and ask p99 against the number of workers, one line per contender."""
    with figure(path, 1, 2, figsize=(11, 4.2)) as (fig, (left, right)):
        panels = (
            (left, "trials_per_s", "trials/s (higher is better)"),
            (right, "ask_p99_ms", "ask p99 ms (lower is better)"),
        )
        for axis, field, title in panels:
            for contender in CONTENDERS:
                ns = [n for n in workers if runs.get((contender, n))]
                values = [median([getattr(r, field) for r in runs[(contender, n)]]) for n in ns]
                if ns:
                    axis.plot(ns, values, "o-", label=contender)
            axis.set_xscale("log")
            axis.set_xticks(list(workers), [str(n) for n in workers])
            axis.set_xlabel("worker processes")
            axis.set_title(title)
            axis.grid(True, alpha=0.3)
            axis.legend()
        right.set_yscale("log")
        fig.suptitle("PostgreSQL coordination, no training (2 shared cores)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32, 64, 200])
    parser.add_argument("--proxy-workers", type=int, nargs="*", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--seconds-per-worker",
        type=float,
        default=0.15,
        help="longer windows for many workers: window = max(seconds, N x this); with hundreds "
        "of processes on few cores one trial takes many seconds, and a short window would "
        "measure only the start",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cold-rounds", type=int, default=3)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (test database)")
    parser.add_argument("--notes", type=Path, help="markdown appended to the section")
    args = bench_args(parser, argv, out=BENCHMARKS_MD)
    warnings.simplefilter("ignore")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(
        [
            "optuna",
            "sqlalchemy",
            "psycopg2",
            "grpc",
            "hpo.store._open",
            "hpo.store._postgres",
            __name__,
        ]
    )
    began = time.monotonic()
    runs: dict[tuple[str, int], list[Run]] = collections.defaultdict(list)
    for round_index in range(args.rounds):
        for n in args.workers:
            for contender in CONTENDERS:
                if contender == "proxy" and n not in args.proxy_workers:
                    continue
                window_s = max(args.seconds, n * args.seconds_per_worker)
                run = run_once(context, contender, n, args.url, window_s)
                runs[(contender, n)].append(run)
                logger.info(
                    "round %d N=%-3d %-5s %6.1f trials/s ask p50 %.1f p99 %.1f ms, %.1f stmts "
                    "%.1f commits %.1f CPU ms per trial, started %d, errors %s",
                    round_index + 1,
                    n,
                    contender,
                    run.trials_per_s,
                    run.ask_p50_ms,
                    run.ask_p99_ms,
                    run.statements_per_trial,
                    run.commits_per_trial,
                    run.cpu_ms_per_trial,
                    run.started,
                    dict(run.errors) or 0,
                )
    times = cold_starts(context, args.url, args.cold_rounds)
    logger.info("cold starts %s; total %.0f s", dict(times), time.monotonic() - began)
    table = render_table(runs, args.workers)
    cold = render_cold(times)
    print(table, cold, sep="\n\n")
    if args.no_write:
        return
    figure = FIGURES / "coordination.png"
    plot(runs, args.workers, figure)
    command = command_line("bench.coordination", parser, args, "url", "notes")
    facts = [f"load average at the end {load_average()} (compare rows of one round)"]
    cold = f"Fresh process, study with {BIG_STUDY_TRIALS} finished trials (TPE):\n\n{cold}"
    picture = "![trials/s and ask p99 against workers](bench/figures/coordination.png)"
    notes = args.notes.read_text() if args.notes else ""
    body = section_body(command, facts, __doc__, table, cold, picture, notes)
    update_section(HEADING, body, path=args.out)
    logger.info("wrote %s and %s", args.out, figure)


if __name__ == "__main__":
    main()
