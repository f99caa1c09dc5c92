"""What every benchmark shares: the machine line, the date, and updating one BENCHMARKS.md section.

Each benchmark owns one ``## `` section of BENCHMARKS.md, found by its heading, and replaces
only that section, under a file lock, so benchmarks run at the same time do not clobber each
other. Plots go to ``bench/figures/`` beside it.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

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
            from importlib.metadata import version

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
