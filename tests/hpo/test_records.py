"""The trial record: one owner of every attribute key, folds that cannot collide, old studies."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

from hpo import records
from trainer.config import FoldResult

ROOT = Path(records.__file__).parent.parent
SCANNED = ("hpo", "bench", "tests")

# Every key records names, and the namespaces the store's keys and the fold keys live in.
KEYS = {
    value
    for name, value in vars(records).items()
    if name.isupper() and not name.startswith("_") and isinstance(value, str)
}
_NAMESPACED = {key for key in KEYS if ":" in key}
_NAMESPACES = (*{key.partition(":")[0] + ":" for key in _NAMESPACED}, records.fold_key(0)[:-1])

# The keys a file outside records may spell, and why: none of them is a key hpo owns.
ALLOWED = {
    ("tests/hpo/search/test_pruners.py", "'completed_rung_0'"): "Optuna's pruner's own key",
    ("tests/hpo/search/test_pruners.py", "'completed_rung_1'"): "Optuna's pruner's own key",
    ("tests/hpo/store/test_postgres.py", "'note'"): "any key: the store round-trips every key",
}

# Calls whose first (or second, for storage methods) argument is an attribute key.
_SETTERS = {"set_user_attr", "set_system_attr"}
_STORAGE_SETTERS = {
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_study_user_attr",
    "set_study_system_attr",
}
_READERS = {"get", "pop", "setdefault"}


def _is_key(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _holds_attrs(node: ast.AST) -> bool:
    """Whether ``node`` is a mapping of attributes (``attrs``, ``trial.user_attrs``,
    ``storage.get_trial_system_attrs(i)``), not a value kept in one (``attrs[RUN]``)."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return "attrs" in node.attr
    return isinstance(node, ast.Name) and "attrs" in node.id


def _spells_store_key(node: ast.Constant) -> bool:
    """A string (or bytes) in the store's or the fold keys' namespace, or naming a store key."""
    value = node.value
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return isinstance(value, str) and (
        value.startswith(_NAMESPACES) or any(key in value for key in _NAMESPACED)
    )


def _docstrings(tree: ast.AST) -> set[ast.expr]:
    bodies = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        node.body[0].value
        for node in ast.walk(tree)
        if isinstance(node, bodies) and node.body and isinstance(node.body[0], ast.Expr)
    }


def _keys_of(node: ast.AST) -> list[ast.expr | None]:
    """The nodes ``node`` uses as attribute keys, literal or not."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        name = node.func.attr
        if name in _SETTERS or (name in _READERS and _holds_attrs(node.func.value)):
            return [node.args[0]]
        if name in _STORAGE_SETTERS and len(node.args) > 1:
            return [node.args[1]]
    if isinstance(node, ast.Subscript) and _holds_attrs(node.value):
        return [node.slice]
    if isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
        return [node.left] if _holds_attrs(node.comparators[0]) else []
    # A dict of attributes: ``user_attrs={...}``, ``attrs = {...}``, ``attrs |= {...}``.
    value: ast.expr | None = None
    if isinstance(node, ast.keyword) and node.arg is not None and "attrs" in node.arg:
        value = node.value
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(_holds_attrs(target) for target in targets):
            value = node.value
    return list(value.keys) if isinstance(value, ast.Dict) else []


def _key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, literal) of each string literal used as an attribute key in ``tree``: the key of
    a ``set_*_attr`` call, of ``.get``/``[…]``/``in`` on a mapping named ``*attrs*``, of a dict
    literal given as one, or any string (docstrings aside) in the store's or the fold keys'
    namespace."""
    docstrings = _docstrings(tree)
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        keys = [key for key in _keys_of(node) if key is not None and _is_key(key)]
        if isinstance(node, ast.Constant) and node not in docstrings and _spells_store_key(node):
            keys.append(node)
        found |= {(key.lineno, ast.unparse(key)) for key in keys}
    return sorted(found)


def _scanned() -> list[Path]:
    """Every module of hpo, bench and tests but records (virtual environments left out)."""
    return sorted(
        path
        for folder in SCANNED
        for path in (ROOT / folder).rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
        and path != Path(records.__file__)
    )


def test_no_module_but_records_spells_an_attribute_key() -> None:
    spelled = [
        (path.relative_to(ROOT).as_posix(), line, literal)
        for path in _scanned()
        for line, literal in _key_literals(ast.parse(path.read_text()))
    ]
    assert [f"{p}:{line}: {lit}" for p, line, lit in spelled if (p, lit) not in ALLOWED] == []
    assert set(ALLOWED) - {(p, lit) for p, _, lit in spelled} == set()  # no stale exception


def test_the_key_check_finds_a_spelled_key() -> None:
    spelled = {
        "trial.set_user_attr('cv_mean', 1.0)": True,
        "x = trial.user_attrs.get('anything')": True,
        "y = frozen.system_attrs['retry_history']": True,
        "storage.set_trial_user_attr(1, f'fold_{i}', {})": True,
        "if 'cv_std' in trial.user_attrs: pass": True,
        f"KEY = {records.LEASE_KEY!r}": True,
        f"PATTERN = {records.REQUEUE_OF_KEY.encode()!r}": True,
        f"message = 'read from the attribute {records.HEARTBEAT_KEY}'": True,
        "create_trial(value=0.5, user_attrs={'cv_mean': 0.5})": True,
        "attrs |= {'fold_scores': []}": True,
        "z = storage.get_trial_system_attrs(1)['failed_trial']": True,
        "trial.set_user_attr(records.CV_MEAN, 1.0)": False,
        "device = trial.user_attrs[records.RUN]['device']": False,
        f'def f(): """A docstring may name {records.HEARTBEAT_KEY}."""': False,
    }
    tree = ast.parse("\n".join(spelled))
    lines = {line for line, _ in _key_literals(tree)}
    assert lines == {i for i, is_spelled in enumerate(spelled.values(), start=1) if is_spelled}


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


# Fold 0's key before ``fold_result:<i>``, a prefix that ``fold_scores`` also matched.
LEGACY_FOLD_0 = "fold_0"


def test_a_study_written_with_the_old_fold_keys_still_reads() -> None:
    old = {LEGACY_FOLD_0: records.fold_to_json(_fold(0, 0.7)), records.FOLD_SCORES: [0.7]}
    assert records.saved_folds(old) == {0: _fold(0, 0.7)}
    assert set(records.fold_attrs(old)) == {LEGACY_FOLD_0}


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
