"""Tokenize once per (tokenizer, data, max_seq_len), cached on disk; batch with dynamic padding.

The cache is content-addressed: its key hashes the tokenizer's full definition, the data's
fingerprint and ``max_seq_len``, so any change makes a new entry and stale reuse is impossible.
Entries are written atomically (temp file, then rename), so worker processes on one host can
share the directory. The format is ``.npz`` read with ``allow_pickle=False``. Untruncated
token lengths (for data reports) are cached the same way, without ``max_seq_len`` in the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.data import Examples
from trainer.errors import ModelError
from trainer.model import Pretrained

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/hpo-finetune/tokens")
_CHUNK_BATCHES = 50  # length bucketing sorts within chunks of this many batches


@dataclass(frozen=True)
class Tokenized:
    """Unpadded token ids per example (and token type ids for pair inputs, if the model has them).

    ``from_cache`` tells whether this came from disk rather than from the tokenizer.
    """

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    pad_id: int
    key: str
    from_cache: bool

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64)


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of the tokenizer's whole definition (vocab, normalizer, special tokens).

    Stable across calls: the truncation and padding settings a fast tokenizer keeps from its
    last call are left out (they are arguments of each call, and ``max_seq_len`` is in the key).
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(tokenizer.all_special_tokens).encode())
    return digest.hexdigest()


def cache_key(tokenizer: Any, examples: Examples, max_seq_len: int | None) -> str:
    """The content address of a cache entry; ``max_seq_len=None`` for untruncated lengths."""
    parts = (
        tokenizer_identity(tokenizer),
        examples.fingerprint(),
        "lengths" if max_seq_len is None else str(max_seq_len),
        str(len(examples.texts)),
    )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _pack(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    flat = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return flat, offsets


def _unpack(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def tokenize_cached(
    tokenizer: Any, examples: Examples, max_seq_len: int, cache_dir: str | Path | None
) -> Tokenized:
    """Token ids for every example, from the cache when an identical entry exists."""
    key = cache_key(tokenizer, examples, max_seq_len)
    directory = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    path = directory / f"{key}.npz"
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                ids = _unpack(data["ids"], data["ids_offsets"])
                types = (
                    _unpack(data["types"], data["types_offsets"]) if "types" in data.files else None
                )
            logger.debug("tokenization cache hit %s", path)
            return Tokenized(ids, types, pad_id, key, from_cache=True)
        except (OSError, KeyError, ValueError) as e:  # a damaged entry is rebuilt
            logger.warning("ignoring damaged tokenization cache %s: %s", path, e)
    encoded = tokenizer(
        *[list(column) for column in examples.texts],
        truncation=True,
        max_length=max_seq_len,
        padding=False,
        return_attention_mask=False,
    )
    ids = [np.asarray(x, dtype=np.int32) for x in encoded["input_ids"]]
    types = None
    if "token_type_ids" in encoded and examples.is_pair:
        types = [np.asarray(x, dtype=np.int32) for x in encoded["token_type_ids"]]
    flat_ids, ids_offsets = _pack(ids)
    arrays = {"ids": flat_ids, "ids_offsets": ids_offsets}
    if types is not None:
        arrays["types"], arrays["types_offsets"] = _pack(types)
    _write_atomically(path, **arrays)
    return Tokenized(ids, types, pad_id, key, from_cache=False)


def token_lengths(
    tokenizer: Any, examples: Examples, cache_dir: str | Path | None, *, chunk: int = 1024
) -> tuple[np.ndarray, bool]:
    """Untruncated length in tokens (special tokens included) of every example, in row order.

    What each example would take without ``max_seq_len``: an example is truncated exactly when
    its length exceeds it. Cached like :func:`tokenize_cached` (same directory, key without a
    length), so trying another ``max_seq_len`` tokenizes nothing; only the lengths are kept.

    Returns:
        (lengths, from_cache).
    """
    key = cache_key(tokenizer, examples, None)
    directory = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    path = directory / f"{key}.lengths.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                lengths = data["lengths"]
            if len(lengths) == len(examples):
                return lengths, True
        except (OSError, KeyError, ValueError) as e:  # a damaged entry is rebuilt
            logger.warning("ignoring damaged token-length cache %s: %s", path, e)
    lengths = np.zeros(len(examples), dtype=np.int64)
    for start in range(0, len(examples), chunk):  # chunks: only the lengths stay in memory
        encoded = tokenizer(
            *[list(column[start : start + chunk]) for column in examples.texts],
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the model's maximum" warning: that is the point
        )
        lengths[start : start + chunk] = [len(ids) for ids in encoded["input_ids"]]
    _write_atomically(path, lengths=lengths)
    return lengths, False


def _write_atomically(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` through a temp file and a rename; a failure only logs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    except OSError as e:
        logger.warning("could not write token cache %s: %s", path, e)
        return
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not write token cache %s: %s", path, e)
        Path(tmp).unlink(missing_ok=True)


def used_ids(tokens: Tokenized) -> np.ndarray:
    """The distinct token ids in ``tokens``, sorted."""
    if not tokens.input_ids:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(tokens.input_ids)).astype(np.int64)


def renumbered(tokens: Tokenized, lookup: np.ndarray) -> Tokenized:
    """``tokens`` with every id ``i`` replaced by ``lookup[i]`` (see ``compact_vocabulary``)."""
    table = lookup.astype(np.int32)
    return Tokenized(
        [table[ids] for ids in tokens.input_ids],
        tokens.token_type_ids,
        int(lookup[tokens.pad_id]),
        tokens.key,
        tokens.from_cache,
    )


def length_bucketed_batches(
    indices: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples: less padding, same randomness budget.

    Indices are shuffled, cut into chunks of ``50 * batch_size``, sorted by length within each
    chunk, batched, and the batches shuffled.
    """
    shuffled = rng.permutation(indices)
    chunk = batch_size * _CHUNK_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(shuffled), chunk):
        part = shuffled[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def sorted_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches: sorted by length, no shuffling."""
    ordered = indices[np.argsort(lengths[indices], kind="stable")]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def collate(
    tokens: Tokenized, batch: np.ndarray, device: torch.device, *, pin: bool = False
) -> dict[str, torch.Tensor]:
    """Pad one batch to its own longest example; returns model inputs on ``device``."""
    import torch

    width = max(len(tokens.input_ids[i]) for i in batch)
    ids = np.full((len(batch), width), tokens.pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64) if tokens.token_type_ids else None
    for row, i in enumerate(batch):
        n = len(tokens.input_ids[i])
        ids[row, :n] = tokens.input_ids[i]
        mask[row, :n] = 1
        if types is not None and tokens.token_type_ids is not None:
            types[row, :n] = tokens.token_type_ids[i]
    arrays = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        arrays["token_type_ids"] = types
    out = {}
    for name, array in arrays.items():
        tensor = torch.from_numpy(array)
        if pin:
            tensor = tensor.pin_memory()
        out[name] = tensor.to(device, non_blocking=pin)
    return out


def iterate(
    tokens: Tokenized, batches: list[np.ndarray], device: torch.device, *, pin: bool = False
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    for batch in batches:
        yield batch, collate(tokens, batch, device, pin=pin)


def compact_vocabulary(
    pretrained: Pretrained, used: Any, pad_id: int | None = None
) -> tuple[Pretrained, Any] | None:
    """The checkpoint cut down to the token ids in ``used``: (pretrained, old id → new id).

    A fold trains and evaluates on the study's data only, so the rows of the word-embedding
    table for tokens the data never holds get no gradient and are never read: with AdamW
    (moments start at zero) they never move, yet every step zero-fills, clips and updates the
    whole table. MiniLM-L6's table is 11.7 M of its 22.7 M weights; the data may use 10k
    tokens. Keeping only the rows in use gives the same losses, gradients and scores for
    less work. ``*_token_id`` fields of the config are kept and renumbered. The padding id
    (the config's and ``pad_id``, the tokenizer's) keeps its number, and so every id below it
    is kept: RoBERTa-style models number positions from ``padding_idx`` (CamemBERT's pad is 1
    and id 0 never occurs; MPNet hard-codes 1). Returns None when the checkpoint has no single
    word-embedding table of ``vocab_size`` rows.

    Raises:
        ModelError: ``used`` holds an id the checkpoint's vocabulary does not have.
    """
    import copy

    import numpy as np

    config = pretrained.config
    vocab_size = getattr(config, "vocab_size", None)
    tables = [
        key
        for key, value in pretrained.state_dict.items()
        if key.endswith("word_embeddings.weight")
        and value.ndim == 2
        and value.shape[0] == vocab_size
    ]
    if vocab_size is None or len(tables) != 1:
        return None
    special = {
        name: value
        for name, value in config.to_dict().items()
        if name.endswith("_token_id") and isinstance(value, int) and 0 <= value < vocab_size
    }
    used = np.asarray(used, dtype=np.int64)
    if len(used) and (used.max() >= vocab_size or used.min() < 0):
        bad = int(used.max() if used.max() >= vocab_size else used.min())
        raise ModelError(
            f"{pretrained.path}: the tokenizer produced token id {bad}, outside the model's "
            f"vocabulary (vocab_size={vocab_size}): tokenizer and model do not match"
        )
    pads = [p for p in (config.pad_token_id, pad_id) if isinstance(p, int) and p >= 0]
    below_pad = np.arange(max(pads) + 1 if pads else 0, dtype=np.int64)
    kept = np.union1d(np.union1d(used, list(special.values())), below_pad).astype(np.int64)
    if len(kept) >= vocab_size:
        return None
    lookup = np.full(vocab_size, -1, dtype=np.int64)
    lookup[kept] = np.arange(len(kept))
    compact_config = copy.deepcopy(config)
    compact_config.vocab_size = len(kept)
    for name, value in special.items():
        setattr(compact_config, name, int(lookup[value]))
    state = dict(pretrained.state_dict)
    import torch

    state[tables[0]] = state[tables[0]][torch.from_numpy(kept)].contiguous()
    return Pretrained(pretrained.path, compact_config, state, pretrained.tokenizer), lookup
