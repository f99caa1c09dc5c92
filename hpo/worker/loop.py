"""The stateless worker: ask → suggest → train with CV → tell, until the study's budget is met.

Everything a worker needs comes from the store (the spec is a study attribute), so any number
of workers on any hosts can join or leave a study at any time.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from types import FrameType
from typing import TYPE_CHECKING

from hpo import records
from hpo.errors import HpoError, StorageError, exception_chain
from hpo.notes import write_trial_note
from hpo.spec.model import StudySpec
from hpo.store import (
    CONNECTIONS,
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    LEASE_KEY,
    REQUEUE_OF_KEY,
    SHIELD,
    NoSlotLeft,
    mask_secrets,
    open_storage,
    storage_kind,
)
from hpo.study import load_study
from hpo.worker.heartbeat import INTERRUPTED_REASON, Heartbeat, requeue
from hpo.worker.objective import TrialContext, run_trial
from trainer.config import Precision
from trainer.seeds import derive_seed

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

WAIT_POLL_S = 2.0


class Outcome(Enum):
    """How one turn of the worker loop ended."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"
    LOST = "lost"  # the trial was failed elsewhere (its lease lapsed): dropped, not ours to end
    NO_SLOT = "no_slot"  # every slot of the budget is taken; a running trial may still free one


# Not a reason to stop: every slot is taken, and a running trial may still fail and free one.
WAIT = "waiting for a slot"


class WorkerError(HpoError):
    """The worker stopped because it cannot make progress (e.g. every trial fails)."""


class Interrupted(BaseException):
    """Raised inside a running trial when the worker was told to stop (SIGTERM/SIGINT).

    A BaseException, so library code that catches ``Exception`` does not swallow it.
    """


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker runs. ``max_trials`` bounds this worker (every trial it took, lost ones
    too), the spec's budget the study."""

    storage_url: str
    study_name: str
    device: str = "auto"
    max_trials: int | None = None
    worker_id: str = ""
    stream: int = 0
    threads: int | None = None
    cache_dir: str | None = None
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S
    max_consecutive_failures: int = 3

    def __post_init__(self) -> None:
        # A lease must outlive a missed beat: with grace under two intervals a sweeper that
        # looks just before a beat finds a live trial silent past grace, and fails it.
        if self.heartbeat_interval_s < 1 or self.grace_period_s < 2 * self.heartbeat_interval_s:
            raise WorkerError(
                f"--grace-s {self.grace_period_s} with --heartbeat-s "
                f"{self.heartbeat_interval_s}: the grace period must be at least two heartbeat "
                "intervals (and the interval at least 1 s)"
            )


@dataclass
class WorkerSummary:
    """What this worker did, and why it stopped."""

    completed: int = 0
    pruned: int = 0
    failed: int = 0
    lost: int = 0
    stop_reason: str = ""


class StopSignal:
    """First SIGTERM/SIGINT: stop after cleanup (raising ``Interrupted`` inside a trial).

    Second signal: exit at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._in_trial = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        SHIELD.stopping.clear()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        SHIELD.stopping.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        SHIELD.stopping.set()  # an outage's retries give up rather than hold the stop
        logger.info("received %s: stopping", signal.Signals(signum).name)
        if self._in_trial:
            self._in_trial = False
            # Never half-way through a store call (a lock, a write): raised when it returns.
            if not SHIELD.deferring(Interrupted()):
                raise Interrupted

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop was requested: called at each report of a trial, for
        a stop whose exception was swallowed on its way (by C code, a ``__del__``, a library's
        ``except BaseException``), so the trial still stops at its next epoch."""
        if self.requested:
            raise Interrupted

    @contextmanager
    def trial_scope(self) -> Iterator[None]:
        """While inside, a first signal interrupts the running trial."""
        self.check()
        self._in_trial = True
        try:
            yield
        finally:
            self._in_trial = False


