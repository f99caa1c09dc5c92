"""Fault injection for the reliability harness: kinds, reproducible schedules, process and
database faults. Network faults live in ``tests.reliability.faultproxy.FaultProxy``; the
runner that plays a schedule in ``tests.reliability.faultrunner.FaultRunner``.

Times in a schedule are seconds from the runner's start; times in the runner's records are
wall-clock (``time.time()``) so they line up with trial timestamps and worker logs.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

log = logging.getLogger(__name__)

Proc = subprocess.Popen[Any]
_T = TypeVar("_T")


class FaultKind(enum.Enum):
    """Every fault the harness can inject."""

    REFUSE = "refuse"  # proxy: new connections refused
    BLACKHOLE = "blackhole"  # proxy: all traffic stalls, nothing closes
    RESET = "reset"  # proxy: every open connection reset (instant)
    LATENCY = "latency"  # proxy: every forwarded chunk delayed
    LOST_ACK = "lost_ack"  # proxy: the next COMMIT's reply dropped, both sides reset
    PROXY_RESTART = "proxy_restart"  # proxy: listener and connections closed, reopened later
    KILL9 = "kill9"  # worker: SIGKILL, replaced after the event's duration
    SIGSTOP = "sigstop"  # worker: frozen past the heartbeat grace period, then SIGCONT
    SIGTERM = "sigterm"  # worker: asked to stop, replaced once it has exited
    PG_RESTART = "pg_restart"  # the PostgreSQL cluster stopped for the event's duration

    @property
    def targets_worker(self) -> bool:
        """True for faults aimed at one worker process (the event's ``target``)."""
        return self in (FaultKind.KILL9, FaultKind.SIGSTOP, FaultKind.SIGTERM)

    @property
    def needs_proxy(self) -> bool:
        """True for faults injected by the ``FaultProxy``."""
        return not self.targets_worker and self is not FaultKind.PG_RESTART


# -- process faults ----------------------------------------------------------------------------


def _signal(proc: Proc, sig: int, *, group: bool) -> bool:
    """Send ``sig`` to ``proc`` (its process group if ``group``); False if it already exited."""
    if proc.poll() is not None:
        return False
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        return False
    return True


def kill9(proc: Proc, *, group: bool = False, reap_timeout_s: float = 5.0) -> int | None:
    """SIGKILL ``proc`` and reap it; returns its exit code (None if it did not die in time).

    ``group`` signals the whole process group (the worker must run in its own session).
    """
    _signal(proc, signal.SIGKILL, group=group)
    try:
        return proc.wait(reap_timeout_s)
    except subprocess.TimeoutExpired:
        return None


def terminate(proc: Proc, *, group: bool = False) -> bool:
    """SIGTERM ``proc`` without waiting; False if it had already exited."""
    return _signal(proc, signal.SIGTERM, group=group)


class Freeze:
    """A process stopped with SIGSTOP and continued by a timer; see ``freeze``."""

    def __init__(self, proc: Proc, seconds: float, *, group: bool) -> None:
        self.proc = proc
        self._group = group
        self._thawed = threading.Event()
        self.stopped = _signal(proc, signal.SIGSTOP, group=group)
        self._timer = threading.Timer(seconds, self.thaw)
        self._timer.daemon = True
        self._timer.start()

    def thaw(self) -> None:
        """SIGCONT now (idempotent; a no-op for a process that has exited)."""
        if not self._thawed.is_set():
            self._timer.cancel()
            _signal(self.proc, signal.SIGCONT, group=self._group)
            self._thawed.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until the process has been continued; True if it has."""
        return self._thawed.wait(timeout_s)


def freeze(proc: Proc, seconds: float, *, group: bool = False) -> Freeze:
    """SIGSTOP ``proc`` now and SIGCONT it ``seconds`` later from a timer thread.

    Returns at once; ``join()`` the handle to wait for the thaw, ``thaw()`` to end it early.
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")
    return Freeze(proc, seconds, group=group)


# -- database faults ---------------------------------------------------------------------------


def _cluster_command(action: str) -> list[str]:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one cluster version in /etc/postgresql, found {versions}")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", action]


