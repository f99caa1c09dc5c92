"""The fault source of the reliability harness: each proxy fault does to a real PostgreSQL
client what it claims, schedules are reproducible and dense, process faults and the runner
inject and undo them."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.reliability.faultproxy import FaultProxy
from tests.reliability.faultrunner import FaultRunner
from tests.reliability.faults import (
    FaultEvent,
    FaultKind,
    FaultSchedule,
    Proc,
    freeze,
    kill9,
    restart_postgres,
    restarts_postgres,
    terminate,
)


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[FaultProxy]:
    parts = urlsplit(postgres_url)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as p:
        yield p


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Runs a blocking query on the side so the test can hold it to a deadline."""
    executor = ThreadPoolExecutor(max_workers=2)
    yield executor
    executor.shutdown(wait=True)


def _connect(url: str, **kwargs: Any) -> Any:
    return psycopg2.connect(url, connect_timeout=2, **kwargs)


def _select_one(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return int(cur.fetchone()[0])


def _proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("faultproxy")]


# -- the proxy, against the real server --------------------------------------------------------


@pytest.mark.postgres
def test_queries_pass_through_and_close_leaves_no_threads(
    proxy: FaultProxy, postgres_url: str
) -> None:
    conn = _connect(proxy.url_for(postgres_url))
    assert _select_one(conn) == 1
    assert proxy.n_connections == 1
    proxy.blackhole()  # a stalled link must not hold up close()
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 1.5
    assert _proxy_threads() == []
    conn.close()


@pytest.mark.postgres
def test_refuse_fails_new_connections_fast_and_recovers_on_the_same_port(
    proxy: FaultProxy, postgres_url: str
) -> None:
    url = proxy.url_for(postgres_url)
    port = proxy.port
    open_conn = _connect(url)
    proxy.refuse()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        _connect(url)
    assert time.monotonic() - started < 1.0
    assert _select_one(open_conn) == 1  # open connections are not touched
    proxy.admit()
    assert proxy.port == port
    assert _select_one(_connect(url)) == 1
    assert proxy.counts == {FaultKind.REFUSE: 1}


@pytest.mark.postgres
def test_blackhole_stalls_open_and_new_connections_until_healed(
    proxy: FaultProxy, postgres_url: str, pool: ThreadPoolExecutor
) -> None:
    url = proxy.url_for(postgres_url)
    conn = _connect(url)
    proxy.blackhole()
    stalled = pool.submit(_select_one, conn)
    with pytest.raises(FutureTimeout):
        stalled.result(timeout=1.0)
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        _connect(url)  # libpq's connect_timeout (2 s) is all that ends it
    proxy.heal()
    assert stalled.result(timeout=2.0) == 1  # nothing was lost, only delayed
    assert proxy.counts == {FaultKind.BLACKHOLE: 1}


@pytest.mark.postgres
def test_reset_fails_the_query_in_flight(
    proxy: FaultProxy, postgres_url: str, pool: ThreadPoolExecutor
) -> None:
    conn = _connect(proxy.url_for(postgres_url))
    in_flight = pool.submit(conn.cursor().execute, "SELECT pg_sleep(3)")
    time.sleep(0.3)
    assert proxy.reset_all() == 1
    with pytest.raises(psycopg2.OperationalError):
        in_flight.result(timeout=1.0)
    # The link's serving thread forgets it after the client has seen the reset (CI once read 1).
    deadline = time.monotonic() + 1.0
    while proxy.n_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.n_connections == 0


@pytest.mark.postgres
def test_latency_delays_each_round_trip(proxy: FaultProxy, postgres_url: str) -> None:
    conn = _connect(proxy.url_for(postgres_url))
    proxy.latency(0.2)
    started = time.monotonic()
    _select_one(conn)
    assert time.monotonic() - started >= 0.35  # the query and its reply, 0.2 s each
    proxy.latency(0.0)
    started = time.monotonic()
    _select_one(conn)
    assert time.monotonic() - started < 0.2


