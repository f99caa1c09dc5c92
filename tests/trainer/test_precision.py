"""Precision chosen by the hardware: ``auto`` resolves to bf16 only where it is native and
measured faster; explicit ``bf16`` where it is not native is a one-line error."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator

import pytest
import torch

import trainer.precision
from trainer import ConfigError, resolve_precision
from trainer.precision import MIN_BF16_SPEEDUP, bf16_unsupported, read_cpu_flags

CPU = torch.device("cpu")
NO_BF16 = frozenset({"fpu", "sse2", "avx2", "avx512f"})
AVX512_BF16 = NO_BF16 | {"avx512_bf16"}
AMX = NO_BF16 | {"amx_tile", "amx_bf16"}


def never_probed(device: torch.device) -> float:
    raise AssertionError("the probe ran where the hardware had already decided")


def test_auto_is_fp32_on_a_cpu_without_bf16_flags_and_never_probes() -> None:
    assert resolve_precision("auto", CPU, cpu_flags=NO_BF16, speedup=never_probed) == "fp32"
    assert resolve_precision("auto", CPU, cpu_flags=frozenset(), speedup=never_probed) == "fp32"


@pytest.mark.parametrize("speedup", [0.6, 1.0, MIN_BF16_SPEEDUP])
def test_auto_is_fp32_where_the_probe_finds_bf16_slower_or_no_faster_enough(
    speedup: float,
) -> None:
    chosen = resolve_precision("auto", CPU, cpu_flags=AVX512_BF16, speedup=lambda d: speedup)
    assert chosen == "fp32"


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX, frozenset({"fp", "asimd", "bf16"})])
def test_auto_is_bf16_where_supported_and_measured_faster(flags: frozenset[str]) -> None:
    assert resolve_precision("auto", CPU, cpu_flags=flags, speedup=lambda d: 1.8) == "bf16"


def test_explicit_precisions_are_kept_without_a_probe() -> None:
    assert resolve_precision("fp32", CPU, cpu_flags=AMX, speedup=never_probed) == "fp32"
    assert resolve_precision("bf16", CPU, cpu_flags=AMX, speedup=never_probed) == "bf16"


def test_explicit_bf16_on_a_cpu_without_support_is_one_line_naming_the_field() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_precision("bf16", CPU, cpu_flags=NO_BF16)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("train.precision='bf16': ")
    assert "avx512_bf16" in message and "'fp32'" in message


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.precision='fp16': expected one of"):
        resolve_precision("fp16", CPU)  # type: ignore[arg-type]


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """A simulated CUDA GPU: set ``major``/``minor``/``name`` on it."""
    props = types.SimpleNamespace(name="NVIDIA H100", major=9, minor=0)
    asked: list[torch.device] = []

    def properties(device: torch.device) -> types.SimpleNamespace:
        asked.append(device)
        return props

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.version, "hip", None)
    props.asked = asked
    yield props


def test_a_gpu_with_bf16_tensor_cores_gets_bf16_when_faster(gpu: types.SimpleNamespace) -> None:
    device = torch.device("cuda:1")
    assert resolve_precision("auto", device, speedup=lambda d: 2.5) == "bf16"
    assert gpu.asked == [device]  # the training device, not the current one


def test_a_gpu_that_only_emulates_bf16_trains_in_fp32(gpu: types.SimpleNamespace) -> None:
    gpu.name, gpu.major, gpu.minor = "Tesla T4", 7, 5
    device = torch.device("cuda:0")
    assert resolve_precision("auto", device, speedup=never_probed) == "fp32"
    assert "Tesla T4 (compute capability 7.5)" in (bf16_unsupported(device) or "")
    with pytest.raises(ConfigError, match=r"^train.precision='bf16': Tesla T4"):
        resolve_precision("bf16", device)


def test_other_devices_are_fp32_unless_asked_and_refused_if_asked() -> None:
    mps = torch.device("mps")
    assert resolve_precision("auto", mps, speedup=never_probed) == "fp32"
    with pytest.raises(ConfigError, match="not on 'mps'"):
        resolve_precision("bf16", mps)


def test_cpu_flags_come_from_cpuinfo_on_x86_and_arm() -> None:
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f amx_bf16\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert {"avx512f", "amx_bf16"} <= read_cpu_flags(x86)
    assert "bf16" in read_cpu_flags(arm)
    assert read_cpu_flags("model name: something\n") == frozenset()


def test_the_probe_is_fp32_time_over_bf16_time_on_the_injected_clock() -> None:
    # One round: the clock is read around the fp32 steps, then around the bf16 steps.
    readings = iter([10.0, 11.0, 11.0, 11.4])
    speedup = trainer.precision.measure_bf16_speedup(CPU, timer=lambda: next(readings), rounds=1)
    assert speedup == pytest.approx(1.0 / 0.4)
    # Of several rounds, the best time of each precision counts.
    readings = iter([0.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 6.0])
    speedup = trainer.precision.measure_bf16_speedup(CPU, timer=lambda: next(readings), rounds=2)
    assert speedup == pytest.approx(1.0 / 1.0)


def test_the_probe_runs_once_per_process_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.device] = []

    def measure(device: torch.device) -> float:
        calls.append(device)
        return 3.0

    monkeypatch.setattr(trainer.precision, "measure_bf16_speedup", measure)
    monkeypatch.setattr(trainer.precision, "_speedups", {})
    for _ in range(3):
        assert resolve_precision("auto", "cpu", cpu_flags=AMX) == "bf16"
    assert calls == [CPU]


def test_a_worker_resolving_per_trial_logs_the_choice_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(trainer.precision, "_told", set())
    with caplog.at_level(logging.INFO, logger="trainer.precision"):
        for _ in range(3):
            resolve_precision("auto", CPU, cpu_flags=AMX, speedup=lambda d: 1.8)
            resolve_precision("auto", CPU, cpu_flags=NO_BF16)
    told = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(told) == 2, told
    assert told[0].startswith("precision auto: bf16 on cpu (bf16 autocast ran 1.80x")
    assert told[1].startswith("precision auto: fp32 on cpu (this CPU has no avx512_bf16")
