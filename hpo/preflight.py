"""Checks a spec must pass before anything is created: the files it names must exist."""

from __future__ import annotations

from pathlib import Path

from hpo.errors import SpecError
from hpo.spec import StudySpec, load_spec

DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def looks_like_local_path(ref: str) -> bool:
    """A reference the user meant as a file or dir on this machine (not a hub id)."""
    return ref.startswith(("/", "./", "../", "~", "file:")) or Path(ref).exists()


def looks_like_data_file(ref: str) -> bool:
    """A data source named by a file name (with a known suffix), not a hub dataset."""
    name = ref.lower()
    for compression in COMPRESSION_SUFFIXES:
        name = name.removesuffix(compression)
    return name.endswith(DATA_SUFFIXES)


def resource_problems(spec: StudySpec) -> list[str]:
    """One line per model or data reference that does not resolve on this machine."""
    from trainer.resources import ResourceError, is_pkg_ref, resolve_pkg_path

    problems = []
    refs = [
        ("model.name_or_path", spec.model.name_or_path, True),
        ("data.source", spec.data.source, False),
    ]
    for field, ref, is_model in refs:
        if is_pkg_ref(ref):
            try:
                resolve_pkg_path(ref)
            except ResourceError as e:
                problems.append(f"{field}: {e}")
            continue
        is_local = looks_like_local_path(ref) or (not is_model and looks_like_data_file(ref))
        if is_local:
            path = Path(ref.removeprefix("file:")).expanduser()
            if not path.exists():
                problems.append(f"{field}: {ref!r}: no such file or directory")
            elif is_model and not (path / "config.json").is_file():
                problems.append(f"{field}: {ref!r}: not a model dir (no config.json)")
    return problems


def data_problems(spec: StudySpec) -> list[str]:
    """Load the data as the workers will and check that it fits the spec (columns, classes,
    folds). One line naming the field, or none."""
    from hpo.objective import trainer_config
    from trainer.data import load_examples, make_folds
    from trainer.errors import DataError

    config = trainer_config(spec)
    try:
        examples = load_examples(config.data)
        make_folds(examples.labels, spec.cv.n_folds, spec.cv.split_seed)
    except DataError as e:
        return [f"{e.field}: {e}"]
    return []


def check_spec_file(path: Path, *, check_data: bool = True) -> StudySpec:
    """Load a spec and check that what it names exists and fits, before anything is created.

    Raises:
        SpecError: one line per problem, each naming the file and field.
    """
    spec = load_spec(path)
    problems = resource_problems(spec)
    if not problems and check_data:
        problems = data_problems(spec)
    if problems:
        raise SpecError(str(path), problems)
    return spec
