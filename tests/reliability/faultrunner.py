"""Play a ``FaultSchedule`` in a background thread and record what was injected."""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hpo import records
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.faults import (
    FaultEvent,
    FaultKind,
    FaultSchedule,
    Proc,
    freeze,
    kill9,
    restart_postgres,
    terminate,
)

log = logging.getLogger(__name__)

# Proxy faults that one undo ends together: a restarted proxy and a refusing one both admit.
_UNDONE_AS = {FaultKind.PROXY_RESTART: FaultKind.REFUSE}
# Lost acks take turns among these. By default whichever COMMIT comes next (mostly beats and
# reports, which are idempotent anyway); the soak (``bench.faults``) sets ``AIMED_LOST_ACKS``:
# also the COMMIT of each write a retry must not repeat. ``FaultProxy.lost_acks_after`` counts
# which fired.
AIMED_LOST_ACKS: tuple[bytes | None, ...] = (
    None,
    b"insert into trials (number, study_id, state, datetime_start)",  # a trial's creation
    b"update trials set state = 'running'",  # a pop of a waiting trial
    b"set state = cast(",  # a tell, or the owner's FAIL
    b"update trials t set state = 'fail'",  # a sweeper's FAIL
    records.REQUEUE_OF_KEY.encode(),  # a re-queued copy
)
LOST_ACK_TARGETS: tuple[bytes | None, ...] = (None,)


