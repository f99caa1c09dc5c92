"""The default pruner: fold-aware, with a reference that grows with the study, a keep share that
holds for a whole trial, and pruning only as hard as the study's own evidence supports.

Optuna's pruners either compare a step with completed trials only (median, percentile: the
reference stops growing once pruning starts, so a study can stop completing trials) or need
many folds (Wilcoxon), and none asks whether an early score predicts the final one. So this is
written here, from Optuna's base class and SciPy's rank statistics.

At each checkpoint of a trial (every epoch's step on the study's ``StepGrid``):

1. **The value compared.** At a fold's end, the mean of the trial's fold scores so far; inside a
   fold, the score at that step, compared only with trials that run the same number of epochs.
2. **The reference** is every other trial among the ``recent`` latest that reached the same
   checkpoint (complete, pruned or running, as ASHA's rungs), plus every one of them pruned
   before it, which ranks below: it lost earlier. It moves with the study, and a checkpoint
   compares with the whole population, not with the survivors of earlier checkpoints (which
   would compound the shares). The latest trials, not all: a model-based sampler's later
   proposals are better than its first, and a new trial competes with what the sampler draws
   now (for trials from one distribution the two are the same, so ``keep_percentile`` holds).
3. **The evidence** is the Spearman rank correlation, over completed trials, between their value
   at this checkpoint and their final CV score, taken at a lower confidence bound (Fisher z,
   Bonett–Wright standard error). A checkpoint whose bound is at or below zero (misleading or
   too few trials) never prunes: the trial waits for a later one.
4. **The share pruned.** ``keep_percentile`` is the share of trials no better than the others
   that should survive a *whole trial*. Each checkpoint prunes the bottom ``p · evidence`` of its
   reference, with ``p`` solved so that a trial survives all of its checkpoints with
   probability ``keep``, given how correlated its ranks at the checkpoints are in the completed
   trials (a Gaussian copula; independent checkpoints give ``1 − keep^(1/K)``, identical ones
   ``1 − keep``). Weak evidence anywhere only makes pruning gentler than the setting.
5. **Strong evidence prunes harder.** Where every checkpoint of the trial is shown to predict
   the final score (the smallest of their lower bounds above ``SURE_FROM``, 0.4), the share kept
   moves from ``keep_percentile`` towards ``sure_keep_percentile`` (by default a fifth of it:
   25 → 5), log-linearly as that bound rises to 1: a trial that is behind where being behind
   is near-certainly final is not worth finishing. The smallest bound, so one misleading or
   unproven checkpoint turns it off.
   Fine-tuning curves stay below it (in the real-task replay the smallest bound stays under
   0.15: their epoch scores predict the final CV mean with rho 0.2-0.9, BENCHMARKS.md "The
   pruner on real curves"), so there ``keep_percentile`` holds; set ``sure_keep_percentile``
   equal to it to turn this off.

The last step (the last fold's last epoch) never prunes: that compute is already spent.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from trainer.steps import StepGrid

_COMPARED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# The weakest checkpoint's lower bound on its rank correlation with the final score above which
# the evidence starts to count as near-certain (point 5 of the module docstring).
SURE_FROM = 0.4


def rank_correlation_bound(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, confidence: float
) -> float:
    """A lower confidence bound of Spearman's rho between ``x`` and ``y`` (NaN below 4 pairs)."""
    from scipy.stats import spearmanr

    if len(x) < 4 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    rho = float(spearmanr(x, y).statistic)
    if math.isnan(rho):
        return math.nan
    rho = min(max(rho, -0.99), 0.99)
    se = math.sqrt((1.0 + rho * rho / 2.0) / (len(x) - 3))  # Bonett & Wright (2000)
    z = statistics.NormalDist().inv_cdf(confidence)
    return math.tanh(math.atanh(rho) - z * se)


