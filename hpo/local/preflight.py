"""Checks a spec must pass before anything is created, and what its data holds.

Run by ``hpo validate``, ``hpo create`` and ``hpo run`` before any GPU-hour is spent. Errors
block (a :class:`SpecError`, one line each naming the field); warnings and notes do not. The
trainer measures (``trainer.profile``, ``trainer.checkpoint``, ``trainer.tokens``, with the
token lengths cached); the thresholds and the wording live here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.errors import SpecError
from hpo.spec.model import StudySpec, load_spec
from trainer.resources import is_data_file_name, looks_local

if TYPE_CHECKING:
    from trainer import CheckpointInfo, DataProfile, LengthStats, PositionLimit

logger = logging.getLogger(__name__)


# Warn when more than this share of the examples is longer than model.max_seq_len.
TRUNCATED_SHARE_WARNING = 0.10
# Warn when a class has fewer rows than this in some fold's training part: a fine-tuned head
# sees too few examples of it to learn it, and its held-out scores swing with every row.
MIN_TRAIN_ROWS_PER_CLASS = 10
# Warn when the largest class has more than this many times the rows of the smallest.
IMBALANCE_RATIO_WARNING = 5.0
_NAMED_CLASSES = 8  # classes named in one line at most
_QUOTED_CHARS = 60  # characters of an example text quoted in a line


@dataclass(frozen=True)
class Preflight:
    """A spec that passed its checks, with what they found about its model and data.

    ``notes`` are measurements (class counts, token lengths), ``warnings`` are worth acting on
    but do not block; each line starts with the spec field it is about.
    """

    spec: StudySpec
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass
class _Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def looks_like_local_path(ref: str) -> bool:
    """A reference the user meant as a file or dir on this machine (not a hub id)."""
    return looks_local(ref) or Path(ref).exists()


def resource_problems(spec: StudySpec) -> list[str]:
    """One line per model or data reference that does not resolve on this machine."""
    from trainer.resources import ResourceError, is_pkg_ref, resolve_pkg_path

    problems = []
    refs = [
        ("model.name_or_path", spec.model.name_or_path, True),
        ("data.source", spec.data.source, False),
    ]
    for field_name, ref, is_model in refs:
        if is_pkg_ref(ref):
            try:
                resolve_pkg_path(ref)
            except ResourceError as e:
                problems.append(f"{field_name}: {e}")
            continue
        is_local = looks_like_local_path(ref) or (not is_model and is_data_file_name(ref))
        if is_local:
            path = Path(ref.removeprefix("file:")).expanduser()
            if not path.exists():
                problems.append(f"{field_name}: {ref!r}: no such file or directory")
            elif is_model and not (path / "config.json").is_file():
                problems.append(f"{field_name}: {ref!r}: not a model dir (no config.json)")
    return problems


def _model_findings(spec: StudySpec, found: _Findings) -> CheckpointInfo | None:
    """The checkpoint's tokenizer and position limit; None where it cannot be read here."""
    from trainer import ModelError, inspect_checkpoint
    from trainer.resources import is_pkg_ref

    ref = spec.model.name_or_path
    try:
        checkpoint = inspect_checkpoint(ref)
    except ModelError as e:
        if is_pkg_ref(ref) or looks_like_local_path(ref):
            found.errors.append(f"model.name_or_path: {e}")
        else:  # a hub id this machine cannot fetch may still reach the workers' hosts
            found.warnings.append(
                f"model.name_or_path: {e}; token lengths and position limit not checked"
            )
        return None
    limit = checkpoint.positions
    if limit is not None and spec.model.max_seq_len > limit.max_tokens:
        found.errors.append(_beyond_positions(spec.model.max_seq_len, checkpoint, limit))
    return checkpoint


def _beyond_positions(max_seq_len: int, checkpoint: CheckpointInfo, limit: PositionLimit) -> str:
    table = f"max_position_embeddings={limit.table_size}"
    if limit.reserved:
        table += (
            f", less {limit.reserved} a {checkpoint.model_type} model reserves (padding_idx + 1)"
        )
    return (
        f"model.max_seq_len: {max_seq_len} is beyond the model's {limit.max_tokens} positions "
        f"({table}); expected at most {limit.max_tokens}"
    )


def _data_findings(spec: StudySpec, checkpoint: CheckpointInfo | None, found: _Findings) -> None:
    """Load the data as the workers will, profile it, and measure its token lengths."""
    from hpo.translate import trainer_config
    from trainer import DataError, length_stats, load_with_report, profile_examples, token_lengths

    config = trainer_config(spec)
    try:
        examples, load = load_with_report(config.data)
    except DataError as e:
        found.errors.append(f"{e.field}: {e}")
        return
    profile = profile_examples(examples, load, spec.cv.n_folds)
    _class_findings(spec, profile, examples.source, found)
    _row_findings(spec, profile, found)
    if checkpoint is not None:
        lengths, _ = token_lengths(checkpoint.tokenizer, examples, config.cache_dir)
        stats = length_stats(lengths, spec.model.max_seq_len)
        _length_findings(stats, checkpoint.positions, found)


