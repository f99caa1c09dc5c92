"""What trials share: folds, the token cache, the per-process cache, the compact vocabulary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.helpers import HP, config_for
from trainer.config import EPOCH_SECONDS
from trainer.fold import train_fold
from trainer.prepare import prepare


def test_folds_repeat_are_stratified_and_tokenization_is_cached(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path, n_folds=4)
    first, second = prepare(config), prepare(config)
    assert not first.tokens.from_cache and second.tokens.from_cache
    assert first.tokens.input_ids[5].tolist() == second.tokens.input_ids[5].tolist()
    for (train_a, held_a), (train_b, held_b) in zip(first.folds, second.folds, strict=True):
        assert held_a.tolist() == held_b.tolist() and train_a.tolist() == train_b.tolist()
        counts = np.bincount(first.examples.labels[held_a])
        assert abs(int(counts[0]) - int(counts[1])) <= 1  # balanced classes stay balanced
    held = np.concatenate([h for _, h in first.folds])
    assert sorted(held.tolist()) == list(range(len(first.examples)))


def test_a_warm_worker_reuses_prepared_inputs_until_they_change(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    from trainer.prepare import PreparedCache

    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    cache = PreparedCache()
    first = cache.get(config)
    assert cache.get(dataclasses.replace(config)) is first
    other = cache.get(dataclasses.replace(config, n_folds=4))
    assert other is not first and len(other.folds) == 4
    cache.clear()
    assert cache.get(dataclasses.replace(config, n_folds=4)) is not other


def test_a_compact_vocabulary_trains_exactly_like_the_full_one(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_bert_dir, synthetic_csv, tmp_path)
    full = prepare(config)
    compact = prepare(config, compact_vocab=True)
    # The synthetic data never holds [UNK] or [MASK]: their rows are dropped, the rest kept.
    assert compact.pretrained.config.vocab_size == full.pretrained.config.vocab_size - 2
    hp = dataclasses.replace(HP, epochs=2, dropout=0.1, l1=1e-4, l2=1e-3)
    a, b = (train_fold(hp, config, p, 0).result for p in (full, compact))
    assert len(a.curve) == len(b.curve) == 2
    for x, y in zip(a.curve, b.curve, strict=True):
        assert x[EPOCH_SECONDS] > 0 and y[EPOCH_SECONDS] > 0
        metrics = {k: v for k, v in x.items() if k != EPOCH_SECONDS}
        assert metrics == pytest.approx({k: y[k] for k in metrics}, rel=1e-4, abs=1e-6)
