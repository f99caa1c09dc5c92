"""The Hugging Face ``Trainer`` baseline, set up once for every bench that compares with it.

What a user following the ``transformers`` docs would write: the texts tokenized once with
truncation (``tokenized``), ``DataCollatorWithPadding``, ``TrainingArguments`` defaults for
everything a bench does not set (``training_args``), an accuracy metric (``accuracy``) and the
checkpoint loaded per trial. ``timed_trials`` runs trials back to back in this process and times
them as ``bench.trainer_speed`` and ``bench.gpu_throughput`` report them; ``bench.e2e`` uses the
same pieces with ``Trainer.hyperparameter_search``.

Where the CPU and GPU variants differ, the differences are parameters, not copies: on CUDA the
epoch timer synchronizes the device before reading the clock, memory is released between trials
(accelerate keeps the last model alive in a reference cycle) and peak memory is recorded;
``group_by_length`` is the documented way to cut padding; the first forward and the first
optimizer step are timed only where a bench reports setup (``first_step``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from bench._common import FirstStep


def accuracy(prediction: Any) -> dict[str, float]:
    """``compute_metrics`` for classification: the share of argmax hits."""
    import numpy as np

    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def tokenized(tokenizer: Any, texts: Sequence[str], labels: Sequence[int], max_len: int) -> Any:
    """A ``datasets.Dataset`` of input_ids, attention_mask and labels, unpadded."""
    from datasets import Dataset

    encoded = tokenizer(list(texts), truncation=True, max_length=max_len)
    return Dataset.from_dict({**encoded, "labels": [int(label) for label in labels]})


def training_args(
    output_dir: str,
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    warmup_ratio: float,
    seed: int,
    device: str = "cpu",
    bf16: bool = False,
    evaluate: bool = True,
    **overrides: Any,
) -> Any:
    """``TrainingArguments`` with its defaults for everything not given here or in
    ``overrides`` (learning_rate, max_grad_norm, weight_decay, ...). On CUDA, TF32 matmuls."""
    from transformers import TrainingArguments

    cuda = device.startswith("cuda")
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        warmup_steps=warmup_ratio,  # a float below 1 is a ratio of the training steps (v5)
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=bf16,
        tf32=True if cuda else None,
        seed=seed,
        **overrides,
    )


def settings_args(output_dir: str, settings: dict[str, Any], *, epochs: int, **kw: Any) -> Any:
    """``training_args`` from a bench's ``SETTINGS`` (batch_size, eval_batch_size, lr,
    warmup_ratio, max_grad_norm, seed); ``kw`` as for ``training_args``."""
    return training_args(
        output_dir,
        epochs=epochs,
        batch_size=settings["batch_size"],
        eval_batch_size=settings["eval_batch_size"],
        warmup_ratio=settings["warmup_ratio"],
        seed=settings["seed"],
        learning_rate=settings["lr"],
        max_grad_norm=settings["max_grad_norm"],
        **kw,
    )


def _epoch_timer(cuda: bool) -> Any:
    """A ``TrainerCallback`` that sums the time inside training epochs (evaluation excluded)
    and keeps the last evaluation's accuracy and end time."""
    import torch
    from transformers import TrainerCallback

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class EpochTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.began = 0.0
            self.train_s = 0.0
            self.last_eval_end = 0.0
            self.accuracy = float("nan")

        def on_epoch_begin(self, *_: Any, **__: Any) -> None:
            self.began = now()

        def on_epoch_end(self, *_: Any, **__: Any) -> None:
            self.train_s += now() - self.began

        def on_evaluate(self, *_: Any, **kwargs: Any) -> None:
            self.last_eval_end = time.perf_counter()
            self.accuracy = kwargs["metrics"].get("eval_accuracy", float("nan"))

    return EpochTimer()


def release_memory() -> None:
    """Collect the last trial's model (accelerate keeps it in a cycle) and, on CUDA, its cache."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_trials(
    model_path: str,
    examples: Any,
    fold: tuple[Any, Any],
    settings: dict[str, Any],
    *,
    epochs: int,
    out_dir: str,
    device: str = "cpu",
    trials: int = 2,
    first_step: bool = False,
    **args_kw: Any,
) -> list[dict[str, Any]]:
    """``trials`` trials of ``Trainer`` back to back (the second is warm) on ``fold`` (train and
    held-out indices) of ``examples`` (``trainer.Examples``), tokenized once, each trial loading
    the checkpoint with a fresh head; ``TrainingArguments`` from ``settings`` (``settings_args``,
    with ``max_seq_len`` and ``dropout`` too) and ``args_kw``.

    Per trial: ``train_examples``, ``train_tokens`` (unpadded, all epochs), ``train_s`` (inside
    the training epochs), ``wall_s`` (trial start to its last evaluation's end), ``accuracy``
    (the last evaluation's), ``peak_mb`` (CUDA, else nan), ``optim``; with ``first_step``,
    ``setup_s`` and ``first_step_s`` too.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_set, eval_set = (
        tokenized(
            tokenizer,
            [examples.texts[0][i] for i in indices],
            examples.labels[indices].tolist(),
            settings["max_seq_len"],
        )
        for indices in fold
    )
    cuda = device.startswith("cuda")
    results = []
    for _ in range(trials):
        release_memory()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        first = FirstStep() if first_step else None
        timer = _epoch_timer(cuda)
        started = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(examples.label_names),
            hidden_dropout_prob=settings["dropout"],
            attention_probs_dropout_prob=settings["dropout"],
        )
        trial_args = settings_args(out_dir, settings, epochs=epochs, device=device, **args_kw)
        hf = Trainer(
            model=model,
            args=trial_args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
            callbacks=[timer],
        )
        hf.train()
        result = {
            "train_examples": len(train_set) * epochs,
            "train_tokens": sum(len(ids) for ids in train_set["input_ids"]) * epochs,
            "train_s": timer.train_s,
            "wall_s": timer.last_eval_end - started,
            "accuracy": timer.accuracy,
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
            "optim": str(trial_args.optim),
        }
        if first is not None:
            assert first.at is not None and first.forward_at is not None
            result["setup_s"] = first.forward_at - started
            result["first_step_s"] = first.at - started
        results.append(result)
        del hf, model
    return results
