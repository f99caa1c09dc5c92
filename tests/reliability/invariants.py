"""What "exactly once" means, checked on what stock Optuna reads back and what the worker
processes logged (``tests.reliability._stub_worker``).

Times: the store's ``datetime_start`` / ``datetime_complete`` (a trial's lease, from taking it
to its FAIL or finish as stored) and the workers' event times are wall-clock on one host, so
they compare directly (``EPSILON_S`` absorbs clock reads a few microseconds apart).

Each check returns violations: one line each, saying what broke, on which trial, and why it
is not a legitimate consequence of an injected fault.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo import records
from hpo.records import FAIL_REASON, REQUEST_KEY, REQUEUE_OF_KEY, RETRY_HISTORY
from hpo.worker.loop import SURPLUS_REASON
from tests.reliability.faultrunner import InjectedFault
from tests.reliability.faults import FaultKind

EPSILON_S = 0.05
# Reasons of a lost lease: the trial is failed and re-queued (the worker's own SIGTERM
# handling, or a sweeper that found it silent past the grace period).
STALE_REASON = "heartbeat stale"
INTERRUPTED_REASON = "interrupted"
LEASE_LOST_REASONS = (STALE_REASON, INTERRUPTED_REASON)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

Event = dict[str, Any]


@dataclass
class WorkerProc:
    """One worker process the harness started, and how it ended.

    ``exited_at`` is when the harness first saw it gone (within its poll interval).
    """

    key: str
    slot: int
    study: str
    pid: int
    started_at: float
    log_path: Path
    exited_at: float | None = None
    returncode: int | None = None
    killed_by_harness: bool = False  # a hang: still running at the end, killed

    def log_tail(self, n_lines: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n_lines:])


def load_events(directory: Path) -> dict[str, list[Event]]:
    """Every process's events by its key, in the order written; a line cut by kill -9 is
    left out."""
    events: dict[str, list[Event]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        events[path.stem] = lines
    return events


def epoch_s(stamp: datetime.datetime | None, *, naive_is_utc: bool) -> float | None:
    """A stored datetime as ``time.time()`` seconds. Our PostgreSQL store writes naive UTC;
    the journal (stock Optuna) naive local time."""
    if stamp is None:
        return None
    if stamp.tzinfo is None and naive_is_utc:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


@dataclass
class Attempt:
    """One worker's run of one trial: from ``asked`` to its last logged event on it."""

    proc: str
    pid: int
    trial_id: int
    asked_at: float
    params: dict[str, Any] | None = None
    started_at: float | None = None
    resumed: list[int] | None = None
    writes: list[Event] = field(default_factory=list)  # accepted: t0, t1
    refused: list[Event] = field(default_factory=list)
    finish: Event | None = None
    fail: Event | None = None
    lost: bool = False

    def trained(self) -> tuple[float, float] | None:
        """[start, last accepted write's end], or None if it never started."""
        if self.started_at is None:
            return None
        end = max([self.started_at, *(w["t1"] for w in self.writes)])
        return self.started_at, end


def attempts_of(events: Mapping[str, Sequence[Event]]) -> list[Attempt]:
    """Every attempt, from each process's events (an attempt runs until the next ``asked``)."""
    attempts: list[Attempt] = []
    for proc, lines in events.items():
        current: dict[int, Attempt] = {}
        for ev in lines:
            kind = ev["ev"]
            if "trial" not in ev:
                continue
            trial_id = int(ev["trial"])
            if kind == "asked":
                current[trial_id] = Attempt(proc, ev["pid"], trial_id, ev["t"])
                attempts.append(current[trial_id])
                continue
            attempt = current.get(trial_id)
            if attempt is None:
                continue
            if kind == "start":
                attempt.params, attempt.started_at = ev["params"], ev["t"]
                attempt.resumed = ev["resumed"]
            elif kind == "write":
                attempt.writes.append(ev)
            elif kind == "refused":
                attempt.refused.append(ev)
            elif kind == "finish":
                attempt.finish = ev
            elif kind == "fail":
                attempt.fail = ev
            elif kind == "lost":
                attempt.lost = True
    return attempts


@dataclass(frozen=True)
class Impairment:
    """A span in which a process could not beat: frozen, killed, or gone."""

    start: float
    end: float  # inf: never came back
    why: str


