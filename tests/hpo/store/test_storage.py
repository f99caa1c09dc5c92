"""One store contract, run against the embedded default, SQLite and the real PostgreSQL."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo.cli import main as hpo_main
from hpo.errors import StorageError, StudyConflictError, StudyNotFoundError
from hpo.records import SPEC as SPEC_ATTR
from hpo.spec.model import parse_spec
from hpo.store import (
    DEFAULT_STORAGE,
    mask_secrets,
    mask_url,
    normalize_postgres_url,
    open_storage,
    resolve_storage_url,
    storage_kind,
)
from hpo.study import create_study, load_stored_spec, load_study
from tests.hpo.conftest import unique_name, write_spec


def _plain_optuna_storage(url: str) -> Any:
    """How a user of plain Optuna opens our store (no hpo code)."""
    if storage_kind(url) == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return normalize_postgres_url(url) if url.startswith("postgresql://") else url


def test_create_stores_resolved_spec(storage_url: str, spec_dict: dict[str, Any]) -> None:
    spec = parse_spec(spec_dict)
    storage = open_storage(storage_url)
    create_study(spec, storage)
    assert load_stored_spec(storage, spec.name) == spec
    # A second process sees it too (nothing cached in this one).
    assert load_stored_spec(open_storage(storage_url), spec.name).spec_hash() == spec.spec_hash()


def test_create_is_idempotent_for_the_same_spec(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    spec = parse_spec(spec_dict)
    storage = open_storage(storage_url)
    first = create_study(spec, storage)
    assert create_study(parse_spec(copy.deepcopy(spec_dict)), open_storage(storage_url)) == first
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert names.count(spec.name) == 1


def test_conflicting_spec_is_refused(storage_url: str, spec_dict: dict[str, Any]) -> None:
    storage = open_storage(storage_url)
    create_study(parse_spec(spec_dict), storage)
    changed = copy.deepcopy(spec_dict)
    changed["cv"]["n_folds"] = 5
    with pytest.raises(StudyConflictError, match="different spec"):
        create_study(parse_spec(changed), storage)
    assert load_stored_spec(storage, spec_dict["name"]).cv.n_folds == 3


def test_a_study_whose_creation_reply_was_lost_is_set_up_not_refused(
    spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create committed, its reply was lost, the retry found the name taken: the study had
    no spec, so `hpo create` refused it ("not created by hpo") and the name was lost for
    good. Now an empty study with no spec is ours to finish setting up; one that holds trials,
    another direction or a different spec is still refused."""
    import sqlalchemy.exc

    from hpo import study as study_module
    from hpo.store import RetryingStorage

    monkeypatch.setattr(study_module, "SETUP_WAIT_S", 0.2)  # no one else is setting it up

    class LosesFirstReply(optuna.storages.InMemoryStorage):
        lost = False

        def create_new_study(self, directions: Any, study_name: str | None = None) -> int:
            study_id = super().create_new_study(directions, study_name)
            if not self.lost:
                self.lost = True
                raise sqlalchemy.exc.OperationalError(
                    "COMMIT", {}, Exception("server closed the connection unexpectedly")
                )
            return study_id

    storage = RetryingStorage(LosesFirstReply(), sleep=lambda s: None)  # type: ignore[abstract]
    spec = parse_spec(spec_dict)
    study_id = create_study(spec, storage)
    assert load_stored_spec(storage, spec.name) == spec
    assert create_study(spec, storage) == study_id
    # A study of that name someone else made and used is not taken over.
    other = optuna.create_study(storage=storage, study_name="theirs", direction="maximize")
    other.ask()
    with pytest.raises(StudyConflictError, match="not created by hpo"):
        create_study(parse_spec({**spec_dict, "name": "theirs"}), storage)


