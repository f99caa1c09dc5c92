"""The fault harness: real ``hpo worker`` processes on one store, a seeded fault schedule, and
the exactly-once invariants checked on what stock Optuna reads back.

Workers are ``python -m tests.reliability._stub_worker worker ...``: the real CLI and worker
loop with a stand-in trainer that reports every fold × epoch (see that module). The stores:

* ``postgresql``: every worker connection goes through a ``FaultProxy`` to PostgreSQL;
* ``journal``: a journal file in the workdir, shared by the workers (process faults only);
* ``grpc``: workers on ``grpc://`` reach ``hpo proxy`` (a subprocess serving a journal file in
  the workdir) through a ``FaultProxy``; the checks read the journal file directly.

The ``FaultRunner`` plays the schedule (network faults on the proxy, kill -9 / SIGSTOP /
SIGTERM on workers, restarts of the store's server) and respawns killed workers. Studies run
back to back until the schedule is over, each with its own budget, so faults keep landing on
live studies however long the schedule is; each study is then checked by
``tests.reliability.invariants.check_study``.

The CI test (``test_harness.py``) and the soak benchmark (``python -m bench.faults``) both
run ``run_harness``; this module is their one home.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.spec.model import parse_spec
from hpo.store import normalize_postgres_url, open_storage
from hpo.study import create_study
from tests.reliability._stub_worker import ENV_EVENTS, ENV_PROC, ENV_STEP_S
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.faultrunner import FaultRunner, InjectedFault
from tests.reliability.faults import FaultEvent, FaultKind, FaultSchedule, Proc, restart_postgres
from tests.reliability.hpoproxy import HpoProxyProcess
from tests.reliability.invariants import (
    FINISHED,
    StudyCheck,
    WorkerProc,
    attempts_of,
    check_exits,
    check_study,
    load_events,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
Backend = Literal["postgresql", "journal", "grpc"]
PROXY_KINDS = frozenset(k for k in FaultKind if k.needs_proxy)
WORKER_KINDS = frozenset(k for k in FaultKind if k.targets_worker)
POSTGRES_KINDS = frozenset(FaultKind)
JOURNAL_KINDS = WORKER_KINDS
# Not LOST_ACK: its trigger reads SQL text (COMMIT) in the client's bytes, and a reply lost
# between a worker and ``hpo proxy`` is the one documented gap there (README, "What you can
# count on": Optuna's gRPC API carries no request id, so a retried call is not idempotent).
# PG_RESTART is a crash and restart of the ``hpo proxy`` process (see HarnessConfig).
GRPC_KINDS = POSTGRES_KINDS - {FaultKind.LOST_ACK}
BACKEND_KINDS: dict[Backend, frozenset[FaultKind]] = {
    "postgresql": POSTGRES_KINDS,
    "journal": JOURNAL_KINDS,
    "grpc": GRPC_KINDS,
}
_POLL_S = 0.25


@dataclass(frozen=True)
class HarnessConfig:
    """One harness run: the store, the workers, the studies, and the fault schedule.

    Studies of ``n_trials`` each (``n_folds`` × ``epochs`` steps of ``step_s`` seconds per
    trial) run back to back for ``duration_s``, the span of the schedule; the last one runs to
    its end. Faults of ``kinds`` start every ``mean_gap_s`` on average (at least
    ``min_gap_s`` apart); outages, kill-to-respawn delays and freezes past the grace period
    last ``outage_s``. ``rare_kinds`` are dealt on a sparser schedule of their own (one every
    ``rare_gap_s`` on average; PostgreSQL restarts disturb everyone on the server).
    ``pid_namespace`` runs each worker as PID 1 of its own PID namespace, as containers do.

    Liveness is judged once the faults stop, as in Jepsen: progress while the store is down
    most of the time is not promised by any rule a worker can follow. A study that has not met
    its budget ``study_timeout_s`` after it began has the faults stopped (each active one ended,
    killed workers respawned) and must then meet it within ``recovery_s``; one that does is
    reported as slowed (``StudyRun.quiet_after_s``), one that does not as a hang.

    ``kinds`` must be among ``BACKEND_KINDS[backend]``. ``FaultKind.PG_RESTART`` restarts the
    store's server, whatever it is: on ``postgresql`` the PostgreSQL cluster is stopped for
    the event's duration and started again; on ``grpc`` the ``hpo proxy`` process is killed
    (SIGKILL), stays down for the event's duration and is started again on the same port
    (the journal file behind it keeps what was written). ``journal`` has no server.
    """

    backend: Backend = "postgresql"
    kinds: frozenset[FaultKind] = POSTGRES_KINDS
    seed: int = 0
    duration_s: float = 60.0
    n_workers: int = 3
    n_trials: int = 10
    n_folds: int = 3
    epochs: int = 2
    step_s: float = 0.25
    heartbeat_s: int = 1
    grace_s: int = 4
    mean_gap_s: float = 4.0
    min_gap_s: float = 1.0
    outage_s: tuple[float, float] = (1.0, 8.0)
    latency_s: float = 0.2
    rare_kinds: frozenset[FaultKind] = frozenset()
    rare_gap_s: float = 120.0
    max_retry: int = 3
    study_timeout_s: float = 300.0
    recovery_s: float = 60.0
    exit_timeout_s: float = 120.0
    pid_namespace: bool = False

    def __post_init__(self) -> None:
        if self.pid_namespace and (self.kinds | self.rare_kinds) & WORKER_KINDS:
            raise ValueError("pid_namespace: worker faults would hit unshare, not the worker")
        if self.backend not in BACKEND_KINDS:
            raise ValueError(
                f"backend must be one of {sorted(BACKEND_KINDS)}, got {self.backend!r}"
            )
        allowed = BACKEND_KINDS[self.backend]
        if (self.kinds | self.rare_kinds) - allowed:
            bad = sorted(k.value for k in (self.kinds | self.rare_kinds) - allowed)
            raise ValueError(
                f"kinds: {bad} cannot be injected on {self.backend}; it takes "
                f"{sorted(k.value for k in allowed)}"
            )
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers!r}")
        if self.grace_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"grace_s={self.grace_s} must be >= 2 * heartbeat_s={self.heartbeat_s}"
            )

    @property
    def freeze_past_grace_s(self) -> float:
        """A SIGSTOP lasts this plus an outage: surely past the grace period and a sweep."""
        return float(self.grace_s + 2 * self.heartbeat_s)

    def schedule(self) -> FaultSchedule:
        """The run's faults: reproducible from the config (the seed among it)."""
        common: dict[str, Any] = {
            "duration_s": self.duration_s,
            "n_workers": self.n_workers,
            "min_gap_s": self.min_gap_s,
            "outage_s": self.outage_s,
            "freeze_grace_s": self.freeze_past_grace_s,
        }
        events: list[FaultEvent] = []
        often = self.kinds - self.rare_kinds
        if often:
            events += FaultSchedule.generate(
                seed=self.seed, kinds=often, mean_gap_s=self.mean_gap_s, **common
            ).events
        if self.rare_kinds:
            events += FaultSchedule.generate(
                seed=self.seed + 1_000_003,
                kinds=self.rare_kinds,
                mean_gap_s=self.rare_gap_s,
                **common | {"min_gap_s": min(self.min_gap_s, self.rare_gap_s)},
            ).events
        return FaultSchedule(tuple(sorted(events, key=lambda e: e.at_s)), self.duration_s)

    def prefix(self) -> list[str]:
        """What a worker's command line starts with."""
        if self.pid_namespace:
            return ["unshare", "--pid", "--fork", "--mount-proc", sys.executable]
        return [sys.executable]


