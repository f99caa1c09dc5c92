"""Exactly once: a trial is failed and re-queued once, with its reason; retries after a lost
reply find their own work; the budget is never exceeded; a worker whose trial was taken from
it drops it instead of crashing; workers in containers draw different points."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import (
    FINISH_KEY,
    NoSlotLeft,
    RetryingStorage,
    normalize_postgres_url,
    open_storage,
)
from hpo.study import create_study, load_study
from hpo.worker.heartbeat import requeue, sweep_stale

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(url: str, spec_dict: dict[str, Any], **store: Any) -> tuple[optuna.Study, Any]:
    storage = open_storage(url, **store)
    create_study(parse_spec(spec_dict), storage)
    study, spec = load_study(storage, spec_dict["name"])
    return study, spec


def _silence(seconds: float) -> None:
    time.sleep(seconds)


def _budget_one_with_a_requeued_copy(url: str, spec_dict: dict[str, Any]) -> optuna.Study:
    """A study of budget 1 whose first trial failed and was re-queued: one WAITING copy."""
    spec_dict["budget"] = {"n_trials": 1}
    study, _ = _study(url, spec_dict)
    first = study.ask()
    first.suggest_float("lr", 1e-5, 1e-3, log=True)
    study._storage.set_trial_state_values(first._trial_id, TrialState.FAIL)
    requeue(study, study._storage.get_trial(first._trial_id))
    return study


def test_a_stale_trial_is_failed_with_its_reason_and_requeued_once(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    """Two sweepers see the same stale trial: one fails it (reason recorded), one copy."""
    study, _ = _study(storage_url, spec_dict, heartbeat_interval_s=1, grace_period_s=1)
    other, _ = load_study(
        open_storage(storage_url, heartbeat_interval_s=1, grace_period_s=1), spec_dict["name"]
    )
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    _silence(2.5)  # its worker "died"
    failed = sweep_stale(study) + sweep_stale(other)
    assert failed == [trial.number]
    trials = study.get_trials(deepcopy=False)
    dead = trials[trial.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs[records.FAIL_REASON] == "heartbeat stale"
    copies = [t for t in trials if t.state == TrialState.WAITING]
    assert len(copies) == 1 and copies[0].params == dead.params


def test_a_trial_whose_worker_died_before_its_first_beat_is_stale(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    """A trial taken by a plain Optuna client (no heartbeat row) is not hidden from sweeps."""
    if storage_url.startswith("sqlite"):
        pytest.skip("SQLite keeps Optuna's own stale-trial rule (one host, no lost replies)")
    study, _ = _study(storage_url, spec_dict, heartbeat_interval_s=1, grace_period_s=1)
    trial = study.ask()  # no beat ever
    _silence(2.5)
    assert sweep_stale(study) == [trial.number]


def test_a_trial_that_beats_again_before_the_sweeper_fails_it_is_not_failed(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    """Staleness is re-checked in the failing transition itself: a worker that was slow but
    beat between the sweeper's look and its write keeps its trial."""
    if storage_url.startswith("sqlite"):
        pytest.skip("SQLite keeps Optuna's own stale-trial rule (one host, no lost replies)")
    study, _ = _study(storage_url, spec_dict, heartbeat_interval_s=1, grace_period_s=1)
    storage: Any = study._storage
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    _silence(2.5)
    assert trial._trial_id in storage._get_stale_trial_ids(study._study_id)
    storage.record_heartbeat(trial._trial_id)  # alive after all
    assert storage.fail_if_stale(trial._trial_id, {records.FAIL_REASON: "heartbeat stale"}) is False
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_requeue_is_keyed_by_the_failed_trial(storage_url: str, spec_dict: dict[str, Any]) -> None:
    study, _ = _study(storage_url, spec_dict)
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    frozen = study._storage.get_trial(trial._trial_id)
    assert requeue(study, frozen)
    requeue(study, frozen)  # a second re-queue of the same failed trial (a second sweeper)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1
    if not storage_url.startswith("sqlite"):  # and the store itself refuses a second copy
        template = study._storage.get_trial(waiting[0]._trial_id)
        again = study._storage.create_new_trial(study._study_id, template_trial=template)
        assert again == waiting[0]._trial_id


