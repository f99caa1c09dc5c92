"""A real ``hpo worker`` process whose trainer is a fast stand-in, for the fault harness.

Run as ``python -m tests.reliability._stub_worker worker --study NAME --storage URL ...`` (the
arguments of ``hpo``). Everything but the training is the real thing: the CLI, the worker loop,
its heartbeat thread and sweeps, signals, the store and its retries. The stand-in objective
suggests the spec's params (``hpo.spec.space.suggest``), sleeps ``$HPO_STUB_STEP_S`` per
(fold, epoch), reports every step on the study's step grid (``trainer.steps``), asks the
pruner after each, and saves each finished fold (``hpo.records.write_fold``), resuming from the
folds a re-queued trial carries (``hpo.records.saved_folds``): every write is fenced by the lease
as a real trial's is.

What the process did is appended as JSON lines to ``$HPO_STUB_EVENTS/<$HPO_STUB_PROC>.jsonl``
(one file per process, flushed per line; a kill -9 may cut the last one). Every line has
``ev``, ``t`` (``time.time()``) and ``pid``; the harness (``tests.reliability.harness``) reads
them back. Events:

* ``proc_start``; ``signals`` (SIGTERM is handled from here on); ``exit`` (``code`` or
  ``error``).
* ``asking``, then ``asked`` (``trial`` id, ``number``) or ``no_slot``: one ``study.ask``.
* ``start`` (``trial``, ``number``, ``params``, ``resumed`` folds): the stand-in began.
* ``write`` / ``refused`` (``trial``, ``what``: ``report`` | ``fold``, ``step`` or ``fold``,
  ``t0`` before the call, ``t1`` after): a write the store accepted / refused as finished.
* ``trained`` (``trial``, ``pruned``): the stand-in returned or raised ``TrialPruned``.
* ``finish`` / ``fail`` (``trial``, ``state`` or ``reason``, ``ok``, ``t0``, ``t1``): the
  worker's tell / its own FAIL, and whether it was this worker's (``ok``).
* ``requeue`` (``trial``, ``ok``): the worker re-queued its interrupted trial.
* ``swept`` (``numbers``, ``t0``, ``t1``): this worker's sweep failed (and re-queued) trials.
* ``lost`` (``trial``): the worker dropped a trial failed elsewhere.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ENV_EVENTS = "HPO_STUB_EVENTS"
ENV_PROC = "HPO_STUB_PROC"
ENV_STEP_S = "HPO_STUB_STEP_S"
DEFAULT_STEP_S = 0.2

_T = TypeVar("_T")


class EventLog:
    """Appends one JSON object per line, flushed at once; thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self._file = path.open("a", buffering=1) if path is not None else None
        self._lock = threading.Lock()

    def __call__(self, ev: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = json.dumps({"ev": ev, "t": time.time(), "pid": os.getpid(), **fields})
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def _open_log() -> EventLog:
    directory = os.environ.get(ENV_EVENTS)
    if not directory:
        return EventLog(None)
    name = os.environ.get(ENV_PROC) or str(os.getpid())
    return EventLog(Path(directory) / f"{name}.jsonl")


def stub_score(params: dict[str, Any], fold: int, epoch: int, epochs: int) -> float:
    """A deterministic accuracy in (0, 1): best near lr=1e-3 and low dropout, rising per epoch."""
    lr = float(params.get("lr", 1e-3))
    dropout = float(params.get("dropout", 0.0))
    base = 0.9 - 0.08 * abs(math.log10(lr) + 3.0) - 0.2 * dropout
    return max(0.01, min(0.99, base - 0.03 * (epochs - 1 - epoch) + 0.005 * fold))


def install(log: EventLog, step_s: float) -> None:
    """Patch the worker module: the stand-in objective, and event lines around the worker's
    store transitions."""
    import optuna

    import hpo.worker.heartbeat
    import hpo.worker.loop
    from hpo import records
    from hpo.spec.space import suggest
    from hpo.study import step_grid
    from trainer.config import FoldResult

    def fenced(trial_id: int, what: str, write: Callable[[], _T], **fields: Any) -> _T:
        t0 = time.time()
        try:
            result = write()
        except optuna.exceptions.UpdateFinishedTrialError as e:
            log("refused", trial=trial_id, what=what, t0=t0, t1=time.time(), error=str(e), **fields)
            raise
        log("write", trial=trial_id, what=what, t0=t0, t1=time.time(), **fields)
        return result

    def run_trial(
        trial: optuna.Trial, spec: Any, context: Any, check: Callable[[], None] | None = None
    ) -> float:
        params = suggest(trial, spec.search.space)
        done = records.saved_folds(trial.user_attrs)
        log(
            "start", trial=trial._trial_id, number=trial.number, params=params, resumed=sorted(done)
        )
        epochs, n_folds = spec.train.epochs, spec.cv.n_folds
        grid = step_grid(spec)
        scores = {fold: result.score for fold, result in done.items()}
        for fold in range(n_folds):
            if fold in done:
                continue
            started = time.monotonic()
            score = 0.0
            for epoch in range(epochs):
                time.sleep(step_s)
                score = stub_score(params, fold, epoch, epochs)
                step = grid.step(fold, epoch, epochs)
                if check is not None:  # as the real reporter: a swallowed stop stops here
                    check()
                report = functools.partial(trial.report, score, step)
                fenced(trial._trial_id, "report", report, step=step)
                if trial.should_prune():
                    log("trained", trial=trial._trial_id, pruned=True)
                    raise optuna.TrialPruned(f"pruned at fold {fold} epoch {epoch}")
            result = FoldResult(
                fold=fold,
                score=score,
                metrics={"accuracy": score},
                curve=({"accuracy": score},),
                train_examples=1,
                train_s=round(time.monotonic() - started, 3),
            )
            save = functools.partial(records.write_fold, trial, result)
            fenced(trial._trial_id, "fold", save, fold=fold)
            scores[fold] = score
        log("trained", trial=trial._trial_id, pruned=False)
        return sum(scores.values()) / n_folds

    real_finish, real_fail, real_requeue = (
        hpo.worker.loop._finish,
        hpo.worker.loop._fail,
        hpo.worker.loop.requeue,
    )
    real_sweep, real_lost = hpo.worker.heartbeat.sweep_stale, hpo.worker.loop.Worker._lost
    real_ask = optuna.Study.ask
    real_install = hpo.worker.loop.StopSignal.install

    def install_signals(self: Any) -> None:
        real_install(self)
        log("signals")

    def finish(study: Any, trial: Any, state: str, value: float | None) -> bool:
        t0 = time.time()
        ok = real_finish(study, trial, state, value)
        log("finish", trial=trial._trial_id, state=state, ok=ok, t0=t0, t1=time.time())
        return ok

    def fail(study: Any, trial: Any, reason: str) -> bool:
        t0 = time.time()
        ok = real_fail(study, trial, reason)
        log("fail", trial=trial._trial_id, reason=reason, ok=ok, t0=t0, t1=time.time())
        return ok

    def requeue(study: Any, trial: Any, **kwargs: Any) -> bool:
        ok = real_requeue(study, trial, **kwargs)
        log("requeue", trial=trial._trial_id, ok=ok)
        return ok

    def sweep_stale(study: Any, **kwargs: Any) -> list[int]:
        t0 = time.time()
        numbers = real_sweep(study, **kwargs)
        if numbers:
            log("swept", numbers=numbers, t0=t0, t1=time.time())
        return numbers

    def lost(self: Any, trial: Any) -> Any:
        log("lost", trial=trial._trial_id)
        return real_lost(self, trial)

    def ask(self: Any, *args: Any, **kwargs: Any) -> Any:
        from hpo.store import NoSlotLeft

        log("asking")
        try:
            trial = real_ask(self, *args, **kwargs)
        except NoSlotLeft:
            log("no_slot")
            raise
        log("asked", trial=trial._trial_id, number=trial.number)
        return trial

    hpo.worker.loop.run_trial = run_trial
    hpo.worker.loop._finish = finish
    hpo.worker.loop._fail = fail
    hpo.worker.loop.requeue = requeue
    hpo.worker.heartbeat.sweep_stale = sweep_stale
    hpo.worker.loop.Worker._lost = lost  # type: ignore[method-assign]
    optuna.Study.ask = ask  # type: ignore[method-assign]
    hpo.worker.loop.StopSignal.install = install_signals  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    log = _open_log()
    log("proc_start", argv=argv)
    install(log, float(os.environ.get(ENV_STEP_S, DEFAULT_STEP_S)))
    from hpo.cli import main as hpo_main

    try:
        code = hpo_main(argv)
    except BaseException as e:
        log("exit", error=f"{type(e).__name__}: {e}")
        raise
    log("exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
