"""Seeds: derived one way, and the same values every earlier version derived (a study or a
trial re-run after an upgrade draws the same points and trains the same folds)."""

from __future__ import annotations

from hpo.translate import trial_seed
from trainer.seeds import SEED_SPACE, derive_seed, fold_seed


def test_seeds_are_the_values_earlier_versions_derived() -> None:
    # Computed with the formulas as they were written out in samplers, objective and cv.
    assert derive_seed(42, 1) == 42_000_127  # sampler stream 1 of study seed 42
    assert trial_seed(42, 3) == 42_023_900
    assert trial_seed(0, 5) == 39_612
    assert derive_seed(5_000, 7) == 5_000_015_007 % SEED_SPACE
    assert fold_seed(2_000_000_000, 2) == 2_000_000_000_002  # never reduced: torch takes it


def test_members_of_one_family_never_share_a_seed() -> None:
    assert len({derive_seed(7, i) for i in range(10_000)}) == 10_000
    assert len({fold_seed(123_456_789, f) for f in range(10)}) == 10
