"""Samplers × pruners replayed on the real task: studies run against a surrogate of the demo's
learning-curve table, charged the table's real seconds.

    python -m bench.replay --seeds 20 --out BENCHMARKS.md

A full run with its checks, as BENCHMARKS.md records it (``--keep`` files are JSON lines, one
study each; ``--resume`` skips studies already in them; ``--results`` summarizes without
running)::

    python -m bench.replay --seeds 40 --workers 2 --keep gp.jsonl --no-write
    python -m bench.replay --seeds 20 --workers 2 --surrogate nn --keep nn.jsonl --no-write
    python -m bench.replay --seeds 20 --cost table --keep table.jsonl --no-write \
        --contenders ours random-nopruning hf-default ours-nopruning hyperband
    python -m bench.replay --seeds 40 --results gp.jsonl --check nn typical nn.jsonl \
        --check gp table table.jsonl --offline offline.jsonl --out BENCHMARKS.md

``--offline`` reads ``bench.search_quality`` studies of ``ours`` and ``ours-gp`` (one task's
list of runs a line; ``--offline-seeds N`` first runs the ones it lacks, which needs the
``bench`` extra).

The table (``bench/data/rt_curves.json``, built by ``bench.curves``) holds real MiniLM
fine-tunes on Rotten Tomatoes: 3 folds × 3 epochs per configuration, quasi-random points, no
pruning. ``bench/_surrogate.py`` turns it into a task any point of the spec's space can be
proposed to (how, and how faithfully, is in its docstring and in the section this writes).

Defaults: ``--surrogate gp`` (the better leave-one-out fidelity of the two, and a landscape
that is smooth between the table's rows rather than one flat cell per row) and ``--cost
typical`` (the recorded seconds carry the load of whatever else ran on the machine while the
table was built, up to 20x a quiet trial's, which would charge a proposal for another job).
``--check SURROGATE COST RUNS`` adds the same summary for studies saved from a run with the
other choices, so a conclusion that hinges on either shows.

Each replayed trial is what a worker does, without the training: the sampler proposes through
``hpo.spec.space.suggest`` on the spec's own space; the trial reports every fold × epoch score of
its curve on the study's ``StepGrid`` (step ``grid.step(fold, epoch, epochs)``), asks
``should_prune`` after each report but the last, is charged the seconds of every step it ran,
and is told its CV mean (the mean of its folds' last-epoch scores) or PRUNED. One worker, one
trial at a time. A study runs until it has spent ``--budget-trials`` times the compute of an
average unpruned trial *and* finished ``--min-trials`` trials (the trial budgets of the
sampler decision are read from the same studies).

Contenders (``CONTENDERS``; the same seeds for all; the sampler seed is the spec seed):

* ``ours``: ``make_sampler(SamplerSpec(seed=s))`` (multivariate TPE, constant liar, 5 start-up
  trials) and ``make_pruner("fold_aware", {}, grid)``: the product's defaults.
* ``ours-nopruning``, ``random-nopruning``: TPE or ``random`` with ``none``.
* ``gp``, ``gp-nopruning``: the ``gp`` sampler with the default pruner, or none.
* ``hyperband``: the default sampler with ``make_pruner("hyperband", {}, grid)``.
* ``ours-warmup8``: the default pruner with ``n_startup_trials=8`` (the default is 4).
* ``hf-default``: what ``Trainer.hyperparameter_search(backend="optuna")`` does: its
  ``run_hp_search_optuna`` calls ``optuna.create_study(direction=...)`` with no sampler or
  pruner, so Optuna's defaults, ``TPESampler()`` (seeded with s here; 10 start-up trials) and
  ``MedianPruner()`` (5 start-up trials, no warm-up); a trial is one training run on one split,
  and with ``eval_strategy="epoch"`` ``Trainer`` reports the eval metric at its global step
  after every epoch and raises ``TrialPruned`` whenever ``should_prune()`` says so, after the
  last epoch too (such a trial has spent its compute and can no longer win). Emulated as:
  fold 0 of the table's CV (train on 2/3, evaluate on 1/3) is the split, epoch ``e`` is
  reported at global step ``(e + 1) · ⌈train rows / batch size⌉``, the study sees fold 0's
  last score, and the incumbent's regret is measured on its *CV mean*, as for every contender.

Regret after ``c`` seconds of compute: the best true final CV mean of the surrogate minus the
true final CV mean of the incumbent, the completed trial with the best value *the study saw*
among those finished by then (accuracy, ×100 = points).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bench._common import BENCHMARKS_MD, ROOT, bench_args, load_average, run_date
from bench._surrogate import COSTS, SURROGATES, CostModel, Surrogate, SurrogateKind

if TYPE_CHECKING:
    import optuna

    from bench._surrogate import CurveTable

logger = logging.getLogger("bench.replay")

TABLE = ROOT / "bench" / "data" / "rt_curves.json"
Protocol = Literal["cv", "one-split"]


@dataclass(frozen=True)
class Contender:
    """A sampler, a pruner and how a trial reports (``cv``: every fold × epoch on the grid;
    ``one-split``: fold 0's epochs at Trainer's global steps, asked after every report)."""

    name: str
    sampler: str
    pruner: str
    pruner_options: Mapping[str, Any] = field(default_factory=dict)
    protocol: Protocol = "cv"


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("ours", "tpe", "fold_aware"),
        Contender("random-nopruning", "random", "none"),
        Contender("hf-default", "optuna-default", "optuna-median", protocol="one-split"),
        Contender("gp", "gp", "fold_aware"),
        Contender("hyperband", "tpe", "hyperband"),
        Contender("ours-nopruning", "tpe", "none"),
        Contender("gp-nopruning", "gp", "none"),
        Contender("ours-warmup8", "tpe", "fold_aware", {"n_startup_trials": 8}),
    )
}
DEFAULT_CONTENDERS: tuple[str, ...] = tuple(CONTENDERS)


def make_study_sampler(name: str, seed: int, table: CurveTable) -> optuna.samplers.BaseSampler:
    """The contender's sampler, built as the product builds it (or as Optuna's default)."""
    import optuna

    from hpo.search.samplers import make_sampler
    from hpo.spec.model import SamplerSpec

    if name == "optuna-default":
        return optuna.samplers.TPESampler(seed=seed)
    return make_sampler(SamplerSpec(name=name, seed=seed), table.space)  # type: ignore[arg-type]


def make_study_pruner(contender: Contender, table: CurveTable) -> optuna.pruners.BasePruner:
    """The contender's pruner on the table's step grid (or Optuna's default MedianPruner)."""
    import optuna

    from hpo.search.pruners import make_pruner
    from hpo.study import step_grid

    if contender.pruner == "optuna-median":
        return optuna.pruners.MedianPruner()
    pruner: optuna.pruners.BasePruner = make_pruner(
        contender.pruner, contender.pruner_options, step_grid(table.spec)
    )
    return pruner


# --- one study --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One replayed study, trial by trial in the order they finished.

    ``spent_s[i]``: compute charged once trial ``i`` finished; ``seen[i]``: the value the study
    was told (None if pruned); ``true[i]``: its configuration's true final CV mean;
    ``stop_step[i]``: the last step it reported; ``row[i]``: the table row whose curve it ran.
    """

    contender: str
    seed: int
    spent_s: list[float]
    seen: list[float | None]
    true: list[float]
    stop_step: list[int]
    row: list[int]
    wall_s: float


def run_study(
    surrogate: Surrogate, contender: Contender, seed: int, budget_s: float, min_trials: int
) -> Run:
    """Ask, replay and tell trials until ``budget_s`` is spent and ``min_trials`` finished."""
    import optuna

    from hpo.spec.space import suggest
    from hpo.study import step_grid

    table = surrogate.table
    grid = step_grid(table.spec)
    n_folds, epochs = table.scores.shape[1:]
    if table.spec.search.space.epochs is not None or epochs != grid.steps_per_fold:
        raise ValueError("the replay needs a table whose epochs are not searched")
    steps_per_epoch = _trainer_steps_per_epoch(table)
    started = time.perf_counter()
    study = optuna.create_study(
        direction="maximize",
        sampler=make_study_sampler(contender.sampler, seed, table),
        pruner=make_study_pruner(contender, table),
    )
    spent = 0.0
    run = Run(contender.name, seed, [], [], [], [], [], 0.0)
    while spent < budget_s or len(run.true) < min_trials:
        trial = study.ask()
        outcome = surrogate.outcome(suggest(trial, table.space))
        scores = surrogate.rerun(outcome, np.random.default_rng([seed, trial.number]))
        if contender.protocol == "cv":
            plan = [
                (fold, epoch, grid.step(fold, epoch, epochs))
                for fold in range(n_folds)
                for epoch in range(epochs)
            ]
        else:
            plan = [(0, epoch, (epoch + 1) * steps_per_epoch) for epoch in range(epochs)]
        pruned = False
        for index, (fold, epoch, step) in enumerate(plan):
            spent += float(outcome.seconds[fold, epoch])
            trial.report(float(scores[fold, epoch]), step)
            # Ours never asks after the last step (the trainer's rule); Trainer always asks.
            ask = index < len(plan) - 1 or contender.protocol == "one-split"
            if ask and trial.should_prune():
                pruned = True
                break
        seen: float | None
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            seen = None
        else:
            folds = sorted({fold for fold, _, _ in plan})
            seen = float(scores[folds, -1].mean())
            study.tell(trial, seen)
        run.spent_s.append(spent)
        run.seen.append(seen)
        run.true.append(outcome.true_mean)
        run.stop_step.append(step)
        run.row.append(outcome.row)
    return Run(**{**asdict(run), "wall_s": time.perf_counter() - started})


def _trainer_steps_per_epoch(table: CurveTable) -> int:
    """Optimizer steps per epoch on one fold's training part (Trainer's global-step unit)."""
    spec = table.spec
    rows = spec.data.subsample
    if rows is None:
        return 1
    train_rows = rows - math.ceil(rows / spec.cv.n_folds)
    return math.ceil(train_rows / spec.train.batch_size)


# --- many studies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What every study of a run shares."""

    table: str
    max_rows: int | None
    surrogate: SurrogateKind
    cost: CostModel
    budget_trials: float
    min_trials: int
    noise: bool = True


