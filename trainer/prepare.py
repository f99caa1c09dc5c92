"""What every trial of a study shares: the rows, their tokens, the pretrained weights, the folds.

``prepare`` loads them; ``PREPARED`` keeps the last result of this process (see
``PreparedCache``), so a worker's second trial on the same inputs costs no disk read, no parsing
and no hashing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainer.config import TrainerConfig
from trainer.data import Examples, load_folds
from trainer.device import resolve_device
from trainer.model import Pretrained, load_pretrained
from trainer.tokens import Tokenized, compact_vocabulary, renumbered, tokenize_cached, used_ids

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """Everything a fold needs that does not depend on the hyperparameters."""

    examples: Examples
    tokens: Tokenized
    pretrained: Pretrained
    folds: list[tuple[np.ndarray, np.ndarray]]
    device: torch.device


def prepare(config: TrainerConfig, *, compact_vocab: bool = False) -> Prepared:
    """Load data and weights, tokenize (cached), and lay out the study's folds.

    ``compact_vocab``: keep only the embedding rows of tokens the data holds, ids renumbered
    (same training, less work per step; see ``compact_vocabulary``). For cross-validation,
    whose models are thrown away; never for a model that is saved for other data.
    """
    examples, folds = load_folds(config)
    return prepare_splits(config, examples, folds, compact_vocab=compact_vocab)


def prepare_splits(
    config: TrainerConfig,
    examples: Examples,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    compact_vocab: bool = False,
) -> Prepared:
    """:func:`prepare` for rows already loaded and any (train, held-out) splits of them (the
    production model's single split, say): weights, tokens, device."""
    pretrained = load_pretrained(config.model_name_or_path)
    tokens = tokenize_cached(pretrained.tokenizer, examples, config.max_seq_len, config.cache_dir)
    if compact_vocab:
        used = np.union1d(used_ids(tokens), [tokens.pad_id])
        compact = compact_vocabulary(pretrained, used, tokens.pad_id)
        if compact is not None:
            pretrained, lookup = compact
            tokens = renumbered(tokens, lookup)
            logger.debug("vocabulary cut to the %d tokens in use", pretrained.config.vocab_size)
    return Prepared(examples, tokens, pretrained, splits, resolve_device(config.device))


class PreparedCache:
    """The last prepared inputs of this process, under a lock.

    Lifetime: one entry, kept for the life of the process (a worker's trials share data, folds
    and weights) and replaced when a call asks for other inputs (model, data, sequence length,
    folds, split seed, cache dir or device); ``clear()`` drops it. Entries are prepared with a
    compact vocabulary: they serve cross-validation, whose models are thrown away.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[tuple[object, ...], Prepared] | None = None

    @staticmethod
    def _key(config: TrainerConfig) -> tuple[object, ...]:
        return (
            config.model_name_or_path,
            config.data,
            config.max_seq_len,
            config.n_folds,
            config.split_seed,
            config.cache_dir,
            config.device,
        )

    def get(self, config: TrainerConfig) -> Prepared:
        """``prepare(config, compact_vocab=True)``, or the kept result for the same inputs."""
        key = self._key(config)
        with self._lock:
            if self._entry is not None and self._entry[0] == key:
                return self._entry[1]
            prepared = prepare(config, compact_vocab=True)
            self._entry = (key, prepared)
            return prepared

    def clear(self) -> None:
        with self._lock:
            self._entry = None


PREPARED = PreparedCache()