def test_the_store_refuses_a_trial_beyond_the_budget(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    """Budget 1: a worker popping a re-queued trial and another creating a new one cannot both
    run (before: both did, through a stale read of the popped trial's state)."""
    if storage_url.startswith("sqlite"):
        pytest.skip("SQLite: the worker checks the budget after taking a trial (one host)")
    _budget_one_with_a_requeued_copy(storage_url, spec_dict)
    a, _ = load_study(open_storage(storage_url), spec_dict["name"])
    b, _ = load_study(open_storage(storage_url), spec_dict["name"])
    a.ask()  # pops the re-queued copy
    with pytest.raises(NoSlotLeft):
        b.ask()
    running = a.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert len(running) == 1


def test_a_worker_whose_view_still_holds_the_copy_as_waiting_takes_no_second_slot(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """Budget 1, PostgreSQL's trial cache: b read the study while the re-queued copy was
    WAITING, then a popped it. b's own pop lost, so it made a new trial, and its view (a
    running trial below the last finished one is re-read at most once a second) still held
    the copy as WAITING: the worker's check after ask() saw one running trial, its own, and
    both trials ran (issue 14, defect 3)."""
    study = _budget_one_with_a_requeued_copy(postgres_url, spec_dict)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))  # a later trial finished
    a, _ = load_study(open_storage(postgres_url), spec_dict["name"])
    b, _ = load_study(open_storage(postgres_url), spec_dict["name"])
    states = [t.state for t in b.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.WAITING, TrialState.FAIL]  # b's view
    a.ask()  # pops the re-queued copy
    with pytest.raises(NoSlotLeft):
        b.ask()
    plain = optuna.load_study(study_name=spec_dict["name"], storage=open_storage(postgres_url))
    assert len(plain.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) == 1


class _LostReply:
    """Runs an operation on the real store, then raises as if the reply had been lost."""

    def __init__(self, inner: Any, lose: str, before: Any = None) -> None:
        self._inner = inner
        self._lose = lose
        self._before = before
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if name != self._lose:
            return method

        def once(*args: Any, **kwargs: Any) -> Any:
            if self.lost:
                return method(*args, **kwargs)
            self.lost += 1
            if self._before is not None:
                self._before()
                raise ConnectionResetError("server closed the connection unexpectedly")
            method(*args, **kwargs)
            raise ConnectionResetError("server closed the connection unexpectedly")

        return once


@pytest.fixture
def pg_study(postgres_url: str, spec_dict: dict[str, Any]) -> optuna.Study:
    study, _ = _study(postgres_url, spec_dict)
    return study


def _retrying(study: optuna.Study, lose: str, before: Any = None) -> tuple[Any, _LostReply]:
    storage = study._storage
    assert isinstance(storage, RetryingStorage)
    flaky = _LostReply(storage.inner, lose, before)
    return RetryingStorage(flaky, sleep=lambda _: None), flaky  # type: ignore[abstract]


def test_a_trial_created_before_a_lost_reply_is_found_not_made_twice(
    pg_study: optuna.Study,
) -> None:
    storage, flaky = _retrying(pg_study, "create_new_trial")
    trial_id = storage.create_new_trial(pg_study._study_id)
    assert flaky.lost == 1
    trials = pg_study._storage.get_all_trials(pg_study._study_id, deepcopy=False)
    assert [t._trial_id for t in trials] == [trial_id]


def test_a_pop_before_a_lost_reply_is_found_not_orphaned(pg_study: optuna.Study) -> None:
    pg_study.enqueue_trial({"lr": 1e-4})
    waiting = pg_study.get_trials(deepcopy=False)[0]
    storage, flaky = _retrying(pg_study, "set_trial_state_values")
    assert storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is True
    assert flaky.lost == 1


def test_a_requeued_copy_added_before_a_lost_reply_is_found_not_added_twice(
    pg_study: optuna.Study,
) -> None:
    """add_trial of a re-queued copy, retried after its reply was lost, made a second copy
    (issue 14, defect 4)."""
    trial = pg_study.ask()
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    pg_study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    storage, flaky = _retrying(pg_study, "create_new_trial")
    flaky_study = optuna.load_study(study_name=pg_study.study_name, storage=storage)
    assert requeue(flaky_study, pg_study._storage.get_trial(trial._trial_id))
    assert flaky.lost == 1
    waiting = pg_study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1, [t.number for t in waiting]


