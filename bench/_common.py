"""What every benchmark shares: the machine line, the date, updating one BENCHMARKS.md section,
running a contender in a fresh offline process (``run_child``), many processes from one start
line (``StartLine``), a figure written to a file (``figure``) and timing a trial's first step.

Each benchmark owns one ``## `` section of BENCHMARKS.md, found by its heading, and replaces
only that section, under a file lock, so benchmarks run at the same time do not clobber each
other. Plots go to ``bench/figures/`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import multiprocessing as mp
import os
import platform
import queue as queue_module
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
FIGURES = ROOT / "bench" / "figures"


def run_date() -> str:
    """``date -u`` as the shell prints it."""
    done = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine_line() -> str:
    """nproc, CPU model, Python and the versions that matter for our numbers."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    cpu = match.group(1).strip() if match else platform.processor() or platform.machine()
    parts = [f"nproc {os.cpu_count()}", f"CPU {cpu}", f"Python {platform.python_version()}"]
    for package in ("torch", "transformers", "optuna", "sqlalchemy"):
        try:
            parts.append(f"{package} {version(package)}")
        except Exception:  # a benchmark that does not need the package still reports the rest
            continue
    return ", ".join(parts)


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge how shared the machine was."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by nearest rank, or NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def replace_section(document: str, heading: str, section: str) -> str:
    """``document`` with the ``## heading`` section replaced by ``section`` (appended if absent)."""
    if not document.strip():
        document = "# Benchmarks\n"
    marker = f"## {heading}\n"
    start = document.find(marker)
    if start < 0:
        return document.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    following = document.find("\n## ", start + len(marker))
    tail = document[following + 1 :] if following >= 0 else ""
    head = document[:start].rstrip("\n") + "\n\n"
    return head + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")


