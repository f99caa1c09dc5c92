"""Pretrained encoders with a fresh classification head, dropout set per architecture.

Weights are read from disk once per process and kept in memory; each fold and trial builds its
model from the config and copies the weights in (a fraction of a second, no disk reads).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import Pooling
from trainer.errors import ModelError
from trainer.resources import ResourceError, looks_local, resolve_local

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# The config fields that hold dropout, per architecture (their names differ).
DROPOUT_FIELDS: dict[str, tuple[str, ...]] = {
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"),
    "roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"),
    "xlm-roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"),
    "camembert": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"),
    "electra": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"),
    "mpnet": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "albert": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"),
    "distilbert": ("dropout", "attention_dropout", "seq_classif_dropout"),
    "deberta": ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout"),
    "deberta-v2": ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout"),
}


_KNOWN_FIELDS = frozenset(f for fields in DROPOUT_FIELDS.values() for f in fields)


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint loaded once: its config, its encoder weights (CPU), and its tokenizer."""

    path: str
    config: Any
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any


_cache: dict[str, Pretrained] = {}
_cache_lock = threading.Lock()


def resolve_model_ref(name_or_path: str) -> str:
    """A ``pkg:`` or local reference as an absolute dir; anything else is a hub id."""
    try:
        local = resolve_local(name_or_path)
    except ResourceError as e:
        raise ModelError(str(e)) from e
    if local is not None:
        if not (local / "config.json").is_file():
            raise ModelError(f"{local}: not a model dir (no config.json)")
        return str(local.resolve())
    if looks_local(name_or_path):
        raise ModelError(f"{name_or_path}: no such model dir")
    return name_or_path


def load_pretrained(name_or_path: str) -> Pretrained:
    """The checkpoint, read from disk (or the hub) on first use in this process only.

    Only the encoder's weights (those under the architecture's ``base_model_prefix``) are kept:
    a classification head the checkpoint may carry, of any size, is dropped, so every fold
    starts from a fresh, seeded head.

    Raises:
        ModelError: no such dir, not a model, an unsupported architecture, or a hub id that
            cannot be fetched.
    """
    ref = resolve_model_ref(name_or_path)
    with _cache_lock:
        if ref in _cache:
            return _cache[ref]
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(ref)
            model = AutoModelForSequenceClassification.from_pretrained(
                ref, ignore_mismatched_sizes=True
            )
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            where = "local dir" if Path(ref).is_dir() else "hub id (is this machine online?)"
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{ref}: cannot load model from {where}: {reason}") from e
        prefix = f"{model.base_model_prefix}."
        state = {
            k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)
        }
        bundle = Pretrained(ref, model.config, state, tokenizer)
        _cache[ref] = bundle
        logger.info("loaded %s (%d encoder tensors kept in memory)", ref, len(state))
        return bundle


def dropout_fields(config: Any) -> tuple[str, ...]:
    """Config fields that take the sampled dropout for this architecture.

    Known architectures use :data:`DROPOUT_FIELDS`. Fallback for any other: every field of its
    config that one of the known architectures uses (``hidden_dropout_prob``, ``dropout``, …)
    plus every other float field whose name contains ``dropout``; a warning names them.

    Raises:
        ModelError: the config has no dropout field at all.
    """
    known = DROPOUT_FIELDS.get(config.model_type)
    if known is not None:
        return known
    found = tuple(
        name
        for name, value in config.to_dict().items()
        if name in _KNOWN_FIELDS or ("dropout" in name and isinstance(value, float))
    )
    if not found:
        raise ModelError(
            f"model type {config.model_type!r}: no dropout field found in its config; "
            f"supported: {sorted(DROPOUT_FIELDS)}"
        )
    logger.warning("model type %r: setting dropout on %s", config.model_type, found)
    return found


def encoder_layers(model: nn.Module) -> Any:
    """The encoder's list of transformer blocks (BERT ``encoder.layer``, DistilBERT ``layer``…)."""
    from torch import nn

    base: Any = getattr(model, "base_model", model)
    n_layers = getattr(base.config, "num_hidden_layers", None) or getattr(
        base.config, "n_layers", None
    )
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ModelError(f"model type {base.config.model_type!r}: cannot find its encoder layers")


def freeze_lower(model: nn.Module, n_layers: int) -> list[str]:
    """Freeze the embeddings and the lowest ``n_layers`` blocks; returns the frozen names."""
    if n_layers <= 0:
        return []
    base = getattr(model, "base_model", model)
    layers = encoder_layers(model)
    if n_layers > len(layers):
        raise ModelError(f"freeze_layers={n_layers} but the model has {len(layers)} layers")
    frozen_modules = [base.embeddings, *list(layers)[:n_layers]]
    frozen = []
    for module in frozen_modules:
        for name, param in module.named_parameters():
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def build_model(
    pretrained: Pretrained,
    *,
    num_labels: int,
    label_names: tuple[str, ...],
    dropout: float,
    pooling: Pooling = "cls",
    seed: int,
) -> nn.Module:
    """A fresh classifier on the pretrained encoder: same weights, new head seeded by ``seed``.

    The model is built without random initialization (most of its time, and all of it wasted:
    the encoder's weights are copied in right after); only the tensors the checkpoint does not
    have (the head) are then initialized, from ``seed``, as the architecture initializes them.
    """
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(pretrained.config)
    for field in dropout_fields(config):
        setattr(config, field, dropout)
    config.num_labels = num_labels
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    weights = pretrained.state_dict
    with _no_init_weights():
        if pooling == "mean":
            from trainer.modeling_hpo_meanpool import MeanPoolForSequenceClassification

            config.hpo_head_dropout = dropout
            model: Any = MeanPoolForSequenceClassification(config)
            prefix = f"{model.encoder.base_model_prefix}."
            weights = {f"encoder.{k.removeprefix(prefix)}": v for k, v in weights.items()}
        else:
            model = AutoModelForSequenceClassification.from_config(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ModelError(f"{pretrained.path}: unexpected weights {unexpected[:5]}")
    torch.manual_seed(seed)
    _initialize(model, missing)
    return model


def _no_init_weights() -> Any:
    """Transformers' context that skips weight initialization (its home moved in v5)."""
    import importlib

    try:
        home = importlib.import_module("transformers.initialization")
    except ImportError:  # transformers 4.x
        home = importlib.import_module("transformers.modeling_utils")
    return home.no_init_weights()


def _initialize(model: nn.Module, missing: list[str]) -> None:
    """Initialize the modules owning ``missing`` tensors, as ``model``'s architecture would.

    They hold uninitialized memory until here: zeroed first, then torch's default init, then
    the architecture's own (``_init_weights``), so nothing is left to chance.
    """
    import torch

    owners: dict[str, nn.Module] = {}
    for key in missing:
        path = key.rpartition(".")[0]
        owners.setdefault(path, model.get_submodule(path))
    init_weights = getattr(model, "_init_weights", None)
    with torch.no_grad():
        for module in owners.values():
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.is_floating_point():
                    tensor.zero_()
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if callable(init_weights):
                init_weights(module)