def impairments(
    procs: Iterable[WorkerProc], injected: Iterable[InjectedFault]
) -> dict[int, list[Impairment]]:
    """By pid: SIGSTOP spans, and everything after a kill -9 or the process's exit."""
    spans: dict[int, list[Impairment]] = defaultdict(list)
    inf = float("inf")
    for fault in injected:
        if fault.pid is None:
            continue
        if fault.kind is FaultKind.SIGSTOP:
            end = fault.ended_at if fault.ended_at is not None else inf
            spans[fault.pid].append(Impairment(fault.started_at, end, "sigstop"))
        elif fault.kind is FaultKind.KILL9:
            spans[fault.pid].append(Impairment(fault.started_at, inf, "kill9"))
    for proc in procs:
        if proc.exited_at is not None:
            spans[proc.pid].append(Impairment(proc.exited_at, inf, f"exit {proc.returncode}"))
    return spans


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def _folds(trial: FrozenTrial) -> dict[str, Any]:
    return records.fold_attrs(trial.user_attrs)


def _chain_root(trial: FrozenTrial) -> int:
    return records.original_number(trial)


@dataclass
class StudyCheck:
    """The invariants of one finished study; ``violations`` empty when they all hold."""

    name: str
    n_trials: int
    trials: list[FrozenTrial]
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def fail(self, message: str) -> None:
        self.violations.append(f"{self.name}: {message}")


