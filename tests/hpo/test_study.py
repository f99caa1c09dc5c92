"""A study from a spec on every store: created once, refused when it conflicts, read back as a
plain Optuna study by Optuna's own tools."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.cli import main as hpo_main
from hpo.errors import StudyConflictError, StudyNotFoundError
from hpo.records import SPEC as SPEC_ATTR
from hpo.spec.model import parse_spec
from hpo.store import (
    normalize_postgres_url,
    open_storage,
    storage_kind,
)
from hpo.study import create_study, load_stored_spec, load_study
from tests.hpo.conftest import write_spec


def _plain_optuna_storage(url: str) -> Any:
    """How a user of plain Optuna opens our store (no hpo code)."""
    if storage_kind(url) == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return normalize_postgres_url(url) if url.startswith("postgresql://") else url


def test_create_stores_resolved_spec(storage_url: str, spec_dict: dict[str, Any]) -> None:
    spec = parse_spec(spec_dict)
    storage = open_storage(storage_url)
    create_study(spec, storage)
    assert load_stored_spec(storage, spec.name) == spec
    # A second process sees it too (nothing cached in this one).
    assert load_stored_spec(open_storage(storage_url), spec.name).spec_hash() == spec.spec_hash()


def test_create_is_idempotent_for_the_same_spec(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    spec = parse_spec(spec_dict)
    storage = open_storage(storage_url)
    first = create_study(spec, storage)
    assert create_study(parse_spec(copy.deepcopy(spec_dict)), open_storage(storage_url)) == first
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert names.count(spec.name) == 1


def test_conflicting_spec_is_refused(storage_url: str, spec_dict: dict[str, Any]) -> None:
    storage = open_storage(storage_url)
    create_study(parse_spec(spec_dict), storage)
    changed = copy.deepcopy(spec_dict)
    changed["cv"]["n_folds"] = 5
    with pytest.raises(StudyConflictError, match="different spec"):
        create_study(parse_spec(changed), storage)
    assert load_stored_spec(storage, spec_dict["name"]).cv.n_folds == 3


def test_a_study_whose_creation_reply_was_lost_is_set_up_not_refused(
    spec_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create committed, its reply was lost, the retry found the name taken: the study had
    no spec, so `hpo create` refused it ("not created by hpo") and the name was lost for
    good. Now an empty study with no spec is ours to finish setting up; one that holds trials,
    another direction or a different spec is still refused."""
    import sqlalchemy.exc

    from hpo import study as study_module
    from hpo.store import RetryingStorage

    monkeypatch.setattr(study_module, "SETUP_WAIT_S", 0.2)  # no one else is setting it up

    class LosesFirstReply(optuna.storages.InMemoryStorage):
        lost = False

        def create_new_study(self, directions: Any, study_name: str | None = None) -> int:
            study_id = super().create_new_study(directions, study_name)
            if not self.lost:
                self.lost = True
                raise sqlalchemy.exc.OperationalError(
                    "COMMIT", {}, Exception("server closed the connection unexpectedly")
                )
            return study_id

    storage = RetryingStorage(LosesFirstReply(), sleep=lambda s: None)  # type: ignore[abstract]
    spec = parse_spec(spec_dict)
    study_id = create_study(spec, storage)
    assert load_stored_spec(storage, spec.name) == spec
    assert create_study(spec, storage) == study_id
    # A study of that name someone else made and used is not taken over.
    other = optuna.create_study(storage=storage, study_name="theirs", direction="maximize")
    other.ask()
    with pytest.raises(StudyConflictError, match="not created by hpo"):
        create_study(parse_spec({**spec_dict, "name": "theirs"}), storage)


def test_a_study_created_before_train_precision_existed_is_the_same_study(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    from hpo.records import SPEC_HASH as SPEC_HASH_ATTR

    storage = open_storage(str(tmp_path / "j.log"))
    spec = parse_spec(spec_dict)
    study_id = create_study(spec, storage)
    # What the previous version stored: the resolved spec without the field, and its hash.
    old = spec.to_json_dict()
    del old["train"]["precision"]
    storage.set_study_user_attr(study_id, SPEC_ATTR, old)
    storage.set_study_user_attr(study_id, SPEC_HASH_ATTR, "hash-of-an-older-version")
    assert create_study(spec, storage) == study_id
    assert load_stored_spec(storage, spec.name).train.precision == "auto"
    changed = copy.deepcopy(spec_dict)
    changed.setdefault("train", {})["precision"] = "fp32"
    with pytest.raises(StudyConflictError, match="different spec"):
        create_study(parse_spec(changed), storage)


def test_loaded_study_has_spec_sampler_and_pruner(
    storage_url: str, spec_dict: dict[str, Any]
) -> None:
    spec_dict["search"]["sampler"] = {"name": "random", "seed": 3}
    spec_dict["search"]["pruner"] = {"name": "median"}
    storage = open_storage(storage_url)
    create_study(parse_spec(spec_dict), storage)
    study, spec = load_study(storage, spec_dict["name"])
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(study.pruner.inner, optuna.pruners.MedianPruner)  # on the step grid
    assert spec.search.sampler.seed == 3


def test_missing_study_is_reported(storage_url: str) -> None:
    with pytest.raises(StudyNotFoundError, match="no study named 'absent-study'"):
        load_stored_spec(open_storage(storage_url), "absent-study")


def test_plain_optuna_loads_a_study_created_by_hpo(
    storage_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict)
    assert hpo_main(["create", str(spec_path), "--storage", storage_url]) == 0
    study = optuna.load_study(
        study_name=spec_dict["name"], storage=_plain_optuna_storage(storage_url)
    )
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs[SPEC_ATTR]["name"] == spec_dict["name"]


def test_optuna_cli_lists_a_study_created_by_hpo(
    storage_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict)
    assert hpo_main(["create", str(spec_path), "--storage", storage_url]) == 0
    cli_url = normalize_postgres_url(storage_url) if "postgres" in storage_url else storage_url
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "studies",
            "--storage",
            cli_url,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert spec_dict["name"] in result.stdout


def test_plain_optuna_dashboard_serves_a_postgres_study(
    postgres_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    from tests.hpo.conftest import dashboard_study_names, free_port

    create_study(parse_spec(spec_dict), open_storage(postgres_url))
    port = free_port()
    dashboard = str(Path(sys.executable).parent / "optuna-dashboard")
    names = dashboard_study_names(
        [dashboard, postgres_url, "--host", "127.0.0.1", "--port", str(port)], port
    )
    assert spec_dict["name"] in names