def harness_spec(name: str, config: HarnessConfig) -> dict[str, Any]:
    """A study spec for the stand-in: nothing in it is loaded (no model, no data are read)."""
    return {
        "name": name,
        "model": {"name_or_path": "stand-in/not-loaded", "max_seq_len": 16},
        "data": {"source": "stand-in/not-loaded.csv", "text": "text", "label": "label"},
        "cv": {"n_folds": config.n_folds},
        "train": {"epochs": config.epochs, "precision": "fp32"},
        "search": {
            "space": {
                "lr": {"low": 1e-5, "high": 1e-2, "log": True},
                "dropout": {"low": 0.0, "high": 0.3},
                "l1": {"low": 1e-8, "high": 1e-4, "log": True},
                "l2": {"low": 1e-6, "high": 1e-2, "log": True},
            },
            # Prunes about half the trials once three completed: both ends of a trial occur.
            "pruner": {"name": "median", "options": {"n_startup_trials": 3}},
        },
        "budget": {"n_trials": config.n_trials},
    }


def stub_worker_command(config: HarnessConfig, study: str, storage_url: str) -> list[str]:
    """The command line of one stand-in ``hpo worker`` with the config's lease terms."""
    return [
        *config.prefix(),
        "-m",
        "tests.reliability._stub_worker",
        "worker",
        "--study",
        study,
        "--storage",
        storage_url,
        "--device",
        "cpu",
        "--heartbeat-s",
        str(config.heartbeat_s),
        "--grace-s",
        str(config.grace_s),
    ]


