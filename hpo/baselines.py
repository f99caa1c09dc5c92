"""A study's baselines: scored once on its own folds and metric, stored with it, compared with.

``hpo create`` and ``hpo run`` store them as the study user attr ``baselines`` (see
:func:`record_baselines`); ``hpo run``'s summary, ``hpo status``, ``hpo export`` and
``hpo report`` set the best trial against them. The scoring itself is the trainer's
(:mod:`trainer.baselines`); this module only stores, reads and compares.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo import records
from hpo.spec.model import StudySpec

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

# The baseline a fine-tuned transformer has to beat to be worth its GPU-hours.
LINEAR_BASELINE = "tfidf_lr"


@dataclass(frozen=True)
class Baseline:
    """A stored baseline score: CV mean / population std / fold scores (fold order) of the
    study's metric, and the seconds it took on the host that scored it."""

    name: str
    title: str
    mean: float
    std: float
    fold_scores: tuple[float, ...]
    seconds: float


@dataclass(frozen=True)
class Comparison:
    """A trial against one baseline. ``margin`` is signed so that positive is better whatever
    the direction (for ``loss``, baseline minus trial); ``folds_won`` counts folds where the
    trial's score is strictly better than the baseline's on the same fold."""

    baseline: Baseline
    margin: float
    folds_won: int
    n_folds: int

    @property
    def beats(self) -> bool:
        return self.margin > 0


def compute_baselines(spec: StudySpec) -> dict[str, Any]:
    """Score every baseline on the study's rows, folds and metric; the JSON-ready document
    that :func:`record_baselines` stores.

    Raises:
        TrainerError: the data cannot be loaded or split.
    """
    from hpo.translate import trainer_config
    from trainer.baselines import score_baselines

    scores = score_baselines(trainer_config(spec))
    return {
        "metric": spec.objective.metric,
        "n_folds": spec.cv.n_folds,
        "split_seed": spec.cv.split_seed,
        "scores": [
            {
                "name": s.name,
                "title": s.title,
                "mean": s.mean,
                "std": s.std,
                "fold_scores": list(s.fold_scores),
                "seconds": round(s.seconds, 3),
            }
            for s in scores
        ],
    }


def record_baselines(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> dict[str, Any] | None:
    """Store the study's baselines unless it has them (idempotent; fills in studies created
    before baselines were). Data that cannot be loaded here (a hub dataset on an offline host)
    is logged as a warning and leaves the study without baselines: None.
    """
    from trainer.errors import TrainerError

    study_id = storage.get_study_id_from_name(spec.name)
    stored = storage.get_study_user_attrs(study_id).get(records.BASELINES)
    if isinstance(stored, dict):
        return stored
    try:
        document = compute_baselines(spec)
    except TrainerError as e:
        logger.warning("baselines not scored: %s", e)
        return None
    storage.set_study_user_attr(study_id, records.BASELINES, document)
    logger.info(
        "baselines on the study's folds (%s): %s",
        spec.objective.metric,
        ", ".join(
            f"{s['title']} {s['mean']:.4f} ({s['seconds']:.1f} s)" for s in document["scores"]
        ),
    )
    return document


def baselines_from_json(document: object) -> tuple[Baseline, ...]:
    """The baselines in a stored document; empty for a study stored without them."""
    if not isinstance(document, dict):
        return ()
    return tuple(
        Baseline(
            name=str(s["name"]),
            title=str(s["title"]),
            mean=float(s["mean"]),
            std=float(s["std"]),
            fold_scores=tuple(float(f) for f in s["fold_scores"]),
            seconds=float(s["seconds"]),
        )
        for s in document.get("scores", [])
    )


def stored_baselines(study: optuna.Study) -> tuple[Baseline, ...]:
    """The baselines stored with ``study``; empty when it has none."""
    return baselines_from_json(study.user_attrs.get(records.BASELINES))


def compare(
    mean: float,
    fold_scores: Sequence[float],
    baselines: Sequence[Baseline],
    direction: str,
) -> tuple[Comparison, ...]:
    """A trial's CV mean and fold scores (fold order) against each baseline."""
    sign = 1.0 if direction == "maximize" else -1.0
    comparisons = []
    for baseline in baselines:
        pairs = list(zip(fold_scores, baseline.fold_scores, strict=False))
        comparisons.append(
            Comparison(
                baseline=baseline,
                margin=sign * (mean - baseline.mean),
                folds_won=sum(sign * (ours - theirs) > 0 for ours, theirs in pairs),
                n_folds=len(pairs),
            )
        )
    return tuple(comparisons)


def comparisons_json(comparisons: Sequence[Comparison]) -> dict[str, dict[str, Any]]:
    """``{baseline name: {baseline, margin, folds_won, n_folds, beats}}`` for JSON outputs."""
    return {
        c.baseline.name: {
            "baseline": c.baseline.mean,
            "margin": c.margin,
            "folds_won": c.folds_won,
            "n_folds": c.n_folds,
            "beats": c.beats,
        }
        for c in comparisons
    }


def describe(comparisons: Sequence[Comparison]) -> str:
    """One line: each baseline's score and the trial's margin over it (+ is better)."""
    parts = [
        f"{c.baseline.title} {c.baseline.mean:.4f} ({c.margin:+.4f}, better on "
        f"{c.folds_won}/{c.n_folds} folds)"
        for c in comparisons
    ]
    return "vs baselines on the same folds (+ is better): " + "; ".join(parts)


def shortfall(comparisons: Sequence[Comparison]) -> str | None:
    """The plain sentence for a tuned model that does not beat the linear baseline; None
    when it does (or when there is no linear baseline to compare with)."""
    for c in comparisons:
        if c.baseline.name == LINEAR_BASELINE and not c.beats:
            return (
                f"the fine-tuned model does not beat {c.baseline.title} "
                f"({c.baseline.mean:.4f}) on these folds"
            )
    return None


def baselines_summary(
    study: optuna.Study, spec: StudySpec, mean: float | None, fold_scores: Sequence[float]
) -> dict[str, Any] | None:
    """For JSON outputs (status, export): the stored baselines and, given the best trial's CV
    ``mean`` and ``fold_scores``, how it compares (``best_vs``) and ``shortfall``; None when
    the study has no baselines stored."""
    document = study.user_attrs.get(records.BASELINES)
    baselines = baselines_from_json(document)
    if not baselines:
        return None
    assert isinstance(document, dict)
    summary: dict[str, Any] = {**document, "best_vs": None, "shortfall": None}
    if mean is not None:
        comparisons = compare(mean, fold_scores, baselines, spec.direction)
        summary["best_vs"] = comparisons_json(comparisons)
        summary["shortfall"] = shortfall(comparisons)
    return summary