def check_study(
    name: str,
    trials: Sequence[FrozenTrial],
    *,
    n_trials: int,
    attempts: Sequence[Attempt],
    events: Mapping[str, Sequence[Event]],
    procs: Sequence[WorkerProc],
    injected: Sequence[InjectedFault],
    grace_s: float,
    heartbeat_s: float,
    max_retry: int,
    naive_is_utc: bool,
) -> StudyCheck:
    """Check one study's trials, read by stock Optuna after its workers exited, against the
    attempts its workers logged and the faults injected meanwhile."""
    check = StudyCheck(name, n_trials, list(trials))
    by_id = {t._trial_id: t for t in trials}
    mine = [a for a in attempts if a.trial_id in by_id]
    states = Counter(t.state for t in trials)
    check.counts.update(
        trials=len(trials),
        complete=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        failed=states[TrialState.FAIL],
        attempts=len(mine),
        lost_by_worker=sum(a.lost for a in mine),
    )

    def times(trial: FrozenTrial) -> tuple[float | None, float | None]:
        return (
            epoch_s(trial.datetime_start, naive_is_utc=naive_is_utc),
            epoch_s(trial.datetime_complete, naive_is_utc=naive_is_utc),
        )

    # 1. The budget, exactly.
    finished = [t for t in trials if t.state in FINISHED]
    if len(finished) != n_trials:
        check.fail(f"{len(finished)} finished trials (complete + pruned), budget {n_trials}")

    # 2. Nothing left running or waiting.
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            check.fail(f"trial {t.number} left {t.state.name} (chain {_chain_root(t)})")

    # 3. No trial finished twice: one finished trial per chain, one winning tell per trial,
    #    one attempt per trial (a WAITING trial is popped once), one trial per request id.
    roots = Counter(_chain_root(t) for t in finished)
    for root, n in roots.items():
        if n > 1:
            check.fail(f"chain of trial {root} finished {n} times")
    wins = Counter(a.trial_id for a in mine if a.finish is not None and a.finish["ok"])
    for trial_id, n in wins.items():
        if n > 1:
            check.fail(f"trial {by_id[trial_id].number} told finished by {n} workers")
    taken = Counter(a.trial_id for a in mine)
    for trial_id, n in taken.items():
        if n > 1:
            check.fail(f"trial {by_id[trial_id].number} handed to {n} workers by ask")
    requests = Counter(
        json.dumps(t.system_attrs[REQUEST_KEY]) for t in trials if REQUEST_KEY in t.system_attrs
    )
    for request, n in requests.items():
        if n > 1:
            check.fail(f"{n} trials made or popped by one request {request}")

    # 4. The worker's view agrees with the store: a winning tell is a finished trial, a
    #    dropped (lost) one was failed elsewhere, a winning FAIL is a FAIL.
    for a in mine:
        t = by_id[a.trial_id]
        if a.finish is not None and a.finish["ok"] and t.state.name != a.finish["state"]:
            check.fail(
                f"trial {t.number}: told {a.finish['state']} by pid {a.pid}, stored {t.state.name}"
            )
        if a.lost and t.state != TrialState.FAIL:
            check.fail(f"trial {t.number}: dropped as lost by pid {a.pid}, stored {t.state.name}")
        if a.fail is not None and a.fail["ok"] and t.state != TrialState.FAIL:
            check.fail(f"trial {t.number}: failed by pid {a.pid}, stored {t.state.name}")

    # 5. Every FAIL has its reason, and only a lost lease fails a trial of the stand-in.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for t in failed:
        reason = t.user_attrs.get(FAIL_REASON)
        if reason is None:
            check.fail(f"trial {t.number} FAIL without {FAIL_REASON!r}")
        elif reason == SURPLUS_REASON:
            # A lost trial's copy that outlived the budget (a new trial took the slot between
            # the FAIL and the copy): cancelled unstarted once the budget was met.
            started = any(a.trial_id == t._trial_id for a in mine)
            if REQUEUE_OF_KEY not in t.system_attrs or started or len(finished) != n_trials:
                check.fail(f"trial {t.number} cancelled as surplus, but it was not")
        elif reason not in LEASE_LOST_REASONS:
            check.fail(f"trial {t.number} FAIL for {reason!r} (the stand-in never fails)")
        check.counts[f"fail:{reason}"] += 1

    # 6. Every lost trial re-queued exactly once (until its chain has been retried
    #    max_retry times), its copy carrying its params, folds and history.
    copies: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        if REQUEUE_OF_KEY in t.system_attrs:
            copies[int(t.system_attrs[REQUEUE_OF_KEY])].append(t)
    for failed_id, made in copies.items():
        if failed_id not in by_id:
            check.fail(
                f"copies {[c.number for c in made]} of a trial id {failed_id} not in the study"
            )
    for t in failed:
        if t.user_attrs.get(FAIL_REASON) not in LEASE_LOST_REASONS:
            continue
        history = [*t.system_attrs.get(RETRY_HISTORY, []), t.number]
        expected = 1 if len(history) <= max_retry else 0
        made = copies.get(t._trial_id, [])
        if len(made) != expected:
            check.fail(
                f"trial {t.number} ({t.user_attrs.get(FAIL_REASON)}, history {history}) "
                f"re-queued {len(made)} times, expected {expected}"
            )
        for copy in made:
            check.counts["requeued"] += 1
            # A trial killed while suggesting carries the params it had; the copy's worker
            # suggests the rest.
            if {k: copy.params.get(k) for k in t.params} != t.params:
                check.fail(f"copy {copy.number} of trial {t.number} has other params")
            if copy.system_attrs.get(RETRY_HISTORY) != history:
                check.fail(
                    f"copy {copy.number} of trial {t.number}: retry history "
                    f"{copy.system_attrs.get(RETRY_HISTORY)}, expected {history}"
                )
            carried = _folds(t)
            kept = {k: v for k, v in _folds(copy).items() if k in carried}
            if kept != carried:
                check.fail(
                    f"copy {copy.number} of trial {t.number} lost finished folds: "
                    f"{sorted(carried)} failed, {sorted(kept)} kept identical"
                )
            check.counts["folds_carried"] += len(carried)
            resumed = [a.resumed for a in mine if a.trial_id == copy._trial_id and a.resumed]
            for folds in resumed:
                expect = sorted(records.saved_folds(carried))
                if folds != expect:
                    check.fail(f"copy {copy.number} resumed with folds {folds}, carried {expect}")

    # 7. Fencing: no write accepted after its trial's lease ended (issued after the stored
    #    FAIL / finish time), so nobody trains a trial that is no longer theirs.
    for a in mine:
        t = by_id[a.trial_id]
        _, ended = times(t)
        if ended is None:
            continue
        late = [w for w in a.writes if w["t0"] > ended + EPSILON_S]
        if late:
            check.fail(
                f"trial {t.number}: {len(late)} write(s) by pid {a.pid} accepted after its "
                f"lease ended ({t.state.name} at {ended:.3f}; first issued {late[0]['t0']:.3f})"
            )

    # 8. No params trained under two live leases at once: an attempt trains live while its
    #    trial's lease (datetime_start to datetime_complete as stored) holds.
    live: dict[str, list[tuple[Attempt, tuple[float, float]]]] = defaultdict(list)
    for a in mine:
        trained = a.trained()
        start, end = times(by_id[a.trial_id])
        if trained is None or start is None:
            continue
        span = (max(trained[0], start), min(trained[1], end if end is not None else trained[1]))
        if span[1] > span[0]:
            live[json.dumps(a.params, sort_keys=True)].append((a, span))
    for spans in live.values():
        for i, (a, sa) in enumerate(spans):
            for b, sb in spans[i + 1 :]:
                if _overlap(sa, sb) > EPSILON_S:
                    check.fail(
                        f"params of trials {by_id[a.trial_id].number} (pid {a.pid}) and "
                        f"{by_id[b.trial_id].number} (pid {b.pid}) trained under two live leases "
                        f"for {_overlap(sa, sb):.2f} s"
                    )
    # ...and different chains drew different params (distinct sampler streams).
    roots_by_params: dict[str, set[int]] = defaultdict(set)
    for t in trials:
        if t.params:
            roots_by_params[json.dumps(t.params, sort_keys=True)].add(_chain_root(t))
    for params, chain_roots in roots_by_params.items():
        if len(chain_roots) > 1:
            check.fail(f"chains {sorted(chain_roots)} drew the same params {params}")

    # 9. No live trial failed as stale: its owner must have been frozen, killed or gone at
    #    some moment of the silence the sweeper judged (grace period, plus slack for the
    #    sweep interval and scheduling). Behind ``hpo proxy`` a sweeper judges silence on its
    #    own clock (``hpo.store._grpc``): a beat unchanged for the grace period while it
    #    watched, and it cannot watch a beat before it is written, so it fails a trial no
    #    earlier after its last beat than the other stores do, and the same window holds.
    impaired = impairments(procs, injected)
    owners = {a.trial_id: a for a in attempts}
    slack_s = 2 * heartbeat_s + 2.0
    orphans = 0
    for t in failed:
        if t.user_attrs.get(FAIL_REASON) != STALE_REASON:
            continue
        _, failed_at = times(t)
        assert failed_at is not None
        owner = owners.get(t._trial_id)
        if owner is None:
            orphans += 1  # its worker died inside ask: checked below
            continue
        window = (failed_at - grace_s - slack_s, failed_at)
        why = [
            s.why for s in impaired.get(owner.pid, []) if _overlap(window, (s.start, s.end)) >= 0
        ]
        if why:
            check.counts["stale:" + why[0].split()[0]] += 1
        else:
            check.counts["live_wrongly_failed"] += 1
            active = [
                f"{f.kind.value}@{f.started_at:.1f}-{f.ended_at or 0:.1f}"
                for f in injected
                if _overlap(window, (f.started_at, f.ended_at or failed_at)) >= 0
            ]
            check.fail(
                f"live trial {t.number} failed as stale at {failed_at:.3f}: its worker pid "
                f"{owner.pid} was alive and unfrozen from {window[0]:.3f}; faults then: {active}"
            )
    died_asking = _died_asking([p for p in procs if p.study == name], injected, events)
    if orphans > died_asking:
        check.fail(
            f"{orphans} stale trials no worker took, but only {died_asking} workers were "
            "killed inside ask (a trial made twice?)"
        )
    check.counts["orphans"] += orphans
    return check