def command_line(
    module: str, parser: argparse.ArgumentParser, args: argparse.Namespace, *hidden: str
) -> str:
    """``python -m module`` with every option of ``args`` that is not at its default, as a
    reader reruns it; internal options (help suppressed) and ``hidden`` ones (a database URL
    may carry a password) are left out."""
    parts = [f"python -m {module}"]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in hidden:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(value, list | tuple):  # one comma-separated token when not nargs
            parts.append(f"{flag} {(' ' if action.nargs else ',').join(map(str, value))}")
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def bench_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, out: Path | None = None
) -> argparse.Namespace:
    """``parser``'s arguments from ``argv``, with ``--out`` (the markdown whose section to update;
    default ``out``, and where that is a file ``--no-write`` too: print only), logging set up
    as every benchmark logs."""
    parser.add_argument("--out", type=Path, default=out, help="markdown to update")
    if out is not None:
        parser.add_argument("--no-write", action="store_true", help="print, do not touch --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return args


def section_body(
    command: str,
    facts: Sequence[str],
    doc: str | None,
    *parts: str,
    date: str | None = None,
    machine: str | None = None,
) -> str:
    """A benchmark's section: the command that reproduces it; one line of what the run was
    (date, machine, then ``facts``); the module docstring's description (what follows its first
    two paragraphs: title and usage); then ``parts``. Blank lines between. ``date`` and
    ``machine`` default to now and this machine (a section re-rendered from saved results
    passes the run's own)."""
    run = "; ".join([f"Run {date or run_date()}", machine or machine_line(), *facts])
    description = doc.split("\n\n", 2)[2].strip() if doc else ""
    return "\n\n".join([f"`{command}`", f"{run}.", description, *parts]).rstrip() + "\n"


def update_section(heading: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Write ``## heading`` + ``body`` into ``path``, replacing that section only (locked)."""
    section = f"## {heading}\n\n{body.strip()}\n"
    lock_path = path.with_suffix(".md.lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = path.read_text() if path.exists() else ""
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(replace_section(existing, heading, section))
        tmp.replace(path)


# No hub at run time: every model and dataset a bench uses is installed as a package.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment, offline, plus ``extra``."""
    return {**os.environ, **OFFLINE_ENV, **extra}


def run_child(module: str, args: Sequence[str]) -> Any:
    """``python -m module args --json FILE`` in a fresh process, offline, from the repository
    root (a contender measured cold, with nothing another contender imported or warmed); the
    JSON it wrote to FILE. Its output goes nowhere; a failure raises."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", module, *args, "--json", out.name]
        subprocess.run(command, check=True, env=offline_env(), stdout=subprocess.DEVNULL, cwd=ROOT)
        return json.loads(Path(out.name).read_text())


class FirstStep:
    """Records when this process next starts a forward pass and an optimizer step.

    Set up before the trial starts: the first forward is the first training batch's (both
    trainers evaluate only after an epoch), so ``forward_at - start`` is the setup and
    ``at - start`` adds one batch's forward and backward. Both hooks remove themselves once
    they fired (``remove`` removes them before). Times are ``clock()``'s.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.forward_at: float | None = None
        self.at: float | None = None
        self._clock = clock
        self._forward = register_module_forward_pre_hook(self._on_forward)
        self._step = register_optimizer_step_pre_hook(self._on_step)

    def _on_forward(self, *_: Any) -> None:
        if self.forward_at is None:
            self.forward_at = self._clock()
            self._forward.remove()

    def _on_step(self, *_: Any) -> None:
        if self.at is None:
            self.at = self._clock()
            self._step.remove()

    def remove(self) -> None:
        self._forward.remove()
        self._step.remove()


class StartLine:
    """Many benchmark processes that get ready (import, open the store, load the study), start
    their window at one common instant, and report back through one queue.

    The parent makes one, passes it to every process it starts, and calls ``run``; each process
    calls ``ready`` once it can start (it returns the common start time, or None when the
    process could not get ready or no start came) and ``report`` when its window is over. Other
    messages may share the queue (``put``/``get``); ``run`` reads past them.
    """

    READY_TIMEOUT_S = 600.0  # 64 processes importing Optuna on 2 shared cores take a while
    FINISH_GRACE_S = 300.0  # after the window: a process still in a store call may finish it
    START_DELAY_S = 1.0  # the start line is set this far ahead so every process sees it in time

    def __init__(self, context: Any) -> None:
        self._results = context.Queue()
        self._start = context.Event()
        self._at = context.Value("d", 0.0)

    def put(self, kind: str, payload: Any) -> None:
        self._results.put((kind, payload))

    def get(self, timeout_s: float) -> tuple[str, Any]:
        kind, payload = self._results.get(timeout=timeout_s)
        return kind, payload

    def ready(self, ok: bool) -> float | None:
        """In a benchmark process: say whether it got ready; wait for the start line, then for
        its instant. The start time (``time.time()``), or None: report what you have and end."""
        self.put("ready", ok)
        if not ok or not self._start.wait(self.READY_TIMEOUT_S + 60):
            return None
        return self.wait_for_start()

    def wait_for_start(self) -> float:
        """The start time, once it has come (in a process that does not report)."""
        self._start.wait()
        time.sleep(max(0.0, self._at.value - time.time()))
        return float(self._at.value)

    def report(self, result: Any) -> None:
        self.put("result", result)

    def run(self, processes: Sequence[Any], seconds: float) -> tuple[list[Any], int, float]:
        """Start ``processes``, wait until all are ready (or ``READY_TIMEOUT_S``), set the start
        line ``START_DELAY_S`` ahead, and collect their reports until all have reported, all
        exited, or ``FINISH_GRACE_S`` after the window. Returns the reports, how many got
        ready, and the start time. The processes are left to the caller to join."""
        for process in processes:
            process.start()
        reports: list[Any] = []
        ready = self._collect(processes, reports, "ready", time.time() + self.READY_TIMEOUT_S)
        self._at.value = time.time() + self.START_DELAY_S
        self._start.set()
        until = self._at.value + seconds + self.FINISH_GRACE_S
        self._collect(processes, reports, "result", until)
        return reports, ready, float(self._at.value)

    def _collect(
        self, processes: Sequence[Any], reports: list[Any], wanted: str, until: float
    ) -> int:
        """Read messages until every process sent ``wanted``, all exited, or ``until`` passed;
        every report read (also an early one from a process that could not get ready) is kept.
        Returns how many ``wanted`` messages were read."""
        count = len(reports) if wanted == "result" else 0
        while count < len(processes) and time.time() < until:
            try:
                kind, payload = self.get(1.0)
            except queue_module.Empty:
                if not any(process.is_alive() for process in processes):
                    break
                continue
            if kind == "result":
                reports.append(payload)
            if kind == wanted:
                count += 1
        return count


def end_all(processes: Sequence[Any], grace_s: float, label: str) -> None:
    """Join ``processes``, giving them ``grace_s`` in all; kill the ones still running."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(timeout=max(0.1, deadline - time.monotonic()))
        if process.is_alive():  # only ever a process the benchmark started
            logging.getLogger("bench").warning(
                "%s: process %d still running after %.0f s; killed", label, process.pid, grace_s
            )
            process.kill()
            process.join(timeout=5)


@contextlib.contextmanager
def figure(path: Path, *args: Any, dpi: int = 110, **kwargs: Any) -> Iterator[Any]:
    """``matplotlib.pyplot.subplots(*args, **kwargs)`` off screen; yields ``(fig, axes)`` and
    saves the figure to ``path`` (its folder made) at ``dpi`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def product_sampler(seed: int, name: str = "tpe", **options: Any) -> Any:
    """The product's sampler ``name`` as ``hpo.search.samplers.make_sampler`` builds it from
    ``SamplerSpec(name=name, seed=seed, options=options)``. The space is a nominal valid one: the
    TPE and GP constructors do not read it (only the grid sampler does)."""
    from hpo.search.samplers import make_sampler
    from hpo.spec.model import SamplerSpec
    from hpo.spec.space import SearchSpace

    space = SearchSpace.model_validate(
        {
            "lr": {"low": 1e-5, "high": 1e-3, "log": True},
            "dropout": {"low": 0.0, "high": 0.5},
            "l1": {"low": 0.0, "high": 1e-3},
            "l2": {"low": 0.0, "high": 1e-3},
        }
    )
    return make_sampler(SamplerSpec(name=name, seed=seed, options=options), space)


def pool_map(
    function: Callable[[Any], list[Any]],
    tasks: Sequence[Any],
    workers: int,
    describe: Callable[[list[Any]], str],
) -> list[Any]:
    """``function`` over ``tasks`` in ``workers`` spawned processes, in the order tasks finish;
    the lists it returns, joined. Each finished task is logged as ``describe(its list)``."""
    results: list[Any] = []
    with mp.get_context("spawn").Pool(workers) as pool:
        for done, task_results in enumerate(pool.imap_unordered(function, tasks), start=1):
            results.extend(task_results)
            logging.getLogger("bench").info("%d/%d %s", done, len(tasks), describe(task_results))
    return results


def median_band(
    ax: Any, xs: Sequence[float], per_x: Iterable[Sequence[float]], alpha: float, **line: Any
) -> None:
    """Plot the median of each of ``per_x`` (the values at each x) against ``xs`` with keyword
    arguments ``line``, and shade the 25th to 75th percentile in the line's colour."""
    values = list(per_x)
    (drawn,) = ax.plot(xs, [median(v) for v in values], **line)
    low, high = ([percentile(v, q) for v in values] for q in (25, 75))
    ax.fill_between(xs, low, high, color=drawn.get_color(), alpha=alpha)
