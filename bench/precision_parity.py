"""Precision parity: cross-validated accuracy of bf16 autocast vs fp32 on the demo task.

    python -m bench.precision_parity --out BENCHMARKS.md      # 18 runs, about 10-15 min on 2 cores
    python -m bench.precision_parity --rows 64 --folds 2 --epochs 1 --seeds 0 --configs baseline \
        --results /tmp/parity.json                             # smoke

The demo study (``studies/demo.yaml``: MiniLM-L6 on Rotten Tomatoes, mean pooling, max_seq_len
48, batch 16, warmup 10 %, clipping 1.0) at ``--rows`` rows, ``--folds`` folds and ``--epochs``
epochs, cross-validated on CPU by the trainer's ``run_cv``, at fixed points of the demo's search
space (``baseline`` is its enqueued trial 0; ``low-lr`` and ``high-lr`` sit near the ends of its
lr range, with other dropout, penalties and frozen layers), for each seed in fp32 and in bf16
(autocast over fp32 weights, ``TrainerConfig.precision``). The seed is the training seed (the
head's initialization, dropout, batch order); the folds are the same for every run.

Noise: on CPU one seed in one precision gives the same scores every time, so run-to-run noise is
the spread between seeds at the same precision: per configuration and precision, the range (max
− min) of the CV mean accuracy over the seeds. The precision effect is the paired difference
bf16 − fp32 at the same configuration and seed. bf16 is at parity when the mean absolute paired
difference is within the mean seed range. Each finished run is appended to
``bench/data/precision_parity.json`` (``--results``), and a rerun with the same settings skips
the runs it holds, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._common import ROOT, bench_args, command_line, load_average, section_body, update_section
from trainer import ConfigError, Precision

logger = logging.getLogger("bench.precision_parity")

HEADING = "Precision: bf16 vs fp32 accuracy parity"
SPEC = ROOT / "studies" / "demo.yaml"
RESULTS = ROOT / "bench" / "data" / "precision_parity.json"
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
# Fixed points of the demo's search space besides its enqueued baseline (checked against it).
OTHER_CONFIGS: dict[str, dict[str, Any]] = {
    "low-lr": {"lr": 6e-5, "dropout": 0.15, "l1": 1e-8, "l2": 1e-5, "freeze_layers": 3},
    "high-lr": {"lr": 4e-4, "dropout": 0.05, "l1": 1e-6, "l2": 1e-4, "freeze_layers": 4},
}
# What identifies a run in the results file; a rerun skips the keys it finds.
KEY_FIELDS = ("config", "seed", "precision", "rows", "folds", "epochs")


def demo_configs(spec: Any) -> dict[str, dict[str, Any]]:
    """The configurations by name: the demo's enqueued trial 0, then :data:`OTHER_CONFIGS`.

    Raises:
        ValueError: a configuration the demo's search space cannot produce.
    """
    from hpo.spec.space import check_point

    configs = {"baseline": dict(spec.search.enqueue[0]), **OTHER_CONFIGS}
    for name, point in configs.items():
        problems = check_point(spec.search.space, point)
        if problems:
            raise ValueError(f"config {name}: {'; '.join(problems)}")
    return configs


def run_key(run: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(run[field] for field in KEY_FIELDS)


def load_runs(path: Path) -> list[dict[str, Any]]:
    """The finished runs in ``path``, in the order they finished (none if it does not exist)."""
    if not path.exists():
        return []
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"]
    return runs


def append_run(path: Path, run: dict[str, Any]) -> None:
    """Add one finished run to ``path`` (rewritten whole, atomically)."""
    runs = [*load_runs(path), run]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    tmp.replace(path)


def bf16_supported() -> bool:
    """Whether this CPU trains in bf16, by the trainer's own check (``resolve_precision``)."""
    from trainer import resolve_precision

    try:
        resolve_precision("bf16", "cpu")
    except ConfigError:
        return False
    return True


def run_one(
    spec: Any,
    params: Mapping[str, Any],
    *,
    seed: int,
    precision: Precision,
    rows: int,
    folds: int,
    epochs: int,
    cache_dir: str | None,
) -> dict[str, Any]:
    """One cross-validation of the demo at ``params``; its scores and timings.

    Raises:
        ConfigError: ``bf16`` on a CPU without native bf16 (checked before anything runs).
    """
    from hpo.translate import hyperparams_for, trainer_config
    from trainer import resolve_precision, run_cv

    if precision == "bf16" and not bf16_supported():
        raise ConfigError("the bf16 runs need a CPU with native bf16, and this one has none")
    config = trainer_config(
        spec,
        device="cpu",
        cache_dir=cache_dir,
        precision=resolve_precision(precision, "cpu"),
    )
    config = replace(config, n_folds=folds, data=replace(config.data, subsample=rows))
    hparams = replace(hyperparams_for(spec, params, seed), epochs=epochs)
    result = run_cv(hparams, config)
    return {
        "fold_scores": list(result.fold_scores),
        "mean": result.mean,
        "train_examples_per_s": result.train_examples_per_s,
        "wall_s": result.wall_s,
    }