def _died_asking(
    procs: Sequence[WorkerProc],
    injected: Sequence[InjectedFault],
    events: Mapping[str, Sequence[Event]],
) -> int:
    """Workers killed with an ``ask`` in flight (the trial it made has no owner in the logs)."""
    killed = {f.pid for f in injected if f.kind is FaultKind.KILL9}
    n = 0
    for p in procs:
        asks = [e["ev"] for e in events.get(p.key, ()) if e["ev"] in ("asking", "asked", "no_slot")]
        n += p.pid in killed and bool(asks) and asks[-1] == "asking"
    return n


def check_exits(
    procs: Sequence[WorkerProc],
    injected: Sequence[InjectedFault],
    events: Mapping[str, Sequence[Event]],
) -> list[str]:
    """Every worker exits 0, respawned ones too, but for those the schedule killed: kill -9, a
    SIGTERM before the worker's handler was installed (the process was still starting), a
    second SIGTERM (which exits at once by design). None was left running."""
    killed = {f.pid for f in injected if f.kind is FaultKind.KILL9}
    terms: dict[int, list[float]] = defaultdict(list)
    for f in injected:
        if f.kind is FaultKind.SIGTERM and f.pid is not None:
            terms[f.pid].append(f.started_at)
    problems = []
    for p in procs:
        handled = [e["t"] for e in events.get(p.key, ()) if e["ev"] == "signals"]
        early_term = any(not handled or t < handled[0] for t in terms[p.pid])
        # A SIGTERM after the worker's last word (its exit code logged): Python's finalization
        # has put the default handler back, so the kernel ends it with -15; nothing was lost.
        exited = [e["t"] for e in events.get(p.key, ()) if e["ev"] == "exit" and "code" in e]
        late_term = any(exited and t >= exited[0] for t in terms[p.pid])
        allowed = {0}
        if p.pid in killed:
            allowed.add(-9)
        if early_term or late_term:
            allowed.add(-15)
        if len(terms[p.pid]) > 1:
            allowed.add(128 + 15)
        if p.killed_by_harness:
            problems.append(f"worker pid {p.pid} ({p.study}) hung: still running, killed")
        elif p.returncode not in allowed:
            problems.append(f"worker pid {p.pid} ({p.study}) exited {p.returncode}")
    return problems
