"""CPU dropout masks: the distribution, the gradient, attention, and the swap being undone."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.helpers import HP, config_for
from trainer.dropout import ATTENTION_NAME, attention, cpu_dropout, dropout, keep_scale
from trainer.fold import train_fold
from trainer.model import build_model, load_pretrained
from trainer.prepare import prepare


@pytest.mark.parametrize("p", [0.05, 0.1, 0.37])
def test_each_element_is_kept_with_probability_one_minus_p_and_scaled(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    mask = keep_scale((n,), p, torch.device("cpu"), torch.float32)
    kept = float((mask > 0).float().mean())
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma, kept
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / (1 - p), rel=1e-4)]
    # Neighbouring elements share a 64-bit draw but not their coins.
    pairs = (mask.view(-1, 4) > 0).float()
    both = float((pairs[:, 0] * pairs[:, 1]).mean())
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n * 4), both


def test_masks_follow_torchs_seed_and_differ_between_calls() -> None:
    x = torch.ones(4, 33, 7)
    torch.manual_seed(3)
    first, second = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    assert not torch.equal(first, second)


def test_the_gradient_is_the_same_mask_as_the_forward() -> None:
    x = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    torch.manual_seed(1)
    mask = keep_scale(tuple(x.shape), 0.3, x.device, x.dtype)
    assert torch.equal(x.grad, mask)
    assert torch.allclose(y, x.detach() * mask)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_without_dropout_is_sdpa_and_with_dropout_masks_the_probabilities(
    mask_kind: str,
) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[1, :, :, 3:] = False  # the second sequence is padded after 3 tokens
    mask = {"none": None, "bool": keep, "additive": (~keep).float() * -1e9}[mask_kind]
    module = torch.nn.Module()
    module.is_causal = False  # type: ignore[assignment]

    out, _ = attention(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.5)
    if mask_kind == "none":
        expected = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-6)

    torch.manual_seed(7)
    dropped, _ = attention(module, q, k, v, mask, dropout=0.25, scaling=0.5)
    torch.manual_seed(7)
    coins = keep_scale((2, 3, 5, 5), 0.25, q.device, q.dtype)
    scores = (q @ k.transpose(2, 3)) * 0.5
    if mask_kind != "none":
        scores = scores.masked_fill(~keep, float("-inf"))
    manual = (scores.softmax(-1) * coins) @ v
    assert torch.allclose(dropped, manual.transpose(1, 2), atol=1e-6)


def test_the_swap_lasts_for_the_block_only_and_the_model_comes_back_stock(
    tiny_bert_dir: Path,
) -> None:
    pretrained = load_pretrained(str(tiny_bert_dir))
    model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.2, seed=0)
    before = dict(model.named_modules())
    assert model.config._attn_implementation == "sdpa"
    with cpu_dropout(model):
        assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
        assert model.config._attn_implementation == ATTENTION_NAME
        model.train()
        out = model(
            input_ids=torch.tensor([[2, 5, 6, 3, 0]]),
            attention_mask=torch.tensor([[1, 1, 1, 1, 0]]),
        )
        assert torch.isfinite(out.logits).all()
        model.eval()  # what the last evaluation of a fold leaves
    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert model.config._attn_implementation == "sdpa"
    assert not any(m.training for m in model.modules()), "a restored module is still training"


def test_a_cpu_training_step_draws_no_per_element_bernoulli_masks(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    """torch's CPU dropout (``bernoulli_``) was 12 % of a bf16 MiniLM step; none is left."""
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    prepared = prepare(config)
    hp = dataclasses.replace(HP, dropout=0.1, epochs=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fold = train_fold(hp, config, prepared, 0)
    names = {event.key for event in prof.key_averages()}
    assert "aten::random_" in names  # the masks were drawn, here
    assert "aten::bernoulli_" not in names
    assert all(
        type(m) is torch.nn.Dropout for m in fold.model.modules() if isinstance(m, torch.nn.Dropout)
    )
    assert fold.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("p", [0.0, 1e-7, 1.0])
def test_the_ends_of_the_range_drop_nothing_or_everything(p: float) -> None:
    mask = keep_scale((1000,), p, torch.device("cpu"), torch.float32)
    assert torch.equal(mask, torch.full((1000,), 0.0 if p == 1.0 else 1.0))


def test_the_scale_makes_the_expectation_exact_for_the_rounded_probability() -> None:
    torch.manual_seed(0)
    mask = keep_scale((2_000_000,), 0.999, torch.device("cpu"), torch.float64)
    kept = int((mask > 0).sum())
    assert mask.max() == pytest.approx(65536 / (65536 - round(0.999 * 65536)))
    assert abs(float(mask.mean()) - 1.0) < 5 * math.sqrt(65536 / 65 / 2_000_000), kept


def _module(causal: bool = False, kv_groups: int = 1) -> torch.nn.Module:
    module = torch.nn.Module()
    module.is_causal = causal  # type: ignore[assignment]
    module.num_key_value_groups = kv_groups  # type: ignore[assignment]
    return module


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        (_module(causal=True), {}),
        (_module(kv_groups=2), {}),
        (_module(), {"position_bias": torch.zeros(1, 4, 5, 5)}),
    ],
    ids=["causal", "grouped-query", "position-bias"],
)
def test_calls_the_math_path_does_not_cover_go_to_transformers_sdpa(
    module: torch.nn.Module, extra: dict[str, torch.Tensor]
) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 8)
    k, v = (
        torch.randn(1, 4 // module.num_key_value_groups, 5, 8),
        torch.randn(1, 4 // module.num_key_value_groups, 5, 8),
    )  # type: ignore[operator]
    torch.manual_seed(5)
    ours, _ = attention(module, q, k, v, None, dropout=0.2, **extra)
    torch.manual_seed(5)
    theirs, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.2, **extra)
    assert torch.equal(ours, theirs)


def test_under_bf16_autocast_scores_and_softmax_stay_fp32_as_in_sdpas_math_path() -> None:
    torch.manual_seed(0)
    q, k, v = (3 * torch.randn(4, 6, 32, 16) for _ in range(3))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = attention(_module(), qb, kb, vb, None, dropout=1e-7)  # nothing dropped
    assert ours.dtype == torch.bfloat16
    exact = F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float()).transpose(1, 2)
    # Only the final rounding to bf16: within one bf16 step (2^-8 relative) of the fp32 result.
    assert torch.allclose(ours.float(), exact, rtol=2**-8, atol=1e-3)


def test_a_row_with_nothing_to_attend_to_gives_zeros_not_nan() -> None:
    q, k, v = (torch.randn(1, 2, 3, 4) for _ in range(3))
    nothing = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    out, _ = attention(_module(), q, k, v, nothing, dropout=0.1)
    assert torch.equal(out, torch.zeros_like(out))
