"""The throughput benchmark's pieces that need no model: contender choice, the summary's
ratios, and how the profile files each op under a category."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench._step_profile import breakdown, category
from bench.trainer_speed import CONTENDERS, contender_list, summarize


def event(name: str, parent: Any = None, self_us: float = 0.0) -> Any:
    """A stand-in for torch's ``FunctionEvent``: a name, a parent, a self time in µs."""
    return SimpleNamespace(name=name, cpu_parent=parent, self_cpu_time_total=self_us)


def test_contenders_run_in_the_benchmarks_order_whatever_order_they_are_asked_in() -> None:
    assert contender_list("hf-bf16, ours") == ["ours", "hf-bf16"]
    assert contender_list(",".join(CONTENDERS)) == list(CONTENDERS)


@pytest.mark.parametrize("text", ["ours,tf", "", " , "])
def test_an_unknown_or_empty_contender_list_is_an_error_naming_the_option(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--contenders"):
        contender_list(text)


def head(**ex_s: float) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, speed in ex_s.items():
        name = (
            name.replace("_bf16", "-bf16").replace("_auto", "-auto").replace("_grouped", "-grouped")
        )
        values.update({f"{name}_ex_s": speed, f"{name}_peak": 0.5})
        values.update({f"{name}_wall_s": 10.0, f"{name}_setup_warm_s": 0.1})
    return values


def test_the_summary_states_auto_over_fp32_and_best_over_best() -> None:
    speeds = head(ours=40.0, ours_auto=60.0, hf=20.0, hf_bf16=25.0, hf_bf16_grouped=30.0)
    text = summarize(speeds, "bf16")
    assert "`precision: auto` picked bf16 on this machine: ours(auto) / ours fp32 = 1.50" in text
    assert "Ours-best / HF-best = 2.00 (ours-auto" in text
    assert "vs hf-bf16-grouped" in text  # theirs-best is the best of its three settings


def test_where_auto_picks_fp32_its_ratio_is_about_one_and_best_is_what_ran_fastest() -> None:
    text = summarize(head(ours=40.0, ours_auto=39.0, hf=20.0), "fp32")
    assert "picked fp32" in text and "ours(auto) / ours fp32 = 0.97" in text
    assert "Ours-best / HF-best = 2.00 (ours," in text


def test_the_profile_files_ops_by_their_range_then_attention_then_matmul() -> None:
    step = event("step", self_us=1000)
    penalty = event("penalty", step)
    backward = event("autograd::engine::evaluate_function: AddmmBackward0", step)
    sdpa = event("aten::scaled_dot_product_attention", step)
    sdpa_backward = event(
        "autograd::engine::evaluate_function: ScaledDotProductFlashAttentionForCpuBackward0", step
    )
    assert category(event("aten::_foreach_add_", penalty)) == "penalty"
    assert category(event("aten::mm", penalty)) == "penalty"
    assert category(event("aten::mm", backward)) == "matmul"
    assert category(event("aten::bmm", sdpa)) == "attention"
    assert category(event("aten::empty", sdpa_backward)) == "attention"
    assert category(event("aten::_softmax", step)) == "attention"
    assert category(event("aten::gelu", step)) == "other"
    linear = event("aten::linear", step)  # under bf16 autocast its inputs are cast inside it
    assert category(event("aten::addmm", linear)) == "matmul"
    assert category(event("aten::_to_copy", linear)) == "other"
    assert category(event("aten::copy_", event("aten::_to_copy", linear))) == "other"
    assert category(step) == "other"


def test_the_breakdown_is_ms_per_step_and_adds_up_to_the_traced_time() -> None:
    step = event("step", self_us=1000)
    events = [
        step,
        event("aten::addmm", step, self_us=6000),
        event("aten::_fused_adamw_", event("optimizer", step), self_us=2000),
    ]
    ms = breakdown(events, steps=2)
    assert ms["matmul"] == 3.0 and ms["optimizer"] == 1.0 and ms["other"] == 0.5
    assert sum(ms.values()) == 4.5


def test_the_profiled_step_draws_its_dropout_masks_as_the_training_loop_does(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile is of our step: on the CPU our dropout masks (``random_``), not torch's
    per-element ``bernoulli_`` that the training loop no longer runs."""
    import bench._step_profile as step_profile
    from tests.trainer.helpers import HP, config_for

    names: set[str] = set()
    real = step_profile.breakdown

    def capture(events: Any, steps: int) -> dict[str, float]:
        names.update(event.name for event in events)
        return real(events, steps)

    monkeypatch.setattr(step_profile, "breakdown", capture)
    hparams = dataclasses.replace(HP, dropout=0.1, l1=1e-6, l2=1e-4)
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    (profile,) = step_profile.profile_steps(hparams, config, ("fp32",), warmup=1, steps=2)
    assert profile.ms_per_step["penalty"] > 0
    assert "aten::random_" in names
    assert "aten::bernoulli_" not in names
