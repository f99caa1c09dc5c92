"""The parity benchmark's bookkeeping: its points lie in the demo's space, a rerun resumes
instead of retraining, and the summary compares paired differences with seed-to-seed noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bench.precision_parity as parity
from hpo import load_spec


def run(config: str, seed: int, precision: str, mean: float, speed: float = 10.0) -> dict[str, Any]:
    return {
        "config": config,
        "seed": seed,
        "precision": precision,
        "rows": 480,
        "folds": 3,
        "epochs": 2,
        "mean": mean,
        "fold_scores": [mean] * 3,
        "train_examples_per_s": speed,
        "wall_s": 1.0,
    }


def test_the_configurations_are_the_demos_baseline_and_points_of_its_space() -> None:
    spec = load_spec(parity.SPEC)
    configs = parity.demo_configs(spec)
    assert list(configs) == ["baseline", "low-lr", "high-lr"]
    assert configs["baseline"] == spec.search.enqueue[0]


def test_paired_differences_are_set_against_the_seed_range_at_the_same_precision() -> None:
    runs = [
        run("a", 0, "fp32", 0.80, speed=10.0),
        run("a", 0, "bf16", 0.81, speed=16.0),
        run("a", 1, "fp32", 0.76, speed=10.0),
        run("a", 1, "bf16", 0.75, speed=16.0),
        run("a", 2, "fp32", 0.70),  # no bf16 partner yet: not paired, but a seed of fp32
    ]
    table, summary = parity.render(runs, ["a"])
    assert "| a | 0, 1 | 0.800 / 0.760 | 0.810 / 0.750 | +1.0 / -1.0 | 10.0 / 6.0 |" in table
    assert "Over 2 paired runs" in summary and "+0.00 points on average" in summary
    assert "mean |difference| 1.00" in summary
    assert "averages 8.00 points" in summary and "within run-to-run noise" in summary
    assert "1.60×" in summary


def test_nothing_is_summarized_before_a_pair_finishes() -> None:
    _, summary = parity.render([run("a", 0, "fp32", 0.8)], ["a"])
    assert summary.startswith("No configuration has finished")


def test_each_finished_run_is_kept_and_a_rerun_trains_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[tuple[int, str]] = []
    interrupted: list[bool] = []

    def fake_run_one(
        spec: Any, params: Any, *, seed: int, precision: str, **_: Any
    ) -> dict[str, Any]:
        trained.append((seed, precision))
        if len(trained) == 3 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # the first benchmark stops during its third run
        return {"fold_scores": [0.8], "mean": 0.8, "train_examples_per_s": 1.0, "wall_s": 1.0}

    monkeypatch.setattr(parity, "run_one", fake_run_one)
    results = tmp_path / "parity.json"
    argv = ["--seeds", "0", "1", "--configs", "baseline", "--results", str(results)]
    with pytest.raises(KeyboardInterrupt):
        parity.main(argv)
    assert [(r["seed"], r["precision"]) for r in parity.load_runs(results)] == [
        (0, "fp32"),
        (0, "bf16"),
    ]
    trained.clear()
    parity.main(argv)
    assert trained == [(1, "fp32"), (1, "bf16")]
    assert len(parity.load_runs(results)) == 4
    trained.clear()
    parity.main([*argv, "--epochs", "1"])  # other settings: other runs
    assert len(trained) == 4


def test_a_cpu_without_bf16_stops_in_one_line_before_the_first_bf16_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "parity.json"
    settings = {"rows": 64, "folds": 2, "epochs": 1}
    fp32 = {**run("baseline", 0, "fp32", 0.8), **settings}
    parity.append_run(results, fp32)  # the fp32 run is done: the next one is the first bf16
    monkeypatch.setattr(parity, "bf16_supported", lambda: False)
    argv = ["--seeds", "0", "--configs", "baseline", "--rows", "64", "--folds", "2"]
    with pytest.raises(SystemExit) as stopped:
        parity.main([*argv, "--epochs", "1", "--results", str(results)])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "native bf16" in message
    assert parity.load_runs(results) == [fp32]
