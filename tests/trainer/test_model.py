"""Models: fresh seeded heads, weights read once per process, dropout fields, freezing, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import ModelError
from trainer.model import build_model, dropout_fields, freeze_lower, load_pretrained


def _build(model_dir: Path, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    pretrained = load_pretrained(str(model_dir))
    return build_model(pretrained, num_labels=2, label_names=("neg", "pos"), seed=seed, **kwargs)


@pytest.fixture(scope="module")
def three_label_bert_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT saved as an already fine-tuned 3-class classifier."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    out = tmp_path_factory.mktemp("three-label-bert")
    model = BertForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, ignore_mismatched_sizes=True
    )
    torch.nn.init.constant_(model.classifier.weight, 7.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def test_checkpoint_head_of_another_size_is_replaced_by_a_fresh_seeded_head(
    three_label_bert_dir: Path,
) -> None:
    model = _build(three_label_bert_dir, dropout=0.1)
    assert tuple(model.classifier.weight.shape) == (2, 32)
    assert not torch.any(model.classifier.weight == 7.0)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.label2id == {"neg": 0, "pos": 1}


def test_same_seed_same_head_other_seed_other_head_encoder_always_pretrained(
    tiny_bert_dir: Path,
) -> None:
    a, b, c = (_build(tiny_bert_dir, seed=s, dropout=0.1) for s in (0, 0, 1))
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    pretrained = load_pretrained(str(tiny_bert_dir)).state_dict
    for name, value in c.state_dict().items():
        if name in pretrained:
            assert torch.equal(value, pretrained[name]), name


def test_pretrained_weights_are_read_from_disk_once_per_process(
    tiny_distilbert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_pretrained(str(tiny_distilbert_dir))

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the checkpoint again")

    from transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", no_disk)
    assert load_pretrained(str(tiny_distilbert_dir)) is first
    assert load_pretrained(f"{tiny_distilbert_dir}/.") is first  # keyed by the resolved path
    _build(tiny_distilbert_dir, dropout=0.2)  # fold after fold: no disk read


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_mean_pooling_classifies_the_masked_mean_and_ignores_padding(
    arch: str, request: pytest.FixtureRequest
) -> None:
    model = _build(request.getfixturevalue(f"tiny_{arch}_dir"), dropout=0.0, pooling="mean")
    model.eval()
    ids = torch.tensor([[2, 5, 6, 3]])
    padded = torch.tensor([[2, 5, 6, 3, 0, 0]])
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = model(input_ids=padded, attention_mask=(padded != 0).long()).logits
    assert short.shape == (1, 2)
    torch.testing.assert_close(short, long)


def test_freezing_covers_embeddings_and_the_lowest_layers_only(tiny_distilbert_dir: Path) -> None:
    model = _build(tiny_distilbert_dir, dropout=0.1)
    freeze_lower(model, 1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".embeddings." in n for n in frozen)
    assert any(".layer.0." in n for n in frozen)
    assert not any(".layer.1." in n or "classifier" in n for n in frozen)
    with pytest.raises(ModelError, match="freeze_layers=3 but the model has 2 layers"):
        freeze_lower(_build(tiny_distilbert_dir, dropout=0.1), 3)


def test_unknown_architecture_gets_every_dropout_field_it_has_or_a_model_error() -> None:
    from transformers import PreTrainedConfig

    config = PreTrainedConfig(hidden_dropout_prob=0.1, activation_dropout=0.0, width=3)
    config.model_type = "my-encoder"
    assert set(dropout_fields(config)) == {"hidden_dropout_prob", "activation_dropout"}
    bare = PreTrainedConfig(width=3)
    bare.model_type = "my-encoder"
    with pytest.raises(ModelError, match="'my-encoder': no dropout field"):
        dropout_fields(bare)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("./no/such/model", "./no/such/model: no such model dir"),
        ("pkg:trainer/no-such-model", "does not exist inside package 'trainer'"),
    ],
)
def test_missing_model_raises_model_error_naming_it(ref: str, expected: str) -> None:
    with pytest.raises(ModelError, match=expected):
        load_pretrained(ref)


def test_dir_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not a model dir \(no config.json\)"):
        load_pretrained(str(tmp_path))