@dataclass
class InjectedFault:
    """A fault as injected: wall-clock ``started_at`` and ``ended_at`` (``time.time()``;
    None while active), the worker's ``pid`` and index (``slot``: the event's target, or the
    worker it was passed on to) for worker faults, and a free-form ``note`` (connections
    reset, whether a lost ack fired, the replacement's pid)."""

    event: FaultEvent
    started_at: float
    ended_at: float | None = None
    pid: int | None = None
    note: str = ""
    slot: int | None = None

    @property
    def kind(self) -> FaultKind:
        return self.event.kind

    @property
    def target(self) -> int | None:
        return self.event.target

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record for reports."""
        return {
            "kind": self.kind.value,
            "target": self.target,
            "at_s": self.event.at_s,
            "duration_s": self.event.duration_s,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "pid": self.pid,
            "slot": self.slot,
            "note": self.note,
        }


class FaultRunner:
    """Injects a schedule's events on time, from a background thread.

    Worker faults act on ``workers[event.target]``. A worker killed (KILL9) or stopped
    (SIGTERM) is replaced once the event's duration has passed and it has exited:
    ``workers[i] = respawn(i)`` (the list is shared with the caller, who sees the new
    ``Popen``). Overlapping proxy faults of one kind end when the last of them ends.
    ``stop()`` ends every active fault at once (thaw, heal, admit, respawn exited workers)
    and waits for a PostgreSQL restart in progress.

    Args:
        schedule: what to inject and when (seconds from ``start()``).
        proxy: needed for REFUSE, BLACKHOLE, RESET, LATENCY, LOST_ACK, PROXY_RESTART.
        workers: worker processes, indexed by event targets.
        respawn: starts the replacement for a worker index; None leaves killed workers dead.
        latency_s: the per-chunk delay of a LATENCY fault.
        group: signal each worker's process group rather than the process alone.
        restart_pg: performs a PG_RESTART of the given down time (tests pass a fake).
        respawn_poll_s: how often to look whether a SIGTERMed worker has exited.
        retarget: a worker fault whose target has exited goes to the next live worker in
            index order (skipped only when none is live), so a schedule's worker faults land
            however the workers come and go.
    """

    def __init__(
        self,
        schedule: FaultSchedule,
        *,
        proxy: FaultProxy | None = None,
        workers: MutableSequence[Proc] | None = None,
        respawn: Callable[[int], Proc] | None = None,
        latency_s: float = 0.2,
        group: bool = False,
        restart_pg: Callable[[float], None] = restart_postgres,
        respawn_poll_s: float = 0.5,
        retarget: bool = False,
    ) -> None:
        kinds = schedule.kinds()
        if proxy is None and any(k.needs_proxy for k in kinds):
            raise ValueError(f"proxy is required for {sorted(k.value for k in kinds)}, got None")
        self._workers: MutableSequence[Proc] = workers if workers is not None else []
        targets = [e.target for e in schedule.events if e.target is not None]
        if targets and max(targets) >= len(self._workers):
            raise ValueError(
                f"workers has {len(self._workers)} entries, the schedule targets {max(targets)}"
            )
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s!r}")
        self._schedule = schedule
        self._proxy = proxy
        self._respawn = respawn
        self._latency_s = latency_s
        self._group = group
        self._restart_pg = restart_pg
        self._respawn_poll_s = respawn_poll_s
        self._retarget = retarget
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._actions: list[tuple[float, int, bool, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._holds: dict[FaultKind, int] = {}
        self._lost_acks = itertools.count()
        self._pg_thread: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, name="fault-runner", daemon=True)
        self._injected: list[InjectedFault] = []
        self.skipped: list[FaultEvent] = []

    def start(self) -> FaultRunner:
        """Start playing the schedule now; returns the runner."""
        t0 = time.monotonic()
        for event in self._schedule.events:
            self._at(t0 + event.at_s, False, functools.partial(self._start, event))
        self._thread.start()
        return self

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the schedule to play out (every fault ended); True if it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, timeout_s: float = 90.0) -> list[InjectedFault]:
        """End every active fault now and return the records (see ``injected``)."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("fault runner still ending faults after %.0f s", timeout_s)
        return self.injected

    def __enter__(self) -> FaultRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def injected(self) -> list[InjectedFault]:
        """Faults injected so far, in start order (skipped events are in ``skipped``)."""
        with self._lock:
            return list(self._injected)

    # -- the loop ----------------------------------------------------------------------------

    def _at(self, due: float, ends: bool, action: Callable[[], None]) -> None:
        """Queue ``action`` at monotonic time ``due``; ``ends`` marks undo actions, which also
        run (early) when the runner stops."""
        heapq.heappush(self._actions, (due, next(self._seq), ends, action))

    def _run(self) -> None:
        while self._actions:
            due = self._actions[0][0]
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            self._call(heapq.heappop(self._actions)[3])
        while self._actions:  # stopped: end what is active, start nothing new
            _, _, ends, action = heapq.heappop(self._actions)
            if ends:
                self._call(action)
        if self._pg_thread is not None:
            self._pg_thread.join()

    @staticmethod
    def _call(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # one failed injection must not end the run
            log.exception("fault runner action failed")

    def _record(self, event: FaultEvent, **fields: Any) -> InjectedFault:
        record = InjectedFault(event, time.time(), **fields)
        with self._lock:
            self._injected.append(record)
        log.info("fault %s target=%s for %.1f s", event.kind.value, event.target, event.duration_s)
        return record

    def _skip(self, event: FaultEvent, why: str) -> None:
        log.info("fault %s target=%s skipped: %s", event.kind.value, event.target, why)
        self.skipped.append(event)

    def _end_later(self, event: FaultEvent, action: Callable[[], None]) -> None:
        self._at(time.monotonic() + event.duration_s, True, action)

    # -- injections --------------------------------------------------------------------------

    def _start(self, event: FaultEvent) -> None:
        if event.kind.targets_worker:
            self._start_worker_fault(event)
        elif event.kind is FaultKind.PG_RESTART:
            self._start_pg_restart(event)
        else:
            self._start_proxy_fault(event)

    def _start_worker_fault(self, event: FaultEvent) -> None:
        assert event.target is not None
        n = len(self._workers)
        order = [(event.target + i) % n for i in range(n)] if self._retarget else [event.target]
        live = [i for i in order if self._workers[i].poll() is None]
        if not live:
            proc = self._workers[event.target]
            self._skip(event, f"worker {event.target} (pid {proc.pid}) has exited")
            return
        slot = live[0]
        proc = self._workers[slot]
        record = self._record(event, pid=proc.pid, slot=slot)
        if event.kind is FaultKind.SIGSTOP:
            handle = freeze(proc, event.duration_s, group=self._group)

            def thaw() -> None:
                handle.thaw()
                record.ended_at = time.time()

            self._end_later(event, thaw)
            return
        if event.kind is FaultKind.KILL9:
            kill9(proc, group=self._group)
        else:
            terminate(proc, group=self._group)
        self._end_later(event, lambda: self._replace(record, proc))

    def _replace(self, record: InjectedFault, proc: Proc) -> None:
        """Respawn the target once ``proc`` has exited; poll again while it runs."""
        index = record.slot
        assert index is not None
        if proc.poll() is None:
            if self._stop.is_set():
                record.note = "still running when the runner stopped"
                record.ended_at = time.time()
            else:
                self._at(
                    time.monotonic() + self._respawn_poll_s,
                    True,
                    lambda: self._replace(record, proc),
                )
            return
        if self._respawn is not None and self._workers[index] is proc:
            self._workers[index] = self._respawn(index)
            record.note = f"exit {proc.returncode}; replaced by pid {self._workers[index].pid}"
        else:
            record.note = f"exit {proc.returncode}; not replaced"
        record.ended_at = time.time()

    def _start_pg_restart(self, event: FaultEvent) -> None:
        if self._pg_thread is not None and self._pg_thread.is_alive():
            self._skip(event, "a PostgreSQL restart is in progress")
            return
        record = self._record(event)

        def cycle() -> None:
            try:
                self._restart_pg(event.duration_s)
            finally:
                record.ended_at = time.time()

        self._pg_thread = threading.Thread(target=cycle, name="fault-pg-restart", daemon=True)
        self._pg_thread.start()

    def _next_lost_ack_target(self) -> bytes | None:
        return LOST_ACK_TARGETS[next(self._lost_acks) % len(LOST_ACK_TARGETS)]

    def _start_proxy_fault(self, event: FaultEvent) -> None:
        proxy = self._proxy
        assert proxy is not None
        kind = event.kind
        if kind is FaultKind.RESET:
            record = self._record(event)
            record.note = f"{proxy.reset_all()} connections reset"
            record.ended_at = time.time()
            return
        fired_before = proxy.counts.get(FaultKind.LOST_ACK, 0)
        starts: dict[FaultKind, Callable[[], object]] = {
            FaultKind.REFUSE: proxy.refuse,
            FaultKind.PROXY_RESTART: proxy.crash,
            FaultKind.BLACKHOLE: proxy.blackhole,
            FaultKind.LATENCY: lambda: proxy.latency(self._latency_s),
            FaultKind.LOST_ACK: lambda: proxy.lose_next_reply(after=self._next_lost_ack_target()),
        }
        record = self._record(event)
        starts[kind]()
        group = _UNDONE_AS.get(kind, kind)
        self._holds[group] = self._holds.get(group, 0) + 1

        def end() -> None:
            self._holds[group] -= 1
            if self._holds[group] == 0:
                undos: dict[FaultKind, Callable[[], object]] = {
                    FaultKind.REFUSE: proxy.admit,
                    FaultKind.BLACKHOLE: proxy.heal,
                    FaultKind.LATENCY: lambda: proxy.latency(0.0),
                    FaultKind.LOST_ACK: proxy.cancel_lost_reply,
                }
                undos[group]()
            if kind is FaultKind.LOST_ACK:
                fired = proxy.counts.get(FaultKind.LOST_ACK, 0) > fired_before
                record.note = "fired" if fired else "not fired"
            record.ended_at = time.time()

        self._end_later(event, end)
