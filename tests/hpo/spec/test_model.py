"""The study spec: shipped specs validate; each kind of mistake names its field."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpo.errors import SpecError
from hpo.spec.model import StudySpec, load_spec, parse_spec
from tests.hpo.conftest import MINIMAL_SPEC, write_spec

REPO = Path(__file__).resolve().parents[3]
SHIPPED_SPECS = sorted((REPO / "studies").glob("*.yaml"))


def _space(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["search"]["space"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


# (what is wrong, mutation, field path the message must name, words it must contain)
INVALID = [
    (
        "enqueued-point-names-no-such-param",
        lambda d: d["search"].update(enqueue=[{"lr": 1e-4, "momentum": 0.9}]),
        "search",
        "enqueue.0.momentum: not in search.space",
    ),
    (
        "enqueued-point-outside-the-space",
        lambda d: d["search"].update(enqueue=[{"lr": 0.5}]),
        "search",
        "enqueue.0.lr: 0.5 is outside",
    ),
    ("unknown top-level key", _set("trainer", {}), "trainer", "unknown key"),
    ("unknown nested key", _set("cv.folds", 3), "cv.folds", "unknown key"),
    ("wrong type", _set("cv.n_folds", "three"), "cv.n_folds", "'three'"),
    ("n_folds < 2", _set("cv.n_folds", 1), "cv.n_folds", "greater than or equal to 2"),
    (
        "low > high",
        _set("search.space.dropout", {"low": 0.5, "high": 0.1}),
        "search.space.dropout",
        "low=0.5 > high=0.1",
    ),
    (
        "log with low <= 0",
        _set("search.space.lr", {"low": 0.0, "high": 0.1, "log": True}),
        "search.space.lr",
        "log scale needs low > 0",
    ),
    ("unknown sampler", _set("search.sampler", {"name": "bayes"}), "search.sampler.name", "'tpe'"),
    (
        "unknown pruner",
        _set("search.pruner", {"name": "early"}),
        "search.pruner.name",
        "'fold_aware'",
    ),
    ("unknown metric", _set("objective.metric", "precision"), "objective.metric", "'accuracy'"),
    ("unknown precision", _set("train.precision", "fp16"), "train.precision", "'bf16'"),
    ("missing required param", _delete("search.space.l1"), "search.space.l1", "missing"),
    (
        "unknown search param",
        _set("search.space.momentum", {"low": 0.1, "high": 0.9}),
        "search.space.momentum",
        "unknown key",
    ),
    ("invalid study name", _set("name", "my study!"), "name", "not a valid study name"),
    (
        "dropout out of range",
        _set("search.space.dropout", {"low": 0.0, "high": 1.5}),
        "search.space",
        "dropout: 1.5 is outside",
    ),
    (
        "negative l2",
        _set("search.space.l2", {"low": -1.0, "high": 0.1}),
        "search.space",
        "l2: -1.0 is outside",
    ),
    (
        "direction against metric",
        _set("objective", {"metric": "loss", "direction": "maximize"}),
        "objective",
        "does not fit metric='loss'",
    ),
    (
        "unknown sampler option",
        _set("search.sampler", {"name": "tpe", "options": {"foo": 1}}),
        "search.sampler",
        "options.foo: unknown option for sampler 'tpe'",
    ),
    (
        "bad pruner option value",
        _set("search.pruner", {"name": "fold_aware", "options": {"keep_percentile": 0}}),
        "search.pruner",
        "keep_percentile must be in (0, 100]",
    ),
    (
        "pooling not cls/mean",
        _set("search.space.pooling", {"choices": ["cls", "max"]}),
        "search.space",
        "pooling: ['max'] not allowed",
    ),
    (
        "class weights not none/balanced",
        _set("train.class_weights", "inverse"),
        "train.class_weights",
        "'none' or 'balanced'",
    ),
    (
        "class weights choice not none/balanced",
        _set("search.space.class_weights", {"choices": ["none", "sqrt"]}),
        "search.space",
        "class_weights: ['sqrt'] not allowed; expected choices from [none, balanced]",
    ),
    ("zero trials", _set("budget.n_trials", 0), "budget.n_trials", "greater than or equal to 1"),
    ("three text columns", _set("data.text", ["a", "b", "c"]), "data.text", "at most 2"),
    ("subsample below folds", _set("data.subsample", 4), "", "data.subsample=4 is too small"),
    ("missing model", _delete("model"), "model", "missing"),
    (
        "int param with float choices",
        _set("search.space.batch_size", {"choices": [8, 16.5]}),
        "search.space",
        "batch_size: choices must be integers",
    ),
]


@pytest.mark.parametrize("spec_path", SHIPPED_SPECS, ids=lambda p: p.name)
def test_shipped_specs_validate(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    assert spec.search.space.lr is not None


def test_at_least_one_spec_is_shipped() -> None:
    assert any(p.name == "demo.yaml" for p in SHIPPED_SPECS)


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_spec_error_names_the_field(
    mutate: Callable[[dict[str, Any]], None], field: str, words: str
) -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    mutate(data)
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="spec.yaml")
    lines = info.value.problems
    assert any(line.startswith(f"{field}:" if field else "") and words in line for line in lines), (
        lines
    )


def test_defaults_are_filled_and_spec_is_frozen() -> None:
    spec = parse_spec(copy.deepcopy(MINIMAL_SPEC))
    assert spec.search.sampler.name == "tpe"
    assert spec.search.pruner.name == "fold_aware"
    assert spec.objective.direction == "maximize"
    assert spec.data.text == ("text",)
    assert spec.train.precision == "auto"
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own frozen error
        spec.cv.n_folds = 7  # type: ignore[misc]


def test_class_weights_default_to_none_and_a_searched_choice_overrides_the_spec() -> None:
    from hpo.translate import hyperparams_for

    data = copy.deepcopy(MINIMAL_SPEC)
    assert parse_spec(data).train.class_weights == "none"
    data["train"] = {"class_weights": "balanced"}
    spec = parse_spec(data)
    params = {"lr": 1e-4, "dropout": 0.1, "l1": 0.0, "l2": 0.0}
    assert hyperparams_for(spec, params, seed=0).class_weights == "balanced"
    data["search"]["space"]["class_weights"] = {"choices": ["none", "balanced"]}
    spec = parse_spec(data)
    assert spec.search.space.class_weights is not None
    assert hyperparams_for(spec, {**params, "class_weights": "none"}, 0).class_weights == "none"


def test_loss_metric_defaults_to_minimize() -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    data["objective"] = {"metric": "loss"}
    assert parse_spec(data).direction == "minimize"


def test_spec_hash_ignores_yaml_form_but_sees_changes(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    first = parse_spec(data)
    data["data"]["text"] = ["text"]  # list form of the same single column
    data["search"]["sampler"] = {"name": "tpe"}  # explicit default
    assert parse_spec(data).spec_hash() == first.spec_hash()
    data["cv"]["n_folds"] = 4
    assert parse_spec(data).spec_hash() != first.spec_hash()


def test_specs_without_class_weights_keep_the_hash_their_stored_studies_have() -> None:
    """Hashes from before ``class_weights`` existed: ``hpo create`` must still match them."""
    assert parse_spec(copy.deepcopy(MINIMAL_SPEC)).spec_hash() == "adc9b1e3cf9933af"
    assert load_spec(REPO / "studies" / "rt-curves.yaml").spec_hash() == "817ebdc39e7b50b5"
    data = copy.deepcopy(MINIMAL_SPEC)
    data["train"] = {"class_weights": "none"}  # the default, spelled out
    assert parse_spec(data).spec_hash() == "adc9b1e3cf9933af"
    data["train"] = {"class_weights": "balanced"}
    assert parse_spec(data).spec_hash() != "adc9b1e3cf9933af"
    data = copy.deepcopy(MINIMAL_SPEC)
    data["search"]["space"]["class_weights"] = {"choices": ["none", "balanced"]}
    assert parse_spec(data).spec_hash() != "adc9b1e3cf9933af"


def test_spec_round_trips_through_json() -> None:
    spec = parse_spec(copy.deepcopy(MINIMAL_SPEC))
    again = parse_spec(json.loads(json.dumps(spec.to_json_dict())))
    assert again == spec


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert "malformed YAML" in str(info.value) and "line" in str(info.value)


def test_yaml_object_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(path)


def test_missing_spec_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read file"):
        load_spec(tmp_path / "nope.yaml")


def test_json_schema_describes_every_section() -> None:
    schema = StudySpec.model_json_schema()
    assert {"name", "model", "data", "cv", "train", "search", "objective", "budget"} <= set(
        schema["properties"]
    )


def _hpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_cli_validate_prints_ok_for_demo() -> None:
    result = _hpo("validate", "studies/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_validate_prints_one_line_per_problem_and_exits_2(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    data["cv"]["n_folds"] = 1
    data["objective"] = {"metric": "precision"}
    path = write_spec(tmp_path / "bad.yaml", data)
    result = _hpo("validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any("cv.n_folds" in line for line in lines)
    assert any("objective.metric" in line for line in lines)


def test_cli_validate_reports_missing_local_files(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    data["model"]["name_or_path"] = str(tmp_path / "no-model")
    data["data"]["source"] = str(tmp_path / "rows.csv")
    result = _hpo("validate", str(write_spec(tmp_path / "s.yaml", data)))
    assert result.returncode == 2
    assert "model.name_or_path" in result.stderr and "data.source" in result.stderr


def test_cli_schema_is_json() -> None:
    result = _hpo("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "StudySpec"


def test_importing_hpo_does_not_import_torch() -> None:
    code = "import hpo, hpo.cli, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_enqueued_configurations_are_the_first_trials(tmp_path: Path) -> None:
    """A spec's known-good configuration is trial 0 (a sensible baseline, not a random draw);
    parameters it leaves out are sampled."""
    import optuna

    from hpo.store import open_storage
    from hpo.study import create_study, load_study

    data = copy.deepcopy(MINIMAL_SPEC)
    data["search"]["enqueue"] = [{"lr": 1e-4, "dropout": 0.1}]
    spec = parse_spec(data)
    storage = open_storage(str(tmp_path / "journal.log"))
    create_study(spec, storage)
    create_study(spec, storage)  # idempotent: not enqueued twice
    study, _ = load_study(storage, spec.name)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    trial = study.ask()
    assert trial.suggest_float("lr", 1e-5, 1e-3, log=True) == 1e-4
    assert trial.suggest_float("dropout", 0.0, 0.3) == 0.1
    assert 1e-8 <= trial.suggest_float("l1", 1e-8, 1e-4, log=True) <= 1e-4


def test_a_spec_with_a_choice_of_epochs_serializes_without_warnings() -> None:
    import warnings

    data = copy.deepcopy(MINIMAL_SPEC)
    data["search"]["space"]["epochs"] = {"choices": [1, 2]}
    spec = parse_spec(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = spec.to_json_dict()
    assert dumped["search"]["space"]["epochs"] == {"choices": [1, 2]}
    assert parse_spec(dumped) == spec
