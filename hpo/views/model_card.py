"""The model card ``hpo train`` writes as ``README.md`` next to the model.

Hugging Face model-card metadata (a YAML block the hub reads: base model, task, library, tags,
datasets, and ``model-index`` with the holdout metrics), then the body: labels, holdout
metrics, the study's CV estimate and baselines, hyperparameters, data fingerprint, how the
search ran, library versions, and how to load the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from hpo.spec.model import spec_from_json
from hpo.views.export import package_versions

# Holdout metrics in the order a card lists them: (key in metrics.json, model-index type, name).
_METRICS = (
    ("accuracy", "accuracy", "accuracy"),
    ("f1_macro", "f1", "macro-F1"),
    ("roc_auc", "roc_auc", "ROC-AUC"),
    ("loss", "loss", "cross-entropy loss"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id(ref: str) -> str | None:
    """``ref`` when it names a model or dataset on the Hugging Face hub; None for local paths,
    ``pkg:`` references and files."""
    from trainer.resources import is_data_file_name, is_pkg_ref, looks_local

    if is_pkg_ref(ref) or looks_local(ref) or Path(ref).expanduser().exists():
        return None
    if is_data_file_name(ref) or not _HUB_ID.match(ref):
        return None
    return ref


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def card_metadata(
    document: dict[str, Any], metrics: dict[str, float], model_config: dict[str, Any]
) -> dict[str, Any]:
    """The YAML metadata block: what the hub shows and indexes."""
    spec = spec_from_json(document["spec"])
    base = hub_id(spec.model.name_or_path)
    dataset = hub_id(spec.data.source)
    tags = ["text-classification", "hpo-finetune", "optuna"]
    if "auto_map" in model_config:
        tags.append("custom_code")
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    meta |= {"pipeline_tag": "text-classification", "library_name": "transformers", "tags": tags}
    if dataset:
        meta["datasets"] = [dataset]
    held = [(key, kind, name) for key, kind, name in _METRICS if key in metrics]
    if held and metrics.get("holdout_examples"):
        data_name = dataset or Path(spec.data.source.removeprefix("pkg:")).name
        meta["model-index"] = [
            {
                "name": f"{spec.name}-trial-{document.get('trial')}",
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Text Classification"},
                        "dataset": {
                            "name": data_name,
                            "type": dataset or data_name,
                            "split": f"holdout ({int(metrics['holdout_examples'])} rows, "
                            "stratified, never trained on)",
                        },
                        "metrics": [
                            {
                                "type": kind,
                                "value": round(metrics[key], 4),
                                "name": f"holdout {name}",
                            }
                            for key, kind, name in held
                        ],
                    }
                ],
            }
        ]
    return meta


def _rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _usage(model_dir: Path, remote_code: bool) -> str:
    trust = ", trust_remote_code=True" if remote_code else ""
    note = (
        "\nThe model mean-pools its encoder's last hidden states: its code ships in "
        "`modeling_hpo_meanpool.py` beside the weights, so it loads only with "
        "`trust_remote_code=True` (without it, transformers builds its own first-token "
        "classifier and reports every weight as missing). The class carries the name the "
        "text-classification pipeline expects for this encoder.\n"
        if remote_code
        else ""
    )
    return (
        "```python\nfrom transformers import pipeline\n\n"
        f'classifier = pipeline("text-classification", model="{model_dir}"{trust})\n'
        'classifier(["an example text"])\n```\n' + note
    )


def model_card(
    document: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, float],
    model_dir: Path,
) -> str:
    """The card's text. ``document``: the export; ``training``: what ``training_config.yaml``
    holds; ``metrics``: ``metrics.json``; ``model_dir``: the saved model (its ``config.json``
    gives the labels)."""
    spec = spec_from_json(document["spec"])
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    meta = card_metadata(document, metrics, model_config)
    metric = spec.objective.metric
    trial = document.get("trial")
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---",
        f"# {spec.name}: trial {trial}",
        f"A `{spec.model.name_or_path}` encoder fine-tuned for text classification by "
        f"`hpo train` with the hyperparameters of trial {trial} of the Optuna study "
        f"`{spec.name}`, on all rows of `{spec.data.source}`"
        + (
            f" less a stratified holdout of {int(metrics['holdout_examples'])}."
            if metrics.get("holdout_examples")
            else "."
        ),
        "## Labels\n\n"
        + _rows(["id", "label"], [[k, v] for k, v in model_config.get("id2label", {}).items()]),
    ]
    held = [(key, name) for key, _, name in _METRICS if key in metrics]
    if metrics.get("holdout_examples") and held:
        parts.append(
            f"## Holdout metrics\n\n{int(metrics['holdout_examples'])} rows held out "
            f"(stratified, seed {spec.cv.split_seed}), after the last epoch:\n\n"
            + _rows(["metric", "value"], [[name, f"{metrics[key]:.4f}"] for key, name in held])
        )
    else:
        parts.append("## Holdout metrics\n\nNone: trained on every row (no `--holdout`).")
    cv = document.get("cv", {})
    cv_text = (
        f"## Cross-validation in the study\n\n{spec.cv.n_folds}-fold stratified CV (split seed "
        f"{spec.cv.split_seed}), {metric}: **{_fmt(cv.get('mean'))} ± {_fmt(cv.get('std'))}**"
        f" (folds: {', '.join(_fmt(s) for s in cv.get('fold_scores', []))}). The best of the "
        "study's trials, so a slightly optimistic estimate."
    )
    baselines = document.get("baselines")
    if baselines:
        best_vs = baselines.get("best_vs") or {}
        rows = [
            [
                s["title"],
                f"{s['mean']:.4f} ± {s['std']:.4f}",
                f"{best_vs[s['name']]['margin']:+.4f}" if s["name"] in best_vs else "-",
            ]
            for s in baselines["scores"]
        ]
        cv_text += "\n\nBaselines on the same folds:\n\n" + _rows(
            ["baseline", f"CV {metric}", "this trial (+ is better)"], rows
        )
        if baselines.get("shortfall"):
            cv_text += f"\n\n**Note: {baselines['shortfall']}.**"
    parts.append(cv_text)
    hparams = {**training.get("hyperparams", {}), "precision": training.get("precision")}
    parts.append(
        "## Hyperparameters\n\n"
        + _rows(["name", "value"], [[k, f"`{_fmt(v)}`"] for k, v in hparams.items()])
    )
    data = document.get("provenance", {}).get("data", {})
    classes = ", ".join(f"{k}: {v}" for k, v in (data.get("classes") or {}).items())
    parts.append(
        "## Data\n\n"
        + _rows(
            ["", ""],
            [
                ["source", f"`{spec.data.source}`"],
                ["text / label columns", f"`{', '.join(spec.data.text)}` / `{spec.data.label}`"],
                ["rows (after label filter and subsample)", _fmt(data.get("rows"))],
                ["rows per class", classes or "-"],
                ["SHA-256 of the rows", f"`{data.get('sha256')}`"],
            ],
        )
    )
    trials = document.get("trials", {})
    search = spec.search
    parts.append(
        "## How it was tuned\n\n"
        + _rows(
            ["", ""],
            [
                ["study", f"`{spec.name}` (spec hash `{spec.spec_hash()}`)"],
                ["sampler", f"`{search.sampler.name}` (seed {search.sampler.seed})"],
                ["pruner", f"`{search.pruner.name}`"],
                [
                    "trials",
                    f"{trials.get('complete', 0)} complete, {trials.get('pruned', 0)} pruned, "
                    f"{trials.get('fail', 0)} failed (budget {spec.budget.n_trials})",
                ],
                [
                    "search space",
                    ", ".join(f"`{k}`" for k in search.space.model_dump(exclude_none=True)),
                ],
                ["ranked by", f"CV {document.get('ranked_by', 'mean')}"],
            ],
        )
    )
    tuned = document.get("provenance", {}).get("versions", {})
    now = package_versions((*tuned, "scikit-learn")) if tuned else package_versions()
    parts.append(
        "## Library versions\n\n"
        + _rows(
            ["package", "tuning", "this training"],
            [[p, _fmt(tuned.get(p, "-")), _fmt(v)] for p, v in now.items()],
        )
    )
    parts.append("## Use\n\n" + _usage(model_dir, "auto_map" in model_config))
    return "\n\n".join(parts) + "\n"


def write_model_card(
    document: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, float],
    model_dir: Path,
) -> Path:
    """Write ``model_dir/README.md`` (see :func:`model_card`)."""
    path = model_dir / "README.md"
    path.write_text(model_card(document, training, metrics, model_dir), encoding="utf-8")
    return path
