"""Where a warm training step of our trainer spends its time, by kind of work (torch.profiler).

Our trainer's step (``trainer.fold``'s pieces, in its order) on the throughput benchmark's fold
0, with the L1/L2 penalty on (every demo trial has one): for each precision a fresh model,
``warmup`` steps unprofiled, then ``steps`` steps under ``torch.profiler`` (CPU activity).
Each op's self time, and each labelled range's own (Python) time, goes to one category, the
first that applies, looking at the op and the ranges and ops it runs inside:

* penalty: ``add_penalty_gradient`` (two norms and two fused adds over the weights);
* optimizer: ``zero_grad``, AdamW's step (fused, or its ``_foreach`` fallback), the schedule;
* clipping: ``clip_grad_norm_``;
* data: padding the batch into tensors (``collate``);
* attention: inside ``scaled_dot_product_attention`` or a softmax, forward or backward
  (matmuls included; on the CPU our dropout's attention path runs its two batched matmuls
  outside any such op, so they count as matmul);
* matmul: ``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``, ``matmul``, ``linear`` (forward and
  backward);
* other: the rest of the forward and backward: elementwise ops, LayerNorm, GELU, dropout (our
  CPU masks, as the training loop draws them: ``trainer.dropout``),
  casts to and from bf16, the loss, the autograd engine, and Python between ops.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from bench._roofline import Peak
from trainer import Hyperparams, Precision, TrainerConfig

if TYPE_CHECKING:
    from torch.autograd.profiler_util import FunctionEvent

    from trainer.prepare import Prepared

logger = logging.getLogger(__name__)

CATEGORIES = ("matmul", "attention", "optimizer", "penalty", "clipping", "data", "other")
# Ranges this module labels, in the order they win over the op's own kind.
RANGES = ("penalty", "optimizer", "clipping", "data")
MATMUL_OPS = frozenset(
    {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
)
ATTENTION_MARKS = ("scaleddotproduct", "softmax")
STEP = "step"


@dataclass(frozen=True)
class StepProfile:
    """Milliseconds per step by category (:data:`CATEGORIES`) for one precision.

    ``step_ms``: the profiled steps' mean wall time (profiler on); ``flops_per_step``: their
    mean training FLOPs (``bench._roofline``), to set against the matmul and attention time;
    ``steps`` profiled after ``warmup`` unprofiled ones.
    """

    precision: Precision
    ms_per_step: Mapping[str, float]
    step_ms: float
    flops_per_step: float
    steps: int
    warmup: int


# Dtype conversions: the casts autocast makes of a matmul's inputs run inside the matmul op.
CAST_OPS = frozenset({"aten::to", "aten::_to_copy", "aten::copy_", "aten::empty_strided"})


def category(event: FunctionEvent) -> str:
    """The category of one profiler event, from its name and its ancestors' names."""
    names = []
    node: FunctionEvent | None = event
    while node is not None:
        names.append(node.name)
        node = node.cpu_parent
    for label in RANGES:
        if label in names:
            return label
    if event.name in CAST_OPS:  # under autocast these run inside aten::linear: not matmul work
        return "other"
    folded = [name.lower().replace("_", "") for name in names]
    if any(mark in name for name in folded for mark in ATTENTION_MARKS):
        return "attention"
    if any(name in MATMUL_OPS for name in names):
        return "matmul"
    return "other"


