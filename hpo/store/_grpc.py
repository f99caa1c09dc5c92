"""Optuna's gRPC storage proxy client with heartbeats, which Optuna gives only to RDB stores.

Workers behind ``hpo proxy`` may run on many hosts whose clocks need not agree, so staleness is
judged on the observer's own clock: a heartbeat is a value that changes with every beat, and a
running trial is stale once its value has not changed for ``grace_period_s`` while this process
watched. A sweeper therefore needs one grace period of watching before it can fail anything,
and never fails a trial because of clock skew.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import grpc
import optuna
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from hpo.store._base import HEARTBEAT_KEY, NO_SLOT, NoSlotLeft
from hpo.store._heartbeat import AttrHeartbeat

_MIN_DEADLINE_S = 30.0
# The server accepts keepalive pings as often as the shortest heartbeat a worker may use (1 s),
# however many, also while a call sends no data (gRPC's default answers more than two pings in
# five minutes with GOAWAY "too_many_pings").
_SERVER_OPTIONS = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


def serve_proxy(storage: optuna.storages.BaseStorage, host: str, port: int) -> None:
    """Optuna's gRPC storage proxy server (``run_grpc_proxy_server``), with the keepalive pings
    our clients send accepted; serves until the process is stopped."""
    from concurrent.futures import ThreadPoolExecutor

    from optuna.storages._grpc import servicer
    from optuna.storages._grpc.auto_generated import api_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=10), options=_SERVER_OPTIONS)
    api_pb2_grpc.add_StorageServiceServicer_to_server(
        servicer.OptunaStorageProxyService(storage), server
    )
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    server.wait_for_termination()


class HeartbeatGrpcStorageProxy(GrpcStorageProxy, AttrHeartbeat):
    """``GrpcStorageProxy`` implementing Optuna's ``BaseHeartbeat`` through a system attribute.

    ``optuna.storages.fail_stale_trials`` and stale-trial callbacks work on it unchanged.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval_s: int,
        grace_period_s: int,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        self._init_heartbeat(heartbeat_interval_s, grace_period_s, stale_callback)
        super().__init__(host=host, port=port)
        # trial id -> (last heartbeat value seen, this process's monotonic time it was first seen)
        self._seen: dict[int, tuple[object, float]] = {}
        self._seen_lock = threading.Lock()

    def _setup(self) -> None:
        """Optuna's channel, stub and trial cache, but the channel reconnects at least once per
        heartbeat interval. gRPC's default backs reconnects off exponentially up to two minutes
        apart: a worker would stay cut off that long after ``hpo proxy`` came back, its live
        trial failed as stale by a sweeper that was back first (and a long outage would outlast
        the worker's outage timeout although the proxy was up again).

        And it pings the proxy every heartbeat while a call is under way, closing a connection
        whose ping goes unanswered for a heartbeat: on a network that drops packets a call sent
        into the cut would otherwise wait for TCP's retransmissions (25-51 s apart after a
        minute's cut) after the network healed, and its trial be failed as stale by a sweeper
        whose connection came back first (review of the exactly-once change)."""
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        channel = grpc.insecure_channel(
            f"{self._host}:{self._port}",
            options=[
                ("grpc.max_receive_message_length", -1),  # as Optuna's
                ("grpc.max_reconnect_backoff_ms", 1000 * self._heartbeat_interval_s),
                ("grpc.keepalive_time_ms", 1000 * self._heartbeat_interval_s),
                ("grpc.keepalive_timeout_ms", 1000 * self._heartbeat_interval_s),
            ],
        )
        # Optuna's calls carry no deadline: on a connection that went half-open (the proxy's
        # host vanished mid-call) one would wait for TCP to give up, about 15 minutes, holding
        # this worker's store and so its heartbeats. A call still unanswered after a grace
        # period (30 s at least: a busy proxy is slow, not gone) fails as the proxy being
        # unreachable, and is retried like one.
        deadline_s = max(_MIN_DEADLINE_S, float(self._grace_period_s))
        self._channel = grpc.intercept_channel(channel, _Deadline(deadline_s))
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.monotonic()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        stale = []
        with self._seen_lock:
            watched = {}
            for trial in running:
                # A trial that never beat is judged too (its owner may have died before the first
                # beat): silent since this process first saw it.
                beat = trial.system_attrs.get(HEARTBEAT_KEY)
                last = self._seen.get(trial._trial_id)
                if last is None or last[0] != beat:
                    last = (beat, now)
                watched[trial._trial_id] = last
                if now - last[1] > self._grace_period_s:
                    stale.append(trial._trial_id)
            self._seen = watched  # finished trials are forgotten
        return stale

    def fail_if_stale(self, trial_id: int, user_attrs: dict[str, Any]) -> bool:
        """Fail a stale trial with ``user_attrs`` (its reason) written first. The state change is
        guarded by the store behind the proxy (a finished trial is never failed again); the
        attributes and the state are two calls, as Optuna's gRPC API has no transaction.

        The trial is read again first and left alone if it beat since it was judged stale: the
        sweep lists every running trial and fails the stale ones one by one, and an owner whose
        connection came back in between (a healed partition) would otherwise lose its live trial
        to a judgement that was already out of date. What remains is one round trip between this
        read and the failing write, which Optuna's gRPC API cannot close (it has no conditional
        write)."""
        with self._seen_lock:
            seen = self._seen.get(trial_id)
        try:
            current = self.get_trial(trial_id)
        except KeyError:
            return False
        if (
            seen is None
            or current.state != TrialState.RUNNING
            or current.system_attrs.get(HEARTBEAT_KEY) != seen[0]
        ):
            return False
        try:
            for key, value in user_attrs.items():
                self.set_trial_user_attr(trial_id, key, value)
            return self.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    # Behind ``hpo proxy`` the budget is enforced by the store there; its refusal comes back as
    # a gRPC error carrying our message, turned back into ``NoSlotLeft`` here.
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with _no_slot_from_proxy():
            return super().create_new_trial(study_id, template_trial)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with _no_slot_from_proxy():
            return super().set_trial_state_values(trial_id, state, values)


class _Deadline(grpc.UnaryUnaryClientInterceptor):
    """Gives every unary call without a deadline one of ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = _CallDetails(
                details.method,
                self._timeout_s,
                details.metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            )
        return continuation(details, request)


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", Any),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    pass


@contextmanager
def _no_slot_from_proxy() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as e:
        details = e.details() if callable(getattr(e, "details", None)) else ""
        if NO_SLOT in (details or ""):
            raise NoSlotLeft(details) from None
        raise
