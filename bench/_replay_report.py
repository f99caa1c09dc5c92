"""Summaries of the replay (``bench/replay.py``): regret by compute and by trials, paired
counts, how the pruner behaved on real curves, the plot and the BENCHMARKS.md section."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench._common import figure, machine_line, median, percentile, update_section
from bench._surrogate import Surrogate, loo_fidelity

if TYPE_CHECKING:
    from bench.replay import Run, Settings

    ByContender = Mapping[str, Mapping[int, Run]]  # runs by contender, then by seed

HEADING = "Search on the real task (replay)"
FRACTIONS: tuple[float, ...] = (0.25, 0.5, 1.0)
TRIAL_BUDGETS: tuple[int, ...] = (25, 50, 100)
WARMUP_BUDGETS: tuple[int, ...] = (20, 25, 50, 100)
FIGURE = Path("bench") / "figures" / "replay.png"
BASELINES: tuple[str, ...] = ("random-nopruning", "hf-default", "ours-nopruning")
# The pairs compared by trial budget (first vs second), on the main and every check surrogate.
SAMPLER_PAIRS = (("gp", "ours"), ("gp-nopruning", "ours-nopruning"), ("ours", "random-nopruning"))


# --- regret -----------------------------------------------------------------------------------


def reference(surrogate: Surrogate, runs: Sequence[Run]) -> float:
    """The best true final CV mean: the surrogate's optimum (or anything a study found above
    it, should the optimizer have missed the GP's maximum)."""
    found = [max(r.true) for r in runs if r.true]
    return max([surrogate.best_true, *found])


def incumbent_true(run: Run, n_trials: int) -> float:
    """True final CV mean of the best-seen completed trial among the first ``n_trials``."""
    best_seen, best_true = -math.inf, math.nan
    for seen, true in zip(run.seen[:n_trials], run.true[:n_trials], strict=True):
        if seen is not None and seen > best_seen:
            best_seen, best_true = seen, true
    return best_true


def trials_within(run: Run, compute_s: float) -> int:
    """How many trials had finished once ``compute_s`` seconds were spent."""
    return int(np.searchsorted(np.asarray(run.spent_s), compute_s, side="right"))


def regret_at_compute(run: Run, compute_s: float, best: float) -> float:
    """Regret (accuracy) of the incumbent at ``compute_s``; inf before any trial completed."""
    return regret_at_trials(run, trials_within(run, compute_s), best)


def regret_at_trials(run: Run, n_trials: int, best: float) -> float:
    value = incumbent_true(run, n_trials)
    return math.inf if math.isnan(value) else max(best - value, 0.0)


def compute_to_reach(run: Run, target: float, best: float) -> float:
    """Compute at which the incumbent's regret first fell to ``target`` (inf: never)."""
    for n, spent in enumerate(run.spent_s, start=1):
        if regret_at_trials(run, n, best) <= target + 1e-12:
            return spent
    return math.inf


def random_target(
    random: Mapping[int, Run], seeds: Sequence[int], best: float, budget: float
) -> float:
    """Random search's full-budget regret, upper median over seeds (so that more than half of
    random's own seeds reach it and its compute to reach it is finite)."""
    import statistics

    return statistics.median_high([regret_at_compute(random[s], budget, best) for s in seeds])


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, int]:
    """(better, tied, worse) of regrets ``a`` vs ``b`` on the same seeds (lower is better)."""
    better = sum(x < y - 1e-12 for x, y in zip(a, b, strict=True))
    worse = sum(x > y + 1e-12 for x, y in zip(a, b, strict=True))
    return better, len(a) - better - worse, worse


def sign_test(better: int, worse: int) -> float:
    """Two-sided sign-test p-value, ties left out."""
    from scipy.stats import binomtest

    n = better + worse
    return 1.0 if n == 0 else float(binomtest(better, n, 0.5).pvalue)


