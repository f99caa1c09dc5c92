"""``hpo run``'s local workers: where they train."""

from __future__ import annotations

from hpo.local.run import worker_device


def test_hpo_run_spreads_its_workers_over_every_gpu() -> None:
    assert [worker_device("auto", i, 4) for i in range(6)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert [worker_device("cuda", i, 2) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]


def test_hpo_run_keeps_an_explicit_device_and_auto_without_gpus() -> None:
    assert worker_device("auto", 3, 0) == "auto"
    assert worker_device("cpu", 3, 4) == "cpu"
    assert worker_device("cuda:1", 0, 4) == "cuda:1"