def stub_worker_env(events: Path, proc: str, step_s: float) -> dict[str, str]:
    """Its environment: where its events go, under which name, and its seconds per step."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        ENV_EVENTS: str(events),
        ENV_PROC: proc,
        ENV_STEP_S: str(step_s),
    }
    env.pop("HPO_STREAM", None)  # default options: each worker draws its own stream
    return env


class StoreUnderTest:
    """The store the workers use, and stock Optuna's view of it for the checks.

    ``direct_url`` is the store itself (the checks and study creation use it), ``worker_url``
    what the workers are given (through the ``FaultProxy`` where there is one), and
    ``hpo_proxy`` the ``hpo proxy`` process of the grpc backend.
    """

    def __init__(self, backend: Backend, workdir: Path, postgres_url: str | None) -> None:
        self.backend = backend
        self.proxy: FaultProxy | None = None
        self.hpo_proxy: HpoProxyProcess | None = None
        if backend == "postgresql":
            if postgres_url is None:
                raise ValueError("postgres_url is required for the postgresql backend")
            from urllib.parse import urlsplit

            parts = urlsplit(postgres_url)
            self.proxy = FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)).start()
            self.direct_url = postgres_url
            self.worker_url = self.proxy.url_for(postgres_url)
        elif backend == "grpc":
            self.direct_url = str(workdir / "journal.log")
            self.hpo_proxy = HpoProxyProcess(
                self.direct_url,
                log_path=workdir / "hpo-proxy.log",
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            ).start()
            try:
                self.proxy = FaultProxy((self.hpo_proxy.host, self.hpo_proxy.port)).start()
            except BaseException:
                self.hpo_proxy.close()
                raise
            self.worker_url = f"grpc://127.0.0.1:{self.proxy.port}"
        else:
            self.direct_url = self.worker_url = str(workdir / "journal.log")
        self._stock: optuna.storages.BaseStorage | None = None

    def restart_server(self, down_s: float) -> None:
        """A PG_RESTART: the store's server down for ``down_s`` seconds, then back (see
        ``HarnessConfig``)."""
        if self.hpo_proxy is not None:
            self.hpo_proxy.restart(down_s)
        elif self.backend == "postgresql":
            restart_postgres(down_s)
        else:
            raise ValueError(f"the {self.backend} backend has no server to restart")

    @property
    def naive_is_utc(self) -> bool:
        """Our PostgreSQL store writes naive UTC datetimes; the journal (behind ``hpo proxy``
        too, on this host) naive local ones."""
        return self.backend == "postgresql"

    def stock(self) -> optuna.storages.BaseStorage:
        """Stock Optuna on the store, without our wrapper (and past the proxy)."""
        if self._stock is None:
            if self.backend == "postgresql":
                from sqlalchemy.pool import NullPool

                self._stock = optuna.storages.RDBStorage(
                    normalize_postgres_url(self.direct_url),
                    engine_kwargs={"poolclass": NullPool},
                    skip_table_creation=True,
                )
            else:
                from optuna.storages.journal import JournalFileBackend

                self._stock = optuna.storages.JournalStorage(JournalFileBackend(self.direct_url))
        return self._stock

    def create(self, spec: dict[str, Any], timeout_s: float = 120.0) -> None:
        """Create the study (directly, not through the proxy), riding out a restart."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                create_study(parse_spec(spec), open_storage(self.direct_url))
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise
                log.info("creating study %s: %s; retrying", spec["name"], e)
                time.sleep(1.0)

    def trials(self, name: str, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        """The study's trials as stock Optuna reads them."""
        storage = self.stock()
        study_id = storage.get_study_id_from_name(name)
        return storage.get_all_trials(study_id, deepcopy=False, states=states)

    def trials_patiently(self, name: str, timeout_s: float = 120.0) -> list[FrozenTrial]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.trials(name)
            except Exception as e:
                if time.monotonic() > deadline:
                    raise
                log.info("reading study %s: %s; retrying", name, e)
                self._stock = None
                time.sleep(1.0)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.hpo_proxy is not None:
            self.hpo_proxy.close()


class WorkerPool:
    """Worker processes by slot, for the study under way; every process ever started is kept
    in ``procs`` with its exit code and the time it was first seen gone."""

    def __init__(self, config: HarnessConfig, store: StoreUnderTest, workdir: Path) -> None:
        self._config = config
        self._store = store
        self._events = workdir / "events"
        self._logs = workdir / "logs"
        self._events.mkdir(parents=True, exist_ok=True)
        self._logs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self.study = ""
        self.slots: list[Proc] = []
        self.procs: list[WorkerProc] = []
        self._popen: dict[int, Proc] = {}
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="harness-exits", daemon=True)
        self._monitor.start()

    @property
    def events_dir(self) -> Path:
        return self._events

    def start_study(self, name: str) -> None:
        """Start ``n_workers`` workers of study ``name``, one in each slot."""
        with self._lock:
            self.study = name
            fresh = [self._spawn(slot) for slot in range(self._config.n_workers)]
            if self.slots:
                self.slots[:] = fresh
            else:
                self.slots.extend(fresh)

    def respawn(self, slot: int) -> Proc:
        """A new worker in ``slot`` for the study under way (the FaultRunner's callback)."""
        with self._lock:
            return self._spawn(slot)

    def _spawn(self, slot: int) -> Proc:
        config = self._config
        key = f"w{next(self._numbers):04d}"
        log_path = self._logs / f"{key}.log"
        env = stub_worker_env(self._events, key, config.step_s)
        command = stub_worker_command(config, self.study, self._store.worker_url)
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the test's Ctrl-C is not theirs
            )
        self.procs.append(WorkerProc(key, slot, self.study, proc.pid, time.time(), log_path))
        self._popen[proc.pid] = proc
        log.info("worker %s pid %d in slot %d for %s", key, proc.pid, slot, self.study)
        return proc

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_S):
            self.poll()

    def poll(self) -> None:
        """Note the processes that have exited since the last look."""
        with self._lock:
            for record in self.procs:
                if record.exited_at is None:
                    code = self._popen[record.pid].poll()
                    if code is not None:
                        record.exited_at, record.returncode = time.time(), code

    def running(self, study: str | None = None) -> list[WorkerProc]:
        self.poll()
        with self._lock:
            return [
                p for p in self.procs if p.exited_at is None and (study is None or p.study == study)
            ]

    def kill_hung(self, study: str | None = None) -> list[WorkerProc]:
        """SIGKILL what still runs (hangs); returns them."""
        hung = self.running(study)
        for p in hung:
            p.killed_by_harness = True
            proc = self._popen[p.pid]
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, 9)
                os.kill(p.pid, 18)  # SIGCONT: a frozen process must run to die
            proc.wait(10)
        self.poll()
        return hung

    def close(self) -> None:
        self.kill_hung()
        self._stop.set()
        self._monitor.join(5)