def _grouped(
    surrogate: Surrogate, runs: Sequence[Run]
) -> tuple[dict[str, dict[int, Run]], list[int], float]:
    """The runs by contender, then seed; the seeds every contender ran; the best true final CV
    mean (``reference``)."""
    by: dict[str, dict[int, Run]] = {}
    for run in runs:
        by.setdefault(run.contender, {})[run.seed] = run
    seeds = sorted(set.intersection(*(set(v) for v in by.values()))) if by else []
    return by, seeds, reference(surrogate, runs)


def _pts(value: float) -> str:
    """Accuracy as points (×100)."""
    return "—" if math.isinf(value) else f"{100 * value:.2f}"


def _ratio(a: float, b: float) -> str:
    if math.isinf(a) or math.isinf(b):
        return "—"
    if b == 0:
        return "=" if a == 0 else "∞"
    return f"{a / b:.2f}"


def _counts(b: int, t: int, w: int) -> str:
    return f"{b}/{t}/{w}"


def _tested(b: int, t: int, w: int) -> str:
    """Paired counts with their two-sided sign test."""
    return f"{_counts(b, t, w)} (p {sign_test(b, w):.2g})"


# --- the section ------------------------------------------------------------------------------


def section(
    surrogate: Surrogate,
    settings: Settings,
    runs: Sequence[Run],
    args: argparse.Namespace,
    meta: Mapping[str, Any],
    offline: Sequence[Mapping[str, Any]] | None,
    checks: Sequence[tuple[Surrogate, Sequence[Run]]] = (),
) -> str:
    """The whole BENCHMARKS.md section, from the runs (and a second surrogate's, if given)."""
    from bench.replay import budget_seconds

    by, seeds, best = _grouped(surrogate, runs)
    budget = budget_seconds(surrogate, settings.budget_trials)
    table = surrogate.table
    fidelity = loo_fidelity(table)
    scales = ", ".join(
        f"{name} {scale:.2f}"
        for (name, _), scale in zip(table.space.items(), surrogate.length_scales, strict=True)
    )
    command = "python -m bench.replay " + " ".join(
        [f"--seeds {args.seeds}", f"--surrogate {settings.surrogate}", f"--cost {settings.cost}"]
        + ([f"--budget-trials {settings.budget_trials:g}"] if settings.budget_trials != 60 else [])
        + ([f"--max-rows {settings.max_rows}"] if settings.max_rows else [])
        + (["--offline OFFLINE.jsonl"] if offline else [])
        + [
            f"--check {check.kind} {check.cost} RUNS-{i}.jsonl"
            for i, (check, _) in enumerate(checks)
        ]
        + ([] if settings.noise else ["--no-noise"])
        + ["--out BENCHMARKS.md"]
    )
    trial_s = budget / settings.budget_trials
    raw_s = table.seconds.sum(axis=(1, 2))
    lines = [
        f"`{command}`",
        "",
        f"Run {meta['date']}; {machine_line()}, scikit-learn {version('scikit-learn')}; load "
        f"average at the end {meta['load_average']}; {sum(r.wall_s for r in runs):.0f} s of "
        f"study time in all, in {args.workers} process(es). {len(seeds)} seeds per contender, "
        "the same seeds for all.",
        "",
        f"**Table**: {table.n_rows} configurations of `bench/data/rt_curves.json` (MiniLM-L6 on "
        f"600 Rotten Tomatoes snippets, {table.scores.shape[1]} folds × "
        f"{table.scores.shape[2]} epochs, quasi-random points, no pruning); their final CV "
        f"means span {_pts(float(table.final_means.min()))}–"
        f"{_pts(float(table.final_means.max()))} points (median "
        f"{_pts(float(np.median(table.final_means)))}), a fold's score varies around its "
        f"configuration's mean by {_pts(_fold_sd(table))} points (SD), and an unpruned trial "
        f"costs {trial_s:.0f} s on average under the cost model (as recorded: median "
        f"{np.median(raw_s):.0f} s, min {raw_s.min():.0f}, max {raw_s.max():.0f}; the table "
        "was built on a shared machine, whose load the recorded seconds carry).",
        "",
        f"**Surrogate** (`bench/_surrogate.py`): `{settings.surrogate}`. Length scales the "
        f"ARD GP learns on the unit cube (20 = no effect): {scales}. Leave-one-out fidelity "
        "(each row's final CV mean predicted from the others, Spearman ρ / RMSE in points): "
        + "; ".join(f"`{f.kind}` ρ {f.spearman:.2f} / {_pts(f.rmse)}" for f in fidelity.values())
        + ". **Seed noise**: "
        + (
            f"each trial's fold scores get a fresh offset of SD {_pts(surrogate.noise_sd_fold)} "
            f"points (so its CV mean's SD is "
            f"{_pts(surrogate.noise_sd_fold / math.sqrt(table.scores.shape[1]))}, the GP's "
            "white-noise term); the study sees the noisy scores, regret is measured on the "
            "noise-free means"
            if surrogate.noise_sd_fold
            else "off (`--no-noise`)"
        )
        + f". Best true final CV mean {_pts(best)} points; regret is in points below it. "
        f"**Cost**: `{settings.cost}` seconds per step. **Budget**: "
        f"{settings.budget_trials:g} unpruned trials' compute = {budget:.0f} s; every study "
        f"also ran to {settings.min_trials} finished trials for the trial budgets.",
        "",
    ]
    lines += compute_table(by, seeds, best, budget)
    lines += ["", *paired_table(by, seeds, best, budget)]
    lines += ["", *goal_lines(by, seeds, best, budget)]
    lines += ["", *sampler_lines(by, seeds, best, offline)]
    lines += ["", *warmup_lines(by, seeds, best, budget)]
    lines += ["", *pruner_lines(by, seeds, best, table)]
    for check in checks:
        lines += ["", *robustness_lines(*check, settings.budget_trials)]
    lines += ["", *decision_lines((surrogate, runs), checks, offline)]
    lines += ["", f"![median regret vs compute]({FIGURE.as_posix()})"]
    return "\n".join(lines)


