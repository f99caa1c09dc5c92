"""A surrogate of the real task, built from its learning-curve table (``rt_curves.json``).

The table holds, for every configuration a quasi-random study ran to the end, its held-out
accuracy after every fold × epoch and the wall seconds of each of those steps. A replayed study
must be free to propose *any* point of the spec's search space, so a proposal has to be mapped
to a curve, as HPOBench and YAHPO map configurations through surrogates fitted to real runs:

* **Where proposals live.** In the spec's own space (``search.space``): the same distributions,
  log scales and the integer ``freeze_layers``, suggested by the product's ``suggest``.
  Distances are taken in the unit cube of that space (log where the spec says log), each axis
  divided by the length scale a Gaussian process with one length scale per axis (ARD Matérn
  5/2 plus a white-noise term) learns from the table's final CV means. The learned scales say
  which axes matter (here ``lr`` and ``freeze_layers``; ``l1`` and ``l2`` hit the upper bound,
  i.e. the table shows no effect of them), so a proposal's nearest configuration is nearest
  where it matters, not along an axis the task ignores.
* **``nn`` (nearest configuration).** A proposal *is* its nearest table configuration in that
  metric: its curve, its seconds and its final CV mean are that configuration's, exactly as it
  ran. Nothing is invented, the regret is in real table units and the optimum is the table's
  best row; the price is a piecewise-constant landscape (one cell per row), which no sampler's
  model matches.
* **``gp`` (fitted mean, nearest curve).** The proposal's final CV mean is the GP's posterior
  mean at the point (smooth between rows, shrunk towards the table's mean where rows are far);
  its curve is the nearest configuration's fold × epoch curve, shifted by the difference
  between the two final means, so the fold-to-fold and epoch-to-epoch structure (and the
  noise a single fold shows) are real ones. The optimum is the posterior mean's maximum. The
  risk: a GP-shaped landscape may favour a GP sampler, so the sampler decision is read under
  both surrogates.

Fidelity is measured, not assumed: leave-one-out, each row's final CV mean is predicted from
the other rows (the length scales refitted without it) and compared with the real one by
Spearman rank correlation and RMSE (``loo_fidelity``).

**Seed noise.** Each replayed trial is a rerun with its own seed (as every trial of a study
is: trial seeds derive from the trial number), so the scores it reports are the curve plus a
fresh offset per fold, normal with the SD that makes the CV mean's noise equal to the GP's
white-noise term (the part of the table's final means no smooth function of the params
explains). The *true* final CV mean of a proposal is the noise-free one; a study sees the
noisy one, so picking an incumbent by what it saw carries the winner's curse, as in a real
study. Draws are keyed by (seed, trial number): every contender meets the same noise.

The cost of a step is the wall seconds the table recorded for it (``cost="table"``: of the
configuration whose curve is used). The table was built on a shared machine, so those seconds
also carry the load of other jobs at that time; ``cost="typical"`` charges, instead, the median
seconds of that fold × epoch over the table's rows with the same ``freeze_layers`` (the one
searched parameter that changes the work per step), so that no proposal pays for another job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from hpo.spec.model import StudySpec
    from hpo.spec.space import SearchSpace

SurrogateKind = Literal["nn", "gp"]
CostModel = Literal["table", "typical"]
SURROGATES: tuple[SurrogateKind, ...] = ("nn", "gp")
COSTS: tuple[CostModel, ...] = ("table", "typical")


@dataclass(frozen=True)
class CurveTable:
    """The table's rows: params, ``scores[row, fold, epoch]`` (higher is better) and
    ``seconds[row, fold, epoch]`` (wall seconds of that step), with the spec that made them."""

    spec: StudySpec
    params: list[dict[str, Any]]
    scores: np.ndarray
    seconds: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.params)

    @property
    def final_means(self) -> np.ndarray:
        """Each row's final CV mean: the mean over folds of the last epoch's score."""
        return np.asarray(self.scores[:, :, -1].mean(axis=1))

    @property
    def space(self) -> SearchSpace:
        return self.spec.search.space


def load_curve_table(path: Path, *, max_rows: int | None = None) -> CurveTable:
    """Read ``rt_curves.json`` (its first ``max_rows`` rows, in trial order, if given)."""
    from hpo.spec.model import spec_from_json

    document = json.loads(path.read_text())
    if document.get("direction", "maximize") != "maximize":
        raise ValueError(f"{path}: direction {document['direction']!r}; expected maximize")
    rows = document["configs"][:max_rows]
    if len(rows) < 5:
        raise ValueError(f"{path}: {len(rows)} configurations; expected at least 5")
    return CurveTable(
        spec=spec_from_json(document["spec"]),
        params=[dict(row["params"]) for row in rows],
        scores=np.array([row["scores"] for row in rows], dtype=float),
        seconds=np.array([row["epoch_s"] for row in rows], dtype=float),
    )


def encode(params: Mapping[str, Any], space: SearchSpace) -> np.ndarray:
    """``params`` in the unit cube of ``space`` (log axes where the spec samples on a log scale).

    Choices map to their index spread over [0, 1]; the space's declaration order is the axis
    order.
    """
    from hpo.spec.space import Choices

    point = []
    for name, param in space.items():
        value = params[name]
        if isinstance(param, Choices):
            n = len(param.choices)
            point.append(param.choices.index(value) / (n - 1) if n > 1 else 0.0)
        elif param.high == param.low:
            point.append(0.0)
        elif param.log:
            low, high = math.log(param.low), math.log(param.high)
            point.append((math.log(value) - low) / (high - low))
        else:
            point.append((value - param.low) / (param.high - param.low))
    return np.array(point, dtype=float)


def fit_gp(x: np.ndarray, y: np.ndarray) -> Any:
    """An ARD Matérn-5/2 GP with a white-noise term on (``x`` in the unit cube, ``y``)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(1.0) * Matern(
        length_scale=np.ones(x.shape[1]), length_scale_bounds=(0.05, 20.0), nu=2.5
    ) + WhiteKernel(0.1, (1e-4, 1.0))
    with warnings.catch_warnings():
        # A length scale at its upper bound is the answer "this axis does not matter".
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianProcessRegressor(
            kernel, normalize_y=True, n_restarts_optimizer=3, random_state=0
        ).fit(x, y)