@dataclass
class StudyRun:
    """One study of the run: when it ran and what the checks found."""

    name: str
    started_at: float
    done_at: float | None = None
    hang: str = ""
    check: StudyCheck | None = None
    # Set when the study outlived its timeout and the faults were stopped for it: seconds
    # from its start to the stop, and from the stop to its budget (None: not met).
    quiet_after_s: float | None = None
    recovered_in_s: float | None = None


@dataclass
class HarnessResult:
    """What a harness run did and found; ``violations`` is empty when every invariant held."""

    config: HarnessConfig
    schedule: FaultSchedule
    started_at: float
    ended_at: float
    injected: list[InjectedFault]
    skipped: list[FaultEvent]
    studies: list[StudyRun]
    procs: list[WorkerProc]
    violations: list[str] = field(default_factory=list)
    lost_acks_fired: int = 0
    # Fired lost acks by the statement that armed them (``faultrunner.LOST_ACK_TARGETS``).
    lost_acks_after: dict[str, int] = field(default_factory=dict)

    def fault_counts(self) -> Counter[FaultKind]:
        return Counter(f.kind for f in self.injected)

    def counts(self) -> Counter[str]:
        """Trial outcomes and check counters summed over studies."""
        total: Counter[str] = Counter()
        for run in self.studies:
            if run.check is not None:
                total.update(run.check.counts)
        return total

    def describe(self, *, log_lines: int = 12, max_logs: int = 6) -> str:
        """The schedule, what was injected, the studies, the violations and the log tails of
        the workers involved: what a failing test prints."""
        t0 = self.started_at
        lines = [
            f"harness: {self.config}",
            f"schedule (seed {self.config.seed}, {len(self.schedule.events)} events):",
        ]
        lines += [
            f"  {e.at_s:7.1f}s {e.kind.value:13s} {e.duration_s:5.1f}s target={e.target}"
            for e in self.schedule.events
        ]
        lines.append(f"injected ({len(self.injected)}):")
        for f in self.injected:
            end = f"{f.ended_at - t0:7.1f}s" if f.ended_at is not None else "   open"
            lines.append(
                f"  {f.started_at - t0:7.1f}s-{end} {f.kind.value:13s} slot={f.slot} pid={f.pid} "
                f"{f.note}"
            )
        lines += [f"  skipped: {e}" for e in self.skipped]
        for run in self.studies:
            counts = dict(run.check.counts) if run.check else {}
            quiet = (
                f" (faults stopped {run.quiet_after_s:.0f} s in; budget met "
                + (
                    f"{run.recovered_in_s:.0f} s later)"
                    if run.recovered_in_s is not None
                    else "never)"
                )
                if run.quiet_after_s is not None
                else ""
            )
            lines.append(
                f"study {run.name} at {run.started_at - t0:.1f}s: {run.hang}{quiet} {counts}"
            )
        lines.append(f"violations ({len(self.violations)}):")
        lines += [f"  {v}" for v in self.violations]
        involved = [
            p
            for p in self.procs
            if p.returncode not in (0, None, -9)
            or p.killed_by_harness
            or str(p.pid) in str(self.violations)
        ][:max_logs]
        for p in involved:
            lines.append(f"--- worker {p.key} pid {p.pid} exit {p.returncode} ({p.log_path}):")
            lines.append(p.log_tail(log_lines))
        return "\n".join(lines)


