"""Load labelled examples once, and split them into stratified folds that never change.

Sources: a local csv/tsv/jsonl/json/parquet file (compressed too), a ``pkg:`` file inside an
installed package, or a hub dataset name through ``datasets`` (needs the network).

Every problem with the data raises :class:`DataError` with one line that names the source and
the column or rule at fault; ``DataError.field`` names the study-spec field.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.config import DataConfig, TrainerConfig
from trainer.errors import DataError
from trainer.resources import (
    DATA_SUFFIXES,
    ResourceError,
    data_suffix,
    is_data_file_name,
    looks_local,
    resolve_local,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Examples:
    """Texts (one column, or two for sentence pairs) with integer labels.

    ``labels[i]`` indexes ``label_names``; rows keep the source order.
    """

    texts: tuple[tuple[str, ...], ...]
    labels: np.ndarray
    label_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.texts) == 2

    def fingerprint(self) -> str:
        """SHA-256 over the rows used (texts and label names, in order): the data's identity."""
        digest = hashlib.sha256()
        for i in range(len(self)):
            for column in self.texts:
                digest.update(column[i].encode())
                digest.update(b"\x1f")
            digest.update(self.label_names[int(self.labels[i])].encode())
            digest.update(b"\x1e")
        return digest.hexdigest()


@dataclass(frozen=True)
class LoadReport:
    """What loading did to the source's rows, for reports (:func:`load_with_report`).

    ``rows_read`` is the table's size; the others count rows left out, each for one reason:
    no value in the label column, a label outside ``DataConfig.labels``, or not drawn by
    ``DataConfig.subsample``. Rows with an empty text are kept (see ``empty_texts``).
    """

    rows_read: int
    missing_label: int = 0
    other_label: int = 0
    subsampled_out: int = 0


def _read_file(path: Path) -> pd.DataFrame:
    import pandas as pd

    suffix = data_suffix(path.name)
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            return pd.read_json(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except Exception as e:  # pandas raises many types; the user needs the file and the reason
        raise DataError(f"{path}: cannot read as {suffix[1:]}: {e}".splitlines()[0]) from e
    raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {DATA_SUFFIXES}")


def _read_hub(name: str, split: str) -> pd.DataFrame:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types; the user needs the name and the reason
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"{name}: the hub dataset could not be loaded (split {split!r}): {reason}; "
            "this machine may be offline: point data.source at a local file"
        ) from e
    return dataset.to_pandas()


def read_table(config: DataConfig) -> pd.DataFrame:
    """The raw table behind ``config.source``."""
    try:
        local = resolve_local(config.source)
    except ResourceError as e:
        raise DataError(str(e)) from e
    if local is not None:
        if local.is_dir():
            raise DataError(f"{local}: is a directory; expected a data file")
        return _read_file(local)
    if looks_local(config.source) or is_data_file_name(config.source):
        raise DataError(f"{config.source}: no such file")
    return _read_hub(config.source, config.split)


def _as_label_strings(values: pd.Series) -> pd.Series:
    """Labels as strings; integral floats (an int column with gaps) read "1", not "1.0"."""
    if values.dtype.kind == "f" and bool((values.dropna() % 1 == 0).all()):
        return values.map(lambda v: str(int(v)))
    return values.map(str)


def _label_names(values: pd.Series) -> list[str]:
    """Sorted unique labels: numerically for int labels, else as strings."""
    uniques = values.dropna().unique().tolist()
    if all(isinstance(v, int | np.integer) for v in uniques):
        return [str(v) for v in sorted(uniques)]
    if all(isinstance(v, float | np.floating) and float(v).is_integer() for v in uniques):
        return [str(int(v)) for v in sorted(uniques)]
    return sorted(str(v) for v in uniques)


def load_examples(config: DataConfig) -> Examples:
    """Read, filter, label-encode and optionally subsample the examples.

    See :func:`load_with_report`, which also counts the rows left out.
    """
    return load_with_report(config)[0]


