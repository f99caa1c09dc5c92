"""The stateless worker: take a trial under a lease, train it through the trainer, tell it.

Reading order: ``loop`` (ask, run, tell; signals, outages, the budget), ``heartbeat`` (the
lease: beats, sweeping stale trials, re-queueing lost work exactly once), ``objective`` (the one
adapter between an Optuna trial and the trainer). The store under it is ``hpo.store``.
"""

from hpo.worker.loop import Worker, WorkerOptions, WorkerSummary, run_worker

__all__ = ["Worker", "WorkerOptions", "WorkerSummary", "run_worker"]
