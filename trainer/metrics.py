"""Held-out metrics from logits: accuracy, macro-F1, cross-entropy loss, ROC-AUC."""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of one evaluation. ``roc_auc`` is binary, or macro one-vs-rest when every class
    is present in ``labels``; NaN when it is undefined (a single class held out)."""
    from sklearn.metrics import f1_score, roc_auc_score

    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    predictions = logits.argmax(axis=1)
    n_classes = logits.shape[1]
    metrics = {
        "accuracy": float((predictions == labels).mean()),
        "f1_macro": float(
            f1_score(
                labels, predictions, average="macro", labels=list(range(n_classes)), zero_division=0
            )
        ),
        "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
    }
    present = np.unique(labels)
    if len(present) < 2:
        metrics["roc_auc"] = math.nan
    elif n_classes == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    elif len(present) == n_classes:
        metrics["roc_auc"] = float(roc_auc_score(labels, probs, multi_class="ovr"))
    else:
        metrics["roc_auc"] = math.nan
    return metrics
