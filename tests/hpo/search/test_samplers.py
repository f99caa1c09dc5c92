"""Samplers: every name builds, seeds repeat, workers draw different streams, grid enumerates."""

from __future__ import annotations

import copy

import optuna
import pytest

from hpo.errors import SpecError
from hpo.search import SAMPLERS, make_sampler
from hpo.spec.model import parse_spec
from hpo.spec.space import suggest
from tests.hpo.conftest import MINIMAL_SPEC


def _first_params(name: str, stream: int, n: int = 3) -> list[dict[str, float]]:
    spec = parse_spec(
        {
            **copy.deepcopy(MINIMAL_SPEC),
            "search": {**MINIMAL_SPEC["search"], "sampler": {"name": name, "seed": 7}},
        }
    )
    study = optuna.create_study(
        sampler=make_sampler(spec.search.sampler, spec.search.space, stream=stream),
        direction="maximize",
    )
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, spec.search.space))
        study.tell(trial, 0.5)
    return out


def test_spec_takes_sampler_names_from_their_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # One list of names: a sampler added to the table is a valid spec name, with no second list.
    data = copy.deepcopy(MINIMAL_SPEC)
    data["search"]["sampler"] = {"name": "newcomer"}
    with pytest.raises(SpecError, match="'newcomer': expected one of 'tpe', 'gp'"):
        parse_spec(data)
    monkeypatch.setitem(SAMPLERS, "newcomer", SAMPLERS["random"])
    assert parse_spec(data).search.sampler.name == "newcomer"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_and_stream_repeat(name: str) -> None:
    assert _first_params(name, stream=0) == _first_params(name, stream=0)


@pytest.mark.parametrize("name", ["tpe", "random", "gp"])
def test_workers_on_different_streams_do_not_duplicate(name: str) -> None:
    assert _first_params(name, stream=0) != _first_params(name, stream=1)


def test_tpe_default_is_multivariate_with_constant_liar() -> None:
    spec = parse_spec(copy.deepcopy(MINIMAL_SPEC))
    sampler = make_sampler(spec.search.sampler, spec.search.space)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate and sampler._constant_liar


def test_grid_enumerates_log_ranges_and_choices() -> None:
    data = copy.deepcopy(MINIMAL_SPEC)
    data["search"]["sampler"] = {"name": "grid", "options": {"n_points": 2}}
    data["search"]["space"]["pooling"] = {"choices": ["cls", "mean"]}
    spec = parse_spec(data)
    sampler = make_sampler(spec.search.sampler, spec.search.space)
    study = optuna.create_study(sampler=sampler)
    seen = set()
    for _ in range(2**5):
        trial = study.ask()
        seen.add(tuple(sorted(suggest(trial, spec.search.space).items())))
        study.tell(trial, 0.0)
    assert len(seen) == 2**5
    assert sorted({dict(p)["lr"] for p in seen}) == [1e-5, 1e-3]  # exact endpoints


def test_the_qmc_sampler_is_made_without_an_experimental_warning() -> None:
    """Optuna's ExperimentalWarning for QMCSampler filled every worker log of the curve-table
    build, once per trial."""
    import warnings

    data = copy.deepcopy(MINIMAL_SPEC)
    data["search"]["sampler"] = {"name": "qmc", "seed": 0}
    spec = parse_spec(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_sampler(spec.search.sampler, spec.search.space)
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
