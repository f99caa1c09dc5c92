"""The fault soak: the exactly-once harness (``tests.reliability.harness``) run for half an hour.

    python -m bench.faults --segments 3 --minutes 10 --journal-minutes 10

Each PostgreSQL segment runs studies back to back (4 real ``hpo worker`` processes with the
stand-in trainer, 20 trials of 3 folds x 2 epochs each) for ``--minutes`` under a seeded random
schedule of every fault kind: connections refused, blackholed, reset, slowed, a COMMIT's reply
lost, the proxy restarted, a worker killed with ``kill -9``, frozen past the heartbeat grace
period with ``SIGSTOP``, stopped with ``SIGTERM``, and (sparser: it disturbs every client on the
server) the PostgreSQL cluster restarted. The journal segment does the same with the process
faults on a shared journal file. Faults overlap; nothing waits for the store to recover first.

The workers are real ``hpo worker`` processes (the real CLI, worker loop, heartbeat thread
(1 s, grace 4 s), sweeps, signals, store and retries) with a stand-in trainer that sleeps 0.25 s
per fold × epoch and reports each. A fault comes every ``gap`` s on average, a PostgreSQL
restart every ``restart gap`` s on its own schedule; outages last 1-8 s. After each study its
trials are read back by stock Optuna and every invariant is checked
(``tests.reliability.invariants``): finished == budget, no chain finished twice, no trial handed
out twice, one trial per request id, every FAIL with its reason, every lost trial re-queued
exactly once with its finished folds, nothing left RUNNING, every worker exits 0 (but those the
schedule killed), no live trial failed by an outage shorter than the grace period.

A finished segment is kept in ``bench/data/faults_soak.json`` (keyed by its seed), so an
interrupted soak continues with the next segment (resumable); the section written to
``BENCHMARKS.md`` sums every segment in that file. With ``--no-write`` the segments run in
memory and the section is printed: nothing in the repository changes (a smoke run).

The harness is written by hand because no tool injects these faults between Optuna workers and
their database (toxiproxy is not installable here) and none checks Optuna's trial states
against what each worker did.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._common import (
    BENCHMARKS_MD,
    ROOT,
    bench_args,
    command_line,
    load_average,
    machine_line,
    run_date,
    section_body,
    update_section,
)

logger = logging.getLogger("bench.faults")

HEADING = "Faults: exactly once under a seeded fault soak"
RESULTS = ROOT / "bench" / "data" / "faults_soak.json"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _config(backend: str, seed: int, minutes: float, gaps: tuple[float, float]) -> Any:
    from tests.reliability.faults import FaultKind
    from tests.reliability.harness import JOURNAL_KINDS, POSTGRES_KINDS, HarnessConfig

    common: dict[str, Any] = {
        "seed": seed,
        "duration_s": minutes * 60.0,
        "n_workers": 4,
        "n_trials": 20,
        "n_folds": 3,
        "epochs": 2,
        "mean_gap_s": gaps[0],
        "study_timeout_s": 600.0,
    }
    if backend == "postgresql":
        return HarnessConfig(
            backend="postgresql",
            kinds=POSTGRES_KINDS,
            rare_kinds=frozenset({FaultKind.PG_RESTART}),
            rare_gap_s=gaps[1],
            **common,
        )
    return HarnessConfig(backend="journal", kinds=JOURNAL_KINDS, **common)


def _summarize(result: Any) -> dict[str, Any]:
    """What one harness run found, as the numbers the section reports."""
    from optuna.trial import TrialState

    from tests.reliability.invariants import FINISHED, _chain_root

    lost = twice = overshoot = trials = finished = 0
    for run in result.studies:
        check = run.check
        if check is None:
            continue
        done = [t for t in check.trials if t.state in FINISHED]
        trials += len(check.trials)
        finished += len(done)
        lost += max(0, check.n_trials - len(done))
        overshoot += max(0, len(done) - check.n_trials)
        chains = Counter(_chain_root(t) for t in done)
        twice += sum(n - 1 for n in chains.values() if n > 1)
        lost += sum(1 for t in check.trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    counts = result.counts()
    return {
        "backend": result.config.backend,
        "seed": result.config.seed,
        "seconds": round(result.ended_at - result.started_at, 1),
        "faults": {k.value: n for k, n in sorted(result.fault_counts().items(), key=str)},
        "lost_acks_fired": result.lost_acks_fired,
        "lost_acks_after": result.lost_acks_after,
        "studies": len(result.studies),
        "trials": trials,
        "finished": finished,
        "requeued": counts["requeued"],
        "folds_carried": counts["folds_carried"],
        "trials_lost": lost,
        "finished_twice": twice,
        "budget_overshoot": overshoot,
        "hangs": sum(1 for run in result.studies if run.hang),
        # Studies that outlived the study timeout under faults and were finished after them.
        "slowed": [
            [
                round(run.quiet_after_s),
                None if run.recovered_in_s is None else round(run.recovered_in_s, 1),
            ]
            for run in result.studies
            if run.quiet_after_s is not None
        ],
        "live_wrongly_failed": counts["live_wrongly_failed"],
        "workers": len(result.procs),
        "violations": result.violations[:50],
        "n_violations": len(result.violations),
    }


def _load() -> dict[str, Any]:
    if RESULTS.exists():
        return dict(json.loads(RESULTS.read_text()))
    return {"segments": {}}


def _save(results: dict[str, Any]) -> None:
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(RESULTS)


def run_segment(
    backend: str,
    seed: int,
    minutes: float,
    gaps: tuple[float, float],
    postgres_url: str,
    keep: bool,
) -> dict[str, Any]:
    """One segment's summary; a violation's report goes beside ``RESULTS`` when ``keep``, else
    beside the workers' logs kept as evidence."""
    from tests.reliability import faultrunner
    from tests.reliability.harness import quiet_optuna, run_harness

    faultrunner.LOST_ACK_TARGETS = faultrunner.AIMED_LOST_ACKS  # lost acks on every kind of write
    config = _config(backend, seed, minutes, gaps)
    with tempfile.TemporaryDirectory(prefix=f"hpo-soak-{backend}-") as tmp:
        with quiet_optuna():
            result = run_harness(
                config,
                Path(tmp),
                postgres_url=postgres_url if backend == "postgresql" else None,
                study_prefix=f"soak-{backend[:2]}",
            )
        summary = _summarize(result)
        summary["commit"] = _commit()
        summary["mean_gap_s"] = config.mean_gap_s
        summary["rare_gap_s"] = config.rare_gap_s if config.rare_kinds else None
        if result.violations:
            # The workers' logs and event files are the evidence: keep them past the segment.
            kept = Path(tempfile.gettempdir()) / f"hpo-soak-{backend}-{seed}-evidence"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(tmp, kept, ignore=shutil.ignore_patterns("*.db", "*.log.lock"))
            summary["evidence"] = str(kept)
            report = (RESULTS.parent if keep else kept) / f"faults_soak_{backend}_{seed}.txt"
            report.write_text(result.describe())
            summary["report"] = str(report.relative_to(ROOT) if keep else report)
            logger.warning("segment %s-%d: violations; worker logs kept in %s", backend, seed, kept)
    return summary


