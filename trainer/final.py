"""Production training: the exported config on all the data, through the same fold code."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainer.config import Hyperparams, TrainerConfig
from trainer.cv import Prepared, prepare, train_fold
from trainer.errors import ModelError

logger = logging.getLogger(__name__)


def holdout_split(
    labels: np.ndarray, fraction: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) indices: a stratified, seeded holdout, or everything for training."""
    index = np.arange(len(labels))
    if not fraction:
        return index, np.zeros(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    train, held = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(held)


def train_final(
    hparams: Hyperparams,
    config: TrainerConfig,
    output_dir: str | Path,
    *,
    holdout_fraction: float | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train on all rows (less an optional holdout) and save a standard Hugging Face model dir.

    Returns:
        Metrics after the last epoch: ``train_loss``, plus holdout accuracy, f1_macro, loss and
        roc_auc when ``holdout_fraction`` is given. Also written to ``metrics.json``.

    Raises:
        ModelError: ``pooling="mean"`` cannot be saved as a standard classifier.
    """
    if hparams.pooling == "mean":
        raise ModelError(
            "pooling=mean has no standard Hugging Face classifier to save it as; "
            "export a trial with pooling=cls for production training"
        )
    base = prepare(replace(config, n_folds=2))  # folds unused; n_folds=2 keeps checks cheap
    split = holdout_split(base.examples.labels, holdout_fraction, config.split_seed)
    prepared = Prepared(base.examples, base.tokens, base.pretrained, [split], base.device)
    trained: list = []
    result = train_fold(hparams, config, prepared, 0, model_out=trained, on_epoch_end=on_epoch_end)
    model = trained[0]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for param in model.parameters():  # frozen layers are saved like the rest
        param.requires_grad_(True)
    model.save_pretrained(out)
    prepared.pretrained.tokenizer.save_pretrained(out)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    metrics["train_examples"] = float(len(split[0]))
    metrics["holdout_examples"] = float(len(split[1]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("saved the production model to %s", out)
    return metrics
