"""The torch versions we promise agree with what the installed libraries need.

Four places name a torch version: the Docker base image (``FROM pytorch/pytorch:<torch>-…``),
pyproject's torch requirement, and the GPU-host hints in the Makefile and README. Transformers
5 switches itself off under its minimum torch (every model load then fails), so each of them
must reach the minimum the *installed* transformers and accelerate declare. Those minimums are
read from the libraries themselves, never written here, so upgrading them re-runs the check.
"""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
# The published tag scheme, e.g. pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
BASE_IMAGE = re.compile(
    r"^FROM\s+pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-(runtime|devel)\s*$",
    re.MULTILINE,
)
TORCH_SPEC_HINT = re.compile(r"TORCH_SPEC='(?P<spec>[^']+)'")


def _lower_bound(specifier: SpecifierSet) -> Version | None:
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
    bounds += [Version(s.version) for s in specifier if s.operator == ">"]
    return max(bounds, default=None)


def _torch_requirement(requirements: list[str], extra: str | None = None) -> SpecifierSet | None:
    """The torch specifier among ``requirements`` (the base ones, or those of ``extra``)."""
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name != "torch":
            continue
        marker = requirement.marker
        in_scope = marker is None if extra is None else marker and marker.evaluate({"extra": extra})
        if in_scope:
            return requirement.specifier
    return None


def pyproject_torch() -> SpecifierSet:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specifier = _torch_requirement(project["dependencies"])
    assert specifier is not None, "pyproject.toml: no torch in [project] dependencies"
    return specifier


def dockerfile_torch(text: str | None = None) -> Version:
    """The torch version of the Dockerfile's base image (``text``: the file's, by default)."""
    text = (REPO / "Dockerfile").read_text() if text is None else text
    match = BASE_IMAGE.search(text)
    assert match, (
        "Dockerfile: expected a line FROM pytorch/pytorch:<X.Y.Z>-cuda<A.B>-cudnn<N>-runtime"
    )
    return Version(match["torch"])


def transformers_minimum_torch() -> Version:
    """The lowest torch the installed transformers enables: the version its
    ``is_torch_available`` compares against (under it, transformers disables PyTorch), and the
    one its ``torch`` extra declares; the higher of the two."""
    dist = metadata.distribution("transformers")
    found: list[Version] = []
    source = Path(str(dist.locate_file("transformers/utils/import_utils.py")))
    if source.is_file():
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "is_torch_available":
                for call in ast.walk(node):
                    if (
                        isinstance(call, ast.Call)
                        and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "parse"
                        and call.args
                        and isinstance(call.args[0], ast.Constant)
                        and isinstance(call.args[0].value, str)
                    ):
                        found.append(Version(call.args[0].value))
    extra = _torch_requirement(dist.requires or [], extra="torch")
    if extra is not None and (bound := _lower_bound(extra)) is not None:
        found.append(bound)
    assert found, (
        f"transformers {dist.version}: found neither the torch gate in is_torch_available "
        f"({source}) nor a torch extra; update {Path(__file__).name}"
    )
    return max(found)


def accelerate_minimum_torch() -> Version | None:
    """accelerate's declared torch lower bound (accelerate is a dev dependency: the HF
    ``Trainer`` baselines of bench/); None when it is not installed."""
    try:
        requires = metadata.requires("accelerate") or []
    except metadata.PackageNotFoundError:
        return None
    specifier = _torch_requirement(requires)
    return _lower_bound(specifier) if specifier is not None else None


def minimum_torch() -> Version:
    """What every installed library that gates on torch needs, together."""
    return max(v for v in (transformers_minimum_torch(), accelerate_minimum_torch()) if v)


def test_pyproject_torch_range_starts_at_what_transformers_and_accelerate_need() -> None:
    specifier, needed = pyproject_torch(), minimum_torch()
    lower = _lower_bound(specifier)
    assert lower is not None, f"pyproject.toml: torch{specifier} has no lower bound"
    assert lower >= needed, (
        f"pyproject.toml promises torch{specifier}, but transformers "
        f"{metadata.version('transformers')} disables PyTorch below {needed}; "
        f"raise the lower bound to >={needed}"
    )


def base_image_problems(torch: Version) -> list[str]:
    """What is wrong with a base image carrying ``torch``, one line each (none: fine)."""
    problems = []
    needed = minimum_torch()
    if torch < needed:
        problems.append(
            f"Dockerfile: the base image's torch {torch} is below {needed}, the minimum "
            f"transformers {metadata.version('transformers')} enables: every model load in the "
            "image fails"
        )
    specifier = pyproject_torch()
    if not specifier.contains(torch):
        problems.append(
            f"Dockerfile: the base image's torch {torch} is outside pyproject's "
            f"torch{specifier}; `pip install .` would replace the image's CUDA build"
        )
    return problems


def test_docker_base_image_torch_is_in_the_project_range() -> None:
    assert base_image_problems(dockerfile_torch()) == []


def test_the_check_fails_on_the_base_image_this_project_once_had() -> None:
    """The Dockerfile before the version check (pytorch 2.5.1) is refused: transformers 5
    disables PyTorch below 2.6, so every model load in that image failed."""
    old = "FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime\n"  # git show 4d20d4b:Dockerfile
    problems = base_image_problems(dockerfile_torch(old))
    assert problems and "below" in problems[0], problems


@pytest.mark.parametrize("file", ["Makefile", "README.md"])
def test_gpu_setup_hints_say_what_pyproject_says(file: str) -> None:
    hints = TORCH_SPEC_HINT.findall((REPO / file).read_text())
    assert hints, f"{file}: no GPU-host hint TORCH_SPEC='…'"
    for hint in hints:
        requirement = Requirement(hint)
        assert requirement.name == "torch", f"{file}: TORCH_SPEC={hint!r} is not a torch spec"
        lower, promised = _lower_bound(requirement.specifier), pyproject_torch()
        assert lower == _lower_bound(promised), (
            f"{file}: TORCH_SPEC={hint!r}, but pyproject.toml says torch{promised}"
        )


def test_the_cpu_wheel_ci_installs_first_is_in_the_project_range() -> None:
    match = re.search(r"^TORCH_SPEC \?= (?P<spec>\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile: no default TORCH_SPEC ?= torch==<version>"
    pinned = Requirement(match["spec"])
    (version,) = [Version(s.version) for s in pinned.specifier if s.operator == "=="]
    assert pyproject_torch().contains(version), (
        f"Makefile installs torch {version} first, outside pyproject's torch{pyproject_torch()}"
    )
    assert version >= minimum_torch()
