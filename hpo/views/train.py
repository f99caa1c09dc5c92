"""``hpo train``: production training from an exported config, through the trainer's own code."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import HpoError
from hpo.spec.model import spec_from_json
from hpo.translate import hyperparams_for, trainer_config
from hpo.views.model_card import write_model_card
from trainer.config import PrecisionRequest

logger = logging.getLogger(__name__)


def read_export(path: Path) -> dict[str, Any]:
    """An export file (YAML or JSON; JSON is YAML) with its required keys checked."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HpoError(f"{path}: cannot read file: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise HpoError(f"{path}: malformed YAML/JSON: {str(e).splitlines()[0]}") from e
    if not isinstance(document, dict):
        raise HpoError(f"{path}: expected a mapping written by `hpo export`")
    for key in ("params", "spec"):
        if key not in document:
            raise HpoError(f"{path}: missing key {key!r}; is this a file written by `hpo export`?")
    return document


def requested_precision(
    document: dict[str, Any], override: PrecisionRequest | None = None
) -> PrecisionRequest:
    """What to train in: ``override``, else the precision the exported trial trained in
    (resolved when it ran, so not re-probed), else the spec's (exports from before trials
    recorded their precision)."""
    if override is not None:
        return override
    exported = document.get("precision")
    if exported is not None:
        return exported
    return spec_from_json(document["spec"]).train.precision


def train_from_export(
    export_path: Path,
    output_dir: Path,
    *,
    holdout: float | None = None,
    device: str = "auto",
    precision: PrecisionRequest | None = None,
) -> dict[str, float]:
    """Train the production model described by an export; writes the model dir (with
    ``training_config.yaml``, ``metrics.json`` and a model card, ``README.md``) and returns
    the metrics (holdout metrics when ``holdout`` is given).

    Args:
        precision: overrides the precision of the exported trial (see
            :func:`requested_precision`).

    Raises:
        HpoError: the file is not an export, or its precision cannot run on ``device``.
    """
    from rich.progress import Progress

    from trainer import ConfigError, resolve_precision, train_final

    if holdout is not None and not 0.0 < holdout < 1.0:
        raise HpoError(f"--holdout {holdout}: expected a fraction in (0, 1)")
    document = read_export(export_path)
    spec = spec_from_json(document["spec"])
    hparams = hyperparams_for(spec, document["params"], spec.train.seed)
    try:
        resolved = resolve_precision(requested_precision(document, precision), device)
    except ConfigError as e:
        raise HpoError(f"{export_path}: {e} (or pass --precision)") from e
    config = trainer_config(spec, device=device, precision=resolved)
    with Progress(transient=False) as progress:
        task = progress.add_task("training", total=hparams.epochs)

        def advance(epoch: int, metrics: dict[str, float]) -> None:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            progress.update(task, advance=1, description=f"epoch {epoch + 1}: {shown}")

        metrics = train_final(
            hparams, config, output_dir, holdout_fraction=holdout, on_epoch_end=advance
        )
    training_config = {
        "source_export": str(export_path),
        "study": document.get("study"),
        "trial": document.get("trial"),
        "hyperparams": asdict(hparams),
        "precision": resolved,
        "holdout_fraction": holdout,
        "spec": spec.to_json_dict(),
    }
    (output_dir / "training_config.yaml").write_text(
        yaml.safe_dump(training_config, sort_keys=False)
    )
    write_model_card(document, training_config, metrics, output_dir)
    return metrics
