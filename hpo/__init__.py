"""Hyperparameter search for transformer fine-tuning on an Optuna study store.

Importing ``hpo`` never imports torch: the CLI must start fast.
"""

from hpo.baselines import record_baselines
from hpo.errors import HpoError, SpecError, StorageError, StudyConflictError, StudyNotFoundError
from hpo.spec.model import StudySpec, load_spec, parse_spec
from hpo.store import mask_secrets, mask_url, open_storage, resolve_storage_url
from hpo.study import create_study, load_stored_spec, load_study
from hpo.views.analysis import curves_frame, trials_frame

__all__ = [
    "HpoError",
    "SpecError",
    "StorageError",
    "StudyConflictError",
    "StudyNotFoundError",
    "StudySpec",
    "create_study",
    "curves_frame",
    "load_spec",
    "load_stored_spec",
    "load_study",
    "mask_secrets",
    "mask_url",
    "open_storage",
    "parse_spec",
    "record_baselines",
    "resolve_storage_url",
    "trials_frame",
]
