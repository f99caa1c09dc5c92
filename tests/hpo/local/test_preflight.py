"""Checks before any GPU-hour: token lengths, position limit, classes, conflicts, rows left out.

Each check runs on a tiny model (one token per word, 64 positions) and a small CSV written here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from hpo.cli import main as hpo_main
from hpo.errors import SpecError
from hpo.local.preflight import Preflight, inspect_spec_file
from tests.hpo.conftest import write_spec
from tests.hpo.worker.test_loop import tiny_spec


@pytest.fixture(autouse=True)
def _token_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Token lengths are cached under the test's tmp dir, not the user's home."""
    import trainer.tokens

    monkeypatch.setattr(trainer.tokens, "DEFAULT_CACHE_DIR", tmp_path / "tokens")


def _rows(label: str, n: int, words: int = 4, start: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct texts of ``words`` words each (``words + 2`` tokens with [CLS], [SEP])."""
    return [(" ".join([f"r{label}{start + i}"] + ["film"] * (words - 1)), label) for i in range(n)]


def _spec(tmp_path: Path, model_dir: Path, rows: list[tuple[Any, Any]], **changes: Any) -> Path:
    """A spec on ``rows`` (text, label) written as CSV; ``changes`` set dotted spec fields."""
    data = tmp_path / "rows.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    spec = tiny_spec(model_dir, data)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return write_spec(tmp_path / "study.yaml", spec)


def _about(lines: tuple[str, ...] | list[str], field: str) -> list[str]:
    return [line for line in lines if line.startswith(f"{field}: ")]


def _errors(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        inspect_spec_file(path)
    return info.value.problems


BALANCED = _rows("pos", 24) + _rows("neg", 24)


def test_a_clean_dataset_passes_with_notes_and_no_warning(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, BALANCED))
    assert isinstance(found, Preflight) and found.warnings == ()
    assert _about(found.notes, "data.label") == [
        "data.label: 48 rows in 2 classes: 'neg' 24, 'pos' 24"
    ]
    (lengths,) = _about(found.notes, "model.max_seq_len")
    assert "0.0% of 48 examples are longer" in lengths and "p50 6, p90 6, longest 6" in lengths


def test_token_lengths_give_the_truncated_share_and_percentiles(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    # 6, 12 and 22 tokens against max_seq_len 16: 10 of 48 (20.8 %) are truncated.
    rows = (
        _rows("pos", 14, words=4)
        + _rows("neg", 14, words=4)
        + _rows("pos", 5, words=10, start=50)
        + _rows("neg", 5, words=10, start=50)
        + _rows("pos", 5, words=20, start=90)
        + _rows("neg", 5, words=20, start=90)
    )
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, rows))
    (note,) = _about(found.notes, "model.max_seq_len")
    assert "16: 20.8% of 48 examples are longer" in note
    assert "p50 6, p90 22, longest 22" in note
    (warning,) = _about(found.warnings, "model.max_seq_len")
    assert "20.8% of examples (10 of 48) are longer than 16 tokens" in warning
    assert "consider max_seq_len: 32" in warning  # p90 22, rounded up to a multiple of 16


def test_a_few_truncated_examples_are_only_a_note(tmp_path: Path, tiny_bert_dir: Path) -> None:
    rows = BALANCED + _rows("pos", 2, words=20, start=90)  # 2 of 50: 4 %
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, rows))
    assert "4.0% of 50 examples are longer" in _about(found.notes, "model.max_seq_len")[0]
    assert _about(found.warnings, "model.max_seq_len") == []


def test_max_seq_len_beyond_the_models_positions_is_an_error(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    path = _spec(tmp_path, tiny_bert_dir, BALANCED, model__max_seq_len=2048)
    assert _errors(path) == [
        "model.max_seq_len: 2048 is beyond the model's 64 positions "
        "(max_position_embeddings=64); expected at most 64"
    ]
    assert inspect_spec_file(_spec(tmp_path, tiny_bert_dir, BALANCED, model__max_seq_len=64))


def test_a_roberta_style_model_counts_its_reserved_positions(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """RoBERTa numbers positions from padding_idx + 1: 34 embeddings, pad id 1 → 32 tokens."""
    import shutil

    from transformers import RobertaConfig

    model_dir = tmp_path / "tiny-roberta"
    model_dir.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).exists():
            shutil.copy(tiny_bert_dir / name, model_dir / name)
    RobertaConfig(max_position_embeddings=34, pad_token_id=1).save_pretrained(model_dir)
    (error,) = _errors(_spec(tmp_path, model_dir, BALANCED, model__max_seq_len=33))
    assert error.startswith("model.max_seq_len: 33 is beyond the model's 32 positions")
    assert "max_position_embeddings=34, less 2 a roberta model reserves (padding_idx + 1)" in error
    assert inspect_spec_file(_spec(tmp_path, model_dir, BALANCED, model__max_seq_len=32))


def test_a_class_with_fewer_rows_than_folds_is_an_error_naming_it(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    rows = BALANCED + _rows("rare", 2)
    (error,) = _errors(_spec(tmp_path, tiny_bert_dir, rows, cv__n_folds=3))
    assert error.startswith("cv.n_folds: ") and "n_folds=3" in error
    assert "the smallest class has only 2 rows ('rare' 2)" in error


def test_a_class_too_small_to_learn_from_is_a_warning(tmp_path: Path, tiny_bert_dir: Path) -> None:
    # 2 folds: 20 rows keep 10 in a fold's training part (enough), 15 keep 7 (too few).
    rows = _rows("pos", 20) + _rows("neg", 20) + _rows("rare", 15)
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, rows))
    (warning,) = _about(found.warnings, "data.label")
    assert "1 class(es) with fewer than 10 rows in a fold's training part (cv.n_folds=2)" in warning
    assert "'rare' 7;" in warning and "'pos'" not in warning


def test_duplicate_texts_with_conflicting_labels_are_a_warning_with_an_example(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    rows = [*BALANCED, ("good film", "pos"), ("good film", "neg"), ("good film", "pos")]
    rows += [("bad plot", "neg"), ("bad plot", "pos"), ("same label", "neg"), ("same label", "neg")]
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, rows))
    (warning,) = _about(found.warnings, "data.label")
    assert "2 texts occur with different labels (5 rows), e.g. 'good film' as neg, pos" in warning
    assert _about(found.notes, "data.text") == [
        "data.text: 4 rows repeat an earlier text (a repeat can sit in a training and a "
        "held-out fold at once)"
    ]


def test_rows_without_a_label_and_empty_texts_are_counted(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    rows = [*BALANCED, ("no label here", ""), ("nor here", ""), ("", "pos"), ("  ", "neg")]
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, rows))
    assert _about(found.warnings, "data.label") == [
        "data.label: 2 of 52 rows have no 'label' value and are left out"
    ]
    assert _about(found.warnings, "data.text") == [
        "data.text: 2 rows have an empty 'text' text; they are kept and train with nothing "
        "in its place"
    ]


def test_imbalanced_classes_are_a_warning_suggesting_balanced_class_weights(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    rows = _rows("pos", 120) + _rows("neg", 20)
    found = inspect_spec_file(_spec(tmp_path, tiny_bert_dir, rows, objective__metric="accuracy"))
    assert _about(found.notes, "data.label") == [
        "data.label: 140 rows in 2 classes: 'pos' 120, 'neg' 20"
    ]
    assert _about(found.warnings, "data.label") == [
        "data.label: classes are imbalanced: 'pos' has 120 rows, 'neg' 20 (6.0x); consider "
        "train.class_weights: balanced and objective.metric: f1_macro"
    ]
    weighted = _spec(tmp_path, tiny_bert_dir, rows, train__class_weights="balanced")
    assert _about(inspect_spec_file(weighted).warnings, "data.label") == []
    searched = _spec(
        tmp_path,
        tiny_bert_dir,
        rows,
        search__space__class_weights={"choices": ["none", "balanced"]},
    )
    assert _about(inspect_spec_file(searched).warnings, "data.label") == []
    mild = _rows("pos", 100) + _rows("neg", 20)  # 5.0x: not above the threshold
    assert inspect_spec_file(_spec(tmp_path, tiny_bert_dir, mild)).warnings == ()


def test_a_hub_model_this_machine_cannot_fetch_is_a_warning_not_an_error(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    path = _spec(tmp_path, tiny_bert_dir, BALANCED, model__name_or_path="nobody-hpo/no-model")
    found = inspect_spec_file(path)
    (warning,) = _about(found.warnings, "model.name_or_path")
    assert warning.endswith("token lengths and position limit not checked")
    assert _about(found.notes, "model.max_seq_len") == []


def test_cli_warnings_exit_0_after_ok_and_errors_exit_2_naming_the_field(
    tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows("pos", 120) + _rows("neg", 20) + _rows("pos", 30, words=20, start=200)
    path = _spec(tmp_path, tiny_bert_dir, rows)
    assert hpo_main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "ok"
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert [line.split(":")[1].strip() for line in warnings] == [
        "data.label",
        "model.max_seq_len",
    ]
    assert "note: data.label: 170 rows in 2 classes" in err

    url = str(tmp_path / "journal.log")
    assert hpo_main(["create", str(path), "--storage", url]) == 0
    out, err = capsys.readouterr()
    assert "ready in" in out and len([x for x in err.splitlines() if "warning: " in x]) == 2

    bad = _spec(tmp_path, tiny_bert_dir, rows, model__max_seq_len=128)
    assert hpo_main(["validate", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}: model.max_seq_len: 128 is beyond the model's 64 positions "
        "(max_position_embeddings=64); expected at most 64"
    ]