class FoldAwarePruner(BasePruner):
    """Prune inside a fold from the epoch curve, and between folds from the running fold mean,
    as hard as the study's own trials show that checkpoint predicts the final score.

    Args:
        steps_per_fold: positions per fold on the study's step grid (the most epochs).
        n_folds: folds per trial.
        keep_percentile: share of trials, in percent, that are no better than the reference
            and should still survive the whole trial (50 = half of them), unless every
            checkpoint is shown to predict (``sure_keep_percentile``). 25, with
            ``confidence`` 0.95, was chosen on the MF-Hartmann functions and the real-task
            replay (BENCHMARKS.md, "Pruning", candidates for the default).
        n_startup_trials: no pruning until this many trials have completed.
        n_warmup_steps: no pruning before this step.
        confidence: one-sided confidence of the lower bound on a checkpoint's rank correlation
            with the final score; higher waits for more evidence.
        recent: the reference is the latest this many trials (0: every trial). 20 was chosen
            on the MF-Hartmann benchmark (BENCHMARKS.md, "Pruning"); the evidence (rank
            correlations) is always learnt from every completed trial.
        sure_keep_percentile: the share kept, in percent, where the evidence is near-certain
            (point 5 of the module docstring); at most ``keep_percentile``, and by default a
            fifth of it (so a gentler ``keep_percentile`` stays gentler here too; equal to it:
            off). A fifth, with ``SURE_FROM`` 0.4, was chosen on the MF-Hartmann functions at
            40 seeds (BENCHMARKS.md, "Pruning"); it never engaged in the real-task replay.
    """

    def __init__(
        self,
        *,
        steps_per_fold: int,
        n_folds: int = 1,
        keep_percentile: float = 25.0,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 0,
        confidence: float = 0.95,
        recent: int = 20,
        sure_keep_percentile: float | None = None,
    ) -> None:
        if not 0.0 < keep_percentile <= 100.0:
            raise ValueError(f"keep_percentile must be in (0, 100], got {keep_percentile}")
        if sure_keep_percentile is None:
            sure_keep_percentile = keep_percentile / 5.0
        if not 0.0 < sure_keep_percentile <= keep_percentile:
            raise ValueError(
                f"sure_keep_percentile must be in (0, keep_percentile={keep_percentile}], "
                f"got {sure_keep_percentile}"
            )
        if n_startup_trials < 4:
            raise ValueError(
                f"n_startup_trials must be >= 4 (a rank correlation needs 4 trials), "
                f"got {n_startup_trials}"
            )
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, got {n_warmup_steps}")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        if recent < 0:
            raise ValueError(f"recent must be >= 0, got {recent}")
        self._recent = recent
        self._grid = StepGrid(n_folds=n_folds, steps_per_fold=steps_per_fold)
        self._keep = keep_percentile / 100.0
        self._sure_keep = sure_keep_percentile / 100.0
        self._n_startup_trials = n_startup_trials
        self._n_warmup_steps = n_warmup_steps
        self._confidence = confidence
        self._cache: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[int, float]] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._n_warmup_steps or step >= self._grid.last_step:
            return False
        value_at = self._checkpoint(step)
        mine = value_at(trial)
        if mine is None:
            return False
        if math.isnan(mine):
            return True
        epochs = trial.params.get("epochs")
        others = [
            t
            for t in study.get_trials(deepcopy=False, states=_COMPARED_STATES)
            if t.number != trial.number
            and (self._grid.is_fold_end(step) or t.params.get("epochs") == epochs)
        ]
        completed = [t for t in others if t.state == TrialState.COMPLETE and t.value is not None]
        if len(completed) < self._n_startup_trials:
            return False
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        share = self._shares(trial, completed, sign).get(step, 0.0)
        if share <= 0.0:
            return False
        # The reference is every trial that reached this checkpoint, plus every trial pruned
        # before it (it lost earlier, so it ranks below): comparing with those that reached it
        # alone would compare with survivors, and the shares would compound as in ASHA.
        if self._recent:
            others = sorted(others, key=lambda t: t.number)[-self._recent :]
        reached = [v for v in map(value_at, others) if v is not None and math.isfinite(v)]
        lost_earlier = sum(
            t.state == TrialState.PRUNED and (t.last_step is None or t.last_step < step)
            for t in others
        )
        population = len(reached) + lost_earlier
        if population < self._n_startup_trials:
            return False
        below = lost_earlier + sum(sign * v < sign * mine for v in reached)
        return below < share * population

    def _checkpoint(self, step: int) -> Callable[[FrozenTrial], float | None]:
        """The value a trial has at this checkpoint, or None if it did not reach it."""
        grid = self._grid
        if not grid.is_fold_end(step):
            return lambda t: t.intermediate_values.get(step)
        n_folds = grid.fold_of(step) + 1

        def running_mean(t: FrozenTrial) -> float | None:
            scores = grid.fold_scores(t.intermediate_values)[:n_folds]
            return float(np.mean(scores)) if len(scores) == n_folds else None

        return running_mean

    def _shares(
        self, trial: FrozenTrial, completed: Sequence[FrozenTrial], sign: float
    ) -> dict[int, float]:
        """The share of its reference each of the trial's checkpoints prunes (cached per set of
        completed trials): ``p* · evidence``, with ``p*`` such that about ``keep`` of the
        trials survive all checkpoints, given how the checkpoints correlate."""
        steps = self._trial_checkpoints(trial)
        key = (tuple(steps), tuple(sorted(t.number for t in completed)))
        if key not in self._cache:
            getters = [self._checkpoint(s) for s in steps]
            rows = [[g(t) for g in getters] + [t.value] for t in completed]
            matrix = np.array(
                [r for r in rows if all(v is not None and math.isfinite(v) for v in r)],
                dtype=float,
            ).reshape(-1, len(steps) + 1)
            matrix *= sign
            evidence = np.array(
                [
                    rank_correlation_bound(matrix[:, c], matrix[:, -1], self._confidence)
                    for c in range(len(steps))
                ]
            )
            evidence = np.where(np.isfinite(evidence), np.clip(evidence, 0.0, 1.0), 0.0)
            base = _calibrated_share(matrix[:, :-1], evidence, self._kept_share(evidence))
            self._cache.clear()  # one entry: the set of completed trials only grows
            self._cache[key] = dict(zip(steps, (base * evidence).tolist(), strict=True))
        return self._cache[key]

    def _kept_share(self, evidence: np.ndarray) -> float:
        """The share of trials to keep over a whole trial: ``keep``, moving log-linearly to
        ``sure_keep`` as the weakest checkpoint's evidence goes from ``SURE_FROM`` to 1."""
        if len(evidence) == 0:
            return self._keep
        weakest = float(np.min(evidence))
        sureness = min(max((weakest - SURE_FROM) / (1.0 - SURE_FROM), 0.0), 1.0)
        return float(self._keep * (self._sure_keep / self._keep) ** sureness)

    def _trial_checkpoints(self, trial: FrozenTrial) -> list[int]:
        """Steps at which this trial may be pruned: its epochs' steps, warm-up and last left out."""
        grid = self._grid
        epochs = int(trial.params.get("epochs", grid.steps_per_fold))
        epochs = min(max(epochs, 1), grid.steps_per_fold)
        steps = [
            grid.step(fold, epoch, epochs)
            for fold in range(grid.n_folds)
            for epoch in range(epochs)
        ]
        return [s for s in steps if self._n_warmup_steps <= s < grid.last_step]


