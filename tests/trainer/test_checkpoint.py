"""What a checkpoint accepts: its position limit (RoBERTa-style offsets), read without weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer import ModelError, inspect_checkpoint
from trainer.checkpoint import position_limit


def test_bert_takes_max_position_embeddings_tokens() -> None:
    from transformers import BertConfig

    limit = position_limit(BertConfig(max_position_embeddings=512))
    assert limit is not None
    assert (limit.max_tokens, limit.table_size, limit.reserved) == (512, 512, 0)


@pytest.mark.parametrize(
    ("model", "pad_token_id", "table", "expected"),
    [
        ("roberta", 1, 514, 512),  # positions start at padding_idx + 1 = 2
        ("xlm-roberta", 1, 514, 512),
        ("camembert", 1, 514, 512),
        ("roberta", 3, 40, 36),  # the offset follows the config's pad id
        ("mpnet", 0, 514, 512),  # MPNet hard-codes padding_idx = 1, whatever the pad id
    ],
)
def test_roberta_style_models_reserve_padding_idx_plus_one_positions(
    model: str, pad_token_id: int, table: int, expected: int
) -> None:
    from transformers import AutoConfig

    config = AutoConfig.for_model(model, max_position_embeddings=table, pad_token_id=pad_token_id)
    limit = position_limit(config)
    assert limit is not None
    assert limit.max_tokens == expected and limit.reserved == table - expected


def test_relative_position_models_have_no_absolute_limit() -> None:
    from transformers import DebertaV2Config

    assert position_limit(DebertaV2Config(position_biased_input=False)) is None
    assert position_limit(DebertaV2Config(position_biased_input=True)) is not None


def test_inspecting_a_checkpoint_reads_its_tokenizer_and_limit(tiny_bert_dir: Path) -> None:
    info = inspect_checkpoint(str(tiny_bert_dir))
    assert info.model_type == "bert"
    assert info.positions is not None and info.positions.max_tokens == 64
    assert info.tokenizer("good film")["input_ids"] == [2, 5, 20, 3]  # [CLS] good film [SEP]


def test_a_dir_without_a_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        inspect_checkpoint(str(tmp_path))