def run_harness(
    config: HarnessConfig,
    workdir: Path,
    *,
    postgres_url: str | None = None,
    study_prefix: str = "faults",
) -> HarnessResult:
    """Run studies back to back under ``config``'s fault schedule and check each one.

    ``workdir`` receives the workers' logs, their event lines and (journal, grpc) the store
    (grpc: and ``hpo-proxy.log``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    schedule = config.schedule()
    store = StoreUnderTest(config.backend, workdir, postgres_url)
    pool = WorkerPool(config, store, workdir)
    runs: list[StudyRun] = []
    names = (
        f"{study_prefix}-{config.seed}-{os.getpid()}-{i}-{time.time_ns() % 10**6}"
        for i in itertools.count()
    )
    started_at = time.time()
    try:
        runs.append(_begin_study(next(names), config, store, pool))
        runner = FaultRunner(
            schedule,
            proxy=store.proxy,
            workers=pool.slots,
            respawn=pool.respawn,
            latency_s=config.latency_s,
            restart_pg=store.restart_server,
            retarget=True,
        ).start()
        try:
            while True:
                _finish_study(runs[-1], config, store, pool, quiesce=runner.stop)
                if runner.join(0):
                    break
                runs.append(_begin_study(next(names), config, store, pool))
        finally:
            injected = runner.stop()
        deadline = time.monotonic() + config.exit_timeout_s
        while pool.running() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        pool.kill_hung()
        ended_at = time.time()
        lost_acks = store.proxy.counts.get(FaultKind.LOST_ACK, 0) if store.proxy else 0
        lost_after = store.proxy.lost_acks_after if store.proxy else {}
    finally:
        pool.close()
        store.close()
    result = HarnessResult(
        config=config,
        schedule=schedule,
        started_at=started_at,
        ended_at=ended_at,
        injected=injected,
        skipped=list(runner.skipped),
        studies=runs,
        procs=list(pool.procs),
        lost_acks_fired=lost_acks,
        lost_acks_after=lost_after,
    )
    _check(result, store, pool.events_dir)
    return result


def _begin_study(
    name: str, config: HarnessConfig, store: StoreUnderTest, pool: WorkerPool
) -> StudyRun:
    store.create(harness_spec(name, config))
    pool.start_study(name)
    return StudyRun(name, time.time())


def _finish_study(
    run: StudyRun,
    config: HarnessConfig,
    store: StoreUnderTest,
    pool: WorkerPool,
    *,
    quiesce: Callable[[], object],
) -> None:
    """Wait until the study met its budget and its workers exited. Past ``study_timeout_s``
    the faults are stopped (``quiesce``) and the study gets ``recovery_s`` more; a study that
    does not finish then is a hang (its workers are killed)."""
    started = time.monotonic()
    met_at: float | None = None
    idle_since: float | None = None
    quiet_at: float | None = None
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        running = pool.running(run.name)
        if met_at is None:
            try:
                finished = len(store.trials(run.name, FINISHED))
            except Exception as e:  # PostgreSQL restarting: look again
                log.debug("polling %s: %s", run.name, e)
                continue
            if finished >= config.n_trials:
                met_at = now
                if quiet_at is not None:
                    run.recovered_in_s = now - quiet_at
        if met_at is not None and not running:
            run.done_at = time.time()
            return
        if met_at is not None and now - met_at > config.exit_timeout_s:
            run.hang = (
                f"workers {[p.pid for p in running]} still running "
                f"{config.exit_timeout_s:.0f} s after the budget was met"
            )
            break
        if met_at is None:
            idle_since = (idle_since or now) if not running else None
            # Killed workers come back after an outage's length; none for longer is a stall.
            if idle_since is not None and now - idle_since > config.outage_s[1] + 15:
                run.hang = "stalled: every worker exited before the budget was met"
                break
            if quiet_at is None and now - started > config.study_timeout_s:
                log.warning(
                    "study %s: budget not met after %.0f s: faults stopped", run.name, now - started
                )
                quiesce()
                quiet_at = time.monotonic()
                run.quiet_after_s = quiet_at - started
            elif quiet_at is not None and now - quiet_at > config.recovery_s:
                run.hang = (
                    f"budget not met {config.recovery_s:.0f} s after the faults stopped "
                    f"({run.quiet_after_s:.0f} s into the study)"
                )
                break
    log.warning("study %s: %s", run.name, run.hang)
    pool.kill_hung(run.name)
    run.done_at = time.time()


def _check(result: HarnessResult, store: StoreUnderTest, events_dir: Path) -> None:
    events = load_events(events_dir)
    attempts = attempts_of(events)
    config = result.config
    for run in result.studies:
        trials = store.trials_patiently(run.name)
        run.check = check_study(
            run.name,
            trials,
            n_trials=config.n_trials,
            attempts=attempts,
            events=events,
            procs=result.procs,
            injected=result.injected,
            grace_s=config.grace_s,
            heartbeat_s=config.heartbeat_s,
            max_retry=config.max_retry,
            naive_is_utc=store.naive_is_utc,
        )
        if run.hang:
            result.violations.append(f"{run.name}: hang: {run.hang}")
        result.violations += run.check.violations
    result.violations += check_exits(result.procs, result.injected, events)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines are noise next to the harness's own."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
