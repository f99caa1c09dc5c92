"""Dropout on the CPU at a fraction of torch's cost: masks from 16-bit lanes of 64-bit draws.

Why by hand: on the CPU, ``torch.nn.functional.dropout`` fills its mask with ``bernoulli_``,
one serial Mersenne Twister draw per element, whatever the thread count. In a bf16 training
step of MiniLM-L6 at batch 16 (2 threads) the 20 dropout masks took 20 ms of 161 (12 %), more
than the attention. Here one 64-bit draw (torch's generator, ``random_``) gives the coins of
four elements, a 16-bit lane each: ``keep = lane >= p·2¹⁶ − 2¹⁵``, so the keep probability is
``1 − p`` rounded to 1/65536 (for ``p = 0.1``, 0.0999908 instead of 0.1). The random stream
is torch's default generator, so a run is as reproducible from its seed as with
``nn.Dropout``; the masks differ from ``nn.Dropout``'s for the same seed.

On CUDA torch's dropout is a fused Philox kernel and stays as it is; with ``torch.compile``
Inductor generates its own. :func:`cpu_dropout` swaps the masks in for a training run only and
puts everything back after it: the model that is saved or exported is the stock one.

Attention-probability dropout happens inside ``scaled_dot_product_attention`` (which on the
CPU falls back to its math path with ``bernoulli_`` whenever dropout is on); for models that
dispatch attention through transformers' ``AttentionInterface`` (BERT and most encoders),
:func:`attention` is that math path with these masks, and plain SDPA when dropout is off.
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
LANE_VALUES = 1 << 16


def keep_scale(
    shape: tuple[int, ...], p: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A dropout mask already scaled: ``1 / (1 − p)`` where kept, 0 where dropped."""
    import torch

    n = math.prod(shape)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    draws.random_(-(1 << 63), None)  # all 64 bits random: four uniform 16-bit lanes
    lanes = draws.view(torch.int16)[:n].view(shape)
    threshold = round(p * LANE_VALUES) - LANE_VALUES // 2
    return (lanes >= threshold).to(dtype).mul_(1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` with drop probability ``p`` (0 <= p < 1)."""
    if p == 0.0:
        return x
    return x * keep_scale(tuple(x.shape), p, x.device, x.dtype)


def _dropout_module() -> type[nn.Module]:
    from torch import nn

    class CpuDropout(nn.Dropout):
        """``nn.Dropout`` with :func:`dropout`'s masks; identity in eval mode."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.p == 0.0:
                return x
            return dropout(x, self.p)

    return CpuDropout


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

    ``attention_mask``: None, boolean (True = attend; SDPA's format) or additive float.
    Returns ``(batch, query length, heads, head dim)`` as the SDPA implementation does.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = probs * keep_scale(tuple(probs.shape), dropout, probs.device, probs.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextlib.contextmanager
def cpu_dropout(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s dropout (modules, and attention where it runs on SDPA)
    uses :func:`dropout`'s masks; on exit the original modules and settings are back."""
    from torch import nn

    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    configs: list[Any] = []
    module_class = _dropout_module()
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    setattr(parent, name, module_class(child.p))
                    swapped.append((parent, name, child))
            config = getattr(parent, "config", None)
            if getattr(config, "_attn_implementation", None) == "sdpa" and all(
                config is not seen for seen in configs
            ):
                configs.append(config)
        if configs:
            _register_attention()
            for config in configs:
                config._attn_implementation = ATTENTION_NAME
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        for config in configs:
            config._attn_implementation = "sdpa"
