"""Production training: the exported config on all the data, through the same fold code."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.checks import check_inputs
from trainer.config import EPOCH_SECONDS, Hyperparams, Reporter, TrainerConfig
from trainer.data import load_examples
from trainer.errors import ConfigError
from trainer.fold import train_fold
from trainer.prepare import prepare_splits

MEANPOOL_MODULE = "modeling_hpo_meanpool"
MEANPOOL_CLASS = "MeanPoolForSequenceClassification"

logger = logging.getLogger(__name__)

# Appended to the shipped copy of the module: see ship_meanpool_code.
_PIPELINE_NAME_CLASS = '''

class {name}(MeanPoolForSequenceClassification):
    """The mean-pooled classifier under the name transformers' text-classification pipeline
    expects for a `{model_type}` encoder: the pipeline checks a model's class name against its
    table of sequence classifiers, and logs an error for any other name. It is still the
    mean-pooled model above, not transformers' `{name}` (which pools the first token)."""
'''


def pipeline_class_name(model_type: str) -> str | None:
    """The class name transformers' ``text-classification`` pipeline accepts for encoders of
    ``model_type`` (``bert`` -> ``BertForSequenceClassification``); None when it has none."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as NAMES,
    )

    name = NAMES.get(model_type)
    return name if isinstance(name, str) else None


def ship_meanpool_code(config: Any, out: Path) -> str:
    """Copy the mean-pooling model's code into the model dir ``out`` and point ``config``'s
    ``auto_map`` at it, so ``AutoModelForSequenceClassification`` and
    ``pipeline("text-classification")`` rebuild it with ``trust_remote_code=True`` (Hugging
    Face's own classifiers pool the first token).

    The class the dir names is the one the pipeline expects for the encoder's architecture: the
    pipeline checks the loaded class's name against a fixed table (registering the class with
    ``AutoModelForSequenceClassification`` does not reach that table) and logs "model ... is not
    supported for text-classification" at error level otherwise. Returns the class name.
    """
    module = Path(__file__).with_name(f"{MEANPOOL_MODULE}.py")
    code = module.read_text(encoding="utf-8")
    name = pipeline_class_name(config.model_type) or MEANPOOL_CLASS
    if name != MEANPOOL_CLASS:
        code += _PIPELINE_NAME_CLASS.format(name=name, model_type=config.model_type)
    (out / module.name).write_text(code, encoding="utf-8")
    config.auto_map = {"AutoModelForSequenceClassification": f"{MEANPOOL_MODULE}.{name}"}
    return name


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
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train on all rows (less an optional holdout) and save a standard Hugging Face model dir.

    Args:
        hparams: the exported hyperparameters.
        config: model, data, device; ``n_folds`` is not used. With
            ``hparams.class_weights="balanced"`` the weights are counted on the training rows
            (all rows less the holdout).
        output_dir: created if needed; receives the model, its tokenizer and ``metrics.json``.
        holdout_fraction: a stratified, seeded (``config.split_seed``) share of rows kept out
            of training and evaluated after every epoch; None trains on every row.
        reporter: gets ``config.metric`` on the holdout after every epoch at ``step = epoch``,
            and may stop training early; needs ``holdout_fraction``.
        on_epoch_end: called with ``(epoch, metrics)`` after every epoch (progress display).

    Returns:
        Metrics after the last epoch: ``train_loss``, plus holdout accuracy, f1_macro, loss and
        roc_auc when ``holdout_fraction`` is given. Also written to ``metrics.json``.

    With ``pooling="mean"`` the dir also holds the model's code (``modeling_hpo_meanpool.py``)
    and loads with ``trust_remote_code=True``.
    """
    check_inputs(hparams, config, cv=False)
    if reporter is not None and not holdout_fraction:
        raise ConfigError("reporter needs holdout_fraction: without a holdout there is no score")
    if holdout_fraction is not None and not 0.0 <= holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction={holdout_fraction!r}: expected a number in [0, 1)")
    examples = load_examples(config.data)
    split = holdout_split(examples.labels, holdout_fraction, config.split_seed)
    prepared = prepare_splits(config, examples, [split])
    trained = train_fold(
        hparams,
        replace(config, steps_per_fold=None),  # one fold: reports at step = epoch
        prepared,
        0,
        reporter=reporter,
        on_epoch_end=on_epoch_end,
    )
    result, model = trained.result, trained.model
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for param in model.parameters():  # frozen layers are saved like the rest
        param.requires_grad_(True)
    if hparams.pooling == "mean":
        ship_meanpool_code(model.config, out)
    model.save_pretrained(out)
    prepared.pretrained.tokenizer.save_pretrained(out)
    metrics = {k: float(v) for k, v in result.metrics.items() if k != EPOCH_SECONDS}
    metrics["train_examples"] = float(len(split[0]))
    metrics["holdout_examples"] = float(len(split[1]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("saved the production model to %s", out)
    return metrics