def _calibrated_share(values: np.ndarray, evidence: np.ndarray, keep: float) -> float:
    """The base share ``p`` such that a trial survives checkpoints pruning ``p · evidence[c]``
    each with probability ``keep``, when its ranks at the checkpoints are as correlated as the
    columns of ``values`` (a Gaussian copula on their Spearman correlation; 4,000 fixed draws).
    Independent checkpoints give ``1 − keep^(1/K)``; identical ones ``1 − keep``."""
    from scipy.stats import norm, spearmanr

    k = values.shape[1]
    if k == 0 or not evidence.any():
        return 0.0
    corr = np.eye(k)
    if k > 1 and len(values) >= 4:
        rho = np.atleast_2d(spearmanr(values).statistic)
        if rho.shape == (k, k):
            corr = np.where(np.isfinite(rho), 2.0 * np.sin(np.pi * rho / 6.0), 0.0)
            np.fill_diagonal(corr, 1.0)
    eigenvalues, vectors = np.linalg.eigh(corr)  # nearest valid correlation: clip, rescale
    corr = vectors @ np.diag(np.clip(eigenvalues, 1e-6, None)) @ vectors.T
    scale = np.sqrt(np.diag(corr))
    corr = corr / np.outer(scale, scale)
    draws = np.random.default_rng(0).standard_normal((4000, k)) @ np.linalg.cholesky(corr).T
    ranks = norm.cdf(draws)

    def survival(p: float) -> float:
        return float(np.mean(np.all(ranks >= p * evidence, axis=1)))

    if survival(1.0) >= keep:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2.0
        if survival(mid) >= keep:
            low = mid
        else:
            high = mid
    return low