def test_a_study_created_before_train_precision_existed_is_the_same_study(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    from hpo.records import SPEC_HASH as SPEC_HASH_ATTR

    storage = open_storage(str(tmp_path / "j.log"))
    spec = parse_spec(spec_dict)
    study_id = create_study(spec, storage)
    # What the previous version stored: the resolved spec without the field, and its hash.
    old = spec.to_json_dict()
    del old["train"]["precision"]
    storage.set_study_user_attr(study_id, SPEC_ATTR, old)
    storage.set_study_user_attr(study_id, SPEC_HASH_ATTR, "hash-of-an-older-version")
    assert create_study(spec, storage) == study_id
    assert load_stored_spec(storage, spec.name).train.precision == "auto"
    changed = copy.deepcopy(spec_dict)
    changed.setdefault("train", {})["precision"] = "fp32"
    with pytest.raises(StudyConflictError, match="different spec"):
        create_study(parse_spec(changed), storage)


def test_loaded_study_has_spec_sampler_and_pruner(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    spec_dict["search"]["sampler"] = {"name": "random", "seed": 3}
    spec_dict["search"]["pruner"] = {"name": "median"}
    storage = open_storage(storage_url)
    create_study(parse_spec(spec_dict), storage)
    study, spec = load_study(storage, spec_dict["name"])
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(study.pruner.inner, optuna.pruners.MedianPruner)  # on the step grid
    assert spec.search.sampler.seed == 3


def test_missing_study_is_reported(storage_url: str) -> None:
    with pytest.raises(StudyNotFoundError, match="no study named 'absent-study'"):
        load_stored_spec(open_storage(storage_url), "absent-study")


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


def test_plain_optuna_loads_a_study_created_by_hpo(
    storage_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict)
    assert hpo_main(["create", str(spec_path), "--storage", storage_url]) == 0
    study = optuna.load_study(
        study_name=spec_dict["name"], storage=_plain_optuna_storage(storage_url)
    )
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs[SPEC_ATTR]["name"] == spec_dict["name"]


def test_optuna_cli_lists_a_study_created_by_hpo(
    storage_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict)
    assert hpo_main(["create", str(spec_path), "--storage", storage_url]) == 0
    cli_url = normalize_postgres_url(storage_url) if "postgres" in storage_url else storage_url
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "studies",
            "--storage",
            cli_url,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert spec_dict["name"] in result.stdout


def test_password_is_masked_in_connection_errors(postgres_url: str) -> None:
    bad = "postgresql://postgres:hunter2-secret@127.0.0.1:5432/no_such_database_xyz"
    with pytest.raises(StorageError) as info:
        open_storage(bad)
    message = str(info.value)
    assert "hunter2-secret" not in message
    assert "postgres:***@127.0.0.1" in message
    assert "no_such_database_xyz" in message


def test_cli_error_is_one_masked_line(tmp_path: Path, spec_dict: dict[str, Any]) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo.cli",
            "create",
            str(spec_path),
            "--storage",
            "postgresql://bob:hunter2-secret@127.0.0.1:1/db",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(
        "error: cannot open storage 'postgresql://bob:***@127.0.0.1:1/db'"
    )


def test_masking_covers_urls_and_key_values() -> None:
    url = "postgresql://alice:p%40ss@db.example:5432/hpo"
    assert mask_url(url) == "postgresql://alice:***@db.example:5432/hpo"
    text = f"failed: {url} (password=p%40ss)"
    assert "p%40ss" not in mask_secrets(text, url)


def test_storage_resolution_order() -> None:
    assert resolve_storage_url("x.log", {"HPO_STORAGE": "y.log"}) == "x.log"
    assert resolve_storage_url(None, {"HPO_STORAGE": "y.log"}) == "y.log"
    assert resolve_storage_url(None, {}) == DEFAULT_STORAGE


def test_bare_postgres_url_uses_psycopg2() -> None:
    assert normalize_postgres_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_postgres_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_postgres_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(StorageError, match="unsupported scheme 'mysql'"):
        open_storage("mysql://u:secret@h/db")


def test_plain_optuna_dashboard_serves_a_postgres_study(
    postgres_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    from tests.hpo.conftest import dashboard_study_names, free_port

    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    port = free_port()
    dashboard = str(Path(sys.executable).parent / "optuna-dashboard")
    names = dashboard_study_names(
        [dashboard, postgres_url, "--host", "127.0.0.1", "--port", str(port)], port
    )
    assert spec_dict["name"] in names


def _refused(message: str = "sorry, too many clients already") -> Exception:
    """What Optuna raises when PostgreSQL is at max_connections: the driver's refusal, wrapped
    in SQLAlchemy's error, wrapped in a StorageInternalError about "invalid data"."""
    import psycopg2
    import sqlalchemy.exc

    driver = psycopg2.OperationalError(
        f'connection to server at "127.0.0.1", port 5432 failed: FATAL:  {message}\n'
    )
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, driver)
    try:
        try:
            raise wrapped
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length. "
            ) from e
    except optuna.exceptions.StorageInternalError as e:
        return e


@pytest.mark.parametrize(
    "message",
    [
        "sorry, too many clients already",
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
        'too many connections for role "hpo"',
    ],
)
def test_refusal_at_the_connection_limit_is_recognised_through_optunas_wrapper(
    message: str,
) -> None:
    from hpo.store import is_connection_limit, is_transient

    error = _refused(message)
    assert is_connection_limit(error)
    assert is_transient(error)


def test_other_errors_are_not_taken_for_the_connection_limit() -> None:
    import sqlalchemy.exc

    from hpo.store import is_connection_limit

    lost = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection")
    )
    assert not is_connection_limit(lost)
    assert not is_connection_limit(ValueError("invalid data in the commit"))


