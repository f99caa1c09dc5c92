"""Trial setup and store traffic on the demo: what a trial costs besides training.

    python -m bench.trial_overhead --trials 6 --out BENCHMARKS.md

Runs the demo study (``studies/demo.yaml``, its budget cut to ``--trials``) in one real worker
process (``hpo.worker.loop.Worker``, as ``hpo worker`` runs it) per store, one after the other:

* ``journal``: ours on the embedded default (a journal file; what ``make demo`` uses);
* ``postgresql``: ours on PostgreSQL (lean statements, one connection per burst of operations);
* ``postgresql-plain``: the same worker on Optuna's own ``RDBStorage`` with heartbeats (what
  wiring Optuna into a training script by hand gives), the baseline.

Every store operation the worker makes (study, trial, sampler, pruner and heartbeat thread
alike) goes through a counting wrapper: calls, and on PostgreSQL the SQL statements, commits
and connections opened (SQLAlchemy events). ``overhead`` = time of the worker's main thread
inside store operations, the sampler and the pruner (outermost calls only, so a store read
inside the sampler counts once), against the trial's wall time (trial handed out to the next
one). ``setup`` = trial handed out (``create_new_trial`` returned) to its first training forward
pass (and to its first optimizer step, one batch later); the first trial of the process also
shows process start (spawn) to that forward.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._common import (
    FIGURES,
    ROOT,
    FirstStep,
    bench_args,
    command_line,
    figure,
    load_average,
    median,
    run_child,
    section_body,
    update_section,
)

logger = logging.getLogger("bench.trial_overhead")

HEADING = "Trial setup and store traffic on the demo"
STORES = ("journal", "postgresql", "postgresql-plain")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class Meter:
    """Counts and times the outermost instrumented calls, per trial and per thread kind."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.trial: int | None = None  # the trial id handed out last
        self.handed_out: dict[int, float] = {}
        self.first: dict[int, FirstStep] = {}  # when a trial's first forward and step came
        self.finished: dict[int, tuple[float, str]] = {}
        # (trial or -1, "main" | "heartbeat") -> [calls, seconds, statements, commits, connects]
        self.cells: dict[tuple[int, str], list[float]] = {}

    def _cell(self) -> list[float]:
        kind = "main" if threading.current_thread() is threading.main_thread() else "heartbeat"
        key = (self.trial if self.trial is not None else -1, kind)
        with self._lock:
            return self.cells.setdefault(key, [0, 0.0, 0, 0, 0])

    def wrap(
        self,
        owner: Any,
        name: str,
        on_return: Callable[[Any, tuple[Any, ...], dict[str, Any]], None] | None = None,
    ) -> None:
        inner = getattr(owner, name)
        local = self._local

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(local, "depth", 0)
            local.depth = depth + 1
            began = time.perf_counter()
            try:
                result = inner(*args, **kwargs)
            finally:
                local.depth = depth
                if depth == 0:
                    cell = self._cell()
                    cell[0] += 1
                    cell[1] += time.perf_counter() - began
            if on_return is not None and depth == 0:
                on_return(result, args, kwargs)
            return result

        setattr(owner, name, timed)

    def sql(self, index: int) -> None:
        self._cell()[index] += 1

    def trial_created(self, trial_id: Any, *_: Any) -> None:
        self._handed_out(int(trial_id))

    def _handed_out(self, trial_id: int) -> None:
        if self.trial is not None:  # global hooks cost every module call: only until used
            self.first[self.trial].remove()
        self.trial = trial_id
        self.handed_out[trial_id] = time.time()
        self.first[trial_id] = FirstStep(time.time)

    def state_set(self, _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        trial_id = int(args[0] if args else kwargs["trial_id"])
        state = args[1] if len(args) > 1 else kwargs["state"]
        if state.name in FINISHED:
            self.finished[trial_id] = (time.time(), state.name)
        elif state.name == "RUNNING" and threading.current_thread() is threading.main_thread():
            self._handed_out(trial_id)  # a waiting (re-queued) trial was popped by ask


STORE_METHODS = (
    "create_new_trial",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "get_study_id_from_name",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "fail_stale_trials",
    "get_heartbeat_interval",
    "get_failed_trial_callback",
    "check_trial_is_updatable",
)
SAMPLER_METHODS = (
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "before_trial",
    "after_trial",
)


def _engine(storage: Any) -> Any:
    """The SQLAlchemy engine behind ``storage``, or None (journal)."""
    for candidate in (storage, getattr(storage, "inner", None)):
        if candidate is None:
            continue
        engine = getattr(candidate, "engine", None) or getattr(
            getattr(candidate, "_backend", None), "engine", None
        )
        if engine is not None:
            return engine
    return None


def child(store: str, url: str, study_name: str, threads: int, out: Path) -> None:
    """One worker in this fresh process, instrumented; per-trial numbers as JSON to ``out``."""
    started_import = time.time()
    import optuna
    import torch

    import hpo.worker.loop as worker_module
    from hpo.store import (
        DEFAULT_GRACE_PERIOD_S,
        DEFAULT_HEARTBEAT_INTERVAL_S,
        normalize_postgres_url,
    )

    torch.set_num_threads(threads)
    imported = time.time()
    meter = Meter()
    engines: list[Any] = []
    if store == "postgresql-plain":

        def plain(*_: Any, **__: Any) -> Any:
            return optuna.storages.RDBStorage(
                normalize_postgres_url(url),
                heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL_S,
                grace_period=DEFAULT_GRACE_PERIOD_S,
            )

        worker_module.open_storage = plain  # type: ignore[assignment]
    opener = worker_module.open_storage

    def opened(*args: Any, **kwargs: Any) -> Any:
        storage = opener(*args, **kwargs)
        engine = _engine(storage)
        if engine is not None:
            from sqlalchemy import event

            event.listen(engine, "before_cursor_execute", lambda *_: meter.sql(2))
            event.listen(engine, "commit", lambda *_: meter.sql(3))
            event.listen(engine, "connect", lambda *_: meter.sql(4))
            engines.append(engine)
        return storage

    worker_module.open_storage = opened  # type: ignore[assignment]
    options = worker_module.WorkerOptions(storage_url=url, study_name=study_name, device="cpu")
    worker = worker_module.Worker(options)
    loaded = time.time()
    storage = worker.study._storage
    hooks = {"create_new_trial": meter.trial_created, "set_trial_state_values": meter.state_set}
    for name in STORE_METHODS:
        if hasattr(storage, name):
            meter.wrap(storage, name, hooks.get(name))
    for name in SAMPLER_METHODS:
        meter.wrap(worker.study.sampler, name)
    meter.wrap(worker.study.pruner, "prune")
    summary = worker.run()
    ended = time.time()
    trials = []
    for trial_id, handed in sorted(meter.handed_out.items()):
        cells = {
            kind: meter.cells.get((trial_id, kind), [0, 0.0, 0, 0, 0])
            for kind in ("main", "heartbeat")
        }
        finished_at, state = meter.finished.get(trial_id, (ended, "?"))
        trials.append(
            {
                "trial_id": trial_id,
                "state": state,
                "handed_out": handed,
                "first_step": meter.first[trial_id].at,
                "first_forward": meter.first[trial_id].forward_at,
                "finished": finished_at,
                "main": cells["main"],
                "heartbeat": cells["heartbeat"],
            }
        )
    # Each trial's span runs to the next trial's hand-out (its tell and the next ask included).
    for this, following in itertools.pairwise(trials):
        this["span_s"] = following["handed_out"] - this["handed_out"]
    if trials:
        trials[-1]["span_s"] = ended - trials[-1]["handed_out"]
    out.write_text(
        json.dumps(
            {
                "import_s": imported - started_import,
                "imported": imported,
                "loaded": loaded,
                "ended": ended,
                "before_first": meter.cells.get((-1, "main"), [0, 0.0, 0, 0, 0]),
                "completed": summary.completed,
                "pruned": summary.pruned,
                "trials": trials,
            }
        )
    )


def _create(store: str, url: str, trials: int) -> str:
    """A fresh copy of the demo study in ``url``; returns its name."""
    from hpo.spec.model import load_spec
    from hpo.store import open_storage
    from hpo.study import create_study

    spec = load_spec(ROOT / "studies" / "demo.yaml")
    name = f"bench-overhead-{store}-{uuid.uuid4().hex[:8]}"
    budget = spec.budget.model_copy(update={"n_trials": trials, "timeout_s": None})
    spec = spec.model_copy(update={"name": name, "budget": budget})
    create_study(spec, open_storage(url))
    return name


def run_store(store: str, url: str, trials: int, threads: int) -> dict[str, Any]:
    name = _create(store, url, trials)
    spawned = time.time()
    command = ["--child", store, "--url", url, "--study", name, "--threads", str(threads)]
    result: dict[str, Any] = run_child("bench.trial_overhead", command)
    result["spawned"] = spawned
    return result


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """Per-trial medians and run totals for one store."""
    trials = result["trials"]
    warm = [t for t in trials[1:] if t["first_forward"] is not None]
    main_s = sum(t["main"][1] for t in trials)
    span_s = sum(t["span_s"] for t in trials)
    return {
        "trials": len(trials),
        "calls": median([t["main"][0] + t["heartbeat"][0] for t in trials]),
        "statements": median([t["main"][2] + t["heartbeat"][2] for t in trials]),
        "commits": median([t["main"][3] + t["heartbeat"][3] for t in trials]),
        "connects": median([t["main"][4] + t["heartbeat"][4] for t in trials]),
        "overhead_ms": median([1000 * t["main"][1] for t in trials]),
        "trial_s": median([t["span_s"] for t in trials]),
        "share": main_s / span_s if span_s else float("nan"),
        "warm_setup_s": median([t["first_forward"] - t["handed_out"] for t in warm]),  # NaN: none
        "warm_step_s": median([t["first_step"] - t["handed_out"] for t in warm]),
        "first_setup_s": (trials[0]["first_forward"] or float("nan")) - trials[0]["handed_out"],
        "fresh_s": (trials[0]["first_forward"] or float("nan")) - result["spawned"],
        "to_imported_s": result["imported"] - result["spawned"],
        "to_loaded_s": result["loaded"] - result["spawned"],
        "to_handed_out_s": trials[0]["handed_out"] - result["spawned"],
    }


def render(rows: dict[str, dict[str, float]]) -> str:
    plain = rows.get("postgresql-plain")
    traffic = [
        "| store | trials | store calls / trial | SQL statements / trial | commits / trial "
        "| connections opened / trial | overhead / trial (ms) | trial wall (s) | overhead share |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for store, r in rows.items():
        ratio = ""
        if plain and store != "postgresql-plain" and r["statements"] and plain["statements"]:
            ratio = f" ({plain['statements'] / r['statements']:.1f}× fewer than plain)"
        traffic.append(
            f"| {store} | {r['trials']:.0f} | {r['calls']:.0f} | {r['statements']:.0f}{ratio} "
            f"| {r['commits']:.0f} | {r['connects']:.0f} | {r['overhead_ms']:.0f} "
            f"| {r['trial_s']:.1f} | {100 * r['share']:.2f} % |"
        )
    setup = [
        "| store | fresh process: start → imports done (s) | → study loaded (s) "
        "| → 1st trial handed out (s) | → 1st training forward (s) | 1st trial: handed out → "
        "1st forward (s) | warm trials: handed out → 1st forward (s, median) "
        "| warm: → 1st optimizer step (s) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for store, r in rows.items():
        setup.append(
            f"| {store} | {r['to_imported_s']:.2f} | {r['to_loaded_s']:.2f} "
            f"| {r['to_handed_out_s']:.2f} | {r['fresh_s']:.2f} | {r['first_setup_s']:.2f} "
            f"| {r['warm_setup_s']:.2f} | {r['warm_step_s']:.2f} |"
        )
    return "\n".join(traffic) + "\n\n" + "\n".join(setup)


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    """Left: a fresh process's way to its first training step; right: per-trial overhead."""
    with figure(path, 1, 2, figsize=(11, 3.6), dpi=100) as (fig, (setup_ax, share_ax)):
        stages = (
            ("imports", "to_imported_s"),
            ("open store + load study", "to_loaded_s"),
            ("1st ask", "to_handed_out_s"),
            ("data, weights, model", "fresh_s"),
        )
        names = list(rows)
        for y, name in enumerate(names):
            left = 0.0
            for i, (label, key) in enumerate(stages):
                width = rows[name][key] - left
                setup_ax.barh(y, width, left=left, color=f"C{i}", label=label if y == 0 else None)
                left = rows[name][key]
            setup_ax.barh(
                y + 0.4,
                rows[name]["warm_setup_s"],
                height=0.3,
                color="k",
                label="warm trial: handed out → 1st forward" if y == 0 else None,
            )
        setup_ax.set_yticks(range(len(names)), names)
        setup_ax.set_xlabel("seconds from process start to 1st training forward")
        setup_ax.legend(fontsize=7, loc="lower right")
        share_ax.bar(names, [100 * rows[n]["share"] for n in names], color="C4")
        share_ax.set_ylabel("store + sampler + pruner, % of trial time")
        share_ax.axhline(1.0, color="k", linestyle=":", linewidth=1)
        fig.suptitle("Demo study, one worker: trial setup and coordination overhead")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--postgres", default=os.environ.get("HPO_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", choices=STORES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--study", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = bench_args(parser, argv)
    if args.child:
        child(args.child, args.url, args.study, args.threads, args.json)
        return
    started = time.monotonic()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            url = str(Path(tmp) / "journal.log") if store == "journal" else args.postgres
            result = run_store(store, url, args.trials, args.threads)
            rows[store] = summarize(result)
            logger.info("%s: %s", store, json.dumps(rows[store]))
    table = render(rows)
    print(table)
    if args.out:
        command = command_line("bench.trial_overhead", parser, args, "postgres")
        facts = [
            f"{args.threads} torch threads",
            f"load average now {load_average()}",
            f"{time.monotonic() - started:.0f} s in all",
        ]
        figure = FIGURES / "trial_overhead.png"
        plot(rows, figure)
        picture = (
            f"![trial setup and overhead]({os.path.relpath(figure, args.out.parent.resolve())})"
        )
        body = section_body(command, facts, __doc__, table, picture)
        update_section(HEADING, body, args.out)


if __name__ == "__main__":
    main()
