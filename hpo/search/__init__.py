"""How the study chooses: samplers and pruners by name, on the study's step grid.

Reading order: ``samplers`` (the sampler table, each seeded from the spec and the worker's
stream), ``pruners`` (the pruner table), ``grid_view`` (Optuna's pruners on our fold x epoch
grid), ``fold_aware`` (the default pruner). The step grid itself is ``trainer.steps``: the
trainer reports on it and every reader decodes it there.
"""

from hpo.search.pruners import PRUNERS, PrunerKind, check_pruner_options, make_pruner
from hpo.search.samplers import SAMPLERS, SamplerKind, check_sampler_options, make_sampler

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "PrunerKind",
    "SamplerKind",
    "check_pruner_options",
    "check_sampler_options",
    "make_pruner",
    "make_sampler",
]
