"""Production training: all rows (or all less a holdout), a standard model dir, metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.trainer.helpers import HP, RecordingReporter, config_for
from trainer import ConfigError, train_final


def test_final_model_is_a_standard_classifier_that_reloads_with_its_labels(
    tiny_distilbert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = config_for(tiny_distilbert_dir, synthetic_csv, tmp_path)
    reporter = RecordingReporter()
    out = tmp_path / "model"
    metrics = train_final(HP, config, out, holdout_fraction=0.25, reporter=reporter)
    assert [step for _, step in reporter.reports] == list(range(HP.epochs))
    assert metrics["accuracy"] >= 0.9 and metrics["holdout_examples"] == 40
    assert metrics["train_examples"] == 120
    assert json.loads((out / "metrics.json").read_text()) == metrics
    model = AutoModelForSequenceClassification.from_pretrained(out)  # no remote code needed
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(
        ["a nice superb film", "an ugly dull plot"], return_tensors="pt", padding=True
    )
    model.eval()
    with torch.no_grad():
        predicted = [model.config.id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
    assert predicted == ["pos", "neg"]


def test_final_training_without_holdout_uses_every_row(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    metrics = train_final(dataclasses.replace(HP, epochs=1), config, tmp_path / "m")
    assert metrics["train_examples"] == 160 and metrics["holdout_examples"] == 0
    assert set(metrics) == {"train_loss", "train_examples", "holdout_examples"}


def test_final_training_reporter_needs_a_holdout(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    with pytest.raises(ConfigError, match="reporter needs holdout_fraction"):
        train_final(HP, config, tmp_path / "m", reporter=RecordingReporter())