def test_a_retry_does_not_take_another_workers_failure_for_its_own(
    pg_study: optuna.Study,
) -> None:
    """The connection drops; meanwhile a sweeper failed the trial: the retry must not report
    that FAIL as its own (else both would re-queue)."""
    trial = pg_study.ask()
    sweeper = pg_study._storage

    def swept() -> None:  # another process's sweeper: its own thread, its own request
        import threading

        other = threading.Thread(
            target=sweeper.set_trial_state_values, args=(trial._trial_id, TrialState.FAIL)
        )
        other.start()
        other.join()

    storage, _ = _retrying(pg_study, "set_trial_state_values", before=swept)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    # …while a lost reply to our own FAIL is ours.
    mine = pg_study.ask()
    storage, _ = _retrying(pg_study, "set_trial_state_values")
    assert storage.set_trial_state_values(mine._trial_id, TrialState.FAIL) is True
    assert FINISH_KEY in pg_study._storage.get_trial(mine._trial_id).system_attrs


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED])
def test_a_tell_whose_reply_was_lost_is_the_tellers_own(
    pg_study: optuna.Study, state: TrialState
) -> None:
    """Only a trial's owner completes or prunes it (sweepers only fail), so a retried tell that
    finds the state it asked for committed the first time."""
    trial = pg_study.ask()
    storage, flaky = _retrying(pg_study, "set_trial_state_values")
    values = [0.5] if state == TrialState.COMPLETE else None
    assert storage.set_trial_state_values(trial._trial_id, state, values) is True
    assert flaky.lost == 1
    told = pg_study._storage.get_trial(trial._trial_id)
    assert told.state == state and told.values == values


