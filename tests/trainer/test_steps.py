"""The step grid is the one place a (fold, epoch) becomes a step and a step is decoded."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainer.steps import StepGrid

ROOT = Path(__file__).resolve().parents[2]
GRID_MODULE = ROOT / "trainer" / "steps.py"


def _decodings(tree: ast.AST) -> list[int]:
    """Lines that decode or encode a step by hand: ``divmod``, or ``//``, ``%`` or ``*`` with
    an operand that names epochs or steps per fold."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "divmod":
            lines.append(node.lineno)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.FloorDiv, ast.Mod, ast.Mult)):
            operands = ast.unparse(node.left) + " " + ast.unparse(node.right)
            if "steps_per_fold" in operands or (
                "epochs" in operands.lower() and "fold" in operands.lower()
            ):
                lines.append(node.lineno)
    return lines


def test_no_module_but_the_grid_encodes_or_decodes_a_step() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in ("hpo", "trainer", "bench")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != GRID_MODULE and not any(part.startswith(".") for part in path.parts)
        for line in _decodings(ast.parse(path.read_text()))
    ]
    assert offenders == []


def test_the_check_finds_a_hand_made_step() -> None:
    code = (
        "fold, epoch = divmod(step, epochs)\n"
        "step = fold * epochs + epoch\n"
        "fold = step // grid.steps_per_fold\n"
        "n = batch // 2\n"
    )
    assert sorted(_decodings(ast.parse(code))) == [1, 2, 3]


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_every_epoch_of_a_fold_lands_inside_it_and_the_last_on_its_end(epochs: int) -> None:
    grid = StepGrid(n_folds=4, steps_per_fold=3)
    for fold in range(4):
        steps = [grid.step(fold, e, epochs) for e in range(epochs)]
        assert steps == sorted(set(steps))  # distinct, in order
        assert all(grid.fold_of(s) == fold for s in steps)
        assert steps[-1] == grid.fold_end(fold) and grid.is_fold_end(steps[-1])


def test_without_searched_epochs_the_grid_is_fold_times_epochs_plus_epoch() -> None:
    grid = StepGrid(n_folds=3, steps_per_fold=2)
    assert [grid.step(f, e, 2) for f in range(3) for e in range(2)] == list(range(6))


@pytest.mark.parametrize("steps_per_fold", [1, 2, 3, 4, 5])
def test_epoch_of_inverts_step_for_every_schedule_the_grid_holds(steps_per_fold: int) -> None:
    grid = StepGrid(n_folds=3, steps_per_fold=steps_per_fold)
    for epochs in range(1, steps_per_fold + 1):
        for fold in range(3):
            for epoch in range(epochs):
                step = grid.step(fold, epoch, epochs)
                assert (grid.fold_of(step), grid.epoch_of(step, epochs)) == (fold, epoch)