def breakdown(events: Sequence[FunctionEvent], steps: int) -> dict[str, float]:
    """Self time in ms per step by category; the ``step`` ranges themselves count as other."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        totals[category(event)] += event.self_cpu_time_total / 1000
    return {name: total / steps for name, total in totals.items()}


def profile_steps(
    hparams: Hyperparams,
    config: TrainerConfig,
    precisions: Sequence[Precision],
    *,
    warmup: int = 3,
    steps: int = 8,
) -> list[StepProfile]:
    """Profile ``steps`` warm training steps of fold 0 in each precision (see the module).

    A fold of fewer than ``warmup + steps`` batches gets half of them (rounded down, at
    least one) to warm up and the rest profiled.

    Raises:
        ValueError: fold 0 has fewer than 2 batches.
    """
    from trainer.prepare import PREPARED

    prepared = PREPARED.get(config)
    return [
        _profile(prepared, hparams, config, precision, warmup, steps) for precision in precisions
    ]


def _profile(
    prepared: Prepared,
    hparams: Hyperparams,
    config: TrainerConfig,
    precision: Precision,
    warmup: int,
    steps: int,
) -> StepProfile:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from bench._roofline import encoder_shape, training_flops
    from trainer.dropout import training_dropout
    from trainer.fold import _step_loss
    from trainer.model import build_model
    from trainer.optim import linear_warmup_decay, make_optimizer
    from trainer.regularization import add_penalty_gradient, penalized_weights
    from trainer.tokens import collate, length_bucketed_batches

    train_idx, _ = prepared.folds[0]
    lengths = prepared.tokens.lengths
    label_names = prepared.examples.label_names
    model = build_model(
        prepared.pretrained,
        num_labels=len(label_names),
        label_names=label_names,
        dropout=hparams.dropout,
        pooling=hparams.pooling,
        seed=hparams.seed,
    ).to(prepared.device)
    model.train()
    penalized = penalized_weights(model, config.anchor, prepared.pretrained.state_dict)
    optimizer = make_optimizer(model, hparams)
    total = math.ceil(len(train_idx) / hparams.batch_size) * hparams.epochs
    warmup_steps = int(hparams.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, total, warmup_steps)
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    labels_all = torch.tensor(prepared.examples.labels)
    # The penalty runs in its own range below, so the loss step runs without it.
    unpenalized = replace(hparams, l1=0.0, l2=0.0)
    rng = np.random.default_rng(hparams.seed)
    batches = length_bucketed_batches(train_idx, lengths, hparams.batch_size, rng)
    if len(batches) < 2:
        raise ValueError(f"fold 0 has {len(batches)} batches: nothing warm to profile")
    if len(batches) < warmup + steps:
        warmup = max(1, len(batches) // 2)
        steps = len(batches) - warmup

    def step(batch: np.ndarray) -> None:
        with record_function(STEP):
            with record_function("data"):
                inputs = collate(prepared.tokens, batch, prepared.device)
                labels = labels_all[batch].to(prepared.device)
            with record_function("optimizer"):
                optimizer.zero_grad(set_to_none=True)
            _step_loss(model, inputs, labels, penalized, unpenalized, 1, precision=precision)
            with record_function("penalty"):
                add_penalty_gradient(penalized, hparams.l1, hparams.l2)
            with record_function("clipping"):
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            with record_function("optimizer"):
                optimizer.step()
                scheduler.step()

    profiled = batches[warmup : warmup + steps]
    with training_dropout(model, prepared.device, config.torch_compile):  # as trainer.fold
        for batch in batches[:warmup]:
            step(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for batch in profiled:
                step(batch)
            step_ms = (time.perf_counter() - started) * 1000 / steps
    shape = encoder_shape(model.config, pooling=hparams.pooling, num_labels=len(label_names))
    flops = training_flops(shape, lengths[np.concatenate(profiled)]) / steps
    logger.info("profiled %d %s steps: %.0f ms each", steps, precision, step_ms)
    return StepProfile(precision, breakdown(prof.events(), steps), step_ms, flops, steps, warmup)


def render(profiles: Sequence[StepProfile], peak: Peak) -> str:
    """A markdown table: ms per step and share of the step per category and precision, then
    the FLOP/s of the matmul and attention time against ``peak``."""
    head = "| category | " + " | ".join(
        f"{p.precision} ms/step | {p.precision} share" for p in profiles
    )
    rule = "|---|" + "--:|--:|" * len(profiles)
    rows = []
    for name in CATEGORIES:
        cells = []
        for p in profiles:
            total = sum(p.ms_per_step.values())
            cells.append(f"{p.ms_per_step[name]:.1f} | {100 * p.ms_per_step[name] / total:.0f} %")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    traced = " | ".join(f"**{sum(p.ms_per_step.values()):.1f}** | 100 %" for p in profiles)
    rows.append(f"| **all** | {traced} |")
    rates = []
    for p in profiles:
        compute_s = (p.ms_per_step["matmul"] + p.ms_per_step["attention"]) / 1000
        achieved = p.flops_per_step / compute_s if compute_s > 0 else float("nan")
        share = peak.fraction(achieved, p.precision)
        of_peak = "no peak known" if math.isnan(share) else f"{100 * share:.0f} % of its peak"
        rates.append(f"{p.precision}: {achieved / 1e9:.0f} GFLOP/s ({of_peak})")
    return (
        "\n".join([head + " |", rule, *rows])
        + "\n\nTraining FLOPs of the profiled steps over their matmul and attention time: "
        + "; ".join(rates)
        + "."
    )
