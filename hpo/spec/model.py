"""The study spec: a YAML file loaded into a frozen, validated model.

Every error names the field path, the bad value and what was expected; unknown keys are errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from hpo.errors import SpecError
from hpo.search import PRUNERS, SAMPLERS, check_pruner_options, check_sampler_options
from hpo.spec.space import SearchSpace, Strict
from trainer.config import Anchor, ClassWeights, Pooling, PrecisionRequest

STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Fields added after studies were first stored, with their defaults. A spec that leaves such a
# field at its default hashes as it did before the field existed, so ``hpo create`` and
# ``hpo run`` still recognize the studies already in a store (their stored hash).
HASH_NEUTRAL_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("train", "class_weights"): "none",
    ("train", "precision"): "auto",
    ("search", "enqueue"): [],
    ("search", "space", "class_weights"): None,
}

MetricName = Literal["accuracy", "f1_macro", "roc_auc", "loss"]
Direction = Literal["maximize", "minimize"]


class ModelSpec(Strict):
    """The pretrained checkpoint: a hub id, a local dir, or ``pkg:<module>/<path>``."""

    name_or_path: str = Field(min_length=1)
    max_seq_len: int = Field(default=128, ge=8, le=8192)


class DataSpec(Strict):
    """Where the examples come from: a local csv/jsonl/parquet file, ``pkg:…``, or a hub name."""

    source: str = Field(min_length=1)
    text: tuple[str, ...] = Field(min_length=1, max_length=2)
    label: str = Field(min_length=1)
    labels: tuple[str, ...] | None = Field(default=None, min_length=2)
    subsample: int | None = Field(default=None, ge=2)
    split: str = "train"

    @field_validator("text", mode="before")
    @classmethod
    def _one_column_as_tuple(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value


class CVSpec(Strict):
    """Stratified k-fold layout; ``split_seed`` fixes which rows each fold holds."""

    n_folds: int = Field(default=5, ge=2, le=50)
    split_seed: int = 0


class TrainSpec(Strict):
    """Training defaults; a searched parameter of the same name overrides its default."""

    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=64, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    freeze_layers: int = Field(default=0, ge=0)
    pooling: Pooling = "cls"
    anchor: Anchor = "zero"
    # "balanced": cross-entropy weights n / (n_classes * count_c) from each fold's training rows.
    class_weights: ClassWeights = "none"
    seed: int = 0
    # torch.compile the model (dynamic shapes). Pays off on GPUs for long trials; see BENCHMARKS.md.
    torch_compile: bool = False
    # auto: bf16 autocast where the device has native bf16 and a probe measures it faster
    # (trainer.precision), else fp32. Each trial records what it ran in; exports carry that.
    precision: PrecisionRequest = "auto"


def _one_of(name: str, table: Mapping[str, Any]) -> str:
    if name not in table:
        raise ValueError(f"{name!r}: expected one of {', '.join(repr(k) for k in table)}")
    return name


class SamplerSpec(Strict):
    """Which Optuna sampler proposes trials; ``options`` go to its constructor."""

    name: str = "tpe"  # a key of ``hpo.search.SAMPLERS``, the one list of names
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _one_of(name, SAMPLERS)

    @model_validator(mode="after")
    def _check_options(self) -> SamplerSpec:
        check_sampler_options(self.name, self.options)
        return self


class PrunerSpec(Strict):
    """Which pruner stops losing trials early; ``options`` go to its constructor."""

    name: str = "fold_aware"  # a key of ``hpo.search.PRUNERS``
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _one_of(name, PRUNERS)

    @model_validator(mode="after")
    def _check_options(self) -> PrunerSpec:
        check_pruner_options(self.name, self.options)
        return self


class SearchSpec(Strict):
    space: SearchSpace
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    # Known-good configurations tried first, in order (a sensible baseline as trial 0 instead of
    # a random draw); a parameter left out is sampled.
    enqueue: tuple[dict[str, Any], ...] = ()

    @model_validator(mode="after")
    def _check_enqueue(self) -> SearchSpec:
        from hpo.spec.space import check_point

        problems = [
            f"enqueue.{i}.{problem}"
            for i, point in enumerate(self.enqueue)
            for problem in check_point(self.space, point)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ObjectiveSpec(Strict):
    """The CV metric to optimize. ``direction`` defaults to the metric's natural one."""

    metric: MetricName = "accuracy"
    direction: Direction | None = None

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> ObjectiveSpec:
        natural: Direction = "minimize" if self.metric == "loss" else "maximize"
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(
                f"direction={self.direction!r} does not fit metric={self.metric!r}; "
                f"expected {natural!r}"
            )
        return self


class BudgetSpec(Strict):
    """When the study stops: finished trials across all workers, wall time, or a target score."""

    n_trials: int = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    target: float | None = None


class StudySpec(Strict):
    """A whole study: what to fine-tune, on what data, how to search, when to stop."""

    name: str
    model: ModelSpec
    data: DataSpec
    cv: CVSpec = Field(default_factory=CVSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    search: SearchSpec
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not STUDY_NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid study name; expected 1-128 letters, digits, '-', '_' "
                "or '.', starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _check_cross_fields(self) -> StudySpec:
        if self.data.subsample is not None and self.data.subsample < 2 * self.cv.n_folds:
            raise ValueError(
                f"data.subsample={self.data.subsample} is too small for cv.n_folds="
                f"{self.cv.n_folds}; expected at least {2 * self.cv.n_folds} rows"
            )
        return self

    @property
    def direction(self) -> Direction:
        assert self.objective.direction is not None
        return self.objective.direction

    def to_json_dict(self) -> dict[str, Any]:
        """The resolved spec (every default filled) as plain JSON types."""
        return self.model_dump(mode="json")

    def spec_hash(self) -> str:
        """A stable hash of the resolved spec; equal specs hash equal whatever their YAML form.

        Fields of :data:`HASH_NEUTRAL_DEFAULTS` at their default are left out: adding a field
        does not change the hash of the specs that do not use it.
        """
        resolved = self.to_json_dict()
        for (*parents, leaf), default in HASH_NEUTRAL_DEFAULTS.items():
            node = resolved
            for key in parents:
                node = node[key]
            if node.get(leaf, default) == default:
                node.pop(leaf, None)
        canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: ``field.path: bad value: what was expected``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"] if not _is_union_tag(p))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
        elif item["type"] in ("value_error", "assertion_error"):
            lines.append(f"{loc}: {message}" if loc else message)
        else:
            lines.append(f"{loc}: {_short(item.get('input'))}: {message}")
    return lines


def _is_union_tag(part: int | str) -> bool:
    return part in ("range", "choices") or str(part).startswith("function-")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_spec(data: Any, *, source: str = "<spec>") -> StudySpec:
    """Validate an already-parsed mapping into a StudySpec.

    Raises:
        SpecError: with one line per problem, each naming the field path.
    """
    if not isinstance(data, dict):
        raise SpecError(source, [f"top level: expected a mapping, got {type(data).__name__}"])
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(source, format_validation_error(e)) from e


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML study spec (safe loader: no object tags).

    Raises:
        SpecError: the file is missing, unreadable, not YAML, or not a valid spec.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(source, [f"cannot read file: {e.strerror or e}"]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(source, [f"malformed YAML: {where}{problem}"]) from e
    return parse_spec(data, source=source)


def spec_from_json(data: dict[str, Any]) -> StudySpec:
    """Rebuild a spec stored in a study's user attributes."""
    return parse_spec(data, source="<stored spec>")