def restart_postgres(
    down_s: float, *, host: str = "127.0.0.1", port: int = 5432, ready_timeout_s: float = 60.0
) -> None:
    """Stop the local cluster (fast mode: sessions are cut), wait ``down_s``, start it, and
    return once ``pg_isready`` answers. The start happens even if the stop or the wait fails
    or is interrupted. Raises ``TimeoutError`` if the server is not ready in time.
    """
    try:
        subprocess.run([*_cluster_command("stop"), "-m", "fast"], check=True, capture_output=True)
        time.sleep(down_s)
    finally:
        started = subprocess.run(_cluster_command("start"), capture_output=True, text=True)
        if started.returncode != 0:  # e.g. already running; readiness decides
            log.warning("pg_ctlcluster start: %s", started.stderr.strip())
        deadline = time.monotonic() + ready_timeout_s
        ready = ["pg_isready", "-q", "-h", host, "-p", str(port)]
        while subprocess.run(ready, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL not ready {ready_timeout_s} s after a restart")
            time.sleep(0.25)


def restarts_postgres(test: _T) -> _T:
    """Mark a test that stops the local cluster: ``postgres`` and ``slow``, and skipped where
    there is no local cluster to restart."""
    marks = (
        pytest.mark.postgres,
        pytest.mark.slow,
        pytest.mark.skipif(not Path("/etc/postgresql").is_dir(), reason="no local cluster"),
    )
    for mark in marks:
        test = mark(test)  # type: ignore[assignment]  # a mark returns what it decorates
    return test


# -- schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultEvent:
    """One fault: starts ``at_s`` seconds into the run and lasts ``duration_s`` (0: instant;
    for KILL9 and SIGTERM, the delay before the replacement worker). ``target`` is a worker
    index for worker faults, None otherwise."""

    at_s: float
    kind: FaultKind
    duration_s: float
    target: int | None = None

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True)
class FaultSchedule:
    """Timed fault events in start order, all ending by ``duration_s``."""

    events: tuple[FaultEvent, ...]
    duration_s: float

    @classmethod
    def generate(
        cls,
        *,
        seed: int,
        duration_s: float,
        kinds: Collection[FaultKind],
        n_workers: int = 0,
        mean_gap_s: float = 5.0,
        min_gap_s: float = 1.0,
        outage_s: tuple[float, float] = (1.0, 20.0),
        freeze_grace_s: float = 0.0,
    ) -> FaultSchedule:
        """A reproducible schedule: the same arguments give the same events.

        Gaps between starts are exponential with mean ``mean_gap_s``, at least ``min_gap_s``;
        outages are uniform in ``outage_s``, so events overlap whenever an outage outlasts
        the gap. Kinds are dealt in shuffled rounds, so every kind appears once there is room
        for ``len(kinds)`` events. SIGSTOP lasts ``freeze_grace_s`` plus an outage (a freeze
        past the heartbeat grace). Worker targets are uniform over ``range(n_workers)``.
        Events that would end after ``duration_s`` are left out.
        """
        chosen = sorted(set(kinds), key=lambda k: k.value)  # set order is not reproducible
        low, high = outage_s
        if not chosen:
            raise ValueError(f"kinds must not be empty, got {kinds!r}")
        if duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
        if not 0 <= min_gap_s <= mean_gap_s or mean_gap_s <= 0:
            raise ValueError(
                f"need 0 <= min_gap_s <= mean_gap_s and mean_gap_s > 0, "
                f"got min_gap_s={min_gap_s!r}, mean_gap_s={mean_gap_s!r}"
            )
        if not 0 < low <= high:
            raise ValueError(f"outage_s must be (low, high) with 0 < low <= high, got {outage_s!r}")
        if freeze_grace_s < 0:
            raise ValueError(f"freeze_grace_s must be >= 0, got {freeze_grace_s!r}")
        if n_workers < 1 and any(k.targets_worker for k in chosen):
            raise ValueError(f"worker faults need n_workers >= 1, got {n_workers!r}")

        rng = random.Random(seed)
        events: list[FaultEvent] = []
        deck: list[FaultKind] = []
        at_s = 0.0
        while True:
            at_s += max(min_gap_s, rng.expovariate(1.0 / mean_gap_s))
            if at_s >= duration_s:
                break
            if not deck:
                deck = rng.sample(chosen, len(chosen))
            kind = deck.pop()
            lasting = rng.uniform(low, high)
            if kind is FaultKind.RESET:
                lasting = 0.0
            elif kind is FaultKind.SIGSTOP:
                lasting += freeze_grace_s
            target = rng.randrange(n_workers) if kind.targets_worker else None
            event = FaultEvent(round(at_s, 3), kind, round(lasting, 3), target)
            if event.end_s <= duration_s:
                events.append(event)
        return cls(tuple(events), duration_s)

    def kinds(self) -> set[FaultKind]:
        """The kinds that occur."""
        return {e.kind for e in self.events}

    def overlapping_pairs(self) -> list[tuple[FaultEvent, FaultEvent]]:
        """Pairs of events active at the same time (instant events count at their start)."""
        return [
            (a, b)
            for i, a in enumerate(self.events)
            for b in self.events[i + 1 :]
            if b.at_s < a.end_s or (a.duration_s == 0 and a.at_s == b.at_s)
        ]