def test_a_trial_asked_by_a_worker_whose_clock_is_behind_is_not_stale_at_once(
    postgres_url: str, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until its first beat a trial's lease runs from its start, taken on the server's clock:
    a worker an hour behind does not hand the sweepers a trial that looks an hour silent."""
    import hpo.store._postgres as postgres

    study, _ = _study(postgres_url, spec_dict, heartbeat_interval_s=1, grace_period_s=2)
    _silence(2.5)  # the sweeper has been up a grace period
    behind = postgres._utc_now() - datetime.timedelta(hours=1)
    monkeypatch.setattr(postgres, "_utc_now", lambda: behind)
    trial = study.ask()  # no beat yet
    assert sweep_stale(study) == []
    _silence(2.5)
    assert sweep_stale(study) == [trial.number]


def _worker_with(url: str, name: str, run_trial: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    import hpo.worker.loop
    from hpo.worker.loop import Worker, WorkerOptions

    monkeypatch.setattr(hpo.worker.loop, "run_trial", run_trial)
    return Worker(WorkerOptions(storage_url=url, study_name=name, max_trials=1, stream=0))


def _fail_elsewhere(url: str, trial: optuna.Trial) -> None:
    """What a sweeper on another host does to a trial whose lease lapsed."""
    other = open_storage(url)
    other.set_trial_user_attr(trial._trial_id, records.FAIL_REASON, "heartbeat stale")
    other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study = optuna.load_study(study_name=trial.study.study_name, storage=other)
    requeue(study, other.get_trial(trial._trial_id))


def test_a_worker_whose_trial_was_failed_elsewhere_drops_it_and_goes_on(
    storage_url: str, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its tell would have raised "Cannot tell a FAIL trial" out of the worker."""
    _study(storage_url, spec_dict)

    def finishes_after_losing_it(trial: optuna.Trial, *_: Any) -> float:
        trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        _fail_elsewhere(storage_url, trial)
        return 0.9

    worker = _worker_with(storage_url, spec_dict["name"], finishes_after_losing_it, monkeypatch)
    summary = worker.run()
    assert summary.lost == 1 and summary.completed == 0
    states = [t.state for t in worker.study.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.WAITING) == 1


def test_an_interrupted_trial_already_requeued_by_a_sweeper_is_not_requeued_again(
    storage_url: str, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.worker.loop import Interrupted

    _study(storage_url, spec_dict)

    def interrupted_after_losing_it(trial: optuna.Trial, *_: Any) -> float:
        trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        _fail_elsewhere(storage_url, trial)
        raise Interrupted

    worker = _worker_with(storage_url, spec_dict["name"], interrupted_after_losing_it, monkeypatch)
    worker.run()
    waiting = worker.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1


def _draw(tmp_path: Path, url: str, name: str, pid1: bool) -> list[float]:
    """One worker process with default options (as a container would run it, PID 1 with
    ``unshare``); returns the params of its first trial."""
    code = (
        "import os, sys, json, hpo.worker.loop as w\n"
        "def fake(trial, *a):\n"
        "    trial.suggest_float('lr', 1e-5, 1e-3, log=True)\n"
        "    print(json.dumps([os.getpid(), trial.params['lr']]))\n"
        "    return 0.5\n"
        "w.run_trial = fake\n"
        "from hpo.cli import main\n"
        f"sys.exit(main(['worker', '--study', {name!r}, '--storage', {url!r}, "
        "'--max-trials', '1']))\n"
    )
    command = [sys.executable, "-c", code]
    if pid1:
        command = ["unshare", "--pid", "--fork", "--mount-proc", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    import json

    pid, lr = json.loads(done.stdout.strip().splitlines()[-1])
    return [pid, lr]


def test_workers_in_containers_with_default_options_draw_different_points(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """Every containerised worker is PID 1; a PID-derived stream made them all sample alike."""
    import shutil

    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False
        ).returncode
    ):
        pytest.skip("unshare --pid needs root")
    url = str(tmp_path / "journal.log")
    spec_dict["search"]["sampler"] = {"name": "random", "seed": 0}
    _study(url, spec_dict)
    first, second = (_draw(tmp_path, url, spec_dict["name"], pid1=True) for _ in range(2))
    assert first[0] == second[0] == 1
    assert first[1] != second[1]


def _beat_from_zone(zone: str, url: str, trial_id: int) -> None:
    """A heartbeat from another process whose PostgreSQL sessions run in ``zone``."""
    import os

    code = (
        "from hpo.store import open_storage\n"
        f"open_storage({url!r}, heartbeat_interval_s=1, grace_period_s=2)"
        f".record_heartbeat({trial_id})\n"
    )
    env = {**os.environ, "PGTZ": zone}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_leases_are_judged_on_one_clock_whatever_the_session_time_zone(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A worker whose sessions run in New York and a sweeper in Tokyo must agree on how long a
    trial has been silent (before: a live trial looked 14 h silent and was failed at once)."""
    sweeper, _ = _study(postgres_url, spec_dict, heartbeat_interval_s=1, grace_period_s=2)
    trial = sweeper.ask()
    _silence(2.5)  # the sweeper has been up a grace period
    _beat_from_zone("America/New_York", postgres_url, trial._trial_id)
    assert sweep_stale(sweeper) == []
    _beat_from_zone("Asia/Tokyo", postgres_url, trial._trial_id)
    assert sweep_stale(sweeper) == []
    _silence(2.5)
    assert sweep_stale(sweeper) == [trial.number]


def test_a_requeued_copy_that_outlived_the_budget_is_cancelled_not_left_waiting(
    storage_url: str, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the fault soak: a new trial took the slot a lost trial freed before its copy
    was queued; the budget was met without the copy, which stayed WAITING forever."""
    import hpo.worker.loop
    from hpo.worker.loop import SURPLUS_REASON, Worker, WorkerOptions

    spec_dict["budget"] = {"n_trials": 1}
    _study(storage_url, spec_dict)

    def loses_it_to_a_faster_trial(trial: optuna.Trial, *_: Any) -> float:
        trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        other = open_storage(storage_url)
        other.set_trial_user_attr(trial._trial_id, records.FAIL_REASON, "heartbeat stale")
        other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study = optuna.load_study(study_name=trial.study.study_name, storage=other)
        study.add_trial(optuna.trial.create_trial(value=0.8, params={}, distributions={}))
        requeue(study, other.get_trial(trial._trial_id))  # the copy comes after the new trial
        return 0.9

    monkeypatch.setattr(hpo.worker.loop, "run_trial", loses_it_to_a_faster_trial)
    worker = Worker(WorkerOptions(storage_url=storage_url, study_name=spec_dict["name"], stream=0))
    summary = worker.run()
    assert summary.lost == 1 and summary.stop_reason.startswith("budget of 1")
    trials = worker.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[2].user_attrs[records.FAIL_REASON] == SURPLUS_REASON


def test_a_sweep_fails_a_trial_only_if_it_is_still_stale_a_heartbeat_later(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    """A beat that queued behind a stall the sweeper did not itself wait for (a frozen writer
    holding the journal's lock) lands within a heartbeat of the stall's end: the first sweep
    to find the trial silent only suspects it (review of the exactly-once change)."""
    from hpo.worker.heartbeat import Heartbeat

    if storage_url.startswith("sqlite"):
        pytest.skip("SQLite keeps Optuna's own stale-trial rule (one host, no lost replies)")
    study, _ = _study(storage_url, spec_dict, heartbeat_interval_s=1, grace_period_s=2)
    storage: Any = study._storage
    alive, dead = study.ask(), study.ask()
    _silence(3.0)  # both silent past the grace period: a stall, or a death
    sweeper = Heartbeat(study, 1.0)
    sweeper.sweep()
    assert storage.get_trial(alive._trial_id).state == TrialState.RUNNING  # suspected only
    storage.record_heartbeat(alive._trial_id)  # its queued beat lands
    _silence(1.2)  # a heartbeat later, within the grace period of that beat
    sweeper.sweep()
    assert storage.get_trial(alive._trial_id).state == TrialState.RUNNING
    assert storage.get_trial(dead._trial_id).state == TrialState.FAIL


def test_a_journal_beat_that_waited_for_the_lock_is_as_fresh_as_its_write(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    import fcntl
    import os
    import threading

    from hpo.store import HEARTBEAT_KEY

    url = str(tmp_path / "journal.log")
    study, _ = _study(url, spec_dict)
    trial = study.ask()
    holder = os.open(url + ".flock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process, frozen while writing
    beat = threading.Thread(target=study._storage.record_heartbeat, args=(trial._trial_id,))  # type: ignore[attr-defined]
    beat.start()
    time.sleep(1.5)
    released_at = time.time()
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    beat.join(10)
    stamp = study._storage.get_trial(trial._trial_id).system_attrs[HEARTBEAT_KEY]
    assert stamp >= released_at


def test_a_lost_trial_failed_but_never_copied_is_requeued_by_the_next_sweep(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    """A sweeper killed between its FAIL and the copy left a FAIL no later sweep would copy."""
    from hpo.worker.heartbeat import repair_requeues

    study, _ = _study(storage_url, spec_dict)
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    study._storage.set_trial_user_attr(trial._trial_id, records.FAIL_REASON, "heartbeat stale")
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # then killed
    assert sweep_stale(study) == []
    assert repair_requeues(study) == 0  # the sweep above repaired it; once is enough
    copies = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(copies) == 1 and copies[0].params == trial.params


def test_a_worker_asking_for_other_lease_terms_than_the_studys_refuses_to_start(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """A sweeper with a shorter grace period failed the live trials of a worker that beat
    less often (review of the exactly-once change)."""
    from hpo.worker.loop import Worker, WorkerError, WorkerOptions

    url = str(tmp_path / "journal.log")
    _study(url, spec_dict)
    name = spec_dict["name"]
    Worker(
        WorkerOptions(storage_url=url, study_name=name, heartbeat_interval_s=3, grace_period_s=9)
    )
    Worker(
        WorkerOptions(storage_url=url, study_name=name, heartbeat_interval_s=3, grace_period_s=9)
    )
    with pytest.raises(WorkerError, match="--heartbeat-s 1 --grace-s 2"):
        Worker(
            WorkerOptions(
                storage_url=url, study_name=name, heartbeat_interval_s=1, grace_period_s=2
            )
        )


def test_of_two_workers_starting_together_with_other_lease_terms_not_both_start(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """Both read "no terms yet", then each wrote its own and read it back and started: the one
    with the shorter grace period failed the other's live trials (review of the exactly-once
    change). Here the slow-beating worker starts wholly between the other's read and write."""
    import threading

    import optuna

    from hpo.store import open_storage
    from hpo.worker.loop import Worker, WorkerError, WorkerOptions, _agree_lease_terms

    url = str(tmp_path / "journal.log")
    _study(url, spec_dict)
    fast_read, slow_done = threading.Event(), threading.Event()
    outcome: dict[str, str] = {}

    def start(name: str, beat_s: int, grace_s: int) -> None:
        storage = open_storage(url)
        read = storage.get_study_system_attrs
        calls = [0]

        def get_attrs(study_id: int) -> dict[str, Any]:
            calls[0] += 1
            if calls[0] == 1 and name == "slow":
                assert fast_read.wait(30)
            attrs = read(study_id)
            if calls[0] == 1 and name == "fast":
                fast_read.set()  # found no terms recorded ...
                assert slow_done.wait(30)  # ... and goes on once the other has started
            return attrs

        study = optuna.load_study(study_name=spec_dict["name"], storage=storage)
        storage.get_study_system_attrs = get_attrs  # type: ignore[method-assign]
        options = WorkerOptions(
            storage_url=url,
            study_name=spec_dict["name"],
            heartbeat_interval_s=beat_s,
            grace_period_s=grace_s,
        )
        try:
            _agree_lease_terms(study, options)
            outcome[name] = "started"
        except WorkerError as e:
            outcome[name] = str(e)
        finally:
            if name == "slow":
                slow_done.set()

    threads = [
        threading.Thread(target=start, args=("slow", 60, 180)),
        threading.Thread(target=start, args=("fast", 1, 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcome["slow"] == "started"
    assert "--heartbeat-s 1 --grace-s 2" in outcome["fast"]  # before: both started
    Worker(  # whoever comes next finds the slow worker's terms settled
        WorkerOptions(
            storage_url=url,
            study_name=spec_dict["name"],
            heartbeat_interval_s=60,
            grace_period_s=180,
        )
    )


def test_a_worker_whose_heartbeats_go_where_the_studys_workers_do_not_look_refuses(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """Workers on ``postgresql://`` judge the ``trial_heartbeats`` table, workers through
    ``hpo proxy`` beat into a trial attribute: on one study each failed the others' live trials
    (review of the exactly-once change). The study records where its workers beat."""
    from hpo.records import LEASE_KEY
    from hpo.store import open_storage
    from hpo.worker.loop import Worker, WorkerError, WorkerOptions

    url = str(tmp_path / "journal.log")
    study = _study(url, spec_dict)[0]
    storage = open_storage(url)
    storage.set_study_system_attr(study._study_id, LEASE_KEY, [3, 9, "table"])
    with pytest.raises(WorkerError, match=r"trial_heartbeats table.*hpo proxy"):
        Worker(
            WorkerOptions(
                storage_url=url,
                study_name=spec_dict["name"],
                heartbeat_interval_s=3,
                grace_period_s=9,
            )
        )
    storage.set_study_system_attr(study._study_id, LEASE_KEY, [3, 9])  # an older study: terms only
    Worker(
        WorkerOptions(
            storage_url=url, study_name=spec_dict["name"], heartbeat_interval_s=3, grace_period_s=9
        )
    )


def test_lease_terms_where_a_missed_beat_outlives_the_grace_period_are_refused() -> None:
    """``--heartbeat-s 60`` with the default 30 s grace was accepted: a sweeper looking just
    before a beat found a live trial silent past grace and failed it (review of the
    exactly-once change)."""
    from hpo.worker.loop import WorkerError, WorkerOptions

    with pytest.raises(WorkerError, match="--grace-s 30 with --heartbeat-s 60"):
        WorkerOptions(storage_url="x", study_name="s", heartbeat_interval_s=60)
    with pytest.raises(WorkerError, match="at least two heartbeat intervals"):
        WorkerOptions(storage_url="x", study_name="s", heartbeat_interval_s=3, grace_period_s=5)
    WorkerOptions(storage_url="x", study_name="s", heartbeat_interval_s=3, grace_period_s=6)


def test_a_beat_for_a_trial_failed_elsewhere_is_refused_and_renews_nothing(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A frozen worker that wakes after its trial was failed kept renewing the failed trial's
    heartbeat on PostgreSQL; its beat now tells it the trial is gone."""
    import sqlalchemy

    study, _ = _study(postgres_url, spec_dict, heartbeat_interval_s=1, grace_period_s=2)
    trial = study.ask()
    storage: Any = study._storage
    storage.record_heartbeat(trial._trial_id)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    engine = sqlalchemy.create_engine(normalize_postgres_url(postgres_url))
    beat = sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t")
    with engine.connect() as conn:
        before = conn.execute(beat, {"t": trial._trial_id}).scalar()
    time.sleep(0.05)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.record_heartbeat(trial._trial_id)
    with engine.connect() as conn:
        assert conn.execute(beat, {"t": trial._trial_id}).scalar() == before
    engine.dispose()


def _beat_recorder() -> tuple[list[str], Any]:
    """A study whose store only records that a beat happened, in a shared list of events."""
    events: list[str] = []

    class Storage:
        def record_heartbeat(self, trial_id: int) -> None:
            events.append("beat")

    class Study:
        _storage = Storage()

    return events, Study()


def test_a_sweep_held_up_past_half_an_interval_is_followed_by_a_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sweep whose re-queue waited for the study's lock (held by a frozen worker until the
    server ends its session) delayed the sweeper's own next beat by as long: its silence
    reached grace plus an interval, and a third worker failed its live trial."""
    import hpo.worker.heartbeat as heartbeat

    events, study = _beat_recorder()

    def slow_sweep(*_: Any, **__: Any) -> list[int]:
        events.append("sweep")
        time.sleep(0.6)  # past half the 1 s interval
        return []

    monkeypatch.setattr(heartbeat, "sweep_stale", slow_sweep)
    beat = heartbeat.Heartbeat(study, interval_s=1)
    beat._trial_id = 7
    with beat:
        time.sleep(1.8)
    assert events[:3] == ["beat", "sweep", "beat"]


def test_a_sweep_of_many_stale_trials_beats_for_the_sweepers_own_trial_in_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each failed trial costs a sweep four store calls or more: twenty of them at 50 ms each
    outlast a 4 s grace period, and the sweeper's own trial fell silent meanwhile (review of
    the exactly-once change)."""
    import hpo.worker.heartbeat as heartbeat

    events, study = _beat_recorder()

    def long_sweep(*_: Any, between: Any, **__: Any) -> list[int]:
        for _ in range(3):
            events.append("fail")
            time.sleep(0.6)  # past half the 1 s interval
            between()
        return []

    monkeypatch.setattr(heartbeat, "sweep_stale", long_sweep)
    beat = heartbeat.Heartbeat(study, interval_s=1)
    beat._trial_id = 7
    beat.sweep()
    assert events == ["fail", "beat"] * 3


def test_a_non_finite_cv_score_fails_the_trial_with_its_reason(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "journal.log")
    _study(url, spec_dict)
    worker = _worker_with(url, spec_dict["name"], lambda *_: float("nan"), monkeypatch)
    summary = worker.run()
    (trial,) = worker.study.get_trials(deepcopy=False)
    assert summary.failed == 1 and summary.completed == 0
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[records.FAIL_REASON] == "non-finite CV score: nan"


@pytest.mark.postgres
def test_a_session_that_died_holding_a_trial_locked_neither_blocks_sweeps_nor_lingers(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """A worker host that vanished between a trial's UPDATE and its COMMIT leaves its session
    idle in transaction, holding the trial's row lock (the server notices a dead peer only
    after its TCP keepalive, two hours by default): sweeps skip the locked row instead of
    queueing behind it, and the server ends such a session of ours after a grace period
    (review of the exactly-once change)."""
    import sqlalchemy

    leases: dict[str, Any] = {"heartbeat_interval_s": 1, "grace_period_s": 2}
    study, _ = _study(postgres_url, spec_dict, **leases)
    storage: Any = study._storage
    trial = study.ask()
    _silence(1.5)
    engine = storage._store().engine  # a worker's own connection settings
    dead = engine.connect()
    assert dead.execute(sqlalchemy.text("SHOW idle_in_transaction_session_timeout")).scalar() == (
        "2s"
    )
    dead.execute(
        sqlalchemy.text("SELECT 1 FROM trials WHERE trial_id = :t FOR UPDATE"),
        {"t": trial._trial_id},
    )  # ... and then the host vanished, mid-transaction
    _silence(1.0)  # the trial is silent past its grace period; the session idle for 1 s
    started = time.monotonic()
    assert storage.fail_if_stale(trial._trial_id, {records.FAIL_REASON: "heartbeat stale"}) is False
    assert time.monotonic() - started < 1.0  # skipped, not waited for
    _silence(1.5)  # past the idle-in-transaction timeout: the server ended the session
    assert storage.fail_if_stale(trial._trial_id, {records.FAIL_REASON: "heartbeat stale"}) is True
    with pytest.raises(sqlalchemy.exc.OperationalError):
        dead.execute(sqlalchemy.text("SELECT 1"))


@pytest.mark.postgres
@pytest.mark.parametrize("write", ["report", "user_attr"])
def test_a_write_racing_a_sweepers_fail_is_refused_not_stored_on_the_failed_trial(
    postgres_url: str, spec_dict: dict[str, Any], write: str
) -> None:
    """A sweeper's FAIL is under way (its UPDATE made, not yet committed) when the trial's
    worker writes a report or a fold result: the write waits for it and is refused. It used to
    read the trial as RUNNING and store the write on the trial being failed (review of the
    exactly-once change): a fold result the re-queued copy did not carry, a failure reason
    overwritten."""
    import threading

    import sqlalchemy

    study, _ = _study(postgres_url, spec_dict)
    storage: Any = study._storage
    trial = study.ask()
    sweeper = storage._store().engine.connect()
    sweeper.execute(
        sqlalchemy.text("UPDATE trials SET state = 'FAIL' WHERE trial_id = :t"),
        {"t": trial._trial_id},
    )
    outcome: list[BaseException | None] = []

    def worker_writes() -> None:
        try:
            if write == "report":
                storage.set_trial_intermediate_value(trial._trial_id, 0, 0.5)
            else:
                storage.set_trial_user_attr(trial._trial_id, records.fold_key(0), {"score": 0.5})
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    writer = threading.Thread(target=worker_writes)
    writer.start()
    writer.join(timeout=1.0)
    sweeper.commit()
    sweeper.close()
    writer.join(timeout=10.0)
    assert len(outcome) == 1 and isinstance(
        outcome[0], optuna.exceptions.UpdateFinishedTrialError
    ), outcome
    stored = storage.get_trial(trial._trial_id)
    assert stored.state == TrialState.FAIL
    assert stored.intermediate_values == {} and records.fold_key(0) not in stored.user_attrs


@pytest.mark.postgres
def test_a_trials_request_id_is_found_through_an_index_not_a_scan_of_every_study(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    """Every ask checks whether its request already made a trial; without an index on the
    request ids that check read every request id the database ever held (5 ms per ask after
    17,000 trials: the coordination benchmark's 1-worker rate fell by a third). The store makes
    a partial index on our lookup keys when it opens, and the check uses it."""
    import sqlalchemy

    from hpo.store import REQUEST_KEY

    study, _ = _study(postgres_url, spec_dict)
    engine = study._storage._store().engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SET enable_seqscan = off"))  # as on a big table
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                sqlalchemy.text(
                    "EXPLAIN SELECT trial_id FROM trial_system_attributes "
                    f"WHERE key = '{REQUEST_KEY}' AND value_json = :request"
                ),
                {"request": '"x"'},
            )
        )
    assert "ix_hpo_trial_system_attributes_lookup" in plan, plan


def test_stale_running_trial_is_failed_by_heartbeat(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    storage = open_storage(storage_url, heartbeat_interval_s=1, grace_period_s=1)
    create_study(parse_spec(spec_dict), storage)
    study = optuna.load_study(study_name=spec_dict["name"], storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    time.sleep(2.5)  # the worker "died": no more heartbeats
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL
