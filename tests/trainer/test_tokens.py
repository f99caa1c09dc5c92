"""Tokenization: content-addressed disk cache shared by processes, dynamic padding, batching."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import DataConfig, load_examples
from trainer.data import Examples
from trainer.model import build_model, load_pretrained
from trainer.tokens import (
    collate,
    length_bucketed_batches,
    sorted_batches,
    tokenize_cached,
    tokenizer_identity,
)


def _examples(csv: Path, **changes: object) -> Examples:
    fields: dict[str, object] = {"source": str(csv), "text": ("text",), "label": "label"}
    fields.update(changes)
    return load_examples(DataConfig(**fields))  # type: ignore[arg-type]


def test_second_tokenization_is_a_cache_hit_with_identical_ids(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    tokenizer = load_pretrained(str(tiny_bert_dir)).tokenizer
    examples = _examples(synthetic_csv)
    first = tokenize_cached(tokenizer, examples, 16, tmp_path)
    second = tokenize_cached(tokenizer, examples, 16, tmp_path)
    assert not first.from_cache and second.from_cache and first.key == second.key
    assert [a.tolist() for a in first.input_ids] == [b.tolist() for b in second.input_ids]
    assert [p.name for p in tmp_path.iterdir()] == [f"{first.key}.npz"]  # no temp files left
    assert max(first.lengths) <= 16 and len(set(first.lengths.tolist())) > 1  # unpadded


def test_cache_key_changes_with_max_seq_len_data_and_tokenizer(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    bert = load_pretrained(str(tiny_bert_dir)).tokenizer
    examples = _examples(synthetic_csv)
    base = tokenize_cached(bert, examples, 16, tmp_path)
    shorter = tokenize_cached(bert, examples, 8, tmp_path)
    fewer = tokenize_cached(bert, _examples(synthetic_csv, subsample=40), 16, tmp_path)
    assert not shorter.from_cache and not fewer.from_cache
    assert len({base.key, shorter.key, fewer.key}) == 3
    assert max(shorter.lengths) == 8
    # A tokenizer that differs in anything (here one added word) is another identity.
    from transformers import AutoTokenizer

    grown = AutoTokenizer.from_pretrained(tiny_bert_dir)
    grown.add_tokens(["zzz"])
    assert tokenize_cached(grown, examples, 16, tmp_path).key != base.key


def test_tokenizer_identity_ignores_settings_left_by_earlier_calls(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(tiny_bert_dir)
    before = tokenizer_identity(fresh)
    fresh(["good film"], truncation=True, max_length=3, padding="max_length")
    assert tokenizer_identity(fresh) == before


def test_damaged_cache_entry_is_rebuilt(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    tokenizer = load_pretrained(str(tiny_bert_dir)).tokenizer
    examples = _examples(synthetic_csv)
    first = tokenize_cached(tokenizer, examples, 16, tmp_path)
    (tmp_path / f"{first.key}.npz").write_bytes(b"truncated")
    rebuilt = tokenize_cached(tokenizer, examples, 16, tmp_path)
    assert not rebuilt.from_cache
    assert tokenize_cached(tokenizer, examples, 16, tmp_path).from_cache


def test_sentence_pairs_keep_token_type_ids(tiny_bert_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,label\ngood film,bad plot,x\nthe movie,a scene,y\n")
    tokenizer = load_pretrained(str(tiny_bert_dir)).tokenizer
    tokens = tokenize_cached(tokenizer, _examples(csv, text=("a", "b")), 16, tmp_path)
    assert tokens.token_type_ids is not None
    assert tokens.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    cached = tokenize_cached(tokenizer, _examples(csv, text=("a", "b")), 16, tmp_path)
    assert cached.from_cache and cached.token_type_ids is not None


def test_batches_pad_only_to_their_own_longest_example(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path
) -> None:
    tokenizer = load_pretrained(str(tiny_bert_dir)).tokenizer
    tokens = tokenize_cached(tokenizer, _examples(synthetic_csv), 16, tmp_path)
    batch = np.array([0, 1, 2])
    inputs = collate(tokens, batch, torch.device("cpu"))
    lengths = [len(tokens.input_ids[i]) for i in batch]
    assert inputs["input_ids"].shape == (3, max(lengths))
    assert inputs["attention_mask"].sum(1).tolist() == lengths
    assert "token_type_ids" not in inputs  # single texts: the model's default


def test_length_bucketed_batches_cover_every_index_once_and_are_seeded() -> None:
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    indices = np.arange(0, 1000, 2)
    batches = length_bucketed_batches(indices, lengths, 16, np.random.default_rng(5))
    again = length_bucketed_batches(indices, lengths, 16, np.random.default_rng(5))
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]
    assert sorted(np.concatenate(batches).tolist()) == indices.tolist()
    assert all(len(b) <= 16 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)  # bucketing: similar lengths share a batch
    ordered = sorted_batches(indices, lengths, 64)
    assert sorted(np.concatenate(ordered).tolist()) == indices.tolist()


_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from trainer.data import Examples
    from trainer.tokens import tokenize_cached

    class WordTokenizer:
        pad_token_id = 0
        all_special_tokens = ["[PAD]"]

        def get_vocab(self):
            return {"[PAD]": 0}

        def __call__(self, texts, truncation, max_length, padding, return_attention_mask):
            return {"input_ids": [[len(w) for w in t.split()][:max_length] for t in texts]}

    texts = tuple(" ".join(["word"] * (i % 50 + 1)) for i in range(20000))
    examples = Examples((texts,), np.arange(20000) % 2, ("a", "b"), "mem")
    tokens = tokenize_cached(WordTokenizer(), examples, 64, sys.argv[1])
    print(sum(int(ids.sum()) for ids in tokens.input_ids))
    """
)


def test_worker_processes_can_share_one_cache_dir(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert len(set(outputs)) == 1 and outputs[0]
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"


@pytest.mark.parametrize("max_seq_len", [4, 64])
def test_truncation_respects_max_seq_len(
    max_seq_len: int, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "long.csv"
    csv.write_text("text,label\n" + "".join(f"{'good ' * 30},{i % 2}\n" for i in range(4)))
    tokenizer = load_pretrained(str(tiny_bert_dir)).tokenizer
    tokens = tokenize_cached(tokenizer, _examples(csv), max_seq_len, tmp_path)
    assert tokens.lengths.tolist() == [min(max_seq_len, 32)] * 4


def test_untruncated_lengths_are_cached_and_match_the_tokenizer(
    tiny_bert_dir: Path, synthetic_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import token_lengths

    tokenizer = load_pretrained(str(tiny_bert_dir)).tokenizer
    examples = _examples(synthetic_csv)
    lengths, from_cache = token_lengths(tokenizer, examples, tmp_path, chunk=7)
    assert not from_cache
    expected = [len(ids) for ids in tokenizer(list(examples.texts[0]))["input_ids"]]
    assert lengths.tolist() == expected
    # A truncated tokenization at max_seq_len=6 keeps min(length, 6) tokens.
    truncated = tokenize_cached(tokenizer, examples, 6, tmp_path)
    assert np.minimum(lengths, 6).tolist() == truncated.lengths.tolist()

    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("re-tokenized"))
    again, from_cache = token_lengths(tokenizer, examples, tmp_path)
    assert from_cache and again.tolist() == expected


def test_compact_vocabulary_keeps_rows_and_renumbers_special_ids(tiny_bert_dir: Path) -> None:
    from trainer.tokens import compact_vocabulary

    pretrained = load_pretrained(str(tiny_bert_dir))
    table = "bert.embeddings.word_embeddings.weight"
    pad = pretrained.config.pad_token_id
    # Ids 0..4 are the special tokens, pad among them; keep a few ordinary ones.
    compact = compact_vocabulary(pretrained, np.array([9, 7, 20, 7]))
    assert compact is not None
    cut, lookup = compact
    kept = np.flatnonzero(lookup >= 0)
    assert list(kept) == sorted({7, 9, 20, pad})
    assert cut.config.vocab_size == len(kept)
    assert cut.config.pad_token_id == lookup[pad]
    torch.testing.assert_close(cut.state_dict[table], pretrained.state_dict[table][kept])
    assert pretrained.config.vocab_size == 28  # the cached checkpoint is left as it was
    model = build_model(cut, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
    assert model.bert.embeddings.word_embeddings.padding_idx == lookup[pad]


def test_compact_vocabulary_keeps_the_padding_id_where_positions_count_from_it(
    tiny_bert_dir: Path,
) -> None:
    """CamemBERT-like: pad is 1 and id 0 never occurs; RoBERTa-style positions start at
    padding_idx + 1, so renumbering the pad would shift every position."""
    import copy

    from trainer.errors import ModelError
    from trainer.model import Pretrained
    from trainer.tokens import compact_vocabulary

    pretrained = load_pretrained(str(tiny_bert_dir))
    config = copy.deepcopy(pretrained.config)
    config.pad_token_id = 3
    shifted = Pretrained(pretrained.path, config, pretrained.state_dict, pretrained.tokenizer)
    compact = compact_vocabulary(shifted, np.array([3, 9, 20]), 3)
    assert compact is not None
    cut, lookup = compact
    assert lookup[3] == 3 and cut.config.pad_token_id == 3
    assert list(np.flatnonzero(lookup >= 0)) == [0, 1, 2, 3, 9, 20]
    with pytest.raises(ModelError, match="token id 28"):
        compact_vocabulary(pretrained, np.array([3, 28]), 0)


def test_a_roberta_style_model_gives_the_same_logits_on_the_compact_vocabulary() -> None:
    """CamemBERT: pad 1, id 0 unused, positions counted from padding_idx."""
    from transformers import CamembertConfig, CamembertForSequenceClassification

    from trainer.model import Pretrained
    from trainer.tokens import compact_vocabulary

    config = CamembertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        bos_token_id=5,
        eos_token_id=6,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    source = CamembertForSequenceClassification(config)
    state = {k: v.detach().clone() for k, v in source.state_dict().items() if "roberta." in k}
    full = Pretrained("tiny-camembert", config, state, None)
    sequences = [np.array([5, 10, 11, 12, 6]), np.array([5, 20, 21, 6])]
    compact = compact_vocabulary(full, np.union1d(np.concatenate(sequences), [1]), 1)
    assert compact is not None
    cut, lookup = compact

    def logits(pretrained: Pretrained, rows: list[np.ndarray], pad: int) -> torch.Tensor:
        model = build_model(pretrained, num_labels=2, label_names=("a", "b"), dropout=0.0, seed=0)
        ids = torch.full((len(rows), max(map(len, rows))), pad)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.from_numpy(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            return model.eval()(input_ids=ids, attention_mask=mask).logits

    expected = logits(full, sequences, 1)
    torch.testing.assert_close(
        logits(cut, [lookup[s] for s in sequences], int(lookup[1])), expected
    )
    assert cut.config.vocab_size < config.vocab_size