_SURROGATES: dict[Settings, Surrogate] = {}


def surrogate_for(settings: Settings) -> Surrogate:
    """The run's surrogate, built once per process."""
    if settings not in _SURROGATES:
        from bench._surrogate import load_curve_table

        table = load_curve_table(Path(settings.table), max_rows=settings.max_rows)
        _SURROGATES[settings] = Surrogate(
            table, kind=settings.surrogate, cost=settings.cost, noise=settings.noise
        )
    return _SURROGATES[settings]


def budget_seconds(surrogate: Surrogate, budget_trials: float) -> float:
    """``budget_trials`` times the compute of an average unpruned trial under the cost model."""
    per_trial = [float(surrogate.outcome(p).seconds.sum()) for p in surrogate.table.params]
    return budget_trials * sum(per_trial) / len(per_trial)


def single_threaded(*, gp: bool = False) -> None:
    """One BLAS / OpenMP / torch thread per process: the pool is the parallelism, and on a
    shared machine a GP sampler's threads otherwise spin against each other (4x the CPU).
    ``gp``: torch's threads too (the GP sampler runs on torch)."""
    import os

    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"  # for libraries loaded later, and for spawned workers
    threadpool_limits(1)
    if gp:
        import torch

        torch.set_num_threads(1)


def run_task(task: tuple[Settings, str, int]) -> Run:
    import warnings

    import optuna

    single_threaded(gp=CONTENDERS[task[1]].sampler == "gp")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
    settings, name, seed = task
    surrogate = surrogate_for(settings)
    budget = budget_seconds(surrogate, settings.budget_trials)
    return run_study(surrogate, CONTENDERS[name], seed, budget, settings.min_trials)