def _commit() -> str:
    import subprocess

    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def _gap(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:g}"


def render(results: dict[str, Any], command: str) -> str:
    segments = list(results["segments"].values())
    faults: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    keys = [
        "studies",
        "trials",
        "finished",
        "requeued",
        "folds_carried",
        "trials_lost",
        "finished_twice",
        "budget_overshoot",
        "hangs",
        "live_wrongly_failed",
        "workers",
        "n_violations",
        "lost_acks_fired",
    ]
    minutes = 0.0
    lost_after: Counter[str] = Counter()
    for s in segments:
        faults.update(s["faults"])
        totals.update({k: s[k] for k in keys})
        lost_after.update(s.get("lost_acks_after", {}))  # recorded since 2026-11-30
        minutes += s["seconds"] / 60
    facts = [
        f"load average after the last segment {results.get('load', 'not recorded')}",
        f"about {minutes:.0f} minutes of soak in all, PostgreSQL at 127.0.0.1:5432",
    ]
    lines = [
        "| segment | store | commit | minutes | gap s | restart gap s | faults | studies | "
        "trials finished | re-queued | violations |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in results["segments"].items():
        lines.append(
            f"| {key} | {s['backend']} | {s.get('commit', '?')} | {s['seconds'] / 60:.1f} | "
            f"{s.get('mean_gap_s', 3.0):g} | {_gap(s.get('rare_gap_s', 45.0))} | "
            f"{sum(s['faults'].values())} | {s['studies']} | {s['finished']} | {s['requeued']} "
            f"| {s['n_violations']} |"
        )
    lines += [
        "",
        f"Faults injected, {sum(faults.values())} in all (fewest of one kind: "
        f"{min(faults.values(), default=0)}): "
        + ", ".join(f"{k} {n}" for k, n in sorted(faults.items()))
        + f" (lost acks that fired: {totals['lost_acks_fired']}"
        + (
            "; by the write whose COMMIT lost its reply: "
            + ", ".join(f"`{k}` {n}" for k, n in sorted(lost_after.items()))
            if lost_after
            else ""
        )
        + ").",
        "",
        "| invariant | result |",
        "|---|---:|",
        f"| trials lost (budget not met, or left RUNNING/WAITING) | {totals['trials_lost']} |",
        f"| trials finished twice | {totals['finished_twice']} |",
        f"| budget overshoot | {totals['budget_overshoot']} |",
        f"| hangs (a study or worker that did not end) | {totals['hangs']} |",
        f"| live trials wrongly failed | {totals['live_wrongly_failed']} |",
        f"| every violation of any invariant | {totals['n_violations']} |",
        "",
        f"{totals['studies']} studies, {totals['finished']} trials finished, "
        f"{totals['requeued']} lost trials re-queued carrying {totals['folds_carried']} "
        f"finished folds, {totals['workers']} worker processes (respawns included).",
    ]
    slowed = [(key, q, r) for key, s in results["segments"].items() for q, r in s.get("slowed", [])]
    lines += [
        "",
        "Liveness is judged once the faults stop, as in Jepsen: a study that has not met its "
        "budget 600 s after it began has the schedule stopped (every fault ended, killed "
        "workers respawned) and must then finish within 60 s, or it is a hang. "
        + (
            f"Studies that needed it: {len(slowed)} ("
            + "; ".join(
                f"{key}: stopped {q} s in, "
                + (f"budget met {r:g} s later" if r is not None else "never met")
                for key, q, r in slowed
            )
            + ")."
            if slowed
            else "No study needed it."
        ),
    ]
    bad = [s for s in segments if s["n_violations"]]
    for s in bad:
        lines.append("")
        lines.append(f"Violations in {s['backend']} seed {s['seed']} (see {s.get('report')}):")
        lines += [f"- {v}" for v in s["violations"][:10]]
    table = "\n".join(lines)
    date, machine = results.get("date"), results.get("machine")
    return section_body(command, facts, __doc__, table, date=date, machine=machine)


def _fewest(results: dict[str, Any]) -> int:
    """How many faults of the rarest PostgreSQL kind the kept segments injected."""
    from tests.reliability.harness import POSTGRES_KINDS

    faults: Counter[str] = Counter()
    for s in results["segments"].values():
        faults.update(s["faults"])
    return min(faults[kind.value] for kind in POSTGRES_KINDS)


def _run_planned(
    results: dict[str, Any],
    backend: str,
    seed: int,
    minutes: float,
    gaps: tuple[float, float],
    postgres_url: str,
    keep: bool,
) -> None:
    """Run one segment unless it is kept already; with ``keep``, keep it in ``RESULTS`` (the
    soak resumes after it)."""
    key = f"{backend}-{seed}"
    if key in results["segments"]:
        logger.info("segment %s already done", key)
        return
    logger.info("segment %s: %.0f minutes", key, minutes)
    started = time.monotonic()
    summary = run_segment(backend, seed, minutes, gaps, postgres_url, keep)
    results["segments"][key] = summary
    results.update(load=load_average(), date=run_date(), machine=machine_line())
    if keep:
        _save(results)
    logger.info(
        "segment %s done in %.0f s: %d faults (fewest of a kind so far: %d), %d violations",
        key,
        time.monotonic() - started,
        sum(summary["faults"].values()),
        _fewest(results),
        summary["n_violations"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=3, help="PostgreSQL segments")
    parser.add_argument("--minutes", type=float, default=10.0, help="per PostgreSQL segment")
    parser.add_argument("--journal-minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1000, help="first segment's seed")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--gap", type=float, default=3.0, help="mean seconds between faults")
    parser.add_argument(
        "--restart-gap", type=float, default=45.0, help="mean seconds between PostgreSQL restarts"
    )
    parser.add_argument(
        "--min-per-kind",
        type=int,
        default=0,
        help="after the planned segments, add PostgreSQL segments until every kind has this many",
    )
    parser.add_argument("--fresh", action="store_true", help="forget finished segments")
    args = bench_args(parser, argv, out=BENCHMARKS_MD)
    keep = not args.no_write  # else the segments run in memory only: none kept, none skipped
    results = _load() if keep and not args.fresh else {"segments": {}}
    plan = [("postgresql", args.seed + i, args.minutes) for i in range(args.segments)]
    if args.journal_minutes > 0:
        plan.append(("journal", args.seed, args.journal_minutes))
    gaps = (args.gap, args.restart_gap)
    for backend, seed, minutes in plan:
        _run_planned(results, backend, seed, minutes, gaps, args.postgres_url, keep)
    seed = args.seed + args.segments
    while args.min_per_kind and _fewest(results) < args.min_per_kind:
        _run_planned(results, "postgresql", seed, args.minutes, gaps, args.postgres_url, keep)
        seed += 1
    command = command_line("bench.faults", parser, args, "postgres_url", "fresh", "no_write")
    if keep:
        update_section(HEADING, render(results, command), path=args.out)
    else:
        print(render(results, command))
    total = sum(s["n_violations"] for s in results["segments"].values())
    print(f"{len(results['segments'])} segments, {total} violations")
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main())
