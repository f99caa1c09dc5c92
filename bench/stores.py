"""Which embedded store: raw ask/tell throughput of SQLite vs the journal file, N processes.

    python -m bench.stores --workers 1 8 32 64 --seconds 15 --repeats 2 --out BENCHMARKS.md

Each contender runs N OS processes for a fixed window, each looping ask → suggest → report ×2
→ tell (what a worker does per trial, minus training), with one heartbeat per trial for the
heartbeat-enabled stores. Contenders are interleaved (A B C D, A B C D, …) and the medians of
the repeats are reported.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.stores")

KINDS = ("sqlite", "journal", "hpo-sqlite", "hpo-journal")


def _storage(kind: str, path: Path) -> Any:
    import optuna

    if kind == "sqlite":
        return optuna.storages.RDBStorage(
            f"sqlite:///{path}.db", engine_kwargs={"connect_args": {"timeout": 60}}
        )
    if kind == "journal":
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(f"{path}.log")
        )
    from hpo.storage import open_storage

    return open_storage(f"sqlite:///{path}.db" if kind == "hpo-sqlite" else f"{path}.log")


def _loop(kind: str, path: str, study: str, seconds: float, queue: Any) -> None:
    import warnings

    import optuna

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    latencies: list[float] = []
    errors = 0
    try:
        storage = _storage(kind, Path(path))
        s = optuna.load_study(
            study_name=study, storage=storage, sampler=optuna.samplers.RandomSampler()
        )
    except Exception:
        queue.put((latencies, 1, False))
        return
    beat = kind.startswith("hpo-")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            started = time.perf_counter()
            trial = s.ask()
            latencies.append(time.perf_counter() - started)
            x = trial.suggest_float("x", -10, 10)
            if beat:
                storage.record_heartbeat(trial._trial_id)
            trial.report(x, 0)
            trial.report(x * 2, 1)
            s.tell(trial, x * x)
        except Exception:
            errors += 1
    queue.put((latencies, errors, True))


@dataclass
class Outcome:
    trials_per_s: float
    ask_p50_ms: float
    ask_p99_ms: float
    errors: int
    processes_ok: int


def run_once(kind: str, n: int, seconds: float) -> Outcome:
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        storage = _storage(kind, path)
        optuna.create_study(study_name="bench", storage=storage)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_loop, args=(kind, str(path), "bench", seconds, queue))
            for _ in range(n)
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=seconds + 600) for _ in procs]
        for p in procs:
            p.join()
        study = optuna.load_study(study_name="bench", storage=_storage(kind, path))
        complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    latencies = sorted(x for r in results for x in r[0])

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3
            if latencies
            else float("nan")
        )

    return Outcome(
        complete / seconds,
        pct(0.5),
        pct(0.99),
        sum(r[1] for r in results),
        sum(r[2] for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs: dict[tuple[str, int], list[Outcome]] = {}
    for repeat in range(args.repeats):
        for n in args.workers:
            for kind in KINDS:  # interleaved: every contender once per round
                outcome = run_once(kind, n, args.seconds)
                logger.info("round %d  %-12s N=%-3d %s", repeat, kind, n, outcome)
                runs.setdefault((kind, n), []).append(outcome)
    lines = [
        "| store | processes | trials/s | ask p50 (ms) | ask p99 (ms) | errors | processes ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in args.workers:
        for kind in KINDS:
            outs = runs[(kind, n)]
            lines.append(
                f"| {kind} | {n} | {statistics.median(o.trials_per_s for o in outs):.1f} | "
                f"{statistics.median(o.ask_p50_ms for o in outs):.1f} | "
                f"{statistics.median(o.ask_p99_ms for o in outs):.1f} | "
                f"{max(o.errors for o in outs)} | {min(o.processes_ok for o in outs)}/{n} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        import optuna
        import sqlalchemy

        header = (
            f"\n## Embedded store: SQLite vs journal file\n\n"
            f"`python -m bench.stores --workers {' '.join(map(str, args.workers))} "
            f"--seconds {args.seconds:g} --repeats {args.repeats} --out BENCHMARKS.md`  \n"
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, {mp.cpu_count()} cores, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
            f"Optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}. Medians of "
            f"{args.repeats} interleaved rounds of {args.seconds:g} s. `hpo-*` rows are our "
            "stores (heartbeat per trial; SQLite behind our retrying wrapper).\n\n"
        )
        existing = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
        args.out.write_text(existing.rstrip("\n") + "\n" + header + table + "\n")


if __name__ == "__main__":
    main()
