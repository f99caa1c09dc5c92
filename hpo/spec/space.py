"""The search space: its YAML shape and the one place that calls ``trial.suggest_*``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from trainer.config import ClassWeights, Pooling

if TYPE_CHECKING:
    import optuna

Scalar = int | float | str | bool


class Strict(BaseModel):
    """A spec section: unknown keys are errors, and a loaded spec cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(Strict):
    """A float in [low, high]; ``log`` samples on a log scale (needs low > 0)."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low={self.low} > high={self.high}; expected low <= high")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self


class IntRange(Strict):
    """An integer in [low, high] with ``step``; ``log`` samples on a log scale (needs low >= 1)."""

    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_bounds(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low={self.low} > high={self.high}; expected low <= high")
        if self.log and self.low < 1:
            raise ValueError(f"log scale needs low >= 1, got low={self.low}")
        return self


class Choices(Strict):
    """One of a fixed list of values, in the order given."""

    choices: tuple[Scalar, ...] = Field(min_length=1)


def _range_or_choices(value: Any) -> str:
    """The tag of a param: from YAML (a mapping) when validating, from the model when
    serializing."""
    if isinstance(value, Choices) or (isinstance(value, dict) and "choices" in value):
        return "choices"
    return "range"


IntParam = Annotated[
    Annotated[IntRange, Tag("range")] | Annotated[Choices, Tag("choices")],
    Discriminator(_range_or_choices),
]
FloatParam = Annotated[
    Annotated[FloatRange, Tag("range")] | Annotated[Choices, Tag("choices")],
    Discriminator(_range_or_choices),
]
Param = FloatRange | IntRange | Choices


def _check_interval(
    name: str, param: Param | None, *, low: float, high: float, closed_high: bool = True
) -> None:
    """Check that every value ``param`` can produce lies in [low, high] (or [low, high))."""
    if param is None:
        return
    values: list[float] = []
    if isinstance(param, Choices):
        for v in param.choices:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{name}: choice {v!r} is not a number")
            values.append(v)
    else:
        values = [param.low, param.high]
    for v in values:
        too_high = v > high if closed_high else v >= high
        if v < low or too_high:
            bracket = "]" if closed_high else ")"
            raise ValueError(f"{name}: {v} is outside [{low}, {high}{bracket}")


class SearchSpace(Strict):
    """The hyperparameters searched. ``lr``, ``dropout``, ``l1`` and ``l2`` are required.

    Names are the same in YAML, in Optuna params, in the exported config and in the trainer.
    """

    lr: FloatParam
    dropout: FloatParam
    l1: FloatParam
    l2: FloatParam
    batch_size: IntParam | None = None
    epochs: IntParam | None = None
    warmup_ratio: FloatParam | None = None
    weight_decay: FloatParam | None = None
    freeze_layers: IntParam | None = None
    pooling: Choices | None = None
    class_weights: Choices | None = None

    @model_validator(mode="after")
    def _check_domains(self) -> SearchSpace:
        _check_interval("lr", self.lr, low=1e-12, high=1.0)
        _check_interval("dropout", self.dropout, low=0.0, high=1.0, closed_high=False)
        _check_interval("l1", self.l1, low=0.0, high=math.inf)
        _check_interval("l2", self.l2, low=0.0, high=math.inf)
        _check_interval("batch_size", self.batch_size, low=1, high=math.inf)
        _check_interval("epochs", self.epochs, low=1, high=math.inf)
        _check_interval("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, closed_high=False)
        _check_interval("weight_decay", self.weight_decay, low=0.0, high=math.inf)
        _check_interval("freeze_layers", self.freeze_layers, low=0, high=math.inf)
        for name in ("batch_size", "epochs", "freeze_layers"):
            param = getattr(self, name)
            if isinstance(param, Choices) and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in param.choices
            ):
                raise ValueError(f"{name}: choices must be integers, got {list(param.choices)}")
        for name, allowed in (("pooling", Pooling), ("class_weights", ClassWeights)):
            choices = getattr(self, name)
            if choices is not None:
                expected = get_args(allowed)
                bad = [v for v in choices.choices if v not in expected]
                if bad:
                    raise ValueError(
                        f"{name}: {bad} not allowed; expected choices from [{', '.join(expected)}]"
                    )
        return self

    def items(self) -> Iterator[tuple[str, Param]]:
        """The searched parameters in declaration order, skipping those not named."""
        for name in type(self).model_fields:
            param = getattr(self, name)
            if param is not None:
                yield name, param

    def grid(self, n_points: int) -> dict[str, list[Scalar]]:
        """Every searched parameter discretized for grid search (see :func:`grid_values`)."""
        return {name: grid_values(param, n_points) for name, param in self.items()}


def check_point(space: SearchSpace, point: dict[str, Any]) -> list[str]:
    """Problems of a known configuration given for the space (``search.enqueue``), one line
    each naming the parameter; none if every value is one the space can produce."""
    params = dict(space.items())
    problems = []
    for name, value in point.items():
        param = params.get(name)
        if param is None:
            problems.append(f"{name}: not in search.space (expected one of {sorted(params)})")
        elif isinstance(param, Choices):
            if value not in param.choices:
                problems.append(f"{name}: {value!r} is not one of {list(param.choices)}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name}: {value!r} is not a number")
        elif isinstance(param, IntRange) and value != int(value):
            problems.append(f"{name}: {value!r} is not an integer")
        elif not param.low <= value <= param.high:
            problems.append(f"{name}: {value!r} is outside [{param.low}, {param.high}]")
    return problems


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample every parameter of ``space`` from ``trial``; the only caller of ``suggest_*``.

    Returns:
        Param name to sampled value, in the space's declaration order.
    """
    params: dict[str, Any] = {}
    for name, param in space.items():
        if isinstance(param, Choices):
            params[name] = trial.suggest_categorical(name, list(param.choices))
        elif isinstance(param, IntRange):
            params[name] = trial.suggest_int(
                name, param.low, param.high, step=param.step, log=param.log
            )
        else:
            params[name] = trial.suggest_float(
                name, param.low, param.high, step=param.step, log=param.log
            )
    return params


def grid_values(param: Param, n_points: int) -> list[Scalar]:
    """Discretize one parameter for grid search: choices as is, ranges into ``n_points`` values.

    Float ranges are spaced geometrically on a log scale and evenly otherwise; a ``step``
    wins over ``n_points``. Integer ranges use their ``step`` when that gives few values.
    """
    if isinstance(param, Choices):
        return list(param.choices)
    if isinstance(param, IntRange):
        values = list(range(param.low, param.high + 1, param.step))
        if len(values) <= n_points:
            return list(values)
        picks = {values[round(i * (len(values) - 1) / (n_points - 1))] for i in range(n_points)}
        return sorted(picks)
    if param.step is not None:
        n = math.floor((param.high - param.low) / param.step + 1e-9) + 1
        return [param.low + i * param.step for i in range(n)]
    if n_points == 1 or param.low == param.high:
        return [param.low]
    if param.log:
        lo, hi = math.log(param.low), math.log(param.high)
        inner = [math.exp(lo + i * (hi - lo) / (n_points - 1)) for i in range(1, n_points - 1)]
    else:
        span = param.high - param.low
        inner = [param.low + i * span / (n_points - 1) for i in range(1, n_points - 1)]
    # Exact endpoints: float round-off must not step outside [low, high].
    return [param.low, *inner, param.high]
