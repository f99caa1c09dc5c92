"""Samplers by name: one table holds each sampler's constructor and the options it takes."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.seeds import derive_seed

if TYPE_CHECKING:
    import optuna

    # Types only: the spec validates against this module's table, so search never imports spec.
    from hpo.spec import SamplerSpec, SearchSpace

GRID_DEFAULT_POINTS = 3

# Options the spec may set per sampler: the constructor's keyword arguments, minus the ones we
# set ourselves (seed, search space) or that take Python callables.
_RESERVED = {
    "self",
    "seed",
    "search_space",
    "constraints_func",
    "independent_sampler",
    "gamma",
    "weights",
}


def _tpe(seed: int, space: SearchSpace, options: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    # Multivariate TPE models interactions (lr x l2); constant liar keeps parallel workers from
    # proposing the same point while their trials are still running.
    kwargs: dict[str, Any] = {"multivariate": True, "constant_liar": True, "n_startup_trials": 5}
    kwargs.update(options)
    return optuna.samplers.TPESampler(seed=seed, **kwargs)


def _gp(seed: int, space: SearchSpace, options: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    kwargs: dict[str, Any] = {"n_startup_trials": 5}
    kwargs.update(options)
    return optuna.samplers.GPSampler(seed=seed, **kwargs)


def _random(
    seed: int, space: SearchSpace, options: Mapping[str, Any]
) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed, **options)


def _qmc(seed: int, space: SearchSpace, options: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    kwargs: dict[str, Any] = {"scramble": True, "warn_asynchronous_seeding": False}
    kwargs.update(options)
    # Optuna marks QMCSampler experimental since 3.0; the warning repeated in every worker log
    # line after line (the curve-table build) and says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, **kwargs)


def _grid(seed: int, space: SearchSpace, options: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler minus its ``study.stop()`` call, which raises outside
        ``optimize()``; our worker checks ``is_exhausted`` itself."""

        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            return None

    n_points = int(options.get("n_points", GRID_DEFAULT_POINTS))
    return AskTellGridSampler(space.grid(n_points), seed=seed)


def _optuna_options(class_name: str) -> Callable[[], set[str]]:
    """The options of an Optuna sampler: its constructor's keyword arguments, read when asked
    (importing Optuna is slow; ``hpo --help`` must not pay for it)."""

    def options() -> set[str]:
        import optuna

        cls = getattr(optuna.samplers, class_name)
        return set(inspect.signature(cls.__init__).parameters) - _RESERVED

    return options


def _grid_options() -> set[str]:
    return {"n_points"}


def _check_grid_values(options: Mapping[str, Any]) -> None:
    if "n_points" in options:
        n_points = options["n_points"]
        if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 1:
            raise ValueError(f"options.n_points: {n_points!r}: expected an integer >= 1")


def _any_values(options: Mapping[str, Any]) -> None:
    return None


SamplerFactory = Callable[[int, "SearchSpace", Mapping[str, Any]], "optuna.samplers.BaseSampler"]


@dataclass(frozen=True)
class SamplerKind:
    """A sampler the spec may name.

    Attributes:
        build: makes the sampler from (seed, search space, the spec's options).
        options: the option names the spec may set.
        check_values: raises ValueError naming an option whose value the sampler rejects.
    """

    build: SamplerFactory
    options: Callable[[], set[str]]
    check_values: Callable[[Mapping[str, Any]], None] = _any_values


# The one list of sampler names: the spec accepts exactly these keys.
SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(_tpe, _optuna_options("TPESampler")),
    "gp": SamplerKind(_gp, _optuna_options("GPSampler")),
    "random": SamplerKind(_random, _optuna_options("RandomSampler")),
    "qmc": SamplerKind(_qmc, _optuna_options("QMCSampler")),
    "grid": SamplerKind(_grid, _grid_options, _check_grid_values),
}


def allowed_sampler_options(name: str) -> set[str]:
    """The option names the spec may give to sampler ``name`` (a key of :data:`SAMPLERS`)."""
    return SAMPLERS[name].options()


def check_sampler_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first option that sampler ``name`` does not take or rejects."""
    allowed = allowed_sampler_options(name)
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"options.{key}: unknown option for sampler {name!r}; "
                f"expected one of {sorted(allowed)}"
            )
    SAMPLERS[name].check_values(options)


def make_sampler(
    spec: SamplerSpec, space: SearchSpace, *, stream: int = 0
) -> optuna.samplers.BaseSampler:
    """Build the sampler the spec names.

    Args:
        spec: sampler name, seed and options.
        space: the search space (the grid sampler enumerates it).
        stream: which random stream this worker draws from. Workers that share a study must
            use different streams, or their random start-up trials would coincide; the seed is
            derived from (``spec.seed``, ``stream``), so a rerun with the same workers repeats.
    """
    seed = derive_seed(spec.seed, stream)
    return SAMPLERS[spec.name].build(seed, space, spec.options)