def load_with_report(config: DataConfig) -> tuple[Examples, LoadReport]:
    """Read, filter, label-encode and optionally subsample the examples; count what was left out.

    Rows without a label are left out; a missing text reads as an empty one.

    Label names are strings in the order of ``config.labels`` when given (which also drops rows
    with other labels), else sorted. ``config.subsample`` keeps a stratified, seeded sample of
    that many rows (in source order); a larger value keeps everything.

    Raises:
        DataError: missing or unreadable file, missing column, empty data, a label subset
            matching nothing, fewer than two classes, or a subsample smaller than the classes
            or of data with a class of one row.
    """
    table = read_table(config)
    where = config.source
    missing = [c for c in (*config.text, config.label) if c not in table.columns]
    if missing:
        field = "data.text" if set(missing) & set(config.text) else "data.label"
        raise DataError(
            f"{where}: column(s) {missing} not found; the file has {list(table.columns)}", field
        )
    rows_read = len(table)
    table = table[table[config.label].notna()]
    missing_label = rows_read - len(table)
    raw_labels = _as_label_strings(table[config.label])
    if config.labels is not None:
        keep = raw_labels.isin(config.labels)
        if not keep.any():
            raise DataError(
                f"{where}: no row has a label in {list(config.labels)}; the column "
                f"{config.label!r} holds {_label_names(table[config.label])[:10]}",
                "data.labels",
            )
        table, raw_labels = table[keep], raw_labels[keep]
        other_label = int((~keep).sum())
        names = [n for n in config.labels if n in set(raw_labels)]
    else:
        names = _label_names(table[config.label])
        other_label = 0
    if len(table) == 0:
        raise DataError(f"{where}: the dataset is empty (no row with a label in {config.label!r})")
    if len(names) < 2:
        raise DataError(
            f"{where}: only one class ({names}) in column {config.label!r}", "data.label"
        )
    ids = {name: i for i, name in enumerate(names)}
    labels = raw_labels.map(ids).to_numpy(dtype=np.int64)
    texts = tuple(tuple(table[c].fillna("").astype(str).tolist()) for c in config.text)
    examples = Examples(texts=texts, labels=labels, label_names=tuple(names), source=where)
    if config.subsample is not None and config.subsample < len(examples):
        if config.subsample < len(names):
            raise DataError(
                f"{where}: subsample={config.subsample} is smaller than the {len(names)} classes",
                "data.subsample",
            )
        single = [name for name, n in class_counts(examples).items() if n < 2]
        if single:  # a stratified sample needs two rows of a class to know its share
            raise DataError(
                f"{where}: subsample={config.subsample} needs at least 2 rows of every class; "
                f"{single[:5]} have 1",
                "data.subsample",
            )
        examples = subsample(examples, config.subsample, config.subsample_seed)
    report = LoadReport(
        rows_read=rows_read,
        missing_label=missing_label,
        other_label=other_label,
        subsampled_out=len(table) - len(examples),
    )
    logger.debug("loaded %d examples, %d classes from %s", len(examples), len(names), where)
    return examples, report


def subsample(examples: Examples, n: int, seed: int) -> Examples:
    """A stratified, seeded sample of ``n`` rows, in source order."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(examples))
    chosen, _ = train_test_split(index, train_size=n, stratify=examples.labels, random_state=seed)
    chosen = np.sort(chosen)
    return Examples(
        texts=tuple(tuple(column[i] for i in chosen) for column in examples.texts),
        labels=examples.labels[chosen],
        label_names=examples.label_names,
        source=examples.source,
    )


def make_folds(
    labels: np.ndarray, n_folds: int, seed: int, *, source: str | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, held-out) index pairs, in fold order.

    Depends only on ``labels``, ``n_folds`` and ``seed``: fold i holds the same rows in every
    trial, every process and on every host.

    Args:
        source: named in error messages (the data source the labels came from).

    Raises:
        DataError: ``n_folds < 2``, or a class has fewer rows than ``n_folds``.
    """
    from sklearn.model_selection import StratifiedKFold

    where = f"{source}: " if source else ""
    if n_folds < 2:
        raise DataError(
            f"{where}n_folds={n_folds}; cross-validation needs at least 2", "cv.n_folds"
        )
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if n_folds > smallest:
        raise DataError(
            f"{where}n_folds={n_folds} but the smallest class has only {smallest} rows",
            "cv.n_folds",
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(train, held) for train, held in splitter.split(np.zeros(len(labels)), labels)]


def load_folds(config: TrainerConfig) -> tuple[Examples, list[tuple[np.ndarray, np.ndarray]]]:
    """The rows a study cross-validates on and its folds, as every trial (and every baseline)
    sees them: ``load_examples(config.data)`` split by ``make_folds`` with ``config.n_folds``
    and ``config.split_seed``."""
    examples = load_examples(config.data)
    folds = make_folds(examples.labels, config.n_folds, config.split_seed, source=examples.source)
    return examples, folds


def class_counts(examples: Examples) -> dict[str, int]:
    """Rows per label name."""
    counts: Any = np.bincount(examples.labels, minlength=len(examples.label_names))
    return {name: int(counts[i]) for i, name in enumerate(examples.label_names)}


def empty_texts(examples: Examples) -> tuple[int, ...]:
    """Rows whose text is empty or only whitespace, per text column (a missing text reads as
    empty): such rows are kept and train with nothing in that column's place."""
    return tuple(sum(1 for text in column if not text.strip()) for column in examples.texts)
