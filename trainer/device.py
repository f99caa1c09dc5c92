"""Where training runs: device choice, autocast, peak memory. Torch imported lazily."""

from __future__ import annotations

import contextlib
import resource
from typing import TYPE_CHECKING, Any

from trainer.config import Precision

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. CUDA gets TF32 matmuls, and ``cuda:N`` becomes
    the current device, so whatever asks for "the" GPU (streams, caches) does not open a
    context on GPU 0 next to the one we train on."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        # The legacy flags, not ``fp32_precision``: on torch 2.9+ they still set both views
        # consistently, while a new-API write makes every legacy reader (inductor's, in some
        # versions) raise "mix of the legacy and new APIs".
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, precision: Precision) -> Any:
    """bf16 autocast on ``device`` for ``precision="bf16"``; a no-op for fp32.

    Only what runs inside is cast; parameters and their gradients stay fp32.
    """
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; CPU has nothing to wait)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: allocated tensors on CUDA, else the process's max resident set."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on CUDA (one per ``run_cv`` call); CPU keeps the process's."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    """Return cached blocks to the accelerator after an out-of-memory error."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compiled(model: torch.nn.Module) -> Any:
    """``torch.compile`` for batches of varying length (dynamic shapes: no recompile per width)."""
    import torch

    return torch.compile(model, dynamic=True)
