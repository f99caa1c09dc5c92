"""Workers end to end with a tiny transformer: budget met exactly, pruning, clean stop, re-runs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note

from hpo import records
from hpo.local.launch import worker_command
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study, load_study
from hpo.worker.objective import TrialContext, run_trial
from tests.hpo.conftest import unique_name

REPO = Path(__file__).resolve().parents[3]


def tiny_spec(model_dir: Path, data_csv: Path, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": unique_name("w"),
        "model": {"name_or_path": str(model_dir), "max_seq_len": 16},
        "data": {"source": str(data_csv), "text": "text", "label": "label"},
        "cv": {"n_folds": 2, "split_seed": 0},
        # fp32, not auto: the suite's scores must not hang on what the bf16 probe measures on
        # the machine that runs it.
        "train": {
            "epochs": 6,
            "batch_size": 16,
            "warmup_ratio": 0.0,
            "seed": 0,
            "precision": "fp32",
        },
        "search": {
            "space": {
                "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                "dropout": {"low": 0.0, "high": 0.1},
                "l1": {"low": 1e-9, "high": 1e-5, "log": True},
                "l2": {"low": 1e-7, "high": 1e-3, "log": True},
            },
            "sampler": {"name": "tpe", "seed": 0},
            # Aggressive: keep only the best 25% once four trials completed.
            "pruner": {
                "name": "fold_aware",
                "options": {"n_startup_trials": 4, "keep_percentile": 25},
            },
        },
        # Held-out loss varies continuously (accuracy on a tiny task ties at 0.5 and 1.0), so
        # the aggressive pruner has something to rank.
        "objective": {"metric": "loss"},
        "budget": {"n_trials": 8},
    }
    spec.update(overrides)
    return spec


def start_worker(study: str, storage_url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*worker_command(study, device="cpu", threads=1), "--storage", storage_url, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )


def _logs(*paths: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in paths if p.exists())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_two_workers_finish_exactly_the_budget(
    backend: str,
    tmp_path: Path,
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = (
        str(tmp_path / "journal.log")
        if backend == "journal"
        else request.getfixturevalue("postgres_url")
    )
    spec = parse_spec(tiny_spec(tiny_bert_dir, synthetic_csv))
    create_study(spec, open_storage(url))
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [start_worker(spec.name, url, log, "--stream", str(i)) for i, log in enumerate(logs)]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], _logs(*logs)

    study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8, _logs(*logs)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert any(t.state == TrialState.PRUNED for t in finished), "the aggressive pruner pruned none"
    for trial in finished:
        scores = trial.user_attrs[records.FOLD_SCORES]
        if trial.state == TrialState.COMPLETE:
            assert len(scores) == 2
            assert trial.value == pytest.approx(sum(scores) / 2)
            assert records.run_info(trial).get("device") == "cpu"
            stats = records.stats(trial)
            assert stats is not None and stats["train_examples_per_s"] > 0
        assert len(trial.intermediate_values) >= 1
        # What optuna-dashboard shows of it: its folds, epoch by epoch.
        note = get_note(optuna.Trial(study, trial._trial_id))
        assert "loss per fold and epoch" in note and "| 0 |" in note, note


@pytest.mark.slow
def test_sigterm_stops_the_worker_cleanly_and_the_trial_is_finished_by_another(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    url = str(tmp_path / "journal.log")
    data = tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 1})
    data["train"]["epochs"] = 40  # long enough to be caught mid-trial
    data["search"]["pruner"] = {"name": "none"}
    spec = parse_spec(data)
    storage = open_storage(url)
    create_study(spec, storage)
    log = tmp_path / "w.log"
    proc = start_worker(spec.name, url, log)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = study.get_trials(states=(TrialState.RUNNING,))
        if running and running[0].intermediate_values:
            break
        assert proc.poll() is None, _logs(log)
        time.sleep(0.2)
    else:
        pytest.fail("the worker never reported: " + _logs(log))
    interrupted_params = running[0].params

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, _logs(log)
    assert time.monotonic() - sent < 10
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(url)).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[records.FAIL_REASON] == "interrupted"
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == interrupted_params

    # Another worker picks the re-queued params up (shorter now: the spec is fixed, so we only
    # let it run; epochs stay 40 but the tiny model is fast).
    other = start_worker(spec.name, url, tmp_path / "w2.log")
    assert other.wait(timeout=300) == 0, _logs(tmp_path / "w2.log")
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(url)).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].params == interrupted_params


def test_same_trial_number_and_seed_give_the_same_fold_scores(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    spec = parse_spec(tiny_spec(tiny_bert_dir, synthetic_csv))
    scores = []
    for attempt in range(2):
        storage = open_storage(str(tmp_path / f"j{attempt}.log"))
        create_study(spec, storage)
        study, _ = load_study(storage, spec.name)
        study.enqueue_trial({"lr": 3e-3, "dropout": 0.1, "l1": 1e-8, "l2": 1e-5})
        trial = study.ask()
        context = TrialContext(host="h", device="cpu", worker_id="w", cache_dir=str(tmp_path))
        run_trial(trial, spec, context)
        attrs = trial.study._storage.get_trial(trial._trial_id).user_attrs
        assert attrs[records.RUN]["precision"] == "fp32"
        scores.append(attrs[records.FOLD_SCORES])
    assert scores[0] == scores[1]


def test_a_trial_records_the_precision_auto_resolved_to(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.precision

    # A CPU with native bf16 on which the probe measures bf16 faster (simulated).
    monkeypatch.setattr(trainer.precision, "read_cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(trainer.precision, "measure_bf16_speedup", lambda device: 2.0)
    monkeypatch.setattr(trainer.precision, "_speedups", {})
    data = tiny_spec(tiny_bert_dir, synthetic_csv)
    data["train"].update(precision="auto", epochs=1)
    spec = parse_spec(data)
    storage = open_storage(str(tmp_path / "j.log"))
    create_study(spec, storage)
    study, _ = load_study(storage, spec.name)
    study.enqueue_trial({"lr": 3e-3, "dropout": 0.1, "l1": 1e-8, "l2": 1e-5})
    trial = study.ask()
    context = TrialContext(host="h", device="cpu", worker_id="w", cache_dir=str(tmp_path))
    run_trial(trial, spec, context)
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    assert attrs[records.RUN]["precision"] == "bf16"
    assert all(math.isfinite(score) for score in attrs[records.FOLD_SCORES])


def test_a_worker_whose_device_cannot_run_the_specs_precision_stops_at_start(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.precision
    from hpo.worker.loop import Worker, WorkerError, WorkerOptions

    monkeypatch.setattr(trainer.precision, "read_cpu_flags", lambda: frozenset({"avx2"}))
    data = tiny_spec(tiny_bert_dir, synthetic_csv)
    data["train"]["precision"] = "bf16"
    spec = parse_spec(data)
    url = str(tmp_path / "j.log")
    create_study(spec, open_storage(url))
    options = WorkerOptions(storage_url=url, study_name=spec.name, device="cpu", worker_id="w1")
    with pytest.raises(WorkerError, match=r"^worker w1: train.precision='bf16': this CPU"):
        Worker(options)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    assert study.trials == []  # no trial was taken, and none failed


@pytest.mark.slow
def test_ctrl_c_stops_hpo_run_and_its_workers_cleanly(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    import yaml

    data = tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 50})
    data["train"]["epochs"] = 40
    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    url = str(tmp_path / "journal.log")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo.cli",
            "run",
            str(spec_path),
            "--storage",
            url,
            "--workers",
            "2",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    storage = open_storage(url) if Path(url).exists() else None
    deadline = time.monotonic() + 240  # a loaded machine: torch imports in two processes
    while time.monotonic() < deadline:
        if storage is None and Path(url).exists():
            storage = open_storage(url)
        if storage is not None:
            study = optuna.load_study(study_name=data["name"], storage=storage)
            if len(study.get_trials(states=(TrialState.RUNNING,))) == 2:
                break
        time.sleep(0.3)
    else:
        proc.send_signal(signal.SIGINT)  # hpo run stops its workers (each in its own session)
        out, _ = proc.communicate(timeout=60)
        pytest.fail("two trials never ran:\n" + out.decode(errors="replace")[-2000:])
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    trials = optuna.load_study(study_name=data["name"], storage=open_storage(url)).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if records.fail_reason(t) == "interrupted"]
    assert len(interrupted) == 2, (
        [(t.number, t.state, records.fail_reason(t)) for t in trials],
        out.decode(errors="replace")[-3000:],
    )


def _sigterm_on_first_call(real: Any) -> tuple[Any, list[bool]]:
    """``real`` wrapped to send this process a SIGTERM as it is first called (the handler runs
    before ``real`` does), and the list that says whether it was."""
    signalled: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    return wrapper, signalled


@contextmanager
def _interrupted_trial() -> Iterator[Any]:
    """A trial scope under a worker's installed stop handler, which must end in
    ``Interrupted``; the handler is restored after."""
    from hpo.worker.loop import Interrupted, StopSignal

    stop = StopSignal()
    stop.install()
    try:
        with pytest.raises(Interrupted), stop.trial_scope():
            yield stop
    finally:
        stop.restore()


def test_a_stop_signal_during_a_store_write_stops_the_trial_after_the_write(
    tmp_path: Path,
) -> None:
    """A SIGTERM that lands inside a journal write (here: as its lock is released) is raised
    when the write returns: the write is kept, the lock is free, the trial stops with
    ``Interrupted``. It used to cut Optuna's lock release in half, which then raised
    ``FileNotFoundError`` and failed the trial for that (seen under load: Ctrl-C on hpo run)."""
    from unittest import mock

    study = optuna.create_study(storage=open_storage(str(tmp_path / "journal.log")))
    trial = study.ask()
    # the first rename is the lock's release inside the report
    rename, signalled = _sigterm_on_first_call(os.rename)
    with (
        mock.patch("optuna.storages.journal._file.os.rename", rename),
        _interrupted_trial() as stop,
    ):
        trial.report(0.5, 0)
    assert signalled and stop.requested
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {0: 0.5}
    trial.report(0.6, 1)  # the lock was released: the next write goes through


def test_a_stop_signal_during_a_journal_replay_leaves_this_process_the_same_trials(
    tmp_path: Path,
) -> None:
    """A SIGTERM that lands while a worker replays the journal's new lines (any read: a
    report's, ``should_prune``'s) is raised when the replay ends. Raised halfway, it left a
    line counted as read but never applied: the worker saw one trial fewer than the file held,
    so its next trial had a different id there than for every other process."""
    from unittest import mock

    from optuna.storages.journal._storage import JournalStorageReplayResult

    path = str(tmp_path / "journal.log")
    writer = optuna.create_study(storage=open_storage(path), study_name="s")
    reader = optuna.load_study(storage=open_storage(path), study_name="s")
    reader.trials  # noqa: B018  (the reader is up to date: the next read replays new lines)
    for _ in range(3):
        writer.ask()
    # the first new line: the handler runs before it is applied
    apply, signalled = _sigterm_on_first_call(JournalStorageReplayResult._apply_create_trial)
    with (
        mock.patch.object(JournalStorageReplayResult, "_apply_create_trial", apply),
        _interrupted_trial(),
    ):
        reader.trials  # noqa: B018
    assert signalled
    assert [t.number for t in reader.trials] == [0, 1, 2]
    assert reader.ask()._trial_id == 3  # the id every process gives the fourth trial
    assert [t._trial_id for t in writer.trials] == [0, 1, 2, 3]


def test_a_worker_whose_trial_was_failed_elsewhere_says_so_once(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Its heartbeat stops beating for a trial that is no longer its own: it used to log a
    refused beat every heartbeat until the trial's next report (and append each to the
    journal), besides the one line that it drops the trial (review of the exactly-once
    change)."""
    import logging

    import hpo.worker.loop
    from hpo.worker.heartbeat import requeue
    from hpo.worker.loop import Worker, WorkerOptions

    url = str(tmp_path / "journal.log")
    create_study(parse_spec(spec_dict), open_storage(url))

    def failed_elsewhere_while_training(trial: optuna.Trial, *args: Any) -> float:
        trial.report(0.5, 0)
        other = open_storage(url)
        other.set_trial_user_attr(trial._trial_id, records.FAIL_REASON, "heartbeat stale")
        other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        requeue(
            optuna.load_study(study_name=spec_dict["name"], storage=other),
            trial.study._storage.get_trial(trial._trial_id),
        )
        time.sleep(3.5)  # a long epoch: the next report is when the worker learns it
        trial.report(0.6, 1)
        return 0.9

    monkeypatch.setattr(hpo.worker.loop, "run_trial", failed_elsewhere_while_training)
    options = WorkerOptions(
        storage_url=url,
        study_name=spec_dict["name"],
        max_trials=1,
        device="cpu",
        heartbeat_interval_s=1,
        grace_period_s=2,
    )
    with caplog.at_level(logging.INFO):
        summary = Worker(options).run()
    assert summary.lost == 1
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "no longer this worker's" in said[0], said


