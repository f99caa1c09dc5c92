"""The real-task learning-curve table: the demo task's every fold × epoch score, made by ``hpo``.

``python -m bench.curves build`` runs ``studies/rt-curves.yaml`` (the demo's task and search
space, 3 folds × 3 epochs, quasi-random points, no pruning) as an ordinary study on a journal
file kept in git (``bench/data/rt-curves.journal.log``), with one ``hpo worker`` process, then
writes ``bench/data/rt_curves.json``: per configuration its params, its held-out score after every
fold × epoch, and the wall seconds each of those steps took. Interrupted, the same command
continues the study where it stopped (a killed worker's trial is failed as stale and re-queued
with its finished folds). ``python -m bench.curves export`` rewrites the JSON from the study.

The table stands in for the task when samplers and pruners are replayed (``bench/replay.py``):
real curves at their real cost, without a GPU-hour per contender.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench._common import ROOT, machine_line, offline_env, run_date

SPEC = ROOT / "studies" / "rt-curves.yaml"
# The study itself is kept in git beside the table (about 10 KB a configuration), so a build
# interrupted on one machine continues on another.
STORE = ROOT / "bench" / "data" / "rt-curves.journal.log"
LOG_DIR = ROOT / ".hpo" / "curves"
TABLE = ROOT / "bench" / "data" / "rt_curves.json"
COMMAND = "python -m bench.curves build"

logger = logging.getLogger("bench.curves")


def _open(store: Path) -> tuple[Any, Any]:
    from hpo.store import open_storage
    from hpo.study import load_study

    return load_study(open_storage(str(store)), _spec().name)


def _spec() -> Any:
    from hpo.local.preflight import check_spec_file

    return check_spec_file(SPEC)


def build(store: Path, threads: int, workers: int) -> None:
    """Create the study (idempotent) and run workers until its budget is met."""
    from hpo.local.launch import worker_command
    from hpo.store import open_storage
    from hpo.study import create_study

    spec = _spec()
    store.parent.mkdir(parents=True, exist_ok=True)
    create_study(spec, open_storage(str(store)))
    env = offline_env(HPO_STORAGE=str(store))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(workers):
        log = open(LOG_DIR / f"worker-{index}.log", "ab")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                worker_command(spec.name, device="cpu", stream=index, threads=threads),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        )
    started = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(30)
            done = len(_finished_trials(store))
            print(
                f"[{time.monotonic() - started:7.0f} s] {done}/{spec.budget.n_trials} "
                "configurations finished",
                flush=True,
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    export(store)


def _finished_trials(store: Path) -> list[Any]:
    from optuna.trial import TrialState

    study, _ = _open(store)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def export(store: Path, out: Path = TABLE) -> Path:
    """Write the compact table from the study's completed trials (atomically)."""
    from hpo.records import saved_folds
    from hpo.views.export import data_fingerprint
    from trainer.config import EPOCH_SECONDS

    _, spec = _open(store)
    metric = spec.objective.metric
    configs = []
    for trial in sorted(_finished_trials(store), key=lambda t: t.number):
        folds = saved_folds(trial.user_attrs)
        if sorted(folds) != list(range(spec.cv.n_folds)):
            continue
        curves = [folds[f].curve for f in sorted(folds)]
        configs.append(
            {
                "trial": trial.number,
                "params": dict(trial.params),
                "scores": [[round(e[metric], 5) for e in curve] for curve in curves],
                "epoch_s": [[round(e[EPOCH_SECONDS], 2) for e in curve] for curve in curves],
            }
        )
    document = {
        "what": "held-out score after every fold x epoch of the demo task, no pruning",
        "command": COMMAND,
        "built": run_date(),
        "machine": machine_line(),
        "spec": spec.to_json_dict(),
        "data": data_fingerprint(spec),
        "versions": {
            p: metadata.version(p)
            for p in ("hpo-finetune", "torch", "transformers", "optuna", "numpy")
        },
        "metric": metric,
        "direction": spec.direction,
        "n_folds": spec.cv.n_folds,
        "epochs": spec.train.epochs,
        "layout": "scores[fold][epoch]; epoch_s[fold][epoch] = wall seconds of that epoch "
        "(training and evaluation)",
        "configs": configs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    tmp.replace(out)
    print(f"{len(configs)} configurations written to {out.relative_to(ROOT)}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "export"])
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.action == "build":
        build(args.store, args.threads, args.workers)
    else:
        export(args.store)


if __name__ == "__main__":
    main()
