"""Cross-validated fine-tuning: ``run_cv(hparams, config) -> CVResult``. No optuna in here.

The inputs every trial shares come from ``trainer.prepare`` (kept per process), each fold is
``trainer.fold.train_fold``; this module runs the folds in order, re-reports folds an earlier
attempt finished, stops when the reporter says so, and sums up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import numpy as np

from trainer.checks import check_inputs
from trainer.config import CVResult, FoldResult, Hyperparams, Reporter, TrainerConfig
from trainer.device import peak_memory_mb, reset_peak_memory, resolve_device
from trainer.fold import train_fold
from trainer.prepare import PREPARED


def run_cv(
    hparams: Hyperparams,
    config: TrainerConfig,
    *,
    reporter: Reporter | None = None,
    done_folds: Mapping[int, FoldResult] | None = None,
    on_fold_end: Callable[[FoldResult], None] | None = None,
) -> CVResult:
    """Cross-validate one hyperparameter setting.

    Data is loaded and tokenized (disk cache) once per process and inputs, the checkpoint read
    once per process; each
    fold then fine-tunes a fresh model on its training rows and is evaluated on its held-out
    rows after every epoch. Same inputs on CPU give the same scores.

    Args:
        hparams: the sampled values over the training defaults.
        config: model, data, CV layout, device.
        reporter: gets ``report(score, step)`` after every epoch, ``score`` being
            ``config.metric`` on the held-out fold and ``step`` the (fold, epoch)'s on
            ``config.step_grid(hparams.epochs)``;
            training stops as soon as ``should_prune()`` is true. It is not asked after the
            last fold's last epoch: a trial that trained every fold is never pruned.
        done_folds: folds an earlier attempt finished, by fold index; they are not retrained
            but taken as they are, and their epoch scores are re-reported at their steps so the
            reporter sees the whole history (it may prune right there).
        on_fold_end: called with each newly finished fold, in fold order (to persist it).

    Returns:
        ``fold_scores`` and ``folds``: the finished folds only, in fold order (higher is better
        unless the metric is ``loss``); ``mean`` and population ``std`` over them (NaN when
        none finished). ``curves``: one per fold started, including a fold stopped by the
        reporter (its epochs so far). ``pruned``: the reporter stopped the trial before all
        folds finished. Throughput counts only the folds trained in this call.
        ``peak_memory_mb``: on CUDA the peak allocated during this call; on CPU the process's
        peak resident set so far.

    Raises:
        ConfigError: an hyperparameter or config value out of range.
        DataError, ModelError: the data or the model cannot be used.
        NonFiniteLossError: the training loss became NaN or infinite.
    """
    check_inputs(hparams, config)
    started = time.perf_counter()
    grid = config.step_grid(hparams.epochs)
    done = {fold: result for fold, result in (done_folds or {}).items() if fold < config.n_folds}
    # Everything done already (a re-queued trial that had finished): no data, no weights needed.
    prepared = PREPARED.get(config) if len(done) < config.n_folds else None
    if prepared is not None:
        reset_peak_memory(prepared.device)
    finished: list[FoldResult] = []
    partial: FoldResult | None = None
    for fold in range(config.n_folds):
        if fold in done:
            result = done[fold]
            if reporter is not None:
                for epoch, metrics in enumerate(result.curve):
                    step = grid.step(fold, epoch, hparams.epochs)
                    reporter.report(metrics[config.metric], step)
            finished.append(result)
            last = fold == config.n_folds - 1
            if reporter is not None and not last and reporter.should_prune():
                break
            continue
        assert prepared is not None
        result = train_fold(hparams, config, prepared, fold, reporter=reporter).result
        if result.pruned:
            partial = result
            break
        finished.append(result)
        if on_fold_end is not None:
            on_fold_end(result)
    scores = [r.score for r in finished]
    started_folds = [*finished, *([partial] if partial else [])]
    trained = [r for r in started_folds if r.fold not in done]
    train_s = sum(r.train_s for r in trained)
    examples = sum(r.train_examples for r in trained)
    device = prepared.device if prepared is not None else resolve_device(config.device)
    return CVResult(
        fold_scores=tuple(scores),
        mean=float(np.mean(scores)) if scores else math.nan,
        std=float(np.std(scores)) if scores else math.nan,
        curves=tuple(r.curve for r in started_folds),
        pruned=len(finished) < config.n_folds,
        wall_s=time.perf_counter() - started,
        train_examples_per_s=examples / train_s if train_s > 0 else 0.0,
        peak_memory_mb=peak_memory_mb(device),
        folds=tuple(finished),
    )
