"""A profile of the examples before any training: what a user should know about their data.

Facts only (class counts, rows left out, duplicates, token lengths); which of them deserve a
warning is for the caller to decide. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.data import Examples, LoadReport, class_counts, empty_texts


@dataclass(frozen=True)
class LabelConflicts:
    """Texts that occur more than once with different labels (exact string match).

    ``example`` is the first such text in row order (one string per text column) and
    ``example_labels`` its labels in label order; both empty when there is none.
    """

    n_texts: int
    n_rows: int
    example: tuple[str, ...] = ()
    example_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataProfile:
    """The examples as cross-validation will see them.

    ``class_counts`` and ``train_rows_per_class`` are in label order; the latter is the fewest
    rows of each class in any fold's training part. ``empty_texts`` counts per text column;
    ``duplicate_rows`` the rows whose text occurred in an earlier row (any label).
    """

    n_rows: int
    class_counts: dict[str, int]
    train_rows_per_class: dict[str, int]
    empty_texts: tuple[int, ...]
    duplicate_rows: int
    conflicts: LabelConflicts
    load: LoadReport


@dataclass(frozen=True)
class LengthStats:
    """Untruncated token lengths (special tokens included) against ``max_seq_len``.

    An example is truncated when it is longer than ``max_seq_len``. Percentiles are lengths
    that occur in the data (the nearest rank above).
    """

    max_seq_len: int
    n_examples: int
    n_truncated: int
    p50: int
    p90: int
    longest: int

    @property
    def truncated_share(self) -> float:
        return self.n_truncated / self.n_examples if self.n_examples else 0.0


def fold_train_rows(count: int, n_folds: int) -> int:
    """The fewest rows of a class of ``count`` rows in a fold's training part.

    Stratified k-fold holds out ``floor`` or ``ceil`` of ``count / n_folds`` rows of each class
    per fold, so the smallest training part keeps ``count - ceil(count / n_folds)``.
    """
    return count - math.ceil(count / n_folds)


def label_conflicts(examples: Examples) -> tuple[LabelConflicts, int]:
    """Texts seen with more than one label, and the number of rows repeating an earlier text."""
    labels_of: dict[tuple[str, ...], set[int]] = {}
    rows_of: dict[tuple[str, ...], int] = {}
    rows = zip(*examples.texts, strict=True)  # one tuple of texts per row
    for key, label in zip(rows, examples.labels.tolist(), strict=True):
        labels_of.setdefault(key, set()).add(label)
        rows_of[key] = rows_of.get(key, 0) + 1
    duplicate_rows = sum(n - 1 for n in rows_of.values())
    conflicting = [key for key, labels in labels_of.items() if len(labels) > 1]
    if not conflicting:
        return LabelConflicts(0, 0), duplicate_rows
    first = conflicting[0]
    return (
        LabelConflicts(
            n_texts=len(conflicting),
            n_rows=sum(rows_of[key] for key in conflicting),
            example=first,
            example_labels=tuple(examples.label_names[i] for i in sorted(labels_of[first])),
        ),
        duplicate_rows,
    )


def profile_examples(examples: Examples, load: LoadReport, n_folds: int) -> DataProfile:
    """Counts, rows left out, empty texts and label conflicts of ``examples``."""
    counts = class_counts(examples)
    conflicts, duplicate_rows = label_conflicts(examples)
    return DataProfile(
        n_rows=len(examples),
        class_counts=counts,
        train_rows_per_class={name: fold_train_rows(n, n_folds) for name, n in counts.items()},
        empty_texts=empty_texts(examples),
        duplicate_rows=duplicate_rows,
        conflicts=conflicts,
        load=load,
    )


def length_stats(lengths: np.ndarray, max_seq_len: int) -> LengthStats:
    """Summarize untruncated token lengths (``trainer.tokens.token_lengths``) against
    ``max_seq_len``."""
    if len(lengths) == 0:
        return LengthStats(max_seq_len, 0, 0, 0, 0, 0)
    return LengthStats(
        max_seq_len=max_seq_len,
        n_examples=len(lengths),
        n_truncated=int((lengths > max_seq_len).sum()),
        p50=int(np.percentile(lengths, 50, method="higher")),
        p90=int(np.percentile(lengths, 90, method="higher")),
        longest=int(lengths.max()),
    )
