"""What a checkpoint accepts, read without its weights: its tokenizer and its position limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ModelError
from trainer.model import resolve_model_ref

# Architectures whose position ids count from the padding index (RoBERTa's
# ``create_position_ids_from_input_ids``): positions 0..padding_idx are never given to a token,
# so ``max_position_embeddings - (padding_idx + 1)`` tokens fit (514 - 2 = 512 for RoBERTa).
# Value: the padding index, or None where it is the config's ``pad_token_id``.
POSITIONS_AFTER_PADDING: dict[str, int | None] = {
    "roberta": None,
    "roberta-prelayernorm": None,
    "xlm-roberta": None,
    "xlm-roberta-xl": None,
    "camembert": None,
    "data2vec-text": None,
    "longformer": None,
    "luke": None,
    "ibert": None,
    "xmod": None,
    "markuplm": None,
    "lilt": None,
    "layoutlmv3": None,
    "mpnet": 1,  # MPNet hard-codes padding_idx = 1
}


@dataclass(frozen=True)
class PositionLimit:
    """The longest input a model with absolute position embeddings takes, in tokens.

    ``max_tokens = table_size - reserved``: ``table_size`` is the config's
    ``max_position_embeddings`` (or ``n_positions``), ``reserved`` the positions no token takes
    (``padding_idx + 1`` for RoBERTa-style models, else 0).
    """

    max_tokens: int
    table_size: int
    reserved: int


def position_limit(config: Any) -> PositionLimit | None:
    """The position limit of a model config; None where the model has no absolute limit
    (DeBERTa with ``position_biased_input: false`` uses relative positions only)."""
    if getattr(config, "position_biased_input", True) is False:
        return None
    size = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(size, int) or size <= 0:
        return None
    reserved = 0
    if config.model_type in POSITIONS_AFTER_PADDING:
        padding_idx = POSITIONS_AFTER_PADDING[config.model_type]
        if padding_idx is None:
            padding_idx = config.pad_token_id if isinstance(config.pad_token_id, int) else 1
        reserved = padding_idx + 1
    return PositionLimit(max_tokens=size - reserved, table_size=size, reserved=reserved)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint's tokenizer and limits, for checks before training (no weights loaded)."""

    path: str
    model_type: str
    tokenizer: Any
    positions: PositionLimit | None


def inspect_checkpoint(name_or_path: str) -> CheckpointInfo:
    """Read a checkpoint's config and tokenizer (not its weights).

    Raises:
        ModelError: no such dir, not a model, or a hub id that cannot be fetched.
    """
    ref = resolve_model_ref(name_or_path)
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(ref)
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        where = "local dir" if Path(ref).is_dir() else "hub id (is this machine online?)"
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise ModelError(
            f"{ref}: cannot load the config and tokenizer from {where}: {reason}"
        ) from e
    return CheckpointInfo(ref, config.model_type, tokenizer, position_limit(config))