def _resumed_stream(storage: optuna.storages.BaseStorage, options: WorkerOptions) -> int:
    """The worker's stream, moved on by the trials the study has already: a worker restarted
    with the same index (a recreated pod, a requeued Slurm task, ``hpo run`` resuming) must not
    draw its earlier points again; a fresh study (no trials yet) keeps the stream as given, so
    seeded runs repeat."""
    try:
        study_id = storage.get_study_id_from_name(options.study_name)
    except KeyError:
        return options.stream
    return derive_seed(storage.get_n_trials(study_id), options.stream)


def random_stream() -> int:
    """A sampler stream for a worker given none: random, so workers on different hosts or in
    containers (where every worker is PID 1) never draw the same points."""
    import secrets

    return secrets.randbits(31)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _counts(study: optuna.Study) -> tuple[int, int]:
    """(finished = complete + pruned, running) trials in the store, all workers together."""
    from optuna.trial import TrialState

    trials = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


SURPLUS_REASON = "surplus: the budget was met by other trials"


def _cancel_surplus_copies(study: optuna.Study) -> None:
    """Fail the re-queued copies still waiting once the budget is met, with their reason.

    A lost trial's copy is made just after its FAIL (two guarded writes); a worker that asked in
    between took the freed slot with a new trial, so the copy can outlive the budget. It would
    wait forever, and plain Optuna clients would show it as WAITING.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if REQUEUE_OF_KEY not in trial.system_attrs:
            continue  # a point the user enqueued is theirs to run or delete
        try:
            storage.set_trial_user_attr(trial._trial_id, records.FAIL_REASON, SURPLUS_REASON)
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                logger.info("trial %d: %s", trial.number, SURPLUS_REASON)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another worker cancelled it (or it started after all)


def _target_reached(study: optuna.Study, spec: StudySpec) -> bool:
    target = spec.budget.target
    if target is None:
        return False
    try:
        best = study.best_value
    except ValueError:
        return False
    return best >= target if spec.direction == "maximize" else best <= target


def _over_budget(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Whether ``trial`` took a slot beyond the budget in a race with other workers.

    Slots go to running and finished trials in trial-number order, so of two workers that
    asked at once for the last slot, the higher number yields.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    numbers = sorted(t.number for t in trials)
    return trial.number in numbers and numbers.index(trial.number) >= budget


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> bool:
    """Fail our trial with its reason. False if it was no longer ours (failed elsewhere)."""
    import optuna

    try:
        trial.set_user_attr(records.FAIL_REASON, reason[:500])
        return bool(
            study._storage.set_trial_state_values(
                trial._trial_id, state=optuna.trial.TrialState.FAIL
            )
        )
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    except Exception as e:
        logger.warning("could not mark trial %d failed: %s", trial.number, mask_secrets(str(e)))
        return False


def _finish(study: optuna.Study, trial: optuna.Trial, state: str, value: float | None) -> bool:
    """End our trial COMPLETE (with ``value``) or PRUNED; False if it was failed elsewhere
    first (then it is not ours to end: its lease lapsed and a copy was re-queued)."""
    import optuna

    storage = study._storage
    try:
        if state == "COMPLETE":
            assert value is not None
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        frozen = storage.get_trial(trial._trial_id)
        if frozen.state == optuna.trial.TrialState.FAIL:
            return False
        if frozen.state.name == state:
            # Only a trial's lease holder ends it COMPLETE or PRUNED (everyone else can only
            # fail it), so this was our own tell: its reply was lost and the retry found it
            # done. Behind ``hpo proxy`` a retried call is not idempotent (Optuna's gRPC API
            # carries no request id), so the store cannot tell us so itself.
            logger.info("trial %d: our tell was stored, its reply lost", trial.number)
            return True
        raise


class Worker:
    """One worker process's loop over trials of one study."""

    def __init__(self, options: WorkerOptions, stop: StopSignal | None = None) -> None:
        self.options = options
        self.worker_id = options.worker_id or default_worker_id()
        self.stop = stop or StopSignal()
        self.summary = WorkerSummary()
        storage = open_storage(
            options.storage_url,
            heartbeat_interval_s=options.heartbeat_interval_s,
            grace_period_s=options.grace_period_s,
            wait_if_unreachable=True,
        )
        # SQLite is the one store that does not refuse a trial beyond the budget itself.
        self._store_enforces_budget = storage_kind(options.storage_url) != "sqlite"
        self.study, self.spec = load_study(
            storage, options.study_name, stream=_resumed_stream(storage, options)
        )
        _agree_lease_terms(self.study, options)
        self.precision = _check_precision(self.spec, options.device, self.worker_id)
        self.context = TrialContext(
            host=socket.gethostname(),
            device=options.device,
            worker_id=self.worker_id,
            cache_dir=options.cache_dir,
        )

    def run(self) -> WorkerSummary:
        """Run trials until the budget, the timeout, the target, ``max_trials`` or a signal."""
        deadline = (
            time.monotonic() + self.spec.budget.timeout_s
            if self.spec.budget.timeout_s
            else math.inf
        )
        with Heartbeat(self.study, self.options.heartbeat_interval_s) as heartbeat:
            try:
                self._loop(heartbeat, deadline)
            except StorageError as e:
                if not self.stop.requested:
                    raise
                # Told to stop during an outage: stop now, not after it. A trial left RUNNING
                # is the sweepers' to re-queue once its lease expires (nothing lost).
                logger.warning("stopping with the store unreachable: %s", e)
                self.summary.stop_reason = "interrupted (store unreachable)"
        if self.summary.stop_reason.startswith("budget of"):
            # After the heartbeat thread stopped: its sweeps may have queued a copy until now.
            _cancel_surplus_copies(self.study)
        logger.info("worker %s stops: %s", self.worker_id, self.summary.stop_reason)
        if CONNECTIONS.peak:
            logger.info("peak open database connections: %d", CONNECTIONS.peak)
        return self.summary

    def _loop(self, heartbeat: Heartbeat, deadline: float) -> None:
        consecutive_failures = 0
        while True:
            heartbeat.sweep()
            reason = self._stop_reason(deadline)
            if reason is WAIT:
                time.sleep(WAIT_POLL_S)
                continue
            if reason is not None:
                self.summary.stop_reason = reason
                break
            state = self._run_one(heartbeat)
            if state == Outcome.NO_SLOT:
                time.sleep(WAIT_POLL_S)
                continue
            if state == Outcome.FAIL:
                _free_memory()  # outside the except block: the traceback is gone by now
                if self.stop.requested:
                    continue  # interrupted, not failing: the stop reason ends the loop
                consecutive_failures += 1
                if consecutive_failures >= self.options.max_consecutive_failures:
                    raise WorkerError(
                        f"worker {self.worker_id}: the last {consecutive_failures} trials "
                        "all failed; stopping instead of burning the budget (see the "
                        f"trials' {records.FAIL_REASON!r} attribute)"
                    )
            elif state != Outcome.LOST:
                consecutive_failures = 0

    def _stop_reason(self, deadline: float) -> str | None:
        """Why the worker stops now; ``WAIT`` while the last slots are taken; None to go on."""
        import optuna

        done = (
            self.summary.completed + self.summary.pruned + self.summary.failed + self.summary.lost
        )
        if self.stop.requested:
            return "interrupted"
        if self.options.max_trials is not None and done >= self.options.max_trials:
            return f"max_trials={self.options.max_trials} reached"
        if time.monotonic() >= deadline:
            return f"timeout_s={self.spec.budget.timeout_s} reached"
        sampler = self.study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
            return "every grid point has been tried"
        if _target_reached(self.study, self.spec):
            return f"target={self.spec.budget.target} reached"
        finished, running = _counts(self.study)
        if finished >= self.spec.budget.n_trials:
            return f"budget of {self.spec.budget.n_trials} finished trials met"
        if finished + running >= self.spec.budget.n_trials:
            return WAIT  # the last slots are taken; wait in case one of them fails
        return None

    def _run_one(self, heartbeat: Heartbeat) -> Outcome:
        import optuna

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... with Study.optimize"
                trial = self.study.ask()
        except NoSlotLeft:
            return Outcome.NO_SLOT
        heartbeat.watch(trial._trial_id)
        try:
            if not self._store_enforces_budget and _over_budget(
                self.study, trial, self.spec.budget.n_trials
            ):
                if _fail(self.study, trial, "over budget: another worker took the last slot"):
                    frozen = self.study._storage.get_trial(trial._trial_id)
                    if records.retry_history(frozen):
                        requeue(self.study, frozen)
                return Outcome.NO_SLOT
            started = time.monotonic()
            try:
                with self.stop.trial_scope():
                    value = run_trial(trial, self.spec, self.context, self.stop.check)
            except Interrupted:
                return self._interrupted(trial)
            except optuna.exceptions.UpdateFinishedTrialError:
                return self._lost(trial)
            except optuna.TrialPruned as e:
                if not _finish(self.study, trial, "PRUNED", None):
                    return self._lost(trial)
                write_trial_note(self.study, trial, self.spec)
                self.summary.pruned += 1
                logger.info("trial %d pruned (%s)", trial.number, e)
                return Outcome.PRUNED
            except Exception as e:  # OOM, NaN loss, bad data…: this trial fails, we go on
                if any(isinstance(c, Interrupted) for c in exception_chain(e)):
                    # The stop landed inside C code (an import's module init, a tokenizer),
                    # which raised another error from it (``SystemError: ... returned a result
                    # with an exception set``): an interrupted trial still, re-queued, not a
                    # failure of its configuration. A failure of its own keeps its reason.
                    logger.warning(
                        "trial %d: the stop surfaced as %s", trial.number, type(e).__name__
                    )
                    return self._interrupted(trial)
                reason = mask_secrets(f"{type(e).__name__}: {e}".splitlines()[0])
                logger.error("trial %d failed: %s", trial.number, reason)
                _fail(self.study, trial, reason)
                self.summary.failed += 1
                return Outcome.FAIL
            if not math.isfinite(value):  # Optuna would store it as a FAIL with no reason
                _fail(self.study, trial, f"non-finite CV score: {value}")
                self.summary.failed += 1
                return Outcome.FAIL
            if not _finish(self.study, trial, "COMPLETE", value):
                return self._lost(trial)
            write_trial_note(self.study, trial, self.spec)  # the winner's only: after the tell
            self.summary.completed += 1
            logger.info(
                "trial %d: %s=%.4f in %.1f s",
                trial.number,
                self.spec.objective.metric,
                value,
                time.monotonic() - started,
            )
            return Outcome.COMPLETE
        finally:
            heartbeat.watch(None)

    def _interrupted(self, trial: optuna.Trial) -> Outcome:
        """This worker was told to stop inside ``trial``: fail it as interrupted and re-queue
        it (only if this worker failed it: a sweeper may have been first)."""
        if _fail(self.study, trial, INTERRUPTED_REASON):
            requeue(self.study, self.study._storage.get_trial(trial._trial_id))
        self.summary.failed += 1
        return Outcome.FAIL

    def _lost(self, trial: optuna.Trial) -> Outcome:
        """Our lease on ``trial`` lapsed (we were frozen or cut off past the grace period) and
        it was failed and re-queued elsewhere: drop it and take the next one."""
        logger.warning(
            "trial %d is no longer this worker's (failed elsewhere after its heartbeat lapsed); "
            "dropping it",
            trial.number,
        )
        self.summary.lost += 1
        return Outcome.LOST