def _run_one_trial_stopped_inside(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """A worker on ``url`` runs one trial with its stop handler installed; the trial's
    study, as stock Optuna reads it after."""
    from hpo.worker.loop import StopSignal, Worker, WorkerOptions

    stop = StopSignal()
    stop.install()
    try:
        Worker(WorkerOptions(storage_url=url, study_name=name, device="cpu"), stop).run()
    finally:
        stop.restore()
    return optuna.load_study(study_name=name, storage=open_storage(url)).trials


def _swallowed_stop() -> None:
    """A SIGINT whose ``Interrupted`` is swallowed on its way (a ``__del__``, a library's
    ``except BaseException``)."""
    from hpo.worker.loop import Interrupted

    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here
    except Interrupted:
        pass


def test_a_stop_that_c_code_turns_into_another_error_still_interrupts_the_trial(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT that lands inside an extension module (here, as in CI: pandas' module init
    during a trial's first import) surfaces as ``SystemError: ... returned a result with an
    exception set``, not ``Interrupted``. The trial must still end as interrupted and be
    re-queued; it used to be failed with the SystemError as its reason, as if its
    configuration had failed."""
    import hpo.worker.loop
    from hpo.worker.loop import Interrupted

    url = str(tmp_path / "journal.log")
    create_study(parse_spec(spec_dict), open_storage(url))

    def stopped_inside_c_code(trial: optuna.Trial, *args: Any) -> float:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except Interrupted as e:  # what CPython does when C code returns with it set
            raise SystemError("<class '__pyx_defaults'> returned a result with an error set") from e
        return 0.9

    monkeypatch.setattr(hpo.worker.loop, "run_trial", stopped_inside_c_code)
    trials = _run_one_trial_stopped_inside(url, spec_dict["name"])
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs[records.FAIL_REASON] == "interrupted"
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]  # re-queued for another worker


def test_a_trial_that_fails_for_its_own_reason_after_a_stop_keeps_that_reason(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an error raised from the stop counts as the stop: a trial's own failure after a
    stop request is recorded with its reason and not re-queued (review finding)."""
    import hpo.worker.loop

    url = str(tmp_path / "journal.log")
    create_study(parse_spec(spec_dict), open_storage(url))

    def fails_on_its_own(trial: optuna.Trial, *args: Any) -> float:
        _swallowed_stop()
        raise ValueError("the data has one class")

    monkeypatch.setattr(hpo.worker.loop, "run_trial", fails_on_its_own)
    trials = _run_one_trial_stopped_inside(url, spec_dict["name"])
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert trials[0].user_attrs[records.FAIL_REASON] == "ValueError: the data has one class"


def test_a_swallowed_stop_still_stops_the_trial_at_its_next_report(
    tmp_path: Path, spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop whose exception never reaches the worker still ends the trial, at its next
    epoch's report, as interrupted and re-queued; it used to train on to the end."""
    import trainer

    url = str(tmp_path / "journal.log")
    create_study(parse_spec(spec_dict), open_storage(url))
    reported: list[int] = []

    def swallows_the_stop(*args: Any, reporter: Any, **kwargs: Any) -> Any:
        _swallowed_stop()
        for step in range(3):
            reporter.report(0.5, step)
            reported.append(step)
        raise AssertionError("trained on after the stop")

    monkeypatch.setattr(trainer, "run_cv", swallows_the_stop)
    trials = _run_one_trial_stopped_inside(url, spec_dict["name"])
    assert reported == []
    assert trials[0].user_attrs[records.FAIL_REASON] == "interrupted"
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]
