"""The trial record: one owner of every attribute key, folds that cannot collide, old studies."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

from hpo import records
from trainer.config import FoldResult

HPO = Path(records.__file__).parent

# Calls whose first (or second, for storage methods) argument is an attribute key.
_SETTERS = {"set_user_attr", "set_system_attr"}
_STORAGE_SETTERS = {
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_study_user_attr",
    "set_study_system_attr",
}


def _is_key(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, literal) of each string literal used as an attribute key in ``tree``: the key of
    a ``set_*_attr`` call, of ``.get``/``[…]``/``in`` on something named ``*attrs*``, or any
    string in the store's or the fold keys' namespace."""
    found = []
    for node in ast.walk(tree):
        key: ast.AST | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            name = node.func.attr
            if name in _SETTERS or (name == "get" and "attrs" in ast.unparse(node.func.value)):
                key = node.args[0]
            elif name in _STORAGE_SETTERS and len(node.args) > 1:
                key = node.args[1]
        elif isinstance(node, ast.Subscript) and "attrs" in ast.unparse(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            if "attrs" in ast.unparse(node.comparators[0]):
                key = node.left
        elif _is_key(node) and str(getattr(node, "value", "")).startswith(("hpo:", "fold_result:")):
            key = node
        if key is not None and _is_key(key):
            found.append((node.lineno, ast.unparse(key)))
    return found


def test_no_module_but_records_spells_an_attribute_key() -> None:
    offenders = [
        f"{path.relative_to(HPO.parent)}:{line}: {literal}"
        for path in sorted(HPO.rglob("*.py"))
        if path.name != "records.py"
        for line, literal in _key_literals(ast.parse(path.read_text()))
    ]
    assert offenders == []


def test_the_key_check_finds_a_spelled_key() -> None:
    code = (
        "trial.set_user_attr('cv_mean', 1.0)\n"
        "x = trial.user_attrs.get('anything')\n"
        "y = frozen.system_attrs['retry_history']\n"
        "storage.set_trial_user_attr(1, f'fold_{i}', {})\n"
        "if 'cv_std' in trial.user_attrs: pass\n"
        "KEY = 'hpo:lease'\n"
        "trial.set_user_attr(records.CV_MEAN, 1.0)\n"
    )
    assert [line for line, _ in _key_literals(ast.parse(code))] == [1, 2, 3, 4, 5, 6]


def test_every_key_is_distinct() -> None:
    names = [n for n in vars(records) if n.isupper() and not n.startswith("_")]
    values = [getattr(records, n) for n in names if isinstance(getattr(records, n), str)]
    assert len(values) == len(set(values))


def _fold(index: int, score: float, *, pruned: bool = False) -> FoldResult:
    return FoldResult(
        fold=index,
        score=score,
        metrics={"accuracy": score},
        curve=({"epoch": 0.0, "accuracy": score},),
        train_examples=10,
        train_s=1.0,
        pruned=pruned,
    )


def test_fold_keys_cannot_collide_with_fold_scores() -> None:
    attrs = {
        records.fold_key(0): records.fold_to_json(_fold(0, 0.7)),
        records.fold_key(1): records.fold_to_json(_fold(1, 0.6, pruned=True)),
        records.FOLD_SCORES: [0.7, 0.6],
        records.CV_MEAN: 0.65,
    }
    assert set(records.fold_attrs(attrs)) == {records.fold_key(0), records.fold_key(1)}
    assert list(records.saved_folds(attrs)) == [0]  # the pruned fold is not carried as done
    assert records.saved_folds(attrs)[0] == _fold(0, 0.7)


def test_a_study_written_with_the_old_fold_keys_still_reads() -> None:
    old = {"fold_0": records.fold_to_json(_fold(0, 0.7)), "fold_scores": [0.7]}
    assert records.saved_folds(old) == {0: _fold(0, 0.7)}
    assert set(records.fold_attrs(old)) == {"fold_0"}


def test_cv_score_falls_back_to_the_trial_value() -> None:
    told_elsewhere = optuna.trial.create_trial(value=0.5)
    score = records.CVScore.of(told_elsewhere)
    assert (score.mean, score.std, score.fold_scores) == (0.5, None, [])
    ours = optuna.trial.create_trial(
        value=0.6,
        user_attrs={records.CV_MEAN: 0.6, records.CV_STD: 0.1, records.FOLD_SCORES: [0.5, 0.7]},
    )
    score = records.CVScore.of(ours)
    assert (score.mean, score.std, score.fold_scores) == (0.6, 0.1, [0.5, 0.7])


@pytest.mark.parametrize("history", [[], [3], [3, 7]])
def test_retry_attrs_extend_the_chain(history: list[int]) -> None:
    trial = optuna.trial.create_trial(
        value=0.1, system_attrs={records.RETRY_HISTORY: history} if history else {}
    )
    trial.number = 9
    trial._trial_id = 42
    attrs = records.retry_attrs(trial)
    assert attrs[records.RETRY_HISTORY] == [*history, 9]
    assert attrs[records.FAILED_TRIAL] == ([*history, 9])[0]
    assert attrs[records.REQUEUE_OF_KEY] == 42
    copy = optuna.trial.create_trial(value=0.1, system_attrs=attrs)
    assert records.original_number(copy) == ([*history, 9])[0]
