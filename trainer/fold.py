"""One fold: fine-tune a fresh model on the fold's training rows, evaluate after every epoch.

Per fold: a fresh head on the pretrained encoder, AdamW with linear warmup and decay,
loss = cross-entropy (class-weighted from the fold's training rows when asked) + l1·Σ|w| +
l2·Σw², gradient clipping; after every epoch, held-out metrics are reported at the step of
(fold, epoch) on the config's step grid (``TrainerConfig.step_grid``) and the reporter may stop
the trial. Reading order: ``train_fold`` (the out-of-memory retry), ``_train_fold`` (the epoch
loop), ``_step_loss`` (one batch), ``evaluate``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.config import (
    EPOCH_SECONDS,
    FoldResult,
    Hyperparams,
    Precision,
    Reporter,
    TrainerConfig,
)
from trainer.device import autocast, compiled, free_memory
from trainer.dropout import training_dropout
from trainer.errors import NonFiniteLossError
from trainer.loss import class_weights
from trainer.metrics import classification_metrics
from trainer.model import build_model, freeze_lower
from trainer.optim import linear_warmup_decay, make_optimizer
from trainer.prepare import Prepared
from trainer.regularization import Penalized, add_penalty_gradient, penalized_weights
from trainer.seeds import fold_seed
from trainer.tokens import iterate, length_bucketed_batches, sorted_batches

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedFold:
    """A fold's result and the model it trained (a transformers ``PreTrainedModel``)."""

    result: FoldResult
    model: Any