def run_all(
    settings: Settings,
    contenders: Sequence[str],
    seeds: int,
    workers: int,
    keep: Path | None,
    done: Sequence[Run] = (),
) -> list[Run]:
    """Every (contender, seed) not in ``done``, GP first (slowest); appended to ``keep``."""
    have = {(r.contender, r.seed) for r in done}
    slow = [n for n in contenders if CONTENDERS[n].sampler == "gp"]
    fast = [n for n in contenders if n not in slow]
    tasks = [
        (settings, name, seed)
        for group in (slow, fast)
        for seed in range(seeds)
        for name in group
        if (name, seed) not in have
    ]
    runs = list(done)
    if not tasks:
        return runs
    pool_map: Callable[..., Any]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool_map = pool.imap_unordered if workers > 1 else map
        for finished, run in enumerate(pool_map(run_task, tasks), start=1):
            runs.append(run)
            if keep is not None:
                with keep.open("a") as out:
                    out.write(json.dumps(asdict(run)) + "\n")
            logger.info(
                "%d/%d %s seed %d: %d trials, %.1f s",
                finished,
                len(tasks),
                run.contender,
                run.seed,
                len(run.true),
                run.wall_s,
            )
    return runs


def offline_studies(path: Path, seeds: int) -> None:
    """Run ``bench.search_quality``'s studies of ``ours`` and ``ours-gp`` (100 trials, every
    table, seeds below ``seeds``) that ``path`` lacks, appending one task's runs a line."""
    from bench._replay_report import read_offline
    from bench.search_quality import DEFAULT_DATASETS, ensure_tables_package, make_tasks
    from bench.search_quality import run_task as run_offline_task

    ensure_tables_package()
    single_threaded(gp=True)
    done = {(run["dataset"], run["seed"]) for run in read_offline(path)} if path.exists() else set()
    tasks = make_tasks(DEFAULT_DATASETS, seeds, 100, seeds, ["ours", "ours-gp"])
    for task in sorted(tasks, key=lambda t: (t.seed, t.family != "hpobench")):
        if (task.dataset, task.seed) in done:
            continue
        runs = run_offline_task(task)
        with path.open("a") as out:
            out.write(json.dumps([asdict(r) for r in runs]) + "\n")
        logger.info("offline %s seed %d done", task.dataset, task.seed)


