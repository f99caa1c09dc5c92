"""Studies in the store: create one from a spec (idempotently) and load it back for a worker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hpo import records
from hpo.errors import StorageError, StudyConflictError, StudyNotFoundError
from hpo.search.pruners import make_pruner
from hpo.search.samplers import make_sampler
from hpo.spec.model import StudySpec, spec_from_json
from hpo.spec.space import Choices
from trainer.steps import StepGrid

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


def step_grid(spec: StudySpec) -> StepGrid:
    """Steps per fold are the most epochs any trial may run (see ``trainer.steps``)."""
    epochs = spec.search.space.epochs
    if epochs is None:
        max_epochs = spec.train.epochs
    elif isinstance(epochs, Choices):
        max_epochs = max(int(v) for v in epochs.choices)
    else:
        max_epochs = int(epochs.high)
    return StepGrid(n_folds=spec.cv.n_folds, steps_per_fold=max_epochs)


# How long a creator that finds a study without its spec waits for whoever may be writing it.
SETUP_WAIT_S = 10.0


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> int:
    """Create the study for ``spec`` and store the resolved spec and its hash as user attrs.

    Idempotent: the same spec returns the existing study's id, also for a study an earlier
    version created before the spec gained a field (its stored spec, validated now, fills that
    field with its default).

    Raises:
        StudyConflictError: a study of this name exists with a different spec, or without one.
    """
    import optuna

    study_id = _study_id(storage, spec.name)
    created = False
    if study_id is None:
        try:
            study_id = storage.create_new_study(
                [optuna.study.StudyDirection[spec.direction.upper()]], spec.name
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            # Another process created it between our check and our create, or we did and the
            # reply was lost (then no one else will write its spec: see _unfinished).
            study_id = storage.get_study_id_from_name(spec.name)
    if not created:
        attrs = _attrs_once_set_up(storage, study_id)
        if not _unfinished(storage, study_id, spec, attrs):
            _check_same_spec(attrs, spec)
            return study_id
    try:
        storage.set_study_user_attr(study_id, records.SPEC, spec.to_json_dict())
        _set_budget(storage, study_id, spec)
        _enqueue_known_points(storage, study_id, spec)
        storage.set_study_user_attr(study_id, records.SPEC_HASH, spec.spec_hash())
    except Exception:
        storage.delete_study(study_id)  # never leave a study without its spec
        raise
    logger.info("created study %r (spec %s)", spec.name, spec.spec_hash())
    return study_id


def _attrs_once_set_up(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any]:
    """The study's user attrs once its spec hash (written last) is there, or as they are after
    ``SETUP_WAIT_S``: whoever created it may still be setting it up."""
    import time

    deadline = time.monotonic() + SETUP_WAIT_S
    attrs = storage.get_study_user_attrs(study_id)
    while records.SPEC_HASH not in attrs and time.monotonic() < deadline:
        time.sleep(0.1)
        attrs = storage.get_study_user_attrs(study_id)
    return attrs


def _unfinished(
    storage: optuna.storages.BaseStorage,
    study_id: int,
    spec: StudySpec,
    attrs: dict[str, Any],
) -> bool:
    """Whether the study (with user ``attrs``) is one whose set-up was never finished, ours to
    finish: no spec hash, our direction, no spec or this spec, and no trials but the spec's
    enqueued ones. Its creator died before writing the spec, or it was us and the reply to the
    create was lost (the retry then found the name taken). A study that holds anything else is
    not taken over."""
    from optuna.trial import TrialState

    if records.SPEC_HASH in attrs:
        return False
    direction = storage.get_study_directions(study_id)
    stored = attrs.get(records.SPEC)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    return (
        [d.name.lower() for d in direction] == [spec.direction]
        and (stored is None or _same_when_revalidated(stored, spec))
        and set(attrs) <= {records.SPEC}
        and all(t.state == TrialState.WAITING for t in trials)
    )


def _enqueue_known_points(
    storage: optuna.storages.BaseStorage, study_id: int, spec: StudySpec
) -> None:
    """``search.enqueue``: the spec's known-good configurations wait first, in order."""
    import optuna

    if not spec.search.enqueue:
        return
    study = optuna.load_study(study_name=spec.name, storage=storage)
    for point in spec.search.enqueue:
        study.enqueue_trial(dict(point), skip_if_exists=True)


def _set_budget(storage: optuna.storages.BaseStorage, study_id: int, spec: StudySpec) -> None:
    """The store refuses to start a trial beyond the budget (running + finished)."""
    from hpo.store import BUDGET_KEY

    if storage.get_study_system_attrs(study_id).get(BUDGET_KEY) != spec.budget.n_trials:
        storage.set_study_system_attr(study_id, BUDGET_KEY, spec.budget.n_trials)


def _check_same_spec(attrs: dict[str, Any], spec: StudySpec) -> None:
    """Raise unless the study's user ``attrs`` hold ``spec`` (or an earlier version's form)."""
    stored_hash = attrs.get(records.SPEC_HASH)
    if stored_hash is None:
        raise StudyConflictError(
            f"study {spec.name!r} exists but was not created by hpo (no spec attribute); "
            "choose another name"
        )
    stored_spec = attrs.get(records.SPEC)
    if stored_hash != spec.spec_hash() and not _same_when_revalidated(stored_spec, spec):
        raise StudyConflictError(
            f"study {spec.name!r} exists with a different spec (stored {stored_hash}, "
            f"given {spec.spec_hash()}); rename the study or delete the old one"
        )


def _same_when_revalidated(stored: object, spec: StudySpec) -> bool:
    """Whether a stored spec, validated by this version, is ``spec``: a hash stored by an
    earlier version misses fields added since (``train.precision``), which take defaults."""
    from hpo.errors import SpecError

    if not isinstance(stored, dict):
        return False
    try:
        return spec_from_json(stored).spec_hash() == spec.spec_hash()
    except SpecError:
        return False


def load_stored_spec(storage: optuna.storages.BaseStorage, name: str) -> StudySpec:
    """The spec a study was created with.

    Raises:
        StudyNotFoundError: no study of this name.
        StorageError: the study holds no valid spec.
    """
    study_id = _study_id(storage, name)
    if study_id is None:
        raise StudyNotFoundError(f"no study named {name!r} in this store; run `hpo create` first")
    raw = storage.get_study_user_attrs(study_id).get(records.SPEC)
    if not isinstance(raw, dict):
        raise StorageError(f"study {name!r} has no stored spec; it was not created by hpo")
    return spec_from_json(raw)


def load_study(
    storage: optuna.storages.BaseStorage, name: str, *, stream: int = 0
) -> tuple[optuna.Study, StudySpec]:
    """Load a study with the sampler and pruner its stored spec names.

    Args:
        storage: an open store.
        name: the study name.
        stream: this worker's random stream for the sampler (see ``make_sampler``).
    """
    import optuna

    spec = load_stored_spec(storage, name)
    _set_budget(storage, storage.get_study_id_from_name(name), spec)  # studies made before it
    sampler = make_sampler(spec.search.sampler, spec.search.space, stream=stream)
    pruner = make_pruner(spec.search.pruner.name, spec.search.pruner.options, step_grid(spec))
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return study, spec


def set_up_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """What ``hpo create`` and ``hpo run`` do before any worker starts: create the study
    (idempotent), score its baselines on its folds, and write what optuna-dashboard shows of it
    (the metric's name, the study's note)."""
    from hpo.baselines import record_baselines
    from hpo.notes import write_study_notes

    create_study(spec, storage)
    record_baselines(storage, spec)
    study, _ = load_study(storage, spec.name)
    write_study_notes(study, spec)
    return study
