"""Shared fixtures: tiny transformers built from a config (no network) and a separable task."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from trainer import TrainerConfig

# The suite never touches a hub: what is not local must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

POSITIVE = ["good", "great", "fine", "nice", "happy", "superb"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly", "dull"]
NOISE = ["the", "a", "movie", "film", "plot", "actor", "scene", "story", "was", "is", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_model(directory: Path, arch: str) -> Path:
    """Save a randomly initialised tiny ``bert`` or ``distilbert`` classifier and tokenizer.

    A few hundred KB: hidden size 32, 2 layers, 2 heads, a 28-word vocabulary.
    """
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizer,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    directory.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + POSITIVE + NEGATIVE + NOISE
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    n_vocab = len(words)
    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(
            vocab_size=n_vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
        model = BertForSequenceClassification(config)
    elif arch == "distilbert":
        config = DistilBertConfig(
            vocab_size=n_vocab,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=37,
            max_position_embeddings=64,
        )
        model = DistilBertForSequenceClassification(config)
    else:
        raise ValueError(arch)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_synthetic_csv(path: Path, n_rows: int = 160, seed: int = 0) -> Path:
    """A separable binary task: each text holds two words of its class among noise words.

    Columns: ``text``, ``label`` (``pos``/``neg``), balanced.
    """
    import csv

    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n_rows):
            label = "pos" if i % 2 == 0 else "neg"
            words = rng.sample(NOISE, rng.randint(3, 6)) + rng.sample(
                POSITIVE if label == "pos" else NEGATIVE, 2
            )
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return path


def make_trainer_config(
    model_dir: Path, csv: Path, cache_dir: Path, **changes: Any
) -> TrainerConfig:
    """A CPU ``TrainerConfig`` for a tiny model on a ``write_synthetic_csv`` file.

    2 folds, ``max_seq_len=16``, tokens cached under ``cache_dir``; ``changes`` override any
    ``TrainerConfig`` field (``n_folds=4``, ``anchor="pretrained"``, ``metric="loss"``…).
    """
    import dataclasses

    from trainer import DataConfig, TrainerConfig

    config = TrainerConfig(
        model_name_or_path=str(model_dir),
        data=DataConfig(source=str(csv), text=("text",), label="label"),
        max_seq_len=16,
        n_folds=2,
        device="cpu",
        cache_dir=str(cache_dir),
    )
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-distilbert"), "distilbert")


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_csv(tmp_path_factory.mktemp("data") / "synthetic.csv")


@pytest.fixture(autouse=True)
def _no_leaked_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail a test that leaves a process running in its temporary directories (a worker that
    ``hpo run`` did not stop, say), after killing it: a leaked trainer would slow every later
    test and hide the failure that leaked it."""
    yield
    import psutil

    base = str(tmp_path_factory.getbasetemp()) + os.sep  # not pytest-3 for pytest-36
    me = os.getpid()
    leaked = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        info = proc.info
        if info["pid"] == me:
            continue
        cwd = info.get("cwd") or ""
        cmdline = " ".join(info.get("cmdline") or [])
        if cwd.startswith(base) or base in cmdline:
            leaked.append(proc)
    for proc in leaked:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leaked, timeout=10)
    if leaked:
        pytest.fail(f"processes left running: {[' '.join(p.info['cmdline']) for p in leaked]}")
