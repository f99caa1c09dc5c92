"""CV accuracy with torch's CPU dropout vs ``trainer.dropout``'s masks, paired by seed.

    python -m bench.dropout_ab --seeds 3 4 5 6        # 24 runs, about 9 min on 2 cores

The precision-parity benchmark's demo configurations (``bench.precision_parity``: the demo's
enqueued trial 0, ``low-lr``, ``high-lr``) at its default size (480 rows, 3 folds, 2 epochs,
fp32), each seed once with torch's dropout (``trainer.dropout.cpu_dropout`` replaced by a no-op)
and once with ours, in one process. The masks differ between the two arms for the same seed,
so a paired difference is seed noise plus any effect of the masks; the mean difference over
the pairs, with its count of better / worse / tied, says whether there is an effect beyond
the noise. Prints one JSON line per pair and a summary line; writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    import trainer.dropout
    from bench.precision_parity import SPEC, demo_configs, run_one
    from hpo import load_spec

    torch.set_num_threads(args.threads)
    ours = trainer.dropout.cpu_dropout
    arms: dict[str, Any] = {"torch": lambda model: contextlib.nullcontext(), "ours": ours}
    spec = load_spec(SPEC)
    differences = []
    try:
        for seed in args.seeds:
            for name, params in demo_configs(spec).items():
                pair: dict[str, Any] = {"config": name, "seed": seed}
                for arm, swap in arms.items():
                    trainer.dropout.cpu_dropout = swap  # type: ignore[assignment]
                    run = run_one(
                        spec, params, seed=seed, precision="fp32", rows=480, folds=3,
                        epochs=2, cache_dir=None,
                    )  # fmt: skip
                    pair[arm] = run["mean"]
                differences.append(pair["ours"] - pair["torch"])
                print(json.dumps(pair), flush=True)
    finally:
        trainer.dropout.cpu_dropout = ours  # type: ignore[assignment]
    print(
        f"{len(differences)} pairs: ours - torch = {100 * statistics.mean(differences):+.2f} "
        f"points on average; ours better {sum(d > 0 for d in differences)}, worse "
        f"{sum(d < 0 for d in differences)}, tied {sum(d == 0 for d in differences)}"
    )


if __name__ == "__main__":
    main()
