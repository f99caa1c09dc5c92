"""Device set-up on the CUDA path, checked without a GPU (the CUDA calls are recorded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from trainer.device import autocast, resolve_device


@pytest.fixture
def tf32_flags() -> Iterator[None]:
    """Restore the process's TF32 flags after a test that sets them."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_numbered_gpu_becomes_the_current_device_with_tf32_readable_both_ways(
    monkeypatch: pytest.MonkeyPatch, tf32_flags: None
) -> None:
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert current == [torch.device("cuda:1")]
    # Set through the legacy flags, TF32 reads the same through the new API and the old:
    # neither reader (ours, inductor's, transformers') meets "mix of legacy and new APIs".
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.get_float32_matmul_precision() == "high"
    resolve_device("cuda")
    assert current == [torch.device("cuda:1")]  # no index: the current device stays


def test_autocast_follows_the_resolved_precision_on_cpu() -> None:
    weight = torch.randn(8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 8) @ weight).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 8) @ weight).dtype == torch.float32
    assert weight.dtype == torch.float32
