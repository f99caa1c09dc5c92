"""Class weights of the training loss, counted on the rows a model trains on. No torch here."""

from __future__ import annotations

import numpy as np

from trainer.config import ClassWeights


def class_weights(
    mode: ClassWeights, train_labels: np.ndarray, n_classes: int
) -> np.ndarray | None:
    """Per-class weights of the cross-entropy, or None for an unweighted loss.

    ``balanced`` is scikit-learn's ``n_samples / (n_classes * count_c)``, with the counts taken
    from ``train_labels`` only: a fold's weights never see its held-out rows. A class absent
    from ``train_labels`` (no target to weigh) gets weight 0.

    Args:
        mode: ``none`` or ``balanced``.
        train_labels: integer labels in ``[0, n_classes)`` of the training rows.
        n_classes: the number of classes of the model's head.

    Returns:
        float32 weights indexed by class, or None when ``mode`` is ``none``.
    """
    if mode == "none":
        return None
    counts = np.bincount(train_labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = len(train_labels) / (n_classes * counts[present])
    return weights.astype(np.float32)
