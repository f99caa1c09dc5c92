"""The one way a seed is derived from another: a sampler stream from the study's seed, a trial's
training seed from the study's seed and its number, a fold's from the trial's.

``derive_seed(base, index)`` spreads the members of one family (the streams of one study, the
trials of one study) over the seed space, so no two members of a family share a seed. The
formulas that existed before this module are kept exactly (as instances of it, or, for folds,
beside it), so studies and scores seeded before repeat.
"""

from __future__ import annotations

SEED_SPACE = 2**31  # what every seeded library here accepts (numpy, torch, Optuna's samplers)
_SPREAD = 1_000_003  # a prime: a family's seeds never collide with its base's neighbours'


def derive_seed(base: int, index: int) -> int:
    """The seed of member ``index`` of ``base``'s family, in ``[0, SEED_SPACE)``."""
    return (base * _SPREAD + index) % SEED_SPACE


def fold_seed(trial_seed: int, fold: int) -> int:
    """The seed of a fold of a trial (its head's initialization and batch order).

    ``trial_seed * 1000 + fold``, not reduced into ``SEED_SPACE``: the formula folds have always
    been trained with (torch and numpy take 64-bit seeds), kept so a trial's scores repeat.
    """
    return trial_seed * 1_000 + fold
