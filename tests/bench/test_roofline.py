"""The roofline's FLOP counts and peaks, against numbers worked out by hand.

Toy encoder: hidden 32, intermediate 37, 2 layers, 2 heads of 16, 2 labels, a pooler. One
example of 5 tokens, per layer: projections 2·5·4·32·32 = 40960, feed-forward 2·5·2·32·37 =
23680, attention 2·2·5²·32 = 3200, i.e. 67840; head: pooler 2·32·32 = 2048, classifier
2·32·2 = 128. Forward 2·67840 + 2176 = 137856; training 3× that, 413568. Of 3 tokens:
2·(2·3·6464 + 2·2·9·32) + 2176 = 82048.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from bench._roofline import (
    cpu_peak,
    cuda_peak,
    device_peak,
    encoder_shape,
    forward_flops,
    parse_cpuinfo,
    training_flops,
)

TOY = SimpleNamespace(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2
)


def processor(number: int, core: int, *, family: int, model: int, flags: str, mhz: float) -> str:
    vendor = "AuthenticAMD" if family in (23, 25, 26) else "GenuineIntel"
    return (
        f"processor\t: {number}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
        f"model\t\t: {model}\nmodel name\t: Test CPU\ncpu MHz\t\t: {mhz:.3f}\n"
        f"physical id\t: 0\ncore id\t\t: {core}\nflags\t\t: fpu sse2 {flags}\n"
    )


def cpuinfo(cores: list[int], *, family: int, model: int, flags: str, mhz: float) -> str:
    """/proc/cpuinfo text: one processor per entry of ``cores`` (its core id)."""
    return "\n".join(
        processor(n, core, family=family, model=model, flags=flags, mhz=mhz)
        for n, core in enumerate(cores)
    )


ZEN4 = cpuinfo([0, 1], family=25, model=17, flags="avx2 fma avx512f avx512_bf16", mhz=2500.0)


def test_forward_and_training_flops_of_the_toy_encoder_match_the_hand_count() -> None:
    shape = encoder_shape(TOY)
    assert (shape.attention_width, shape.num_labels, shape.pooler) == (32, 2, True)
    assert forward_flops(shape, [5]) == 137856
    assert training_flops(shape, [5]) == 3 * 137856 == 413568
    assert forward_flops(shape, [5, 3]) == 137856 + 82048


def test_flops_count_each_example_over_its_own_tokens_so_padding_costs_nothing() -> None:
    shape = encoder_shape(TOY)
    assert forward_flops(shape, [3, 3]) == 2 * forward_flops(shape, [3])
    assert forward_flops(shape, []) == 0


def test_a_mean_pooled_head_has_no_pooler_and_distilbert_names_are_read() -> None:
    mean = encoder_shape(TOY, pooling="mean", num_labels=3)
    assert forward_flops(mean, [5]) == 137856 - 2048 - 128 + 2 * 32 * 3
    distil = SimpleNamespace(dim=32, hidden_dim=37, n_layers=2, n_heads=2)
    assert encoder_shape(distil) == encoder_shape(TOY)


def test_the_count_equals_torchs_flop_counter_on_an_unpadded_bert() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, 40, (1, 7), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.sum().backward()
    assert counter.get_total_flops() == training_flops(encoder_shape(config), [7])


def test_zen4_runs_avx512_at_one_fma_a_cycle_and_vdpbf16ps_doubles_it() -> None:
    peak = cpu_peak(parse_cpuinfo(ZEN4), threads=2, max_mhz=None)
    # 2 cores × 2.5 GHz × 16 lanes × 2 FLOPs × 1 FMA a cycle; bf16 twice that.
    assert peak.flops_per_s["fp32"] == pytest.approx(160e9)
    assert peak.flops_per_s["bf16"] == pytest.approx(320e9)
    assert "AMD Zen 4" in peak.basis and "cpuinfo cpu MHz" in peak.basis


def test_the_max_clock_wins_over_cpuinfo_and_threads_past_the_cores_add_nothing() -> None:
    info = parse_cpuinfo(ZEN4)
    assert cpu_peak(info, threads=1, max_mhz=3700.0).flops_per_s["fp32"] == pytest.approx(
        3.7e9 * 32
    )
    assert cpu_peak(info, threads=8, max_mhz=None).flops_per_s["fp32"] == pytest.approx(160e9)
    only_cpu1 = cpu_peak(info, threads=2, max_mhz=None, allowed={1})
    assert only_cpu1.flops_per_s["fp32"] == pytest.approx(80e9)


def test_smt_siblings_count_once_and_amx_sets_the_bf16_peak() -> None:
    # Sapphire Rapids: 4 logical CPUs on 2 cores, two 512-bit FMAs a cycle, AMX.
    text = cpuinfo(
        [0, 0, 1, 1], family=6, model=0x8F, flags="avx2 fma avx512f avx512_bf16 amx_bf16", mhz=2000
    )
    peak = cpu_peak(parse_cpuinfo(text), threads=4, max_mhz=3000.0)
    assert peak.flops_per_s["fp32"] == pytest.approx(2 * 3e9 * 64)
    assert peak.flops_per_s["bf16"] == pytest.approx(2 * 3e9 * 1024)


@pytest.mark.parametrize(
    ("family", "model", "flags", "per_cycle"),
    [
        (25, 1, "avx2 fma", 32),  # Zen 3: two 256-bit FMAs
        (23, 1, "avx2 fma", 16),  # Zen: 256-bit on 128-bit pipes
        (6, 0x3C, "avx2 fma", 32),  # Haswell, not in the table: the default two FMAs
        (6, 0x8C, "avx2 fma avx512f", 32),  # Tiger Lake: one 512-bit FMA
    ],
)
def test_fp32_flops_per_cycle_follow_the_microarchitecture(
    family: int, model: int, flags: str, per_cycle: int
) -> None:
    text = cpuinfo([0], family=family, model=model, flags=flags, mhz=1000.0)
    peak = cpu_peak(parse_cpuinfo(text), threads=1, max_mhz=None)
    assert peak.flops_per_s["fp32"] == pytest.approx(1e9 * per_cycle)
    assert "bf16" not in peak.flops_per_s
    assert math.isnan(peak.fraction(1e9, "bf16"))


@pytest.mark.parametrize(
    ("name", "bf16_tflops"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
    ],
)
def test_cuda_peaks_come_from_the_datasheet_table_by_name(name: str, bf16_tflops: float) -> None:
    peak = cuda_peak(name)
    assert peak.flops_per_s["bf16"] == bf16_tflops * 1e12
    assert peak.fraction(bf16_tflops * 1e12 / 4, "bf16") == pytest.approx(0.25)


def test_an_unknown_gpu_has_no_peak_and_no_fraction() -> None:
    peak = cuda_peak("Tesla T4")
    assert peak.flops_per_s == {}
    assert math.isnan(peak.fraction(1e12, "fp32"))


def test_this_machines_cpu_peak_is_positive() -> None:
    assert device_peak("cpu", threads=1).flops_per_s["fp32"] > 0