def train_fold(
    hparams: Hyperparams,
    config: TrainerConfig,
    prepared: Prepared,
    fold: int,
    *,
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainedFold:
    """Fine-tune a fresh model on fold ``fold``'s training rows, evaluating after each epoch.

    If a step runs out of accelerator memory, the fold starts over with each batch split into
    twice as many micro-batches whose gradients are accumulated: the same batch size, steps and
    schedule, in less memory. It fails only when single-example micro-batches do not fit.

    Returns the fold's result and its trained model (cross-validation drops the model;
    production training saves it).
    """
    import torch

    splits = 1
    while True:
        try:
            return _train_fold(hparams, config, prepared, fold, splits, reporter, on_epoch_end)
        except torch.OutOfMemoryError:
            if splits >= hparams.batch_size:
                raise
        # Freed outside the except block: until it ends, the traceback keeps the failed
        # attempt's frames alive, and with them its model, optimizer state and activations.
        free_memory(prepared.device)
        splits *= 2
        logger.warning(
            "fold %d out of memory: starting it over with batches of %d split into %d "
            "micro-batches",
            fold,
            hparams.batch_size,
            splits,
        )


def _train_fold(
    hparams: Hyperparams,
    config: TrainerConfig,
    prepared: Prepared,
    fold: int,
    splits: int,
    reporter: Reporter | None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
) -> TrainedFold:
    import torch

    train_idx, held_idx = prepared.folds[fold]
    grid = config.step_grid(hparams.epochs)
    seed = fold_seed(hparams.seed, fold)
    model = build_model(
        prepared.pretrained,
        num_labels=len(prepared.examples.label_names),
        label_names=prepared.examples.label_names,
        dropout=hparams.dropout,
        pooling=hparams.pooling,
        seed=seed,
    )
    freeze_lower(model, hparams.freeze_layers)
    model.to(prepared.device)
    # Compiled or not, the module's parameters are the same tensors (the optimizer's).
    forward: nn.Module = compiled(model) if config.torch_compile else model
    penalized = penalized_weights(model, config.anchor, prepared.pretrained.state_dict)
    optimizer = make_optimizer(model, hparams)
    n_batches = math.ceil(len(train_idx) / hparams.batch_size)
    total = n_batches * hparams.epochs
    warmup = int(hparams.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, total, warmup)
    )
    labels_all = torch.tensor(prepared.examples.labels)
    # Counted on this fold's training rows only: the held-out rows stay unseen.
    weights = class_weights(
        hparams.class_weights,
        prepared.examples.labels[train_idx],
        len(prepared.examples.label_names),
    )
    class_weight = None if weights is None else torch.from_numpy(weights).to(prepared.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(seed)
    pin = prepared.device.type == "cuda"
    curve: list[dict[str, float]] = []
    train_s = 0.0
    pruned = False
    # CPU dropout masks at a fraction of torch's cost, for this loop only (trainer.dropout).
    with training_dropout(model, prepared.device, config.torch_compile):
        for epoch in range(hparams.epochs):
            model.train()
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=prepared.device)
            objective_sum = torch.zeros((), device=prepared.device)  # cross-entropy + penalty
            batches = length_bucketed_batches(
                train_idx, prepared.tokens.lengths, hparams.batch_size, rng
            )
            for batch, inputs in iterate(prepared.tokens, batches, prepared.device, pin=pin):
                labels = labels_all[batch].to(prepared.device, non_blocking=pin)
                optimizer.zero_grad(set_to_none=True)
                loss, total_loss = _step_loss(
                    forward,
                    inputs,
                    labels,
                    penalized,
                    hparams,
                    splits,
                    class_weight=class_weight,
                    precision=config.precision,
                )
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                loss_sum += loss  # no host sync per step: read once per epoch
                objective_sum += total_loss
            train_loss = float(loss_sum) / max(1, len(batches))
            objective = float(objective_sum) / max(1, len(batches))
            train_s += time.perf_counter() - started
            if not (math.isfinite(train_loss) and math.isfinite(objective)):
                raise NonFiniteLossError(
                    f"fold {fold} epoch {epoch}: training loss is {train_loss}, with penalties "
                    f"{objective} (lr={hparams.lr:g}, l1={hparams.l1:g}, l2={hparams.l2:g})"
                )
            metrics = (
                evaluate(forward, prepared, held_idx, config.eval_batch_size, config.precision)
                if len(held_idx)
                else {}
            )
            metrics["train_loss"] = train_loss
            # Wall seconds of this epoch, training and evaluation: what a step of the curve costs.
            metrics[EPOCH_SECONDS] = time.perf_counter() - started
            curve.append(metrics)
            logger.debug("fold %d epoch %d: %s", fold, epoch, metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
            if reporter is not None:
                reporter.report(metrics[config.metric], grid.step(fold, epoch, hparams.epochs))
                # After the last fold's last epoch the compute is spent: nothing to prune.
                last = fold == config.n_folds - 1 and epoch == hparams.epochs - 1
                if not last and reporter.should_prune():
                    pruned = True
                    break
    result = FoldResult(
        fold=fold,
        score=curve[-1].get(config.metric, math.nan),
        metrics=curve[-1],
        curve=tuple(curve),
        train_examples=len(train_idx) * len(curve),
        train_s=train_s,
        pruned=pruned,
    )
    return TrainedFold(result, model)


def _step_loss(
    forward: Callable[..., Any],
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    penalized: Penalized,
    hparams: Hyperparams,
    splits: int,
    *,
    class_weight: torch.Tensor | None = None,
    precision: Precision = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backpropagate one batch's loss; returns (cross-entropy, with penalties), detached.

    ``class_weight`` (per class) makes the cross-entropy the weighted mean over the batch,
    ``Σ w[y_i]·ce_i / Σ w[y_i]``, as ``F.cross_entropy(weight=...)`` computes it.
    With ``splits > 1`` the batch goes through in that many micro-batches, each summed and
    divided by the whole batch's total weight (its size when unweighted), so the loss and the
    gradient are the whole batch's. Only the forward runs in ``precision``: cross-entropy is
    taken on fp32 logits, the penalty on the fp32 weights.
    """
    import torch
    import torch.nn.functional as F

    if splits == 1:
        with autocast(labels.device, precision):
            logits = forward(**inputs).logits
        loss = F.cross_entropy(logits.float(), labels, weight=class_weight)
        loss.backward()
        loss = loss.detach()
    else:
        size = len(labels)
        step = math.ceil(size / splits)
        total_weight = class_weight[labels].sum() if class_weight is not None else size
        loss = torch.zeros((), device=labels.device)
        for start in range(0, size, step):
            part = {name: value[start : start + step] for name, value in inputs.items()}
            with autocast(labels.device, precision):
                logits = forward(**part).logits
            part_loss = (
                F.cross_entropy(
                    logits.float(),
                    labels[start : start + step],
                    weight=class_weight,
                    reduction="sum",
                )
                / total_weight
            )
            part_loss.backward()
            loss += part_loss.detach()
    reg = add_penalty_gradient(penalized, hparams.l1, hparams.l2)
    return loss, loss if reg is None else loss + reg


def evaluate(
    model: nn.Module,
    prepared: Prepared,
    indices: np.ndarray,
    batch_size: int,
    precision: Precision = "fp32",
) -> dict[str, float]:
    """Held-out metrics under ``eval()`` and ``inference_mode``, batches sorted by length.

    The forward runs in ``precision``; metrics are computed from fp32 logits.

    A batch that runs out of accelerator memory is retried at half the batch size.
    """
    import torch

    model.eval()
    while True:
        logits: list[torch.Tensor] = []
        order: list[np.ndarray] = []
        try:
            with torch.inference_mode(), autocast(prepared.device, precision):
                batches = sorted_batches(indices, prepared.tokens.lengths, batch_size)
                for batch, inputs in iterate(prepared.tokens, batches, prepared.device):
                    logits.append(model(**inputs).logits.float())
                    order.append(batch)
            break
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
        # Freed outside the except block: until it ends, the traceback keeps the failed
        # forward's frames, and with them its activations, alive.
        logits.clear()
        free_memory(prepared.device)
        batch_size //= 2
        logger.warning("evaluation out of memory: retrying at batch size %d", batch_size)
    all_logits = torch.cat(logits).cpu().numpy()
    labels = prepared.examples.labels[np.concatenate(order)]
    return classification_metrics(all_logits, labels)