def _agree_lease_terms(study: optuna.Study, options: WorkerOptions) -> None:
    """Every worker of a study beats and judges leases on the same terms, in the same place:
    the first workers record their ``--heartbeat-s``/``--grace-s`` and where their heartbeats
    go with the study, and a worker asking for others refuses to start (a sweeper with a
    shorter grace period, or one that judges a heartbeat table the others do not write, would
    fail their live trials).

    Workers starting together agree through claims: each writes a claim for its terms, then
    reads every claim; one that finds only its own terms claimed records them, one that finds
    others withdraws its claim and refuses. Of two starting with different terms, at least
    the one that reads second sees the other's claim (review of the exactly-once change: a
    read-then-write let both start)."""
    storage = study._storage
    place = getattr(storage, "heartbeat_place", lambda: "attribute")()
    mine = [int(options.heartbeat_interval_s), int(options.grace_period_s), place]
    study_id = study._study_id
    agreed = storage.get_study_system_attrs(study_id).get(LEASE_KEY)
    if agreed is None:
        claim = records.lease_claim_key(mine)
        storage.set_study_system_attr(study_id, claim, True)
        attrs = storage.get_study_system_attrs(study_id)
        rivals = [c for c in records.lease_claims(attrs) if c != claim]
        agreed = attrs.get(LEASE_KEY)
        if agreed is None and rivals:
            storage.set_study_system_attr(study_id, claim, False)
            raise WorkerError(
                f"study {study.study_name!r}: another worker starting now asks for other lease "
                f"terms ({', '.join(rivals)}); this one asked for --heartbeat-s {mine[0]} "
                f"--grace-s {mine[1]} ({place} heartbeats). Start every worker with the same "
                "terms."
            )
        if agreed is None:
            storage.set_study_system_attr(study_id, LEASE_KEY, mine)
            agreed = mine
    if list(agreed[:2]) != mine[:2]:
        raise WorkerError(
            f"study {study.study_name!r}: its workers beat every {agreed[0]} s with a "
            f"{agreed[1]} s grace period; this worker asked for --heartbeat-s {mine[0]} "
            f"--grace-s {mine[1]}. Use the study's terms (every worker judges the others' "
            "leases by its own)."
        )
    if len(agreed) > 2 and agreed[2] != place:
        theirs = _PLACES.get(str(agreed[2]), str(agreed[2]))
        raise WorkerError(
            f"study {study.study_name!r}: its workers record heartbeats in the store's {theirs}; "
            f"this worker's store records them in its {_PLACES[place]}, "
            "which those workers do not read (and it would not read theirs). Reach the study "
            "the same way from every worker: all through `hpo proxy` (grpc://) or all directly."
        )


