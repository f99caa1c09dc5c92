"""The studies of ``bench.pruning``, run inside ``bench/.venv-mfp`` (see that module).

    bench/.venv-mfp/bin/python -m bench._mfp_worker --out RESULTS.json [options]

Needs ``mfhpo-benchmark-api`` (its ``MFHartmann``), optuna, and the project's ``hpo`` package
on ``PYTHONPATH`` (``hpo`` imports pydantic and PyYAML, so the venv has those too). Writes one
JSON file: per function its settings, optimum and low/high-fidelity rank correlation; per study
the curve of (fidelity steps spent, incumbent's noise-free value) after every trial.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import pool_map, product_sampler

logger = logging.getLogger("bench._mfp_worker")

# Where the Hartmann functions take their global minimum (-3.86278 and -3.32237); at full
# fidelity MF-Hartmann's bias term vanishes, so these are its optima too.
HARTMANN_ARGMIN: dict[int, tuple[float, ...]] = {
    3: (0.114614, 0.555649, 0.852547),
    6: (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573),
}
MAX_FIDELITY = 100  # MFHartmann's fidelity z runs up to this; step k evaluates z = (k+1)/n_steps


@dataclass(frozen=True)
class Function:
    """One MF-Hartmann variant: ``bias`` scales how far low fidelities are from the truth."""

    name: str
    dim: int
    bias: float


# bias 0.1 is MFHartmann's (and Dragonfly's) default: low fidelities rank configurations as the
# full fidelity does. At 2.0 and 3.0 the low-fidelity weights of the four Hartmann bumps reorder,
# so early steps mislead (the measured rank correlation goes into the report).
FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("mfh3", 3, 0.1),
        Function("mfh3-bias2", 3, 2.0),
        Function("mfh3-bias3", 3, 3.0),
        Function("mfh6", 6, 0.1),
        Function("mfh6-bias2", 6, 2.0),
        Function("mfh6-bias3", 6, 3.0),
    )
}


def fidelities(n_steps: int) -> list[int]:
    """The fidelity evaluated at each step, increasing to ``MAX_FIDELITY``."""
    return [round(MAX_FIDELITY * (k + 1) / n_steps) for k in range(n_steps)]


def make_function(function: Function, n_steps: int, *, seed: int | None, noisy: bool) -> Any:
    """An ``MFHartmann``; ``noisy`` adds the package's Gaussian noise to every evaluation."""
    from benchmark_apis import MFHartmann  # type: ignore[import-not-found]

    return MFHartmann(
        dim=function.dim,
        bias=function.bias,
        seed=seed,
        min_fidel=fidelities(n_steps)[0],
        max_fidel=MAX_FIDELITY,
        deterministic=not noisy,
    )


def evaluate(bench: Any, x: Sequence[float], fidelity: int) -> float:
    config = {f"x{d}": float(v) for d, v in enumerate(x)}
    return float(bench(config, fidels={"z0": fidelity})["loss"])