def length_scales(gp: Any) -> np.ndarray:
    """The fitted GP's per-axis length scales (unit-cube units; 20 = the axis does not matter)."""
    return np.asarray(gp.kernel_.k1.k2.length_scale, dtype=float)


@dataclass(frozen=True)
class Outcome:
    """What a proposal trains into: ``scores[fold, epoch]``, ``seconds[fold, epoch]``, and its
    true final CV mean (the mean over folds of ``scores[:, -1]``)."""

    row: int
    scores: np.ndarray
    seconds: np.ndarray
    true_mean: float


class Surrogate:
    """Maps a point of the spec's space to a learning curve and its cost (module docstring).

    Args:
        table: the learning-curve table.
        kind: ``nn`` (the nearest row as it ran) or ``gp`` (GP mean, nearest row's curve).
        cost: ``table`` (the row's recorded seconds) or ``typical`` (median over rows with
            the same ``freeze_layers``).
        noise: whether ``rerun`` adds seed noise (``noise_sd_fold`` per fold).
    """

    def __init__(
        self, table: CurveTable, *, kind: SurrogateKind, cost: CostModel, noise: bool = True
    ) -> None:
        if kind not in SURROGATES:
            raise ValueError(f"kind must be one of {SURROGATES}, got {kind!r}")
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
        self.table = table
        self.kind = kind
        self.cost = cost
        self._x = np.array([encode(p, table.space) for p in table.params])
        self._gp = fit_gp(self._x, table.final_means)
        self.length_scales = length_scales(self._gp)
        self._seconds = table.seconds if cost == "table" else _typical_seconds(table)
        self._cache: dict[tuple[Any, ...], Outcome] = {}
        self.best_true, self.best_params = self._optimum()
        # The GP's white-noise term is the part of a final CV mean no smooth function of the
        # params explains: seed noise (and misfit). A fold's share of it is sqrt(n_folds) larger.
        noise_var = float(self._gp.kernel_.k2.noise_level) * float(self._gp._y_train_std) ** 2
        self.noise_sd_fold = math.sqrt(noise_var * table.scores.shape[1]) if noise else 0.0

    def _nearest(self, point: np.ndarray) -> int:
        return int(np.argmin(np.linalg.norm((self._x - point) / self.length_scales, axis=1)))

    def predict_mean(self, points: np.ndarray) -> np.ndarray:
        """The surrogate's true final CV mean at each row of ``points`` (unit cube)."""
        if self.kind == "gp":
            return np.asarray(self._gp.predict(np.atleast_2d(points)), dtype=float)
        means = self.table.final_means
        return np.array([means[self._nearest(p)] for p in np.atleast_2d(points)])

    def outcome(self, params: Mapping[str, Any]) -> Outcome:
        """The curve, the cost and the true final CV mean of a proposal."""
        key = tuple(params[name] for name, _ in self.table.space.items())
        if key not in self._cache:
            point = encode(params, self.table.space)
            row = self._nearest(point)
            scores = self.table.scores[row]
            true_mean = float(self.table.final_means[row])
            if self.kind == "gp":
                mean = float(self.predict_mean(point)[0])
                scores = np.clip(scores + (mean - true_mean), 0.0, 1.0)
                true_mean = float(scores[:, -1].mean())
            self._cache[key] = Outcome(row, scores, self._seconds[row], true_mean)
        return self._cache[key]

    def rerun(self, outcome: Outcome, rng: np.random.Generator) -> np.ndarray:
        """The scores a trial of this outcome reports: the curve with fresh seed noise, one
        offset per fold (the same for each of its epochs), ``N(0, noise_sd_fold²)``."""
        n_folds = outcome.scores.shape[0]
        offsets = rng.normal(0.0, self.noise_sd_fold, size=(n_folds, 1))
        return np.asarray(np.clip(outcome.scores + offsets, 0.0, 1.0))

    def _optimum(self) -> tuple[float, dict[str, Any]]:
        """The best true final CV mean anywhere in the space, and where."""
        means = self.table.final_means
        best_row = int(np.argmax(means))
        if self.kind == "nn":
            return float(means[best_row]), dict(self.table.params[best_row])
        return _maximize_gp(self, best_row)


