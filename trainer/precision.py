"""Which precision training runs in: fp32, or bf16 autocast where the hardware runs it fast.

``resolve_precision("auto", device)`` picks bf16 only where the device has native bf16
matmuls (CUDA compute capability 8.0+ or ROCm; x86 CPUs with AVX512_BF16 or AMX, Arm CPUs with
BF16) *and* a short probe finds bf16 autocast faster than fp32 on this machine by more than
``MIN_BF16_SPEEDUP``: a forward and backward through a small transformer-like stack in each
precision, run once per process and device. Everything else trains in fp32. The resolved value
is what ``TrainerConfig.precision`` holds, so a run is reproduced from its config, not re-probed.

Under bf16 autocast only the model's forward runs in bf16: the weights (AdamW's master copy),
the loss (cross-entropy on ``.float()`` logits), the L1/L2 penalty and its gradient, and the
metrics stay fp32. Torch is imported lazily.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from trainer.config import Precision, PrecisionRequest
from trainer.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# bf16 must beat fp32 by this factor in the probe: a tie is not worth bf16's rounding.
MIN_BF16_SPEEDUP = 1.1
# /proc/cpuinfo names of native bf16 arithmetic: x86 ``flags`` and Arm ``Features``.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")

_speedups: dict[str, float] = {}
_speedups_lock = threading.Lock()
# What ``auto`` chose, per device, already logged: a worker resolves per trial, logs once.
_told: set[tuple[str, str]] = set()


def read_cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``) from ``/proc/cpuinfo``, or
    from ``cpuinfo`` text when given; empty where there is no such file (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_unsupported(
    device: torch.device, *, cpu_flags: Collection[str] | None = None
) -> str | None:
    """Why ``device`` has no native bf16 (a phrase for a message), or None when it has.

    Args:
        cpu_flags: the CPU's flags; None reads them from ``/proc/cpuinfo``.
    """
    import torch

    if device.type == "cuda":
        if torch.version.hip:
            return None
        # Not torch.cuda.is_bf16_supported(): it asks the *current* device and by default
        # counts emulation, which says yes on a T4 or V100, where bf16 is slower than fp32.
        props = torch.cuda.get_device_properties(device)
        if props.major >= 8:
            return None
        return (
            f"{props.name} (compute capability {props.major}.{props.minor}) has no bf16 tensor "
            "cores (8.0 or newer needed)"
        )
    if device.type == "cpu":
        flags = read_cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
        if flags & CPU_BF16_FLAGS:
            return None
        return "this CPU has no avx512_bf16 or amx_bf16 (nor Arm bf16) flag in /proc/cpuinfo"
    return f"bf16 autocast is used on CUDA and CPUs only, not on {device.type!r}"


def measure_bf16_speedup(
    device: torch.device,
    *,
    timer: Callable[[], float] = time.perf_counter,
    rounds: int = 3,
    steps: int = 2,
) -> float:
    """fp32 time ÷ bf16-autocast time of training steps on ``device``; above 1, bf16 is faster.

    A step is a forward and backward through two residual feed-forward blocks (width → 4·width
    → width, GELU), the matmul shapes of an encoder layer, at a size where the GPU is not
    launch-bound. One warm-up step per precision, then per round ``timer`` is read around
    ``steps`` steps of fp32 and then around ``steps`` of bf16; the best round of each counts.
    """
    import torch

    from trainer.device import autocast, synchronize

    tokens, width = (4096, 1024) if device.type == "cuda" else (256, 256)
    generator = torch.Generator().manual_seed(0)
    shapes = [(width, 4 * width), (4 * width, width)] * 2
    weights = [
        (torch.randn(shape, generator=generator) / math.sqrt(shape[0])).to(device).requires_grad_()
        for shape in shapes
    ]
    inputs = torch.randn(tokens, width, generator=generator).to(device)

    def step(precision: Precision) -> None:
        with autocast(device, precision):
            hidden = inputs
            for up, down in zip(weights[::2], weights[1::2], strict=True):
                hidden = hidden + torch.nn.functional.gelu(hidden @ up) @ down
        hidden.float().square().mean().backward()
        for weight in weights:
            weight.grad = None

    precisions: tuple[Precision, ...] = ("fp32", "bf16")
    best = dict.fromkeys(precisions, math.inf)
    for precision in precisions:
        step(precision)
    synchronize(device)
    for _ in range(rounds):
        for precision in precisions:
            started = timer()
            for _ in range(steps):
                step(precision)
            synchronize(device)
            best[precision] = min(best[precision], timer() - started)
    return best["fp32"] / max(best["bf16"], 1e-12)


def _probed_speedup(device: torch.device) -> float:
    """:func:`measure_bf16_speedup`, once per process and device."""
    key = str(device)
    with _speedups_lock:
        if key not in _speedups:
            _speedups[key] = measure_bf16_speedup(device)
        return _speedups[key]


def resolve_precision(
    requested: PrecisionRequest,
    device: torch.device | str,
    *,
    cpu_flags: Collection[str] | None = None,
    speedup: Callable[[torch.device], float] | None = None,
) -> Precision:
    """The precision to train in on ``device``: ``requested``, with ``auto`` decided here.

    ``fp32`` stays fp32. ``bf16`` stays bf16 where the device has native bf16. ``auto`` is
    bf16 where the device has native bf16 and the probe measures bf16 autocast more than
    ``MIN_BF16_SPEEDUP`` times as fast as fp32; fp32 otherwise.

    Args:
        requested: the study spec's ``train.precision``.
        device: a device or a name (``auto``, ``cpu``, ``cuda:1``).
        cpu_flags: the CPU's flags; None reads ``/proc/cpuinfo`` (tests pass their own).
        speedup: measures bf16's speedup on a device; None runs :func:`measure_bf16_speedup`
            once per process and device (tests pass their own).

    Raises:
        ConfigError: ``bf16`` on a device without native bf16, or an unknown value; one line
            naming ``train.precision``.
    """
    if requested not in get_args(PrecisionRequest):
        raise ConfigError(
            f"train.precision={requested!r}: expected one of {get_args(PrecisionRequest)}"
        )
    if requested == "fp32":
        return "fp32"
    if isinstance(device, str):
        from trainer.device import resolve_device

        device = resolve_device(device)
    reason = bf16_unsupported(device, cpu_flags=cpu_flags)
    if requested == "bf16":
        if reason is not None:
            raise ConfigError(f"train.precision='bf16': {reason}; use 'auto' or 'fp32'")
        return "bf16"
    if reason is not None:
        _tell_once(device, "fp32", f"precision auto: fp32 on {device} ({reason})")
        return "fp32"
    ratio = (speedup or _probed_speedup)(device)
    chosen: Precision = "bf16" if ratio > MIN_BF16_SPEEDUP else "fp32"
    _tell_once(
        device,
        chosen,
        f"precision auto: {chosen} on {device} (bf16 autocast ran {ratio:.2f}x as fast as "
        f"fp32; bf16 needs > {MIN_BF16_SPEEDUP:.2f}x)",
    )
    return chosen


def _tell_once(device: torch.device, chosen: Precision, message: str) -> None:
    """``message`` at INFO the first time ``auto`` chose ``chosen`` on ``device``, then DEBUG."""
    key = (str(device), chosen)
    with _speedups_lock:
        first = key not in _told
        _told.add(key)
    logger.log(logging.INFO if first else logging.DEBUG, "%s", message)