def _fold_sd(table: Any) -> float:
    finals = table.scores[:, :, -1]
    return float(np.sqrt(np.mean(np.var(finals - finals.mean(axis=1, keepdims=True), axis=1))))


def compute_table(by: ByContender, seeds: Sequence[int], best: float, budget: float) -> list[str]:
    """Median regret [IQR] at each share of the budget, ÷ random's; compute to reach random's
    full-budget median regret."""
    random = by.get("random-nopruning", {})
    target = random_target(random, seeds, best, budget) if random else 0.0
    lines = [
        "### Regret against compute",
        "",
        "Median regret over seeds [25th, 75th percentile] in accuracy points after 25 %, 50 % "
        "and 100 % of the budget, with the ratio of medians to `random-nopruning`'s; *to reach "
        "random's best*: compute at which the incumbent first got within random's full-budget "
        f"median regret (upper median, {_pts(target)} points), median over seeds as a share "
        "of the budget (`>1` when most seeds never did) and ÷ random's own; trials finished "
        "by the full budget (completed / pruned), median.",
        "",
        "| contender | "
        + " | ".join(f"regret @ {f:.0%} (÷ random)" for f in FRACTIONS)
        + " | to reach random's best (÷ random) | completed / pruned | wall s / study |",
        "|---|" + "--:|" * (len(FRACTIONS) + 3),
    ]
    random_reach = (
        median([compute_to_reach(random[s], target, best) for s in seeds]) if random else math.nan
    )
    for name, runs in by.items():
        cells = []
        for fraction in FRACTIONS:
            mine = [regret_at_compute(runs[s], fraction * budget, best) for s in seeds]
            cell = f"{_pts(median(mine))} [{_pts(percentile(mine, 25))}, "
            cell += f"{_pts(percentile(mine, 75))}]"
            if seeds and random and name != "random-nopruning":
                theirs = [regret_at_compute(random[s], fraction * budget, best) for s in seeds]
                cell += f" ({_ratio(median(mine), median(theirs))})"
            cells.append(cell)
        reach = median([compute_to_reach(runs[s], target, best) for s in seeds])
        reach_cell = ">1" if reach > budget else f"{reach / budget:.2f}"
        if name != "random-nopruning" and random:
            reach_cell += f" ({_ratio(reach, random_reach)})" if reach <= budget else ""
        n = [trials_within(runs[s], budget) for s in seeds]
        completed = [
            sum(v is not None for v in runs[s].seen[:k]) for s, k in zip(seeds, n, strict=True)
        ]
        pruned = [k - c for k, c in zip(n, completed, strict=True)]
        wall = median([runs[s].wall_s for s in seeds])
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {reach_cell} | {median(completed):.0f} / {median(pruned):.0f} | {wall:.1f} |"
        )
    return lines