def _typical_seconds(table: CurveTable) -> np.ndarray:
    """Per row: the median seconds of each fold × epoch over rows with its ``freeze_layers``."""
    freeze = [p.get("freeze_layers") for p in table.params]
    typical = np.empty_like(table.seconds)
    for value in set(freeze):
        rows = [i for i, f in enumerate(freeze) if f == value]
        typical[rows] = np.median(table.seconds[rows], axis=0)
    return typical


def _maximize_gp(surrogate: Surrogate, best_row: int) -> tuple[float, dict[str, Any]]:
    """Maximize the GP mean: 4,096 quasi-random points plus the rows, then L-BFGS-B from the
    best 8 (integer and choice axes held at their values); clipped into the space."""
    from scipy.optimize import minimize
    from scipy.stats import qmc

    space = surrogate.table.space
    dims = len(list(space.items()))
    candidates = np.vstack([qmc.Sobol(dims, scramble=True, seed=0).random(2**12), surrogate._x])
    candidates = np.array([encode(decode(c, space), space) for c in candidates])
    values = surrogate.predict_mean(candidates)
    continuous = np.array([_is_continuous(p) for _, p in space.items()])
    best_point, best_value = candidates[int(np.argmax(values))], float(np.max(values))
    for start in candidates[np.argsort(values)[-8:]]:

        def negative(free: np.ndarray, start: np.ndarray = start) -> float:
            point = start.copy()
            point[continuous] = free
            return -float(surrogate.predict_mean(point)[0])

        found = minimize(
            negative,
            start[continuous],
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * int(continuous.sum()),
        )
        if -found.fun > best_value:
            best_value = float(-found.fun)
            best_point = start.copy()
            best_point[continuous] = found.x
    params = decode(best_point, space)
    # The curve's clip at [0, 1] never binds near the optimum of an accuracy in the 0.7s.
    return float(surrogate.predict_mean(encode(params, space))[0]), params


def _is_continuous(param: Any) -> bool:
    from hpo.spec.space import FloatRange

    return isinstance(param, FloatRange) and param.step is None


def decode(point: Sequence[float], space: SearchSpace) -> dict[str, Any]:
    """The params at a unit-cube ``point`` (integers rounded to their step, choices to the
    nearest index): the inverse of ``encode`` on the space's own values."""
    from hpo.spec.space import Choices, IntRange

    params: dict[str, Any] = {}
    for u, (name, param) in zip(point, space.items(), strict=True):
        u = min(max(float(u), 0.0), 1.0)
        if isinstance(param, Choices):
            params[name] = param.choices[round(u * (len(param.choices) - 1))]
            continue
        if param.log:
            value = math.exp(math.log(param.low) + u * (math.log(param.high) - math.log(param.low)))
        else:
            value = param.low + u * (param.high - param.low)
        if isinstance(param, IntRange):
            value = param.low + round((value - param.low) / param.step) * param.step
            value = int(min(max(value, param.low), param.high))
        else:
            value = min(max(value, param.low), param.high)
        params[name] = value
    return params


@dataclass(frozen=True)
class Fidelity:
    """Leave-one-out agreement of predicted and real final CV means over the table's rows."""

    kind: SurrogateKind
    spearman: float
    rmse: float
    n_rows: int


def loo_fidelity(table: CurveTable) -> dict[SurrogateKind, Fidelity]:
    """Predict each row's final CV mean from the other rows (GP and length scales refitted
    without it), as each kind of surrogate would, and compare with the real one."""
    from scipy.stats import spearmanr

    x = np.array([encode(p, table.space) for p in table.params])
    y = table.final_means
    predicted: dict[SurrogateKind, list[float]] = {kind: [] for kind in SURROGATES}
    for i in range(len(y)):
        others = np.arange(len(y)) != i
        gp = fit_gp(x[others], y[others])
        predicted["gp"].append(float(gp.predict(x[i : i + 1])[0]))
        distance = np.linalg.norm((x[others] - x[i]) / length_scales(gp), axis=1)
        predicted["nn"].append(float(y[others][int(np.argmin(distance))]))
    fidelity = {}
    for kind, values in predicted.items():
        guess = np.array(values)
        fidelity[kind] = Fidelity(
            kind=kind,
            spearman=float(spearmanr(guess, y).statistic),
            rmse=float(np.sqrt(np.mean((guess - y) ** 2))),
            n_rows=len(y),
        )
    return fidelity
