"""Dropout on the CPU at a fraction of torch's cost: masks from 16-bit lanes of 64-bit draws.

Why by hand: on the CPU, ``torch.nn.functional.dropout`` fills its mask with ``bernoulli_``,
one serial Mersenne Twister draw per element, whatever the thread count. In a bf16 training
step of MiniLM-L6 at batch 16 (2 threads) the 20 dropout masks took 20 ms of 161 (12 %), more
than the attention. Here one 64-bit draw (torch's generator, ``random_``) gives the coins of
four elements, a 16-bit lane each: an element is dropped with probability ``k / 65536``,
``k = round(p · 65536)`` (for ``p = 0.1``: 0.1000061), and kept ones are scaled by
``65536 / (65536 − k)``, so the expectation is exact. The random stream is torch's default
generator, so a run is as reproducible from its seed as with ``nn.Dropout``; the masks differ
from ``nn.Dropout``'s for the same seed.

On CUDA torch's dropout is a fused Philox kernel and stays as it is; with ``torch.compile``
Inductor generates its own. :func:`cpu_dropout` swaps the masks in for a training run only and
puts everything back after it (modules, their train/eval flags, the attention setting): the
model that is saved or exported is the stock one.

Attention-probability dropout happens inside ``scaled_dot_product_attention``, which on the
CPU falls back to its math path (scores and softmax in fp32, ``bernoulli_``) whenever dropout
is on. For the encoders in :data:`ENCODERS`, which dispatch attention through transformers'
``AttentionInterface``, :func:`attention` is that math path with these masks; any call it does
not cover (causal, grouped-query, a position bias, a softcap, dropout off) goes to
transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

# The attention implementation name registered with transformers (process-wide, harmless).
ATTENTION_NAME = "hpo_cpu_dropout"
# Model types whose attention goes through ``AttentionInterface`` with the plain signature.
ENCODERS = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "albert"}
)
LANE_VALUES = 1 << 16
# Arguments of the SDPA interface that the math path here does not implement.
_SDPA_ONLY = ("position_bias", "softcap", "s_aux", "sliding_window")


def keep_scale(
    shape: tuple[int, ...], p: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A dropout mask already scaled: ``65536 / (65536 − k)`` where kept, 0 where dropped."""
    import torch

    dropped = min(max(round(p * LANE_VALUES), 0), LANE_VALUES)
    if dropped == LANE_VALUES:
        return torch.zeros(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    draws.random_(-(1 << 63), None)  # all 64 bits random: four uniform 16-bit lanes
    lanes = draws.view(torch.int16)[:n].view(shape)
    threshold = dropped - LANE_VALUES // 2
    return (lanes >= threshold).to(dtype).mul_(LANE_VALUES / (LANE_VALUES - dropped))


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` with drop probability ``p`` (0 <= p < 1)."""
    if p == 0.0:
        return x
    return x * keep_scale(tuple(x.shape), p, x.device, x.dtype)


_module_class: type[nn.Module] | None = None


def _dropout_module() -> type[nn.Module]:
    """The module class, made on first use (torch is imported lazily)."""
    global _module_class
    if _module_class is None:
        from torch import nn

        class CpuDropout(nn.Dropout):
            """``nn.Dropout`` with :func:`dropout`'s masks; identity in eval mode."""

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return dropout(x, self.p) if self.training else x

        _module_class = CpuDropout
    return _module_class


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with :func:`dropout`'s masks on the probabilities.

    What SDPA's math path does with dropout on: scores, softmax and the weighted sum in fp32
    (under bf16 autocast too), a row with nothing to attend to gives zeros.
    ``attention_mask``: None, boolean (True = attend; SDPA's format) or additive float.
    Returns ``(batch, query length, heads, head dim)`` in ``value``'s dtype, as transformers'
    SDPA function does, which handles every call this one does not (see the module doc).
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal")
    if (
        dropout == 0.0
        or (causal if causal is not None else getattr(module, "is_causal", False))
        or getattr(module, "num_key_value_groups", 1) > 1
        or any(kwargs.get(name) is not None for name in _SDPA_ONLY)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    with torch.autocast(query.device.type, enabled=False):  # fp32 here, as SDPA's math path
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            else:
                scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1)
        if attention_mask is not None:
            probs = probs.nan_to_num(0.0)  # all-masked rows: 0, as SDPA's safe softmax gives
        probs = probs * keep_scale(tuple(probs.shape), dropout, probs.device, probs.dtype)
        out = torch.matmul(probs, value.float()).to(value.dtype)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def training_dropout(
    model: nn.Module, device: torch.device, torch_compile: bool
) -> contextlib.AbstractContextManager[None]:
    """The dropout a training loop runs ``model`` under: :func:`cpu_dropout` on the CPU when
    the model is not compiled (Inductor generates its own masks), torch's otherwise."""
    if device.type == "cpu" and not torch_compile:
        return cpu_dropout(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_dropout(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s dropout (modules, and attention where it runs on SDPA in
    one of :data:`ENCODERS`) uses :func:`dropout`'s masks; on exit the original modules (in the
    train/eval mode the model was left in) and attention settings are back."""
    from torch import nn

    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    configs: list[Any] = []
    module_class = _dropout_module()
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    replacement = module_class(child.p)
                    replacement.train(child.training)
                    setattr(parent, name, replacement)
                    swapped.append((parent, name, child))
            config = getattr(parent, "config", None)
            if (
                getattr(config, "model_type", None) in ENCODERS
                and getattr(config, "_attn_implementation_internal", None) == "sdpa"
                and all(config is not seen for seen in configs)
            ):
                configs.append(config)
        if configs:
            _register_attention()
            for config in configs:
                # The attribute, not the property: its setter also rewrites sub-configs.
                config._attn_implementation_internal = ATTENTION_NAME
        yield
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)
        for config in configs:
            config._attn_implementation_internal = "sdpa"