def paired(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """CV mean accuracy by (config, seed), then precision; pairs missing a precision left out."""
    table: dict[tuple[str, int], dict[str, float]] = {}
    for run in runs:
        table.setdefault((run["config"], run["seed"]), {})[run["precision"]] = run["mean"]
    return {key: means for key, means in table.items() if set(means) == set(PRECISIONS)}


def seed_ranges(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """Range (max − min) of CV mean accuracy over seeds, by (config, precision); only where
    two or more seeds finished."""
    by_group: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        by_group.setdefault((run["config"], run["precision"]), []).append(run["mean"])
    return {key: max(v) - min(v) for key, v in by_group.items() if len(v) >= 2}


def render(runs: Sequence[Mapping[str, Any]], configs: Sequence[str]) -> tuple[str, str]:
    """The markdown table (one row per configuration) and the summary sentences."""
    pairs = paired(runs)
    ranges = seed_ranges(runs)
    speeds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for run in runs:
        speeds[run["precision"]].append(run["train_examples_per_s"])
    rows = []
    for name in configs:
        keys = sorted(seed for config, seed in pairs if config == name)
        if not keys:
            continue
        cells = [" / ".join(f"{pairs[(name, seed)][p]:.3f}" for seed in keys) for p in PRECISIONS]
        per_seed = " / ".join(
            f"{100 * (pairs[(name, s)]['bf16'] - pairs[(name, s)]['fp32']):+.1f}" for s in keys
        )
        spread = " / ".join(
            f"{100 * ranges[(name, p)]:.1f}" if (name, p) in ranges else "–" for p in PRECISIONS
        )
        seeds = ", ".join(str(seed) for seed in keys)
        rows.append(f"| {name} | {seeds} | {cells[0]} | {cells[1]} | {per_seed} | {spread} |")
    table = (
        "| config | seeds | fp32 CV accuracy per seed | bf16 CV accuracy per seed "
        "| bf16 − fp32 per seed (points) | seed range fp32 / bf16 (points) |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    if not pairs:
        return table, "No configuration has finished in both precisions yet."
    diffs = [100 * (m["bf16"] - m["fp32"]) for m in pairs.values()]
    mean_abs = statistics.fmean(abs(d) for d in diffs)
    summary = (
        f"Over {len(diffs)} paired runs (configuration × seed), bf16 − fp32 CV accuracy is "
        f"{statistics.fmean(diffs):+.2f} points on average (mean |difference| {mean_abs:.2f})."
    )
    if ranges:
        noise = statistics.fmean(100 * r for r in ranges.values())
        verdict = "within" if mean_abs <= noise else "larger than"
        summary += (
            f" The seed-to-seed range at the same precision averages {noise:.2f} points: "
            f"the precision effect is {verdict} run-to-run noise."
        )
    if all(speeds.values()):
        ratio = statistics.median(speeds["bf16"]) / statistics.median(speeds["fp32"])
        summary += f" bf16 trained {ratio:.2f}× as many examples per second (medians)."
    return table, summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=None, help="names (default: all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=RESULTS, help="finished runs (JSON)")
    parser.add_argument("--cache-dir", default=None, help="tokenization cache")
    args = bench_args(parser, argv)

    import torch

    from hpo import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(SPEC)
    configs = demo_configs(spec)
    chosen = args.configs or list(configs)
    unknown = [name for name in chosen if name not in configs]
    if unknown:
        parser.error(f"--configs {' '.join(unknown)}: expected names from {', '.join(configs)}")
    settings = {"rows": args.rows, "folds": args.folds, "epochs": args.epochs}
    done = {run_key(run) for run in load_runs(args.results)}
    loads = []
    for name in chosen:
        for seed in args.seeds:
            for precision in PRECISIONS:
                run: dict[str, Any] = {
                    "config": name,
                    "seed": seed,
                    "precision": precision,
                    **settings,
                }
                if run_key(run) in done:
                    continue
                try:
                    run |= run_one(
                        spec,
                        configs[name],
                        seed=seed,
                        precision=precision,
                        cache_dir=args.cache_dir,
                        **settings,
                    )
                except ConfigError as e:  # one line, not a traceback after the fp32 runs
                    parser.exit(2, f"bench.precision_parity: {e}\n")
                run |= {"params": configs[name], "threads": args.threads}
                append_run(args.results, run)
                loads.append(os.getloadavg()[0])
                logger.info(
                    "%s seed %d %s: CV accuracy %.3f (%s), %.1f train ex/s, %.0f s",
                    name,
                    seed,
                    precision,
                    run["mean"],
                    " ".join(f"{s:.3f}" for s in run["fold_scores"]),
                    run["train_examples_per_s"],
                    run["wall_s"],
                )
    wanted = {(n, s, p) for n in chosen for s in args.seeds for p in PRECISIONS}
    runs = [
        run
        for run in load_runs(args.results)
        if (run["config"], run["seed"], run["precision"]) in wanted
        and all(run[field] == value for field, value in settings.items())
    ]
    table, summary = render(runs, chosen)
    print(table)
    print(summary)
    if args.out:
        command = command_line("bench.precision_parity", parser, args, "results", "cache_dir")
        load = (
            f"load average during the new runs {min(loads):.1f}–{max(loads):.1f} (now "
            f"{load_average()})"
            if loads
            else f"load average now {load_average()} (no new runs)"
        )
        points = "; ".join(
            f"`{name}`: " + ", ".join(f"{k} {v:g}" for k, v in configs[name].items())
            for name in chosen
        )
        facts = [
            f"{args.threads} torch threads",
            load,
            f"{sum(r['wall_s'] for r in runs):.0f} s of runs in all",
        ]
        body = section_body(command, facts, __doc__, f"Configurations: {points}.", table, summary)
        update_section(HEADING, body, args.out)


if __name__ == "__main__":
    main()
