"""One record of a trial and of a study: every attribute key hpo writes, and typed reads of them.

Results live in Optuna's own attribute tables, so plain Optuna, its CLI and optuna-dashboard
show them:

* a trial's user attributes are what a person reads: the CV mean and standard deviation, the
  fold scores in fold order, each finished fold (``fold_result:<i>``, kept so a re-queued trial
  resumes from it), where it ran (``run``), its throughput and curves (``stats``), and why it
  failed (``fail_reason``);
* a trial's system attributes carry the retry chain (Optuna's own ``failed_trial`` and
  ``retry_history`` keys, as ``RetryHeartbeatStaleTrialCallback`` writes them) and the store's
  bookkeeping (``hpo:`` keys: the request that made or finished it, the trial it replaces, its
  heartbeat on stores without a heartbeat table);
* a study's user attributes hold its spec, the spec's hash and the baselines; its system
  attributes the budget and the lease terms every worker agreed on.

No other module spells a key (``tests/hpo/test_records.py`` greps for it). Studies written
before ``fold_result:<i>`` existed kept each fold under ``fold_<i>``, a prefix that also matched
``fold_scores``; those folds still read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast

from trainer.config import CVResult, FoldResult

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

# A trial's user attributes.
CV_MEAN = "cv_mean"
CV_STD = "cv_std"
FOLD_SCORES = "fold_scores"
RUN = "run"  # where a trial ran: host, device, worker, seed, precision, resumed folds
STATS = "stats"
FAIL_REASON = "fail_reason"
_FOLD_PREFIX = "fold_result:"
_LEGACY_FOLD = re.compile(r"fold_(\d+)")

# A trial's system attributes: Optuna's retry chain ...
FAILED_TRIAL = "failed_trial"
RETRY_HISTORY = "retry_history"
# ... and the store's bookkeeping (see hpo.store).
HEARTBEAT_KEY = "hpo:heartbeat"  # journal and gRPC stores: the last beat, on the server's clock
REQUEST_KEY = "hpo:request"  # the request that created or popped the trial
FINISH_KEY = "hpo:finish"  # the request that finished it (a tell, or a sweeper's FAIL)
REQUEUE_OF_KEY = "hpo:requeue_of"  # the failed trial this waiting copy replaces

# A study's user attributes ...
SPEC = "spec"
SPEC_HASH = "spec_hash"
BASELINES = "baselines"
# ... and system attributes.
BUDGET_KEY = "hpo:budget"  # n_trials: running + finished trials never exceed it
LEASE_KEY = "hpo:lease"  # the heartbeat interval and grace period every worker uses
_LEASE_CLAIM_PREFIX = "hpo:lease_claim:"  # a starting worker's proposal, before LEASE_KEY is set


def lease_claim_key(terms: list[Any]) -> str:
    """The study system attribute in which a starting worker claims ``terms`` for the study."""
    return _LEASE_CLAIM_PREFIX + ":".join(map(str, terms))


def lease_claims(attrs: dict[str, Any]) -> list[str]:
    """The claim keys standing in a study's system attributes (withdrawn ones left out)."""
    return sorted(k for k, v in attrs.items() if k.startswith(_LEASE_CLAIM_PREFIX) and v is True)


def fold_key(fold: int) -> str:
    """The user attribute that keeps fold ``fold``'s result."""
    return f"{_FOLD_PREFIX}{fold}"


def _fold_index(key: str, value: Any) -> int | None:
    """The fold a user attribute keeps, or None if it keeps none."""
    if key.startswith(_FOLD_PREFIX):
        return int(key[len(_FOLD_PREFIX) :])
    legacy = _LEGACY_FOLD.fullmatch(key)
    if legacy is not None and isinstance(value, dict):
        return int(legacy.group(1))
    return None


def fold_to_json(fold: FoldResult) -> dict[str, Any]:
    data = asdict(fold)
    data["metrics"] = dict(fold.metrics)
    data["curve"] = [dict(epoch) for epoch in fold.curve]
    return data


def fold_from_json(data: Mapping[str, Any]) -> FoldResult:
    return FoldResult(
        fold=int(data["fold"]),
        score=float(data["score"]),
        metrics=dict(data["metrics"]),
        curve=tuple(dict(epoch) for epoch in data["curve"]),
        train_examples=int(data["train_examples"]),
        train_s=float(data["train_s"]),
        pruned=bool(data.get("pruned", False)),
    )


