"""``hpo run``: create the study, start local worker processes, show a live view, sum up."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo import records
from hpo.baselines import compare, describe, shortfall, stored_baselines
from hpo.local.launch import cuda_device_count, worker_command
from hpo.spec.model import StudySpec
from hpo.store import ENV_STORAGE, mask_url, open_storage
from hpo.study import set_up_study

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

logger = logging.getLogger(__name__)

REFRESH_S = 2.0
STOP_GRACE_S = 30.0


def default_workers(device: str) -> int:
    """What the machine can feed: one per GPU, else one per two CPU cores (torch uses both)."""
    if device.startswith("cuda") or device == "auto":
        n_gpus = cuda_device_count()
        if n_gpus:
            return n_gpus
    return max(1, (os.cpu_count() or 1) // 2)


def worker_device(device: str, index: int, n_gpus: int) -> str:
    """The ``--device`` of local worker ``index``: ``auto`` and ``cuda`` spread the workers
    over the ``n_gpus`` GPUs round-robin (``cuda:index mod n_gpus``), so none is left idle
    and none gets every worker; ``auto`` without a GPU, ``cpu`` and ``cuda:N`` stay as given."""
    if device in ("auto", "cuda") and n_gpus > 0:
        return f"cuda:{index % n_gpus}"
    return device


@dataclass
class RunOutcome:
    """How ``hpo run`` ended: the workers' exit codes and where the best config went."""

    exit_codes: list[int]
    best_path: Path | None
    interrupted: bool


def start_workers(
    spec: StudySpec, storage_url: str, n_workers: int, device: str, log_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """Start ``n_workers`` processes; each logs to ``log_dir/worker-<i>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    n_gpus = cuda_device_count() if device in ("auto", "cuda") else 0
    procs = []
    for index in range(n_workers):
        dev = worker_device(device, index, n_gpus)
        log = open(log_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                worker_command(spec.name, device=dev, stream=index, threads=threads),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, ENV_STORAGE: storage_url},
                start_new_session=True,  # Ctrl-C reaches us only; we forward SIGTERM
            )
        )
        log.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every worker, wait for clean exits, SIGKILL what is left after ``grace_s``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_study(
    spec: StudySpec,
    storage_url: str,
    *,
    n_workers: int | None = None,
    device: str = "auto",
    console: Console | None = None,
    best_path: Path | None = None,
) -> RunOutcome:
    """Create the study (idempotent), run local workers to the budget, write the best config."""
    from rich.console import Console
    from rich.live import Live

    from hpo.views.live import render_status

    console = console or Console(stderr=True)
    storage = open_storage(storage_url)
    study = set_up_study(spec, storage)
    n = n_workers or default_workers(device)
    log_dir = Path(".hpo") / "logs" / spec.name
    console.print(
        f"study [bold]{spec.name}[/] in {mask_url(storage_url)}: {n} worker(s), "
        f"budget {spec.budget.n_trials} trials; worker logs in {log_dir}/"
    )
    bars = stored_baselines(study)
    if bars:
        console.print(
            f"to beat, on the same folds ({spec.objective.metric}): "
            + "; ".join(f"{b.title} {b.mean:.4f}" for b in bars),
            highlight=False,
        )
    # The workers run in their own sessions (Ctrl-C must reach only us), so a SIGTERM (kill,
    # timeout, docker stop) or SIGHUP (the terminal closed) that ended only us would leave them
    # training on: every one of them stops the workers as Ctrl-C does.
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    procs = start_workers(spec, storage_url, n, device, log_dir)
    started = time.monotonic()
    interrupted = False
    try:
        with Live(
            render_status(study, spec, started), console=console, refresh_per_second=1
        ) as live:
            while any(p.poll() is None for p in procs):
                time.sleep(REFRESH_S)
                live.update(render_status(study, spec, started))
            live.update(render_status(study, spec, started))
        console.print()
    except KeyboardInterrupt:
        interrupted = True
        console.print("stopping workers (Ctrl-C again to kill them)…")
        try:
            stop_workers(procs)
        except KeyboardInterrupt:
            for proc in procs:
                proc.kill()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [p.wait() for p in procs]
    path = summarize(study, spec, console, best_path or Path("runs") / spec.name / "best.yaml")
    return RunOutcome(exit_codes=codes, best_path=path, interrupted=interrupted)


def summarize(
    study: optuna.Study, spec: StudySpec, console: Console, best_path: Path
) -> Path | None:
    """Print the best trial and write its config; None when no trial completed."""
    from optuna.trial import TrialState

    from hpo.views.export import write_export

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        console.print("[yellow]no trial completed[/]")
        return None
    best = study.best_trial
    score = records.CVScore.of(best)
    folds, mean, std = score.fold_scores, score.mean, score.std or 0.0
    assert mean is not None  # a complete trial has a value
    console.print(
        f"best trial {best.number}: {spec.objective.metric} {mean:.4f} ± {std:.4f}"
        f"  folds {[round(f, 4) for f in folds]}"
    )
    console.print("params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    baselines = stored_baselines(study)
    if baselines:
        comparisons = compare(mean, folds, baselines, spec.direction)
        console.print(describe(comparisons), highlight=False)
        verdict = shortfall(comparisons)
        if verdict:
            console.print(f"[bold yellow]{verdict}[/]", highlight=False)
    write_export(study, spec, best_path)
    console.print(f"best config written to {best_path}")
    return best_path


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