def _named(counts: dict[str, int]) -> str:
    """``'a' 3, 'b' 1`` for at most a few classes, then how many more."""
    shown = [f"{name!r} {n}" for name, n in list(counts.items())[:_NAMED_CLASSES]]
    more = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _class_findings(spec: StudySpec, profile: DataProfile, source: str, found: _Findings) -> None:
    counts = profile.class_counts
    n_folds = spec.cv.n_folds
    by_size = dict(sorted(counts.items(), key=lambda item: -item[1]))
    found.notes.append(
        f"data.label: {profile.n_rows} rows in {len(counts)} classes: {_named(by_size)}"
    )
    below_folds = {name: n for name, n in counts.items() if n < n_folds}
    if below_folds:
        found.errors.append(
            f"cv.n_folds: {source}: n_folds={n_folds} but the smallest class has only "
            f"{min(below_folds.values())} rows ({_named(below_folds)}); every class needs at "
            "least n_folds rows: lower cv.n_folds, add examples, or leave it out with data.labels"
        )
    thin = {
        name: rows
        for name, rows in profile.train_rows_per_class.items()
        if rows < MIN_TRAIN_ROWS_PER_CLASS and name not in below_folds
    }
    if thin:
        found.warnings.append(
            f"data.label: {len(thin)} class(es) with fewer than {MIN_TRAIN_ROWS_PER_CLASS} rows "
            f"in a fold's training part (cv.n_folds={n_folds}): {_named(thin)}; too few to "
            "learn from: add examples, or leave them out with data.labels"
        )
    largest, smallest = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    ratio = counts[largest] / max(1, counts[smallest])
    searched = spec.search.space.class_weights is not None
    weighted = spec.train.class_weights == "balanced" or searched
    if ratio > IMBALANCE_RATIO_WARNING and not weighted:
        metric = " and objective.metric: f1_macro" if spec.objective.metric == "accuracy" else ""
        found.warnings.append(
            f"data.label: classes are imbalanced: {largest!r} has {counts[largest]} rows, "
            f"{smallest!r} {counts[smallest]} ({ratio:.1f}x); consider "
            f"train.class_weights: balanced{metric}"
        )


def _quoted(texts: tuple[str, ...]) -> str:
    text = " | ".join(texts)
    if len(text) > _QUOTED_CHARS:
        text = text[: _QUOTED_CHARS - 3] + "..."
    return repr(text)


def _row_findings(spec: StudySpec, profile: DataProfile, found: _Findings) -> None:
    load = profile.load
    if load.missing_label:
        found.warnings.append(
            f"data.label: {load.missing_label} of {load.rows_read} rows have no "
            f"{spec.data.label!r} value and are left out"
        )
    if load.other_label:
        found.notes.append(f"data.labels: {load.other_label} rows with other labels left out")
    if load.subsampled_out:
        drawn = profile.n_rows
        found.notes.append(f"data.subsample: {drawn} of {drawn + load.subsampled_out} rows drawn")
    for column, n_empty in zip(spec.data.text, profile.empty_texts, strict=True):
        if n_empty:
            found.warnings.append(
                f"data.text: {n_empty} rows have an empty {column!r} text; they are kept and "
                "train with nothing in its place"
            )
    conflicts = profile.conflicts
    if conflicts.n_texts:
        found.warnings.append(
            f"data.label: {conflicts.n_texts} texts occur with different labels "
            f"({conflicts.n_rows} rows), e.g. {_quoted(conflicts.example)} as "
            f"{', '.join(conflicts.example_labels)}; no model fits both: fix or drop them"
        )
    if profile.duplicate_rows:
        found.notes.append(
            f"data.text: {profile.duplicate_rows} rows repeat an earlier text (a repeat can "
            "sit in a training and a held-out fold at once)"
        )


def _length_findings(stats: LengthStats, limit: PositionLimit | None, found: _Findings) -> None:
    found.notes.append(
        f"model.max_seq_len: {stats.max_seq_len}: {stats.truncated_share:.1%} of "
        f"{stats.n_examples} examples are longer and get truncated; length in tokens "
        f"p50 {stats.p50}, p90 {stats.p90}, longest {stats.longest}"
    )
    if stats.truncated_share <= TRUNCATED_SHARE_WARNING:
        return
    ceiling = limit.max_tokens if limit is not None else None
    if ceiling is not None and stats.max_seq_len >= ceiling:
        advice = f"the model takes no more than {ceiling} tokens"
    else:
        suggested = -(-stats.p90 // 16) * 16  # p90 rounded up to a multiple of 16
        if ceiling is not None:
            suggested = min(suggested, ceiling)
        advice = f"consider max_seq_len: {suggested} (costs grow with it)"
    found.warnings.append(
        f"model.max_seq_len: {stats.truncated_share:.1%} of examples ({stats.n_truncated} of "
        f"{stats.n_examples}) are longer than {stats.max_seq_len} tokens and get truncated "
        f"(p90 {stats.p90}); {advice}"
    )


def inspect_spec_file(path: Path, *, check_data: bool = True) -> Preflight:
    """Load a spec, check what it names, and profile its model and data.

    With ``check_data`` (the default) the model's config and tokenizer are read (not its
    weights) and the data is loaded as the workers will load it; token lengths are cached
    on disk next to the workers' tokenization cache. Notes are also logged at INFO.

    Raises:
        SpecError: one line per error, each naming the file and field. Warnings are not
            reported alongside errors: they come once the errors are fixed.
    """
    spec = load_spec(path)
    found = _Findings(errors=resource_problems(spec))
    if not found.errors and check_data:
        checkpoint = _model_findings(spec, found)
        _data_findings(spec, checkpoint, found)
    if found.errors:
        raise SpecError(str(path), found.errors)
    for note in found.notes:
        logger.debug("%s", note)
    return Preflight(spec, tuple(found.notes), tuple(found.warnings))


def check_spec_file(path: Path, *, check_data: bool = True) -> StudySpec:
    """:func:`inspect_spec_file`, keeping only the spec (notes and warnings are dropped).

    Raises:
        SpecError: one line per problem, each naming the file and field.
    """
    return inspect_spec_file(path, check_data=check_data).spec