def read_runs(path: Path) -> list[Run]:
    """Runs saved by ``--keep`` (one JSON object a line)."""
    if not path.exists():
        return []
    return [Run(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    from bench import _replay_report as report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per contender")
    parser.add_argument("--table", type=Path, default=TABLE, help="the learning-curve table")
    parser.add_argument("--max-rows", type=int, help="use only the table's first N rows")
    parser.add_argument("--surrogate", choices=SURROGATES, default="gp")
    parser.add_argument("--cost", choices=COSTS, default="typical")
    parser.add_argument("--budget-trials", type=float, default=60.0)
    parser.add_argument("--min-trials", type=int, default=100)
    parser.add_argument("--no-noise", action="store_true", help="replay curves without seed noise")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), metavar="NAME")
    parser.add_argument("--keep", type=Path, help="append each study here (JSON lines)")
    parser.add_argument("--resume", action="store_true", help="skip studies already in --keep")
    parser.add_argument("--results", type=Path, help="summarize these saved studies, run none")
    parser.add_argument(
        "--offline", type=Path, help="search_quality studies (ours vs ours-gp), JSON lines"
    )
    parser.add_argument(
        "--offline-seeds", type=int, help="first run the --offline studies it lacks, N seeds"
    )
    parser.add_argument(
        "--check",
        nargs=3,
        action="append",
        default=[],
        metavar=("SURROGATE", "COST", "RUNS"),
        help="also summarize studies saved (--keep) from a run with another surrogate / cost",
    )
    parser.add_argument("--smoke", action="store_true", help="2 seeds, tiny budget (for CI)")
    args = bench_args(parser, argv, out=BENCHMARKS_MD)
    single_threaded()
    if args.smoke:
        args.seeds, args.budget_trials, args.min_trials = 2, 4.0, 0
    settings = Settings(
        str(args.table),
        args.max_rows,
        args.surrogate,
        args.cost,
        args.budget_trials,
        args.min_trials,
        not args.no_noise,
    )
    contenders = args.contenders or list(DEFAULT_CONTENDERS)
    started = time.perf_counter()
    if args.offline and args.offline_seeds:
        offline_studies(args.offline, args.offline_seeds)
    if args.results:
        runs = [r for r in read_runs(args.results) if r.contender in contenders]
    else:
        done = read_runs(args.keep) if args.keep and args.resume else []
        runs = run_all(settings, contenders, args.seeds, args.workers, args.keep, done)
    meta = {
        "date": run_date(),
        "load_average": load_average(),
        "wall_s": time.perf_counter() - started,
        "argv": list(argv) if argv is not None else None,
    }
    offline = report.read_offline(args.offline) if args.offline else None
    checks = []
    for kind, cost, path in args.check:
        other = Settings(**{**asdict(settings), "surrogate": kind, "cost": cost})
        checks.append((surrogate_for(other), read_runs(Path(path))))
    text = report.section(surrogate_for(settings), settings, runs, args, meta, offline, checks)
    if args.no_write:
        print(text)
    else:
        surrogate = surrogate_for(settings)
        report.write(text, args.out, surrogate, runs, budget_seconds(surrogate, args.budget_trials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
