"""Export the best trial(s) as the config a production run needs. Never holds credentials."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from hpo import records
from hpo.baselines import baselines_summary
from hpo.spec.model import StudySpec

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

RankBy = Literal["mean", "lcb"]


# The libraries whose versions an export (and a model card) records.
VERSIONED_PACKAGES = ("hpo-finetune", "torch", "transformers", "optuna")


def package_versions(packages: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None for one that is not installed)."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def rank_trials(study: optuna.Study, spec: StudySpec, by: RankBy = "mean") -> list[FrozenTrial]:
    """Completed trials, best first: by CV mean, or by its lower confidence bound mean − std/√k."""
    import math

    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = 1.0 if spec.direction == "maximize" else -1.0

    def key(trial: FrozenTrial) -> float:
        assert trial.value is not None
        if by == "mean":
            return sign * trial.value
        score = records.CVScore.of(trial)
        k = max(1, len(score.fold_scores))
        return sign * trial.value - (score.std or 0.0) / math.sqrt(k)

    return sorted(complete, key=key, reverse=True)


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    """Params, the precision it trained in (None for trials recorded before precision was)
    and CV statistics of one trial."""
    score = records.CVScore.of(trial)
    return {
        "trial": trial.number,
        "params": dict(trial.params),
        "precision": records.run_info(trial).get("precision"),
        "cv": {"mean": score.mean, "std": score.std, "fold_scores": score.fold_scores},
    }


def data_fingerprint(spec: StudySpec) -> dict[str, Any]:
    """SHA-256 of the rows the study trained on (after label filtering and subsampling)."""
    from hpo.translate import trainer_config
    from trainer.data import class_counts, load_examples
    from trainer.errors import TrainerError

    try:
        examples = load_examples(trainer_config(spec).data)
    except TrainerError as e:
        return {"sha256": None, "error": str(e)}
    return {
        "sha256": examples.fingerprint(),
        "rows": len(examples),
        "classes": class_counts(examples),
    }


def build_export(
    study: optuna.Study, spec: StudySpec, *, top: int = 1, by: RankBy = "mean"
) -> dict[str, Any]:
    """The export document: best params, the precision the best trial trained in (what
    ``hpo train`` reproduces), the resolved spec, CV stats, the study's baselines on the same
    folds with the best trial's margins over them, and provenance."""
    from optuna.trial import TrialState

    ranked = rank_trials(study, spec, by)
    if not ranked:
        from hpo.errors import HpoError

        raise HpoError(f"study {spec.name!r} has no completed trial to export")
    counts = {
        state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    best = trial_record(ranked[0])
    document: dict[str, Any] = {
        "study": spec.name,
        "ranked_by": by,
        **best,
        "spec": spec.to_json_dict(),
        "trials": counts,
        "baselines": baselines_summary(study, spec, best["cv"]["mean"], best["cv"]["fold_scores"]),
        "provenance": {
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": data_fingerprint(spec),
            "versions": package_versions(),
        },
    }
    if top > 1:
        document["top"] = [trial_record(t) for t in ranked[:top]]
    return document


def write_export(
    study: optuna.Study,
    spec: StudySpec,
    path: Path,
    *,
    top: int = 1,
    by: RankBy = "mean",
    fmt: Literal["yaml", "json"] = "yaml",
) -> Path:
    """Write the export document atomically (temp file, then rename)."""
    document = build_export(study, spec, top=top, by=by)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(document, indent=2)
        if fmt == "json"
        else yaml.safe_dump(document, sort_keys=False)
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
