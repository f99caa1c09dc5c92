"""Where training runs: device choice, mixed precision, peak memory. Torch imported lazily."""

from __future__ import annotations

import contextlib
import resource
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. CUDA gets TF32 matmuls."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA GPUs that support it; a no-op elsewhere (CPU trains in fp32)."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
