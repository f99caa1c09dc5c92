"""Roofline numbers: the FLOPs of a training step and the peak FLOP/s of the device it ran on.

Written by hand because nothing we have gives both on our terms. ``torch.utils.flop_counter``
counts the FLOPs of ops as they ran, i.e. of padded batches, inside the measured process; we
want the work the model *must* do for the examples it saw, the same for two trainers whatever
their batching pads (and :func:`training_flops` matches it on an unpadded batch: see the
tests). And no library reports a CPU's peak FLOP/s: torch, ``lscpu`` and ``/proc/cpuinfo`` give
flags and clocks, not how many vector FMAs a core issues per cycle; for GPUs, torch gives the
SM count and clock but not the tensor cores' rate per SM, so a datasheet table does.

FLOPs (:func:`forward_flops`, :func:`training_flops`) of a BERT-style encoder with a
classification head, from the model's HF config, counting matmuls only, 2 FLOPs per
multiply-add, per example over its actual tokens (``L``, padding excluded; special tokens
count):

* per layer: Q, K, V and output projections ``2·L·4·H·A``, feed-forward ``2·L·2·H·I``, and
  attention scores and their weighted sum ``2·2·L²·A`` (``H`` hidden size, ``I`` intermediate
  size, ``A`` = heads × head size, usually ``H``);
* head: ``2·H·H`` for a pooler (a dense layer on the first token, as Hugging Face's
  CLS-pooled classifiers have; our mean-pooled head has none), then ``2·H·C`` (``C`` labels);
* 0 for embedding lookups, LayerNorm, GELU, softmax, dropout and the loss (not matmuls);
* a training step is 3× its forward: the backward computes, per matmul, the gradient of its
  input and of its weight, each as many FLOPs as the forward. Frozen layers (which skip
  both) are not modelled.

Peak FLOP/s (:func:`cpu_peak`, :func:`cuda_peak`, :func:`device_peak`), per precision:

* CPU fp32: cores used × clock × lanes × 2 (an FMA is two FLOPs) × FMA instructions per cycle.
  Lanes: 16 fp32 with ``avx512f``, 8 with ``avx2`` (4 otherwise). FMA instructions per cycle
  at that width, by microarchitecture, identified from ``/proc/cpuinfo``'s vendor, family and
  model (:data:`CORES`): AMD Zen 4 executes AVX-512 on its two 256-bit FMA pipes, so one
  512-bit FMA per cycle (the same 32 fp32 FLOPs per cycle as Zen 3's two 256-bit FMAs); Zen 5
  has 512-bit pipes (two per cycle; its mobile parts' 256-bit datapath is not told apart);
  Intel Xeon Scalable cores two 512-bit FMAs (the SKUs with both FMA units; some Silver and
  Bronze parts have one), Intel client AVX-512 cores one. Any other CPU: two FMAs per cycle
  at its widest width (Haswell and Zen 2 onwards), the documented default.
* Cores used: torch's intra-op threads, at most the physical cores this process may run on
  (SMT siblings share one core's vector units).
* Clock: the maximum from ``/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq`` (what
  ``lscpu`` shows as "CPU max MHz") where the kernel has it; otherwise ``cpu MHz`` from
  ``/proc/cpuinfo``, which under a hypervisor without cpufreq is the nominal (TSC) clock, not
  the boost one: then the peak is low by the boost ratio and the fraction high by as much.
* CPU bf16: with ``amx_bf16`` (Intel Sapphire Rapids onwards), the AMX tile rate, 1024 FLOPs
  per cycle per core (TDPBF16PS: 16×16×32 multiply-adds every 16 cycles); else with
  ``avx512_bf16``, VDPBF16PS, which sums two bf16 products into each fp32 lane: 2× the fp32
  peak, assuming it issues at the FMA rate (on Zen 4, like its FMAs, one 512-bit per cycle).
  No bf16 entry without either (bf16 is not native there: ``trainer.precision``).
* CUDA: dense (not 2:4 sparse) tensor-core rates at boost clock from NVIDIA's datasheets
  (:data:`CUDA_PEAKS`), matched on the device name. "fp32" is the TF32 rate, because our
  trainer enables TF32 matmuls on CUDA (``trainer.device.resolve_device``). A GPU not in the
  table has no peak (fractions are left out).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import Precision
from trainer.config import Pooling

if TYPE_CHECKING:
    import torch

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ_KHZ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")

# A training step's FLOPs per forward FLOP: the forward, then each matmul's input and weight
# gradients.
TRAINING_PER_FORWARD = 3
# AMX (TDPBF16PS): 16×16×32 bf16 multiply-adds per 16 cycles per core, i.e. 1024 FLOPs a cycle.
AMX_BF16_FLOPS_PER_CYCLE = 1024
# FMA instructions per cycle per core at the widest width, where the microarchitecture is
# not in CORES: two, as Intel since Haswell and AMD since Zen 2 issue.
DEFAULT_FMA_PER_CYCLE = 2


@dataclass(frozen=True)
class EncoderShape:
    """The sizes that set a BERT-style classifier's matmul FLOPs.

    ``attention_width`` is heads × head size (the Q/K/V projections' output width);
    ``pooler``: a hidden → hidden dense layer on the first token before the classifier.
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    attention_width: int
    num_labels: int
    pooler: bool


def encoder_shape(config: Any, *, pooling: Pooling = "cls", num_labels: int = 2) -> EncoderShape:
    """The shape of ``config``'s classifier (a Hugging Face config, BERT or DistilBERT names).

    ``pooling="cls"`` is Hugging Face's ``*ForSequenceClassification`` (a pooler, then the
    classifier); ``"mean"`` our mean-pooled head (the classifier only).
    """
    hidden = int(_first(config, "hidden_size", "dim"))
    heads = int(_first(config, "num_attention_heads", "n_heads"))
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return EncoderShape(
        hidden=hidden,
        intermediate=int(_first(config, "intermediate_size", "hidden_dim")),
        layers=int(_first(config, "num_hidden_layers", "n_layers")),
        heads=heads,
        attention_width=heads * int(head_dim),
        num_labels=num_labels,
        pooler=pooling == "cls",
    )


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise ValueError(f"{type(config).__name__} has none of {names}")


def sequence_forward_flops(shape: EncoderShape, length: int) -> int:
    """Matmul FLOPs of one example's forward pass over its ``length`` tokens."""
    h, a, i = shape.hidden, shape.attention_width, shape.intermediate
    linear = 2 * length * (4 * h * a + 2 * h * i)
    attention = 2 * 2 * length * length * a
    head = (2 * h * h if shape.pooler else 0) + 2 * h * shape.num_labels
    return shape.layers * (linear + attention) + head


def forward_flops(shape: EncoderShape, lengths: Iterable[int]) -> int:
    """Matmul FLOPs of a forward pass over examples of these token lengths (an evaluation)."""
    return sum(sequence_forward_flops(shape, int(length)) for length in lengths)


def training_flops(shape: EncoderShape, lengths: Iterable[int]) -> int:
    """FLOPs of training on examples of these token lengths: 3× their forward."""
    return TRAINING_PER_FORWARD * forward_flops(shape, lengths)


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s per precision it runs natively, and how it was derived.

    ``basis`` is one line for a report (microarchitecture, cores, clock and its source).
    """

    device: str
    flops_per_s: Mapping[Precision, float]
    basis: str

    def fraction(self, achieved_flops_per_s: float, precision: Precision) -> float:
        """``achieved`` over the peak of ``precision``; NaN where there is no such peak."""
        peak = self.flops_per_s.get(precision)
        return achieved_flops_per_s / peak if peak else math.nan


@dataclass(frozen=True)
class CpuCore:
    """A microarchitecture: vector FMA instructions per cycle per core at its widest width."""

    name: str
    fma_per_cycle: int


# (vendor, family, models) → core; models are /proc/cpuinfo ``model`` numbers.
CORES: tuple[tuple[str, int, frozenset[int], CpuCore], ...] = (
    ("AuthenticAMD", 0x17, frozenset(range(0x00, 0x30)), CpuCore("AMD Zen/Zen+", 1)),
    ("AuthenticAMD", 0x17, frozenset(range(0x30, 0x100)), CpuCore("AMD Zen 2", 2)),
    (
        "AuthenticAMD",
        0x19,
        frozenset([*range(0x10, 0x20), *range(0x60, 0x80), *range(0xA0, 0xB0)]),
        CpuCore("AMD Zen 4", 1),
    ),
    (
        "AuthenticAMD",
        0x19,
        frozenset([*range(0x00, 0x10), *range(0x20, 0x60)]),
        CpuCore("AMD Zen 3", 2),
    ),
    ("AuthenticAMD", 0x1A, frozenset(range(0x100)), CpuCore("AMD Zen 5", 2)),
    (
        "GenuineIntel",
        6,
        frozenset({0x55, 0x6A, 0x6C, 0x8F, 0xCF, 0xAD, 0xAE}),
        CpuCore("Intel Xeon Scalable", 2),
    ),
    (
        "GenuineIntel",
        6,
        frozenset({0x7D, 0x7E, 0x8C, 0x8D, 0xA7}),
        CpuCore("Intel client AVX-512", 1),
    ),
)


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` says about the CPU (the first processor's fields).

    ``cores``: each logical processor's (physical id, core id).
    """

    vendor: str
    family: int
    model: int
    model_name: str
    flags: frozenset[str]
    mhz: float
    cores: Mapping[int, tuple[int, int]] = field(default_factory=dict)


def parse_cpuinfo(text: str) -> CpuInfo:
    """The fields of ``/proc/cpuinfo`` text that set the peak; missing ones are empty or 0."""
    blocks = [block for block in text.strip().split("\n\n") if block.strip()]
    parsed = [
        {
            key.strip(): value.strip()
            for key, _, value in (line.partition(":") for line in block.splitlines())
        }
        for block in blocks
    ] or [{}]
    first = parsed[0]
    cores = {
        int(fields["processor"]): (
            int(fields.get("physical id", 0)),
            int(fields.get("core id", fields["processor"])),
        )
        for fields in parsed
        if fields.get("processor", "").isdigit()
    }
    return CpuInfo(
        vendor=first.get("vendor_id", ""),
        family=int(first.get("cpu family", 0) or 0),
        model=int(first.get("model", 0) or 0),
        model_name=first.get("model name", ""),
        flags=frozenset(first.get("flags", "").split()),
        mhz=float(first.get("cpu MHz", 0) or 0),
        cores=cores,
    )


def cpu_core(info: CpuInfo) -> CpuCore | None:
    """The microarchitecture of :data:`CORES` that ``info`` names, or None."""
    for vendor, family, models, core in CORES:
        if info.vendor == vendor and info.family == family and info.model in models:
            return core
    return None


def physical_cores(info: CpuInfo, allowed: Collection[int] | None = None) -> int:
    """Physical cores among the logical processors ``allowed`` (all when None)."""
    chosen = {core for cpu, core in info.cores.items() if allowed is None or cpu in allowed}
    if chosen:
        return len(chosen)
    return len(allowed) if allowed else os.cpu_count() or 1


def cpu_peak(
    info: CpuInfo,
    *,
    threads: int,
    max_mhz: float | None,
    allowed: Collection[int] | None = None,
) -> Peak:
    """Peak FLOP/s of ``threads`` torch threads on the CPU ``info`` describes.

    Args:
        max_mhz: the maximum clock (cpufreq), or None to use ``info.mhz``.
        allowed: the logical processors this process may run on (None: all).
    """
    lanes = 16 if "avx512f" in info.flags else 8 if "avx2" in info.flags else 4
    core = cpu_core(info)
    fma = core.fma_per_cycle if core else DEFAULT_FMA_PER_CYCLE
    cores = min(threads, physical_cores(info, allowed))
    mhz, clock_source = (max_mhz, "max clock") if max_mhz else (info.mhz, "cpuinfo cpu MHz")
    fp32_per_cycle = lanes * 2 * fma
    per_s = cores * mhz * 1e6
    peaks: dict[Precision, float] = {"fp32": per_s * fp32_per_cycle}
    bf16 = ""
    if "amx_bf16" in info.flags:
        peaks["bf16"] = per_s * AMX_BF16_FLOPS_PER_CYCLE
        bf16 = f", bf16 {AMX_BF16_FLOPS_PER_CYCLE} (AMX)"
    elif "avx512_bf16" in info.flags:
        peaks["bf16"] = per_s * 2 * fp32_per_cycle
        bf16 = f", bf16 {2 * fp32_per_cycle} (VDPBF16PS)"
    name = core.name if core else f"family {info.family} model {info.model}, default"
    basis = (
        f"{name} ({fma}× {lanes * 32}-bit FMA per cycle), cores used: {cores}, at {mhz:.0f} MHz "
        f"({clock_source}); FLOPs per cycle per core: fp32 {fp32_per_cycle}{bf16}"
    )
    return Peak(device=info.model_name or "CPU", flops_per_s=peaks, basis=basis)


# Dense tensor-core TFLOP/s at boost clock, NVIDIA datasheets: (name pattern, bf16, tf32).
# More specific names first ("H100 NVL" before "H100").
CUDA_PEAKS: tuple[tuple[str, float, float], ...] = (
    (r"H200 NVL", 835.0, 418.0),
    (r"H200", 989.0, 495.0),
    (r"H100 NVL", 835.0, 418.0),
    (r"H100 PCIe", 756.0, 378.0),
    (r"H100", 989.0, 495.0),
    (r"A100", 312.0, 156.0),
    (r"L40S", 362.0, 183.0),
    (r"\bL40\b", 181.0, 90.5),
    (r"\bL4\b", 121.0, 60.0),
    (r"\bA10\b", 125.0, 62.5),
)


def cuda_peak(name: str) -> Peak:
    """Peak FLOP/s of the CUDA device called ``name`` (``torch.cuda.get_device_name``).

    "fp32" is the TF32 tensor-core rate (our trainer enables TF32); no entries for a GPU
    not in :data:`CUDA_PEAKS`.
    """
    for pattern, bf16, tf32 in CUDA_PEAKS:
        if re.search(pattern, name):
            return Peak(
                device=name,
                flops_per_s={"bf16": bf16 * 1e12, "fp32": tf32 * 1e12},
                basis=f"datasheet, dense: bf16 {bf16:g}, tf32 {tf32:g} TFLOP/s",
            )
    return Peak(device=name, flops_per_s={}, basis="not in the datasheet table")


def read_max_mhz(path: Path = MAX_FREQ_KHZ) -> float | None:
    """The kernel's maximum clock of CPU 0 in MHz, or None where cpufreq is absent."""
    try:
        return int(path.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


def device_peak(device: torch.device | str, threads: int | None = None) -> Peak:
    """The peak of ``device`` on this machine; on CPU with ``threads`` (default: torch's)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return cuda_peak(torch.cuda.get_device_name(device))
    if device.type != "cpu":
        return Peak(device=device.type, flops_per_s={}, basis="no peak for this device type")
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return cpu_peak(
        parse_cpuinfo(text),
        threads=threads or torch.get_num_threads(),
        max_mhz=read_max_mhz(),
        allowed=os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None,
    )
