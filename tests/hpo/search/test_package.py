"""The search room: it imports downward only, so the spec can validate against its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# Import every module of hpo.search with hpo's own front stubbed out (it imports the spec), then
# report which hpo.spec modules came along.
_IMPORT_SEARCH_ALONE = """
import importlib, pkgutil, sys, types
hpo = types.ModuleType("hpo")
hpo.__path__ = [sys.argv[1] + "/hpo"]
sys.modules["hpo"] = hpo
import hpo.search
for module in pkgutil.iter_modules(hpo.search.__path__):
    importlib.import_module("hpo.search." + module.name)
print(sorted(name for name in sys.modules if name.split(".")[:2] == ["hpo", "spec"]))
"""


def test_search_imports_without_the_spec_so_spec_to_search_is_one_way() -> None:
    """The spec checks sampler and pruner names against search's tables. When search imported
    the spec back, the loop worked only in one import order: search first raised ImportError."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_SEARCH_ALONE, str(REPO)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