def describe(function: Function, n_steps: int, n_configs: int = 1000) -> dict[str, Any]:
    """Settings, known optimum, and Spearman correlation of step-0 and full-fidelity values."""
    import numpy as np
    from scipy.stats import spearmanr  # type: ignore[import-untyped]

    exact = make_function(function, n_steps, seed=None, noisy=False)
    zs = fidelities(n_steps)
    rng = np.random.default_rng(0)
    xs = rng.random((n_configs, function.dim))
    first = [evaluate(exact, x, zs[0]) for x in xs]
    half = [evaluate(exact, x, zs[n_steps // 2 - 1]) for x in xs]
    full = [evaluate(exact, x, zs[-1]) for x in xs]
    optimum = evaluate(exact, HARTMANN_ARGMIN[function.dim], zs[-1])
    return {
        **asdict(function),
        "optimum": optimum,
        "rho_first_full": float(spearmanr(first, full).statistic),
        "rho_half_full": float(spearmanr(half, full).statistic),
        "fidelities": zs,
    }


# --- the contenders ---------------------------------------------------------------------------


def _fold_aware(n_steps: int) -> Any:
    from hpo.search.pruners import make_pruner
    from trainer.steps import StepGrid

    # One fold whose epochs are the fidelity steps: the product's default pruner, as built for
    # a study with n_folds=1 and steps_per_fold=n_steps.
    # Options to compare settings of the default (e.g. '{"keep_percentile": 25}'); none: as shipped.
    options = json.loads(os.environ.get("HPO_BENCH_FOLD_AWARE_OPTIONS", "{}"))
    return make_pruner("fold_aware", options, StepGrid(n_folds=1, steps_per_fold=n_steps))


def _optuna_pruner(cls: str, n_steps: int) -> Any:
    import optuna

    return getattr(optuna.pruners, cls)()  # its defaults


PRUNERS: dict[str, Callable[[int], Any]] = {
    "fold_aware": _fold_aware,
    "none": partial(_optuna_pruner, "NopPruner"),
    "median": partial(_optuna_pruner, "MedianPruner"),
    "hyperband": partial(_optuna_pruner, "HyperbandPruner"),
}


def run_study(
    function: Function, pruner: str, seed: int, n_steps: int, budget_steps: int
) -> dict[str, Any]:
    """Trials until ``budget_steps`` fidelity steps are spent (the last trial may finish past it).

    The incumbent is the completed trial with the best *observed* (noisy) final value; the curve
    records its *noise-free* full-fidelity value, which is what a user would get from it.
    """
    import optuna

    started = time.perf_counter()
    # A fixed study name: Hyperband assigns trials to brackets by hashing it, so an
    # auto-generated (random) name would make reruns differ.
    study = optuna.create_study(
        study_name=f"{function.name}-{pruner}-{seed}",
        sampler=product_sampler(seed),  # the product's default TPE
        pruner=PRUNERS[pruner](n_steps),
    )
    noisy = make_function(function, n_steps, seed=seed, noisy=True)
    exact = make_function(function, n_steps, seed=None, noisy=False)
    zs = fidelities(n_steps)
    steps_spent = n_pruned = n_complete = 0
    best_observed = float("inf")
    incumbent = float("nan")
    curve: list[tuple[int, float]] = []
    while steps_spent < budget_steps:
        trial = study.ask()
        x = [trial.suggest_float(f"x{d}", 0.0, 1.0) for d in range(function.dim)]
        value = float("nan")
        pruned = False
        for step, z in enumerate(zs):
            value = evaluate(noisy, x, z)
            steps_spent += 1
            trial.report(value, step)
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            n_pruned += 1
        else:
            study.tell(trial, value)
            n_complete += 1
            if value < best_observed:
                best_observed = value
                incumbent = evaluate(exact, x, zs[-1])
        curve.append((steps_spent, incumbent))
    return {
        "function": function.name,
        "pruner": pruner,
        "seed": seed,
        "curve": curve,
        "n_complete": n_complete,
        "n_pruned": n_pruned,
        "wall_s": time.perf_counter() - started,
    }


def run_task(task: tuple[str, int, int, int, tuple[str, ...]]) -> list[dict[str, Any]]:
    """Every pruner on one (function, seed), one after another in a fixed order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    name, seed, n_steps, budget_steps, pruners = task
    import hpo.search.pruners
    import hpo.search.samplers  # noqa: F401  (imported up front so no contender's wall time pays for it)

    return [run_study(FUNCTIONS[name], p, seed, n_steps, budget_steps) for p in pruners]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds from this one on")
    parser.add_argument("--n-steps", type=int, default=10)
    parser.add_argument("--budget-steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", message=".*requirements not found.*")

    described = {name: describe(FUNCTIONS[name], args.n_steps) for name in args.functions}
    tasks = [
        (name, seed, args.n_steps, args.budget_steps, tuple(args.pruners))
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for name in args.functions
    ]
    runs = pool_map(
        run_task,
        tasks,
        args.workers,
        lambda runs: (
            f"{runs[0]['function']} seed {runs[0]['seed']}: "
            + ", ".join(
                f"{r['pruner']} {r['curve'][-1][1]:.3f} "
                f"({r['n_complete']}+{r['n_pruned']}p, {r['wall_s']:.1f}s)"
                for r in runs
            )
        ),
    )
    from importlib.metadata import version

    payload = {
        "functions": described,
        "runs": runs,
        "versions": {p: version(p) for p in ("optuna", "mfhpo-benchmark-api", "numpy")},
        "settings": {
            key: getattr(args, key)
            for key in ("seeds", "first_seed", "n_steps", "budget_steps", "pruners", "workers")
        },
    }
    args.out.write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