def paired_table(by: ByContender, seeds: Sequence[int], best: float, budget: float) -> list[str]:
    """Better/tied/worse (lower regret) on the same seed vs random and vs hf-default."""
    present = [b for b in BASELINES if b in by]
    if not present:
        return []
    lines = [
        "Paired on the same seed, better / tied / worse regret than each baseline at each "
        "share of the budget:",
        "",
        "| contender | "
        + " | ".join(f"vs {b} @ {f:.0%}" for b in present for f in FRACTIONS)
        + " |",
        "|---|" + "--:|" * (len(present) * len(FRACTIONS)),
    ]
    for name, runs in by.items():
        cells = []
        for base in present:
            for fraction in FRACTIONS:
                if name == base:
                    cells.append("—")
                    continue
                mine = [regret_at_compute(runs[s], fraction * budget, best) for s in seeds]
                theirs = [regret_at_compute(by[base][s], fraction * budget, best) for s in seeds]
                cells.append(_counts(*paired(mine, theirs)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def goal_lines(by: ByContender, seeds: Sequence[int], best: float, budget: float) -> list[str]:
    """The issue's two goals, as measured, and where ours loses."""
    if not {"ours", "random-nopruning"} <= set(by):
        return []
    ours, random = by["ours"], by["random-nopruning"]
    target = random_target(random, seeds, best, budget)
    reach = median([compute_to_reach(ours[s], target, best) for s in seeds])
    random_reach = median([compute_to_reach(random[s], target, best) for s in seeds])
    share = "more than the whole budget" if reach > budget else f"{reach / budget:.2f} of it"
    lines = [
        "### What the numbers show",
        "",
        f"- **Goal 1** (ours reaches random's full-budget best with ≤ 1/3 of its compute): "
        f"ours needs {share} (median over seeds; random itself {random_reach / budget:.2f}), "
        + ("**met**." if reach <= budget / 3 else "**not met**."),
    ]
    if "hf-default" in by:
        hf = by["hf-default"]
        verdicts = []
        ahead = True
        for fraction in FRACTIONS:
            mine = [regret_at_compute(ours[s], fraction * budget, best) for s in seeds]
            theirs = [regret_at_compute(hf[s], fraction * budget, best) for s in seeds]
            b, t, w = paired(mine, theirs)
            ahead &= median(mine) < median(theirs) and b > w
            verdicts.append(
                f"{fraction:.0%}: median {_pts(median(mine))} vs {_pts(median(theirs))}, "
                f"paired {_counts(b, t, w)} (sign test p {sign_test(b, w):.2g})"
            )
        lines.append(
            "- **Goal 2** (ours ahead of the hf-default at every budget from 25 % to 100 %): "
            + "; ".join(verdicts)
            + (". **Met**" if ahead else ". **Not met**")
            + " (ahead = lower median regret and more seeds better than worse)."
        )
    for fraction in FRACTIONS:
        ours_median = median([regret_at_compute(ours[s], fraction * budget, best) for s in seeds])
        beaten = []
        for name, runs in by.items():
            other = median([regret_at_compute(runs[s], fraction * budget, best) for s in seeds])
            if name != "ours" and other < ours_median:
                beaten.append(f"{name} {_pts(other)}")
        if beaten:
            lines.append(
                f"- Where ours loses at {fraction:.0%} of the budget (median regret "
                f"{_pts(ours_median)}): {', '.join(beaten)}."
            )
    return lines


def _trial_table(
    by: ByContender,
    seeds: Sequence[int],
    best: float,
    pairs: Sequence[tuple[str, str]],
    budgets: Sequence[int],
) -> list[str]:
    """A row per pair (a, b) that ran: a's median regret vs b's after n trials, paired counts
    for a and their sign test, a column per n of ``budgets``."""
    rows = [
        "| pair | " + " | ".join(f"{n} trials" for n in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for a, b in pairs:
        if a not in by or b not in by:
            continue
        cells = []
        for n in budgets:
            mine = [regret_at_trials(by[a][s], n, best) for s in seeds]
            theirs = [regret_at_trials(by[b][s], n, best) for s in seeds]
            vs = f"{_pts(median(mine))} vs {_pts(median(theirs))}"
            cells.append(f"{vs}; {_tested(*paired(mine, theirs))}")
        rows.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return rows


def sampler_lines(
    by: ByContender, seeds: Sequence[int], best: float, offline: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    """TPE vs GP at 25, 50 and 100 finished trials (complete + pruned, as the budget counts)."""
    lines = [
        "### Sampler default: TPE vs GP by trial budget",
        "",
        "Replay: median regret (points) of the first contender vs the second after n finished "
        "trials (complete + pruned, what `budget.n_trials` counts), and paired better / tied / "
        "worse for the first, two-sided sign test:",
        "",
        *_trial_table(by, seeds, best, SAMPLER_PAIRS, TRIAL_BUDGETS),
        "",
        "In Optuna 5.0, `GPSampler` fits only COMPLETE trials (a pruned trial teaches it "
        "nothing, and its start-up phase counts completed trials), while `TPESampler` also "
        "ranks PRUNED trials by how far they got and their last value.",
    ]
    if offline:
        lines += ["", *offline_lines(offline)]
    else:
        lines += [
            "",
            "Offline tables (HPOLib / HPOBench-NN): not run (`--offline` not given).",
        ]
    return lines


def read_offline(path: Path) -> list[dict[str, Any]]:
    """search_quality runs saved one task (a list of runs) per line."""
    lines = path.read_text().splitlines()
    return [run for line in lines if line.strip() for run in json.loads(line)]


def _offline_pairs(
    offline: Sequence[Mapping[str, Any]], series: str
) -> list[tuple[str, list[str], int, list[tuple[list[float], list[float]]]]]:
    """The offline studies (one per dataset and seed) that ran both ``ours-gp`` and ``ours``,
    per family that has some, sorted: the family, all its datasets (sorted), how many such
    studies, and for each n of ``TRIAL_BUDGETS`` their ``series`` values after n trials
    (``ours-gp``'s list, ``ours``'s list, paired by study)."""
    studies: dict[str, dict[tuple[str, int], dict[str, Sequence[float]]]] = {}
    for run in offline:
        of_family = studies.setdefault(run["family"], {})
        of_family.setdefault((run["dataset"], run["seed"]), {})[run["contender"]] = run[series]
    found = []
    for family, of_family in sorted(studies.items()):
        both = [v for v in of_family.values() if {"ours", "ours-gp"} <= set(v)]
        if both:
            by_n = [
                ([v["ours-gp"][n - 1] for v in both], [v["ours"][n - 1] for v in both])
                for n in TRIAL_BUDGETS
            ]
            found.append((family, sorted({dataset for dataset, _ in of_family}), len(both), by_n))
    return found


def offline_lines(offline: Sequence[Mapping[str, Any]]) -> list[str]:
    """``ours-gp`` vs ``ours`` on the offline tables at 25, 50 and 100 trials, per family."""
    lines = [
        "Offline tables (`bench.search_quality`'s `ours` vs `ours-gp`, no pruning, normalized "
        "regret), paired per (table, seed), gp better / tied / worse than TPE and median "
        "normalized regret gp vs TPE:",
        "",
        "| family | studies | " + " | ".join(f"{n} trials" for n in TRIAL_BUDGETS) + " |",
        "|---|--:|" + "---|" * len(TRIAL_BUDGETS),
    ]
    for family, datasets, n_studies, by_n in _offline_pairs(offline, "normalized"):
        cells = [
            f"{median(gp):.3g} vs {median(tpe):.3g}; {_tested(*paired(gp, tpe))}"
            for gp, tpe in by_n
        ]
        lines.append(
            f"| {family} ({', '.join(datasets)}) | {n_studies} | " + " | ".join(cells) + " |"
        )
    return lines


def warmup_lines(by: ByContender, seeds: Sequence[int], best: float, budget: float) -> list[str]:
    """The pruner's warm-up, ``n_startup_trials`` 8 vs the default 4."""
    if not {"ours", "ours-warmup8"} <= set(by):
        return []
    return [
        "### Pruner warm-up: `n_startup_trials` 8 vs 4",
        "",
        *_trial_table(by, seeds, best, [("ours-warmup8", "ours")], WARMUP_BUDGETS),
        "",
        "By compute: "
        + "; ".join(
            f"{f:.0%}: "
            + _counts(
                *paired(
                    [regret_at_compute(by["ours-warmup8"][s], f * budget, best) for s in seeds],
                    [regret_at_compute(by["ours"][s], f * budget, best) for s in seeds],
                )
            )
            for f in FRACTIONS
        )
        + " (warm-up 8 better / tied / worse).",
    ]


def pruner_lines(by: ByContender, seeds: Sequence[int], best: float, table: Any) -> list[str]:
    """Where each pruning contender stopped trials, and what it cost: pruned trials whose true
    final CV mean beat the incumbent's true mean at the time they were stopped."""
    from scipy.stats import spearmanr

    from hpo.study import step_grid

    grid = step_grid(table.spec)
    finals = table.final_means
    n_folds, epochs = table.scores.shape[1:]
    evidence = []
    for fold in range(n_folds):
        for epoch in range(epochs):
            if fold == n_folds - 1 and epoch == epochs - 1:
                continue
            if epoch == epochs - 1:
                value = table.scores[:, : fold + 1, -1].mean(axis=1)
                label = f"mean of folds 0–{fold}" if fold else "fold 0 end"
            else:
                value = table.scores[:, fold, epoch]
                label = f"f{fold} e{epoch}"
            rho = float(spearmanr(value, finals).statistic)
            evidence.append(f"{label} {rho:.2f}")
    finals_by_fold = table.scores[:, :, -1]
    one_fold = [
        float(
            spearmanr(
                finals_by_fold[:, fold], np.delete(finals_by_fold, fold, axis=1).mean(axis=1)
            ).statistic
        )
        for fold in range(n_folds)
    ]
    lines = [
        "### The pruner on real curves",
        "",
        "How well each checkpoint predicts the final CV mean across the table's rows "
        "(Spearman ρ; what `fold_aware` estimates from a study's completed trials): "
        + ", ".join(evidence)
        + ". One fold's final score ranks the rows as the other folds' mean does with ρ "
        + " / ".join(f"{rho:.2f}" for rho in one_fold)
        + " (folds 0 / 1 / 2): what a one-split search (`hf-default`) or a fold-level rung "
        "(`hyperband`) selects on.",
        "",
        "| contender | trials pruned | stopped at step (count over all seeds) | pruned trials "
        "better than the incumbent then (true means) | … better than the final incumbent | "
        "… by ≥ 0.5 points |",
        "|---|--:|---|--:|--:|--:|",
    ]
    for name, runs in by.items():
        stops: dict[int, int] = {}
        n_pruned = n_trials = lost = lost_final = lost_much = 0
        for s in seeds:
            run = runs[s]
            final_best = incumbent_true(run, len(run.true))
            for i, seen in enumerate(run.seen):
                n_trials += 1
                if seen is not None:
                    continue
                n_pruned += 1
                stops[run.stop_step[i]] = stops.get(run.stop_step[i], 0) + 1
                then = incumbent_true(run, i)
                lost += not math.isnan(then) and run.true[i] > then + 1e-12
                lost_final += run.true[i] > final_best + 1e-12
                lost_much += run.true[i] >= final_best + 0.005
        if not n_pruned:
            continue
        where = ", ".join(f"{step}: {count}" for step, count in sorted(stops.items()))
        lines.append(
            f"| {name} | {n_pruned} of {n_trials} ({n_pruned / n_trials:.0%}) | {where} | "
            f"{lost} ({lost / n_pruned:.0%}) | {lost_final} | {lost_much} |"
        )
    lines += [
        "",
        f"Steps are the study's grid (`step = fold · {grid.steps_per_fold} + epoch`); "
        "`hf-default` reports Trainer's global steps of fold 0.",
    ]
    return lines


def robustness_lines(surrogate: Surrogate, runs: Sequence[Run], budget_trials: float) -> list[str]:
    """The same contenders replayed with another surrogate or cost model: regret by compute,
    and TPE vs GP by trials (conclusions should not hinge on either choice)."""
    from bench.replay import budget_seconds

    budget = budget_seconds(surrogate, budget_trials)
    by, seeds, best = _grouped(surrogate, runs)
    return [
        f"### Check: surrogate `{surrogate.kind}`, cost `{surrogate.cost}`",
        "",
        f"{len(seeds)} seeds, the same table, budget ({budget_trials:g} unpruned trials' "
        f"compute = {budget:.0f} s under this cost model) and seeds; best true final CV mean "
        f"{_pts(best)} points. Columns as above:",
        "",
        *compute_table(by, seeds, best, budget)[4:],
        "",
        *_trial_table(by, seeds, best, SAMPLER_PAIRS, TRIAL_BUDGETS),
    ]


def _regret_pairs(
    by: ByContender, best: float, a: str, b: str, n: int
) -> tuple[list[float], list[float]]:
    """Regrets of ``a`` and of ``b`` after ``n`` trials, on the seeds both ran."""
    if a not in by or b not in by:
        return [], []
    seeds = sorted(set(by[a]) & set(by[b]))
    return (
        [regret_at_trials(by[a][s], n, best) for s in seeds],
        [regret_at_trials(by[b][s], n, best) for s in seeds],
    )


def decision_lines(
    primary: tuple[Surrogate, Sequence[Run]],
    checks: Sequence[tuple[Surrogate, Sequence[Run]]],
    offline: Sequence[Mapping[str, Any]] | None,
) -> list[str]:
    """GP vs TPE and warm-up 8 vs 4: every source's paired counts, pooled in two groups (as
    the product runs, with the default pruner; the sampler alone, without pruning), and the
    rule that turns them into a recommendation: change a default only where the product
    setting's pooled counts say so at sign-test p < 0.05."""
    lines = [
        "### Recommendation, by rule",
        "",
        "GP better / tied / worse than TPE, paired per seed (and per table offline), after n "
        "finished trials. *With pruning* pairs `gp` with `ours` (both `fold_aware`: the "
        "product's setting); *sampler alone* pairs `gp-nopruning` with `ours-nopruning`, and "
        "offline `ours-gp` with `ours`. Each group is pooled (sign test, ties left out):",
        "",
        "| source | " + " | ".join(f"{n} trials" for n in TRIAL_BUDGETS) + " |",
        "|---|" + "---|" * len(TRIAL_BUDGETS),
    ]
    groups: dict[str, dict[int, list[int]]] = {
        group: {n: [0, 0, 0] for n in TRIAL_BUDGETS} for group in ("with pruning", "alone")
    }

    def add_row(group: str, label: str, counts: list[tuple[int, int, int]]) -> None:
        for n, count in zip(TRIAL_BUDGETS, counts, strict=True):
            for k in range(3):
                groups[group][n][k] += count[k]
        lines.append(f"| {label} | " + " | ".join(_counts(*c) for c in counts) + " |")

    for surrogate, runs in (primary, *checks):
        label = f"replay `{surrogate.kind}`/`{surrogate.cost}`"
        by, _, best = _grouped(surrogate, runs)
        for gp_name, tpe_name, group in (
            ("gp", "ours", "with pruning"),
            ("gp-nopruning", "ours-nopruning", "alone"),
        ):
            counts = [paired(*_regret_pairs(by, best, gp_name, tpe_name, n)) for n in TRIAL_BUDGETS]
            if any(sum(c) for c in counts):
                add_row(group, f"{label}, {group}", counts)
    for family, _, n_studies, by_n in _offline_pairs(offline or (), "regret"):
        counts = [paired(gp, tpe) for gp, tpe in by_n]
        add_row("alone", f"offline {family} ({n_studies} studies), alone", counts)
    for group, pooled in groups.items():
        lines.append(
            f"| **pooled, {group}** | "
            + " | ".join(_tested(*pooled[n]) for n in TRIAL_BUDGETS)
            + " |"
        )
    verdicts = []
    for n in TRIAL_BUDGETS:
        b, _, w = groups["with pruning"][n]
        p = sign_test(b, w)
        verdicts.append(
            f"{n} trials → "
            + ("GP" if p < 0.05 and b > w else "TPE (significantly better)" if p < 0.05 else "TPE")
        )
    lines += [
        "",
        "- Sampler default, by the rule (GP only where it wins the product setting at p < 0.05): "
        + "; ".join(verdicts)
        + ".",
    ]
    primary_by, _, best = _grouped(*primary)
    warm = []
    for n in WARMUP_BUDGETS:
        mine, theirs = _regret_pairs(primary_by, best, "ours-warmup8", "ours", n)
        if mine:
            warm.append(f"{n}: {_tested(*paired(mine, theirs))}")
    if warm:
        lines.append(
            "- Pruner warm-up, `n_startup_trials` 8 better / tied / worse than 4 after n trials "
            f"(replay `{primary[0].kind}`): " + "; ".join(warm) + "."
        )
    return lines


# --- plot and file ----------------------------------------------------------------------------


BANDS: tuple[str, ...] = ("ours", "random-nopruning", "hf-default", "gp")
PLOT_FLOOR = 0.02  # points: a log axis cannot show a regret of 0


def plot(surrogate: Surrogate, runs: Sequence[Run], path: Path, budget: float) -> None:
    """Median regret vs compute per contender (log y, points), IQR shaded for the main ones."""
    by, _, best = _grouped(surrogate, runs)
    grid = np.linspace(budget / 100, budget, 100)
    with figure(path, figsize=(8, 5), dpi=100) as (_fig, ax):
        for name, mine in by.items():
            per = [[regret_at_compute(r, c, best) for r in mine.values()] for c in grid]
            mid, low, high = (
                np.maximum(np.array([stat(v) for v in per]) * 100, PLOT_FLOOR)
                for stat in (median, lambda v: percentile(v, 25), lambda v: percentile(v, 75))
            )
            x = grid / budget
            main = name in BANDS
            (line,) = ax.plot(
                x,
                np.where(np.isfinite(mid), mid, np.nan),
                label=name,
                linewidth=2.0 if main else 1.2,
                linestyle="-" if main else "--",
            )
            ok = np.isfinite(low) & np.isfinite(high)
            if main:
                ax.fill_between(x[ok], low[ok], high[ok], color=line.get_color(), alpha=0.12)
        ax.set_yscale("log")
        ax.set_xlabel("compute spent (share of the budget: 60 unpruned trials)")
        ax.set_ylabel(f"regret of the incumbent (accuracy points; {PLOT_FLOOR} = 0)")
        ax.set_title(
            f"Replay ({surrogate.kind} surrogate): median of {len(next(iter(by.values())))} "
            "seeds, IQR shaded for solid lines"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)


def write(text: str, out: Path, surrogate: Surrogate, runs: Sequence[Run], budget: float) -> None:
    """The figure beside ``out`` (``bench/figures/replay.png``) and the section in ``out``."""
    plot(surrogate, runs, out.parent / FIGURE, budget)
    update_section(HEADING, text, path=out)