def fold_attrs(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The user attributes that keep folds (pruned ones included), as stored."""
    return {k: v for k, v in user_attrs.items() if _fold_index(k, v) is not None}


def stored_folds(user_attrs: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """Every kept fold by index, as stored (pruned ones included)."""
    return {
        index: value
        for key, value in user_attrs.items()
        if (index := _fold_index(key, value)) is not None and isinstance(value, Mapping)
    }


def saved_folds(user_attrs: Mapping[str, Any]) -> dict[int, FoldResult]:
    """Folds an earlier attempt of a trial finished (carried over when it was re-queued)."""
    done = {}
    for index, value in stored_folds(user_attrs).items():
        fold = fold_from_json(value)
        if not fold.pruned:
            done[index] = fold
    return done


def write_fold(trial: optuna.Trial, fold: FoldResult) -> None:
    trial.set_user_attr(fold_key(fold.fold), fold_to_json(fold))


class RunInfo(TypedDict, total=False):
    """Where a trial ran (``RUN``): its host, device and worker, its training seed and resolved
    precision, and the folds it resumed from a re-queued attempt's record."""

    host: str
    device: str
    worker: str
    seed: int
    precision: str
    resumed_folds: list[int]


class TrialStats(TypedDict):
    """What a finished trial cost (``STATS``): wall time, throughput, peak memory, whether it
    was pruned, and each fold's per-epoch curve."""

    wall_s: float
    train_examples_per_s: float
    peak_memory_mb: float
    pruned: bool
    curves: list[list[dict[str, float]]]


def write_run(trial: optuna.Trial, run: RunInfo) -> None:
    trial.set_user_attr(RUN, dict(run))


def write_result(trial: optuna.Trial, result: CVResult) -> None:
    """The CV summary: fold scores in fold order, mean, std, curves, throughput."""
    trial.set_user_attr(FOLD_SCORES, list(result.fold_scores))
    trial.set_user_attr(CV_MEAN, result.mean)
    trial.set_user_attr(CV_STD, result.std)
    stats: TrialStats = {
        "wall_s": round(result.wall_s, 3),
        "train_examples_per_s": round(result.train_examples_per_s, 2),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "pruned": result.pruned,
        "curves": json.loads(json.dumps([[dict(e) for e in c] for c in result.curves])),
    }
    trial.set_user_attr(STATS, dict(stats))


@dataclass(frozen=True)
class CVScore:
    """A finished trial's cross-validated score as its record holds it.

    ``mean`` falls back to the trial's value (a trial told by another client); ``std`` is None
    and ``fold_scores`` empty when the record lacks them.
    """

    mean: float | None
    std: float | None
    fold_scores: list[float]

    @classmethod
    def of(cls, trial: optuna.Trial | FrozenTrial) -> CVScore:
        attrs = trial.user_attrs
        mean = attrs.get(CV_MEAN, getattr(trial, "value", None))
        std = attrs.get(CV_STD)
        return cls(
            mean=float(mean) if isinstance(mean, (int, float)) else None,
            std=float(std) if isinstance(std, (int, float)) else None,
            fold_scores=[float(s) for s in attrs.get(FOLD_SCORES) or []],
        )


def run_info(trial: optuna.Trial | FrozenTrial) -> RunInfo:
    """Where the trial ran (empty for a trial no hpo worker ran)."""
    return cast(RunInfo, dict(trial.user_attrs.get(RUN) or {}))


def stats(trial: FrozenTrial) -> TrialStats | None:
    """What the finished trial cost (None for a trial no hpo worker finished)."""
    found = trial.user_attrs.get(STATS)
    return cast(TrialStats, dict(found)) if found else None


def fail_reason(trial: FrozenTrial) -> str | None:
    reason = trial.user_attrs.get(FAIL_REASON)
    return None if reason is None else str(reason)


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the earlier attempts of this trial, first first (empty if not a retry)."""
    return [int(n) for n in trial.system_attrs.get(RETRY_HISTORY) or []]


def original_number(trial: FrozenTrial) -> int:
    """The number of the first trial of a retry chain (itself if not a retry)."""
    history = retry_history(trial)
    return history[0] if history else trial.number


def retry_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The system attributes of a waiting copy of the lost ``trial``: its place in the chain.

    Compatible with Optuna's ``RetryHeartbeatStaleTrialCallback`` (``failed_trial``: the first
    number of the chain; ``retry_history``: every number before the copy)."""
    history = [*retry_history(trial), trial.number]
    return {FAILED_TRIAL: history[0], RETRY_HISTORY: history, REQUEUE_OF_KEY: trial._trial_id}