@pytest.mark.postgres
def test_a_targeted_lost_ack_hits_only_the_commit_of_that_write(
    proxy: FaultProxy, postgres_url: str
) -> None:
    """The soak's lost acks mostly hit beats and reports; aimed at one kind of write, the
    reply lost is that write's COMMIT, on the connection that made it, not the next one."""
    table = f"lost_ack_{uuid.uuid4().hex[:8]}"
    direct = _connect(postgres_url)
    direct.autocommit = True
    with direct.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (x int)")
    try:
        bystander, writer = (_connect(proxy.url_for(postgres_url)) for _ in range(2))
        proxy.lose_next_reply(after=b"values (7)")
        with writer.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (7)")  # armed; its COMMIT comes later
        with bystander.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        bystander.commit()  # another connection's COMMIT goes through
        with bystander.cursor() as cur:
            cur.execute("SELECT 1")
        bystander.rollback()
        with pytest.raises(psycopg2.OperationalError):
            writer.commit()
        with direct.cursor() as cur:
            cur.execute(f"SELECT x FROM {table} ORDER BY x")
            assert cur.fetchall() == [(1,), (7,)]
        assert proxy.lost_acks_after == {"values (7)": 1}
        assert not proxy.cancel_lost_reply()
    finally:
        with direct.cursor() as cur:
            cur.execute(f"DROP TABLE {table}")
        direct.close()


@pytest.mark.postgres
def test_lost_ack_commits_on_the_server_while_the_client_sees_an_error(
    proxy: FaultProxy, postgres_url: str
) -> None:
    table = f"lost_ack_{uuid.uuid4().hex[:8]}"
    direct = _connect(postgres_url)
    direct.autocommit = True
    with direct.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (x int)")
    try:
        through = _connect(proxy.url_for(postgres_url))
        with through.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (42)")
        proxy.lose_next_reply()
        with pytest.raises(psycopg2.OperationalError):
            through.commit()
        with direct.cursor() as cur:
            cur.execute(f"SELECT x FROM {table}")
            assert cur.fetchall() == [(42,)]  # committed, though the client never heard so
        assert proxy.counts == {FaultKind.LOST_ACK: 1}
        assert not proxy.cancel_lost_reply()  # it fired, nothing left armed
    finally:
        with direct.cursor() as cur:
            cur.execute(f"DROP TABLE {table}")
        direct.close()


@pytest.mark.postgres
def test_crash_drops_every_connection_and_refuses_until_admitted(
    proxy: FaultProxy, postgres_url: str
) -> None:
    url = proxy.url_for(postgres_url)
    conn = _connect(url)
    assert proxy.crash() == 1
    with pytest.raises(psycopg2.OperationalError):
        _select_one(conn)
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        _connect(url)
    proxy.pass_through()
    assert _select_one(_connect(url)) == 1
    assert proxy.counts == {FaultKind.PROXY_RESTART: 1}


def test_url_for_points_at_the_proxy_and_disables_tls() -> None:
    with FaultProxy(("127.0.0.1", 5432)) as p:
        url = p.url_for("postgresql://postgres@db.example:5432/test?application_name=w")
    assert (
        url == f"postgresql://postgres@127.0.0.1:{p.port}/test?application_name=w&sslmode=disable"
    )


# -- schedules ---------------------------------------------------------------------------------

ALL_KINDS = list(FaultKind)


def _schedule(seed: int, **overrides: Any) -> FaultSchedule:
    arguments: dict[str, Any] = {
        "seed": seed,
        "duration_s": 600.0,
        "kinds": ALL_KINDS,
        "n_workers": 3,
        "mean_gap_s": 5.0,
        "min_gap_s": 1.0,
        "outage_s": (1.0, 20.0),
        "freeze_grace_s": 10.0,
    }
    return FaultSchedule.generate(**(arguments | overrides))


def test_same_seed_gives_the_same_schedule_and_other_seeds_differ() -> None:
    assert _schedule(7) == _schedule(7)
    assert _schedule(7).events != _schedule(8).events


def test_every_requested_kind_appears_in_a_long_enough_schedule() -> None:
    for seed in range(5):
        assert _schedule(seed).kinds() == set(FaultKind)
    few = _schedule(0, kinds=[FaultKind.KILL9, FaultKind.BLACKHOLE], duration_s=60.0)
    assert few.kinds() == {FaultKind.KILL9, FaultKind.BLACKHOLE}


def test_events_overlap_across_proxy_and_worker_faults() -> None:
    pairs = _schedule(3).overlapping_pairs()
    assert any(a.kind.needs_proxy != b.kind.needs_proxy for a, b in pairs)


def test_events_fit_the_duration_and_freezes_outlast_the_grace() -> None:
    schedule = _schedule(1)
    starts = [e.at_s for e in schedule.events]
    assert starts == sorted(starts)
    assert all(e.end_s <= schedule.duration_s for e in schedule.events)
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(starts))
    for e in schedule.events:
        assert (e.target is not None) == e.kind.targets_worker
        if e.kind is FaultKind.SIGSTOP:
            assert e.duration_s >= 11.0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"kinds": []}, "kinds"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"min_gap_s": 9.0}, "min_gap_s"),
        ({"outage_s": (5.0, 1.0)}, "outage_s"),
        ({"n_workers": 0}, "n_workers"),
    ],
)
def test_bad_schedule_arguments_are_named(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        _schedule(0, **overrides)


# -- process faults and the runner -------------------------------------------------------------


def _sleeper() -> Proc:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _state(proc: Proc) -> str:
    """The kernel's one-letter state: 'S' sleeping, 'R' running, 'T' stopped."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _stopped(proc: Proc, timeout_s: float = 1.0) -> bool:
    """Whether ``proc`` is (or, within ``timeout_s``, becomes) stopped: signals land
    asynchronously."""
    deadline = time.monotonic() + timeout_s
    while _state(proc) != "T":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def workers() -> Iterator[list[Proc]]:
    procs = [_sleeper(), _sleeper()]
    yield procs
    for proc in procs:
        kill9(proc)


def test_freeze_stops_the_process_and_continues_it_later(workers: list[Proc]) -> None:
    handle = freeze(workers[0], 0.5)
    assert _stopped(workers[0])
    assert handle.join(2.0)
    assert not _stopped(workers[0], timeout_s=0.0)


def test_kill9_and_terminate_end_the_process_with_their_signal(workers: list[Proc]) -> None:
    assert kill9(workers[0]) == -9
    assert terminate(workers[1])
    assert workers[1].wait(5) == -15
    assert not terminate(workers[1])  # already gone: nothing to signal


def test_runner_injects_and_undoes_every_fault_and_respawns(workers: list[Proc]) -> None:
    pg_restarts: list[float] = []
    events = (
        FaultEvent(0.0, FaultKind.LOST_ACK, 0.2),
        FaultEvent(0.1, FaultKind.SIGSTOP, 0.8, target=0),
        FaultEvent(0.1, FaultKind.REFUSE, 0.9),
        FaultEvent(0.1, FaultKind.PG_RESTART, 0.2),
        FaultEvent(0.2, FaultKind.KILL9, 0.3, target=1),
        FaultEvent(0.2, FaultKind.PROXY_RESTART, 0.1),
        FaultEvent(0.2, FaultKind.BLACKHOLE, 0.2),
        FaultEvent(0.3, FaultKind.RESET, 0.0),
    )
    killed = workers[1]
    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        runner = FaultRunner(
            FaultSchedule(events, 1.0),
            proxy=proxy,
            workers=workers,
            respawn=lambda index: _sleeper(),
            restart_pg=pg_restarts.append,
        ).start()
        time.sleep(0.4)
        assert _stopped(workers[0], timeout_s=0.1)
        with pytest.raises(ConnectionRefusedError):  # REFUSE outlasts PROXY_RESTART
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
        assert runner.join(5.0)
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
        assert proxy.counts[FaultKind.BLACKHOLE] == 1
    records = runner.injected
    assert [r.kind for r in records] == [e.kind for e in events]
    assert all(r.ended_at is not None and r.ended_at >= r.started_at for r in records), records
    assert pg_restarts == [0.2]
    assert workers[1] is not killed and workers[1].poll() is None
    assert killed.returncode == -9
    assert not _stopped(workers[0], timeout_s=0.0)
    lost_ack = records[0].as_dict()
    assert lost_ack["kind"] == "lost_ack" and lost_ack["note"] == "not fired"


def test_runner_replaces_a_sigtermed_worker_once_it_has_exited(workers: list[Proc]) -> None:
    draining = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(3)))\n"
            "time.sleep(60)",
        ]
    )
    workers.append(draining)
    time.sleep(0.3)  # let it install its handler
    schedule = FaultSchedule((FaultEvent(0.0, FaultKind.SIGTERM, 0.1, target=2),), 1.0)
    runner = FaultRunner(
        schedule, workers=workers, respawn=lambda index: _sleeper(), respawn_poll_s=0.05
    )
    runner.start()
    assert runner.join(5.0)
    (record,) = runner.injected
    assert record.pid == draining.pid and draining.returncode == 3
    assert record.ended_at is not None and record.ended_at - record.started_at >= 0.45
    assert workers[2] is not draining and workers[2].poll() is None


def test_runner_stop_ends_active_faults_at_once(workers: list[Proc]) -> None:
    events = (
        FaultEvent(0.0, FaultKind.SIGSTOP, 60.0, target=0),
        FaultEvent(0.0, FaultKind.BLACKHOLE, 60.0),
        FaultEvent(30.0, FaultKind.KILL9, 1.0, target=1),
    )
    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        runner = FaultRunner(FaultSchedule(events, 61.0), proxy=proxy, workers=workers).start()
        time.sleep(0.2)
        started = time.monotonic()
        records = runner.stop()
        assert time.monotonic() - started < 1.0
    assert [r.kind for r in records] == [FaultKind.SIGSTOP, FaultKind.BLACKHOLE]
    assert all(r.ended_at is not None for r in records)
    assert not _stopped(workers[0], timeout_s=0.0) and workers[1].poll() is None


def test_runner_refuses_a_schedule_it_cannot_play() -> None:
    schedule = FaultSchedule((FaultEvent(0.0, FaultKind.KILL9, 1.0, target=2),), 2.0)
    with pytest.raises(ValueError, match="workers"):
        FaultRunner(schedule, workers=[])
    with pytest.raises(ValueError, match="proxy"):
        FaultRunner(FaultSchedule((FaultEvent(0.0, FaultKind.RESET, 0.0),), 1.0))


# -- PostgreSQL restarts -----------------------------------------------------------------------


@pytest.mark.skipif(not Path("/etc/postgresql").is_dir(), reason="no local cluster")
def test_restart_postgres_starts_the_cluster_even_when_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands: list[str] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command[-1] if command[0] == "pg_ctlcluster" else command[0])
        return subprocess.CompletedProcess(command, 0, "", "")

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("subprocess.run", run)  # the module faults calls through
    monkeypatch.setattr("time.sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        restart_postgres(5.0)
    assert commands == ["fast", "start", "pg_isready"]


@restarts_postgres
def test_restart_postgres_returns_once_the_server_accepts_again(postgres_url: str) -> None:
    restart_postgres(1.0)
    conn = _connect(postgres_url)
    assert _select_one(conn) == 1
    conn.close()


def test_runner_passes_a_fault_on_to_the_next_live_worker_when_told(workers: list[Proc]) -> None:
    kill9(workers[0])
    schedule = FaultSchedule((FaultEvent(0.0, FaultKind.KILL9, 0.1, target=0),), 1.0)
    victim = workers[1]
    runner = FaultRunner(
        schedule, workers=workers, respawn=lambda index: _sleeper(), retarget=True
    ).start()
    assert runner.join(5.0)
    (record,) = runner.injected
    assert record.pid == victim.pid and record.slot == 1 and record.target == 0
    assert victim.returncode == -9 and workers[1] is not victim and workers[1].poll() is None
