"""The lean PostgreSQL store: the rows stock Optuna writes and reads, and how fresh its view
of running trials is."""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo.spec.model import parse_spec
from hpo.store import (
    normalize_postgres_url,
    open_storage,
)
from hpo.study import create_study
from tests.hpo.conftest import unique_name


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