_PLACES = {
    "table": "trial_heartbeats table",
    "attribute": f"trial attribute {records.HEARTBEAT_KEY}",
}


def _check_precision(spec: StudySpec, device: str, worker_id: str) -> Precision:
    """The precision this worker's trials train in, decided (and probed) once at start, so a
    spec this device cannot run fails the worker, not trial after trial."""
    from trainer import ConfigError, resolve_precision

    try:
        precision = resolve_precision(spec.train.precision, device)
    except ConfigError as e:
        raise WorkerError(f"worker {worker_id}: {e}") from e
    logger.info("worker %s trains in %s on %s", worker_id, precision, device)
    return precision


def _free_memory() -> None:
    """Release what a failed trial held (its model, optimizer state, CUDA cache)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_worker(options: WorkerOptions) -> WorkerSummary:
    """Run one worker in this process with signal handling; the CLI's ``hpo worker``."""
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    stop = StopSignal()
    # Installed until the process exits: a SIGTERM that lands while the worker is on its way
    # out (its budget met) is a request to stop, not a kill (exit code 0, not -15).
    stop.install()
    try:
        worker = Worker(options, stop)
    except StorageError as e:
        if not stop.requested:
            raise
        # Told to stop while it waited for the store to open: it has nothing to clean up.
        logger.warning("stopping before the store could be reached: %s", e)
        return WorkerSummary(stop_reason="interrupted (store unreachable)")
    return worker.run()