def test_short_refusals_are_retried_quietly_with_jitter(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from hpo.store import RETRIES, RetryingStorage

    calls: list[int] = []

    class Full(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            calls.append(1)
            if len(calls) <= 3:
                raise _refused()
            return []

    slept: list[float] = []
    refused_before = RETRIES.refused
    caplog.set_level(logging.DEBUG, logger="hpo.store._retry")
    assert RetryingStorage(Full(), sleep=slept.append).get_all_studies() == []  # type: ignore[abstract]
    assert len(calls) == 4
    assert RETRIES.refused - refused_before == 3
    assert len(set(slept)) == 3  # jittered, growing delays
    assert all(0 < s < 1 for s in slept)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_lasting_refusal_names_max_connections_in_one_line() -> None:
    from hpo.store import RetryingStorage

    class Full(optuna.storages.InMemoryStorage):
        def get_all_studies(self) -> Any:
            raise _refused()

    storage = RetryingStorage(  # type: ignore[abstract]
        Full(), outage_timeout_s=0.0, describe="store postgresql://u:***@h/db", sleep=lambda s: None
    )
    with pytest.raises(StorageError) as info:
        storage.get_all_studies()
    message = str(info.value)
    assert "\n" not in message
    assert "connection limit" in message and "max_connections" in message
    assert "hpo proxy" in message
    assert "invalid data" not in message


def test_open_storage_names_max_connections_when_the_server_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hpo.store._open

    def full(*args: Any) -> Any:
        raise _refused()

    monkeypatch.setattr(hpo.store._open, "_open_rdb", full)
    with pytest.raises(StorageError, match="max_connections") as info:
        open_storage("postgresql://bob:hunter2-secret@127.0.0.1:5432/db", outage_timeout_s=0.0)
    assert "hunter2-secret" not in str(info.value)
    assert "postgresql://bob:***@127.0.0.1:5432/db" in str(info.value)


def _canonical(trials: list[optuna.trial.FrozenTrial]) -> str:
    """Trials as text to compare: repr, not ==, since a NaN report is never equal to itself;
    attributes in key order, since stock Optuna reads them in no defined order (the planner's);
    without the request id, which the lean store leaves out of its reads on purpose."""
    from hpo.records import REQUEST_KEY

    return repr(
        [
            (
                t._trial_id,
                t.number,
                t.state,
                t.values,
                t.datetime_start,
                t.datetime_complete,
                t.params,
                t.distributions,
                sorted(t.user_attrs.items()),
                sorted((k, v) for k, v in t.system_attrs.items() if k != REQUEST_KEY),
                sorted(t.intermediate_values.items()),
            )
            for t in trials
        ]
    )


def test_lean_postgres_store_reads_and_writes_exactly_what_stock_optuna_does(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    import math

    from hpo.store import LeanPostgresStorage

    lean_store = open_storage(postgres_url)
    assert isinstance(lean_store.inner._backend, LeanPostgresStorage)  # type: ignore[attr-defined]
    study_id = create_study(parse_spec(spec_dict), lean_store)
    lean = optuna.load_study(study_name=spec_dict["name"], storage=lean_store)
    lean.enqueue_trial({"x": 0.5})
    for i in range(4):
        trial = lean.ask()
        trial.suggest_float("x", 1e-5, 1.0, log=True)
        trial.suggest_int("n", 1, 9)
        trial.suggest_categorical("pool", ["mean", "cls"])
        trial.report(0.1 * i, 0)
        trial.report(float("nan") if i == 1 else 0.3, 1)
        trial.report(float("inf"), 2)
        trial.set_user_attr("note", {"i": i, "s": "é"})
        states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
        value = float("-inf") if i == 3 else 1 / 3 if states[i] == TrialState.COMPLETE else None
        lean.tell(trial, value, state=states[i])
    running = lean.ask()
    running.suggest_float("x", 1e-5, 1.0, log=True)
    running.report(0.25, 4)

    stock = optuna.storages.RDBStorage(normalize_postgres_url(postgres_url))
    backend = lean_store.inner._backend  # type: ignore[attr-defined]
    expected = stock.get_all_trials(study_id)
    assert _canonical(backend.get_all_trials(study_id)) == _canonical(expected)
    assert _canonical([backend.get_trial(t._trial_id) for t in expected]) == _canonical(expected)
    assert [t.number for t in expected] == [0, 1, 2, 3, 4]
    assert expected[0].params["x"] == 0.5  # the enqueued trial was asked first
    assert math.isnan(expected[1].intermediate_values[1])
    assert expected[3].value == float("-inf")
    assert expected[4].state == TrialState.RUNNING
    # Only the trials asked for: new ones past the last id seen, and the named running ones.
    first, *_, last = expected
    picked = backend._get_trials(study_id, None, {last._trial_id}, first._trial_id)
    assert [t.number for t in picked] == [1, 2, 3, 4]
    assert backend._get_trials(study_id, None, set(), last._trial_id) == []

    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        backend.set_trial_intermediate_value(first._trial_id, 9, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        backend.set_trial_state_values(first._trial_id, TrialState.COMPLETE, [1.0])
    with pytest.raises(KeyError):
        backend.get_trial(2**31 - 1)
    with pytest.raises(KeyError):
        backend._get_trials(2**31 - 1, None, set(), -1)
    with pytest.raises(ValueError, match=r"[Cc]annot set different distribution"):
        running.suggest_float("n", 0.0, 1.0)  # "n" is an int elsewhere in the study


@contextlib.contextmanager
def running_proxy(postgres_url: str, port: int | None = None) -> Iterator[str]:
    """``hpo proxy`` on ``port`` (default: a free one) in front of ``postgres_url``; yields
    its grpc:// URL."""
    import socket

    from tests.hpo.conftest import free_port

    port = port or free_port()
    hpo_cli = str(Path(sys.executable).parent / "hpo")
    proxy = subprocess.Popen(
        [hpo_cli, "proxy", "--storage", postgres_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proxy.poll() is None, proxy.communicate()[1]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "hpo proxy did not listen within 60 s"
                time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_workers_reach_postgres_through_hpo_proxy(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    with running_proxy(postgres_url) as url:
        remote = open_storage(url)
        create_study(parse_spec(spec_dict), remote)
        study, spec = load_study(remote, spec_dict["name"])
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        trial.report(0.5, 0)
        study.tell(trial, 0.75)
    direct = optuna.load_study(study_name=spec.name, storage=open_storage(postgres_url))
    [stored] = direct.trials
    assert stored.state == TrialState.COMPLETE and stored.value == 0.75
    assert stored.params == {"lr": lr} and stored.intermediate_values == {0: 0.5}
    assert direct.user_attrs[SPEC_ATTR]["name"] == spec.name


def test_a_silent_trial_is_failed_and_requeued_through_hpo_proxy_whatever_the_clocks(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    from hpo.store import HEARTBEAT_KEY

    requeued: list[int] = []
    with running_proxy(postgres_url) as url:
        worker = open_storage(url, heartbeat_interval_s=1, grace_period_s=2)
        sweeper = open_storage(
            url,
            heartbeat_interval_s=1,
            grace_period_s=2,
            stale_trial_callback=lambda study, trial: requeued.append(trial.number),
        )
        create_study(parse_spec(spec_dict), worker)
        study, _ = load_study(worker, spec_dict["name"])
        watcher, _ = load_study(sweeper, spec_dict["name"])
        alive, dead = study.ask(), study.ask()
        worker.record_heartbeat(dead._trial_id)  # beats once, then its worker dies
        started = time.monotonic()
        beat = 0
        while time.monotonic() - started < 4.5:
            # The live worker's clock is decades behind: only a changing beat counts.
            beat += 1
            worker.set_trial_system_attr(alive._trial_id, HEARTBEAT_KEY, float(beat))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(watcher)
            time.sleep(0.5)
        states = {t.number: t.state for t in watcher.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == TrialState.RUNNING
    assert requeued == [dead.number]


def test_workers_ride_out_a_restart_of_hpo_proxy(
    postgres_url: str, spec_dict: dict[str, Any]
) -> None:
    import threading

    from tests.hpo.conftest import free_port

    port = free_port()
    with running_proxy(postgres_url, port) as url:
        remote = open_storage(url, outage_timeout_s=60)
        create_study(parse_spec(spec_dict), remote)
        study, _ = load_study(remote, spec_dict["name"])
        study.tell(study.ask(), 0.5)
    # The proxy is down now; it comes back on the same port 2 s later.
    back = threading.Event()
    done = threading.Event()

    def restart() -> None:
        time.sleep(2)
        with running_proxy(postgres_url, port):
            back.set()
            done.wait(timeout=60)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        trial = study.ask()  # retried while the proxy is away
        assert back.is_set()
        study.tell(trial, 0.75)
        values = sorted(t.value for t in study.get_trials(deepcopy=False))
    finally:
        done.set()
        thread.join(timeout=60)
    assert values == [0.5, 0.75]


def test_lean_store_rereads_running_trials_at_most_once_a_second_but_state_changes_at_once(
    postgres_url: str,
) -> None:
    from hpo.store import LeanPostgresStorage

    url = normalize_postgres_url(postgres_url)
    mine = LeanPostgresStorage(url, running_refresh_s=0.5)
    other = optuna.storages.RDBStorage(url)
    study_id = mine.create_new_study([optuna.study.StudyDirection.MINIMIZE], unique_name())
    first = other.create_new_trial(study_id)
    running = other.create_new_trial(study_id)
    assert len(mine._get_trials(study_id, None, set(), -1)) == 2  # a first read is complete

    other.set_trial_intermediate_value(running, 0, 1.0)
    other.set_trial_state_values(first, TrialState.COMPLETE, [2.0])
    since = mine._get_trials(study_id, None, {first, running}, running)
    assert [(t._trial_id, t.state) for t in since] == [(first, TrialState.COMPLETE)]
    time.sleep(0.6)
    [again] = mine._get_trials(study_id, None, {running}, running)
    assert again.intermediate_values == {0: 1.0}
    assert mine.get_trial(running).intermediate_values == {0: 1.0}  # one trial: always fresh
