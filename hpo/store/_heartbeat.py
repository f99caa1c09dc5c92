"""Heartbeats recorded as a trial system attribute, for stores Optuna gives none (journal, gRPC)."""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

from hpo.store._base import HEARTBEAT_KEY


class AttrHeartbeat(BaseHeartbeat):
    """Optuna's ``BaseHeartbeat`` on a system attribute; subclasses judge staleness.

    Call ``_init_heartbeat`` from the subclass's ``__init__``.
    """

    def _init_heartbeat(
        self,
        heartbeat_interval_s: int,
        grace_period_s: int,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        if heartbeat_interval_s < 1:
            raise ValueError(f"heartbeat_interval_s must be >= 1, got {heartbeat_interval_s}")
        if grace_period_s < heartbeat_interval_s:
            raise ValueError(
                f"grace_period_s={grace_period_s} must be >= heartbeat_interval_s="
                f"{heartbeat_interval_s}"
            )
        self._heartbeat_interval_s = heartbeat_interval_s
        self._grace_period_s = grace_period_s
        self._stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())  # type: ignore[attr-defined]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval_s

    def get_grace_period_s(self) -> float:
        return float(self._grace_period_s)

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback
