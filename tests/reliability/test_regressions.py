"""Regression tests for bugs the fault harness (``tests.reliability.harness``) found, each
named for what a user relies on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from optuna.study import StudyDirection

from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from hpo.worker.loop import Worker, WorkerOptions
from tests.reliability.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[FaultProxy]:
    parts = urlsplit(postgres_url)
    with FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as p:
        yield p


@pytest.mark.postgres
def test_a_worker_started_while_the_database_is_unreachable_waits_for_it(
    proxy: FaultProxy, postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A worker (re)started during an outage exited 1 ("cannot open storage"): under `hpo
    launch` a short database restart used up its restarts; now it rides the outage out."""
    spec_dict["train"] = {"precision": "fp32"}
    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    proxy.refuse()
    threading.Timer(2.0, proxy.admit).start()
    started = time.monotonic()
    worker = Worker(
        WorkerOptions(
            storage_url=proxy.url_for(postgres_url), study_name=spec_dict["name"], device="cpu"
        )
    )
    assert time.monotonic() - started >= 1.5
    assert worker.spec.name == spec_dict["name"]


def test_an_operation_answered_late_counts_as_a_break_in_reachability() -> None:
    """A stalled network raises nothing; the late answer itself is the evidence."""
    import optuna

    from hpo.store import RetryingStorage

    class Stalled(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            time.sleep(0.3)
            return []

    storage = RetryingStorage(Stalled(), max_delay_s=0.2)  # type: ignore[operator]
    time.sleep(0.3)
    assert storage.reachable_for_s() >= 0.3
    storage.get_all_studies()
    assert storage.reachable_for_s() < 0.1


def test_an_operation_that_rode_out_an_outage_and_then_failed_counts_as_a_break() -> None:
    """A sweeper that waited out an outage inside an ask that then found no slot left judged
    leases at once, as if the store had answered all along (review of the exactly-once
    change): only a successful answer restarted the reachability clock."""
    import optuna
    import sqlalchemy.exc

    from hpo.store import RetryingStorage

    class Flaky(optuna.storages.InMemoryStorage):
        calls = 0

        def get_all_studies(self) -> Any:
            Flaky.calls += 1
            if Flaky.calls == 1:  # the network is down ...
                raise sqlalchemy.exc.OperationalError("SELECT", {}, ConnectionError("refused"))
            raise KeyError("no slot left")  # ... and the answer, when it comes, is an error

    storage = RetryingStorage(Flaky(), max_delay_s=0.05, sleep=lambda s: None)  # type: ignore[operator]
    time.sleep(0.3)
    assert storage.reachable_for_s() >= 0.3
    with pytest.raises(KeyError):
        storage.get_all_studies()
    assert storage.reachable_for_s() < 0.1


@pytest.mark.postgres
def test_a_sweeper_held_up_by_a_stalled_network_fails_no_live_trial_when_it_is_back(
    proxy: FaultProxy, postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A blackhole raises nothing: a sweep stalled through one came back and at once failed
    the trials whose heartbeats had been stalled with it (found by the harness, seed 2)."""
    from optuna.trial import TrialState

    from hpo.study import load_study
    from hpo.worker.heartbeat import sweep_stale

    leases: dict[str, Any] = {"heartbeat_interval_s": 1, "grace_period_s": 2}
    direct = open_storage(postgres_url, **leases)
    create_study(parse_spec(spec_dict), direct)
    owner, _ = load_study(direct, spec_dict["name"])
    sweeper, _ = load_study(open_storage(proxy.url_for(postgres_url), **leases), spec_dict["name"])
    trial = owner.ask()
    time.sleep(2.5)  # the sweeper's store has answered for a grace period
    direct.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    proxy.blackhole()  # from here on the owner's beats are stalled too: it sends none
    swept: list[int] = []
    sweep = threading.Thread(target=lambda: swept.extend(sweep_stale(sweeper)))
    sweep.start()
    time.sleep(3.5)
    proxy.heal()
    sweep.join(15)
    assert not sweep.is_alive()
    assert swept == []
    assert direct.get_trial(trial._trial_id).state == TrialState.RUNNING


@pytest.mark.slow
def test_a_sweeper_frozen_through_an_outage_fails_no_live_trial_when_it_wakes(
    tmp_path: Path,
) -> None:
    """A sweeper stopped (SIGSTOP, a paused VM) through an outage every worker saw made no
    store call in it, so its store's clock saw no break: it woke, found the owner's trial
    silent and failed it while the owner's retry was still in flight (review of the
    exactly-once change). Beat 1 s, grace 3 s, a 6 s outage."""
    import signal

    import optuna
    from optuna.trial import TrialState

    from tests.reliability import _frozen_sweeper as roles

    optuna.create_study(study_name="s", storage=roles.journal(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    module = [sys.executable, "-m", "tests.reliability._frozen_sweeper"]
    owner = subprocess.Popen(
        [*module, "owner", str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert owner.stdout is not None and owner.stdout.readline().strip() == "asked"
    sweeper = subprocess.Popen(
        [*module, "sweeper", str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert sweeper.stdout is not None and sweeper.stdout.readline().strip() == "sweeping"
        time.sleep(4)  # the sweeper's store has answered for a grace period
        os.kill(sweeper.pid, signal.SIGSTOP)
        time.sleep(1)
        (tmp_path / "outage").touch()
        time.sleep(6)
        (tmp_path / "outage").unlink()
        os.kill(sweeper.pid, signal.SIGCONT)
        assert owner.wait(60) == 0  # before: "Cannot tell a FAIL trial"
        assert sweeper.wait(60) == 0
    finally:
        for process in (owner, sweeper):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
    [trial] = optuna.load_study(study_name="s", storage=roles.journal(tmp_path)).trials
    assert trial.state == TrialState.COMPLETE


def test_a_journal_writer_frozen_while_holding_the_lock_keeps_it(tmp_path: Path) -> None:
    """Optuna's symlink lock was broken by any waiter after 5 s without progress: a writer
    frozen (SIGSTOP) or descheduled that long then appended alongside another (its check and
    append no longer one step) and crashed on release (harness, journal seed 12)."""
    url = str(tmp_path / "journal.log")
    storage = open_storage(url)
    holds = (
        "import time\n"
        "from hpo.store import open_storage\n"
        f"lock = open_storage({url!r})._file_lock\n"
        "lock.acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(7)\n"
        "released_at = time.time()\n"
        "lock.release()\n"
        "print(released_at, flush=True)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holds],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    storage.create_new_study([StudyDirection.MAXIMIZE], "waits")
    wrote_at = time.time()
    out, _ = holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert wrote_at >= float(out.strip())


def test_a_journal_lock_removed_under_its_holder_neither_crashes_nor_hangs_it(
    tmp_path: Path,
) -> None:
    """The failed release left the process's thread lock held: its next write (the heartbeat
    thread's or the main loop's) waited forever, a hung worker."""
    url = str(tmp_path / "journal.log")
    storage = open_storage(url)
    lock = storage._file_lock  # type: ignore[attr-defined]
    lock.acquire()
    os.unlink(url + ".lock")  # as a plain Optuna client does past its grace period
    lock.release()
    writer = threading.Thread(
        target=storage.create_new_study, args=([StudyDirection.MAXIMIZE], "next")
    )
    writer.start()
    writer.join(10)
    assert not writer.is_alive()


def test_a_sweeper_that_waited_for_the_journal_lock_fails_no_live_trial(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """A writer held the journal's lock past the grace period (frozen, or a slow disk): every
    process's beats waited behind it, and the first sweeper through failed the trials whose
    beats were still queued (harness, journal seed 12)."""
    from optuna.trial import TrialState

    from hpo.study import load_study
    from hpo.worker.heartbeat import sweep_stale

    url = str(tmp_path / "journal.log")
    leases: dict[str, Any] = {"heartbeat_interval_s": 1, "grace_period_s": 2}
    owner_store = open_storage(url, **leases)
    create_study(parse_spec(spec_dict), owner_store)
    owner, _ = load_study(owner_store, spec_dict["name"])
    sweeper, _ = load_study(open_storage(url, **leases), spec_dict["name"])
    trial = owner.ask()
    holds = (
        "import time\n"
        "from hpo.store import open_storage\n"
        f"lock = open_storage({url!r})._file_lock\n"
        "lock.acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(5)\n"
        "lock.release()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holds],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    owner_store.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    time.sleep(3)  # past the grace period: the owner's next beats wait behind the holder
    assert sweep_stale(sweeper) == []
    assert holder.wait(30) == 0
    assert owner_store.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_a_worker_cut_off_from_hpo_proxy_tries_to_reconnect_every_heartbeat() -> None:
    """gRPC backs a channel's reconnects off exponentially, up to two minutes apart: after
    `hpo proxy` came back a worker stayed cut off for seconds more (minutes after a long
    outage, past the outage timeout), and a sweeper that was back first failed its live trial
    as stale. Now the channel tries again at least once per heartbeat interval."""
    import itertools
    import socket

    from hpo.errors import StorageError

    heartbeat_s = 2
    attempts: list[float] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def refuse_grpc() -> None:  # the port answers, but no gRPC server: every connect fails
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            attempts.append(time.monotonic())
            connection.close()

    server = threading.Thread(target=refuse_grpc)
    server.start()
    try:
        port = listener.getsockname()[1]
        storage = open_storage(
            f"grpc://127.0.0.1:{port}",
            heartbeat_interval_s=heartbeat_s,
            grace_period_s=2 * heartbeat_s,
            outage_timeout_s=10.0,
        )
        with pytest.raises(StorageError, match="unreachable"):
            storage.get_all_studies()
    finally:
        done.set()
        server.join(5)
        listener.close()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # gRPC's default: 1, 1.6, 2.6, 4.1 s apart (±20 %); ours: at most a heartbeat (+20 %).
    assert len(gaps) >= 4 and max(gaps) < 1.2 * heartbeat_s + 0.5, gaps


def test_a_worker_whose_tell_was_stored_but_its_reply_lost_keeps_its_trial() -> None:
    """Behind `hpo proxy` a call retried after its reply was lost is not idempotent: the
    retried tell found the trial finished (by the worker itself) and the worker crashed with
    exit 1, its trial complete (harness, grpc backend: a RESET while replies sat in a
    LATENCY)."""
    import optuna
    from optuna.trial import TrialState

    from hpo.store import RetryingStorage
    from hpo.worker.loop import _finish

    class LosesFirstTellReply(optuna.storages.InMemoryStorage):
        lost = False

        def set_trial_state_values(
            self, trial_id: int, state: TrialState, values: Any = None
        ) -> bool:
            stored = super().set_trial_state_values(trial_id, state, values)
            if state.is_finished() and not self.lost:
                self.lost = True
                raise ConnectionError("connection reset after the write")
            return stored

    inner = LosesFirstTellReply()
    storage = RetryingStorage(inner, sleep=lambda s: None)  # type: ignore[operator]
    study = optuna.create_study(storage=storage, direction="maximize")
    completed, pruned = study.ask(), study.ask()
    assert _finish(study, completed, "COMPLETE", 0.75)
    inner.lost = False
    assert _finish(study, pruned, "PRUNED", None)
    stored = study.get_trials(deepcopy=False)
    assert [(t.state, t.value) for t in stored] == [
        (TrialState.COMPLETE, 0.75),
        (TrialState.PRUNED, None),
    ]


@pytest.mark.postgres
def test_a_worker_told_to_stop_during_an_outage_stops_now_and_its_trial_is_requeued(
    proxy: FaultProxy, postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM while the database is unreachable: the worker used to hold the stop until the
    outage ended (its store call retried for up to 300 s, the signal deferred behind it); now
    it gives up the retry, exits 0 within seconds, and its RUNNING trial is failed and
    re-queued by a sweeper once the database is back and its lease has expired."""
    import json
    import signal

    import optuna
    from optuna.trial import TrialState

    from tests.hpo.conftest import unique_name
    from tests.reliability.harness import (
        HarnessConfig,
        harness_spec,
        stub_worker_command,
        stub_worker_env,
    )

    config = HarnessConfig(n_trials=1, n_folds=3, epochs=20, step_s=0.2, grace_s=3)
    spec = harness_spec(unique_name(), config)
    create_study(parse_spec(spec), open_storage(postgres_url))
    events = tmp_path / "events"
    events.mkdir()
    env = stub_worker_env(events, "w", config.step_s)
    command = stub_worker_command(config, spec["name"], proxy.url_for(postgres_url))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while '"ev": "write"' not in _read(events / "w.jsonl"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proxy.crash()  # the database is down: open connections reset, new ones refused
        time.sleep(1.5)  # the worker's next report and beat are in their retries now
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = proc.wait(timeout=60)
        took_s = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.admit()
    assert code == 0, log.read_text()
    assert took_s < 10, f"the stop took {took_s:.1f} s\n{log.read_text()}"
    assert "not retrying: this process is stopping" in log.read_text()
    # Any worker's sweep fails and re-queues it once the database is back.
    from hpo.study import load_study
    from hpo.worker.heartbeat import sweep_stale

    storage = open_storage(
        postgres_url, heartbeat_interval_s=config.heartbeat_s, grace_period_s=config.grace_s
    )
    study, _ = load_study(storage, spec["name"])
    time.sleep(config.grace_s + 2)  # its lease lapsed; this sweeper connected a grace period
    assert len(sweep_stale(study)) == 1
    plain = optuna.storages.RDBStorage(
        postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    )
    trials = optuna.load_study(study_name=spec["name"], storage=plain).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], [
        (t.number, t.state, t.user_attrs) for t in trials
    ]
    assert json.dumps(trials[1].params, sort_keys=True) == json.dumps(
        trials[0].params, sort_keys=True
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_call_to_hpo_proxy_that_is_never_answered_fails_and_is_retried_not_waited_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy whose host vanished mid-call (a half-open connection) never answers: Optuna's
    gRPC calls carry no deadline, so a worker waited for TCP to give up (about 15 minutes),
    holding its store and so its heartbeats (review of the exactly-once change). Now a call
    unanswered past its deadline counts as the proxy being unreachable: retried, and given up
    after the outage timeout like any outage."""
    from concurrent import futures

    import grpc

    from hpo.errors import StorageError
    from hpo.store import _grpc

    monkeypatch.setattr(_grpc, "_MIN_DEADLINE_S", 1.0)
    release = threading.Event()

    class NeverAnswers(grpc.GenericRpcHandler):
        def service(self, handler_call_details: Any) -> Any:
            def hang(request: Any, context: Any) -> Any:
                release.wait(60)
                context.abort(grpc.StatusCode.UNAVAILABLE, "released")

            return grpc.unary_unary_rpc_method_handler(hang)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((NeverAnswers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    outcome: list[BaseException | None] = []
    try:
        storage = open_storage(
            f"grpc://127.0.0.1:{port}",
            heartbeat_interval_s=1,
            grace_period_s=1,
            outage_timeout_s=3.0,
        )

        def call() -> None:
            try:
                storage.get_all_studies()
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        caller = threading.Thread(target=call, daemon=True)
        started = time.monotonic()
        caller.start()
        caller.join(timeout=20)
        took_s = time.monotonic() - started
    finally:
        release.set()
        server.stop(grace=None)
    assert outcome and isinstance(outcome[0], StorageError), (outcome, took_s)
    assert "unreachable" in str(outcome[0]) and took_s < 15


@pytest.mark.postgres
def test_a_worker_told_to_stop_while_it_waits_for_the_store_to_open_exits_0(
    proxy: FaultProxy, postgres_url: str, tmp_path: Path
) -> None:
    """Started (or restarted) during an outage, a worker waits for the store; a SIGTERM then
    ended it with exit 1 and a one-line error (harness seed 216: a respawned worker told to
    stop at once). It has nothing to clean up: it exits 0 at once."""
    import signal

    from tests.hpo.conftest import unique_name
    from tests.reliability.harness import (
        HarnessConfig,
        harness_spec,
        stub_worker_command,
        stub_worker_env,
    )

    config = HarnessConfig(n_trials=1, grace_s=3)
    spec = harness_spec(unique_name(), config)
    create_study(parse_spec(spec), open_storage(postgres_url))
    proxy.crash()
    env = stub_worker_env(tmp_path, "w", config.step_s)
    command = stub_worker_command(config, spec["name"], proxy.url_for(postgres_url))
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        time.sleep(3.0)  # started, signal handler installed, retrying the first connection
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.admit()
    assert proc.returncode == 0, out.decode(errors="replace")
    assert b"stopping before the store could be reached" in out
