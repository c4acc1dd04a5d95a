"""Benchmark `search-plugin`: the `search` benchmark (cambrian.bench.search, the same arms, world, Φ0, metric and
accounting) made harder for the loop: the numeric arms search the wide space, every setting of Φ that is a
number or a name from a fixed list (optimizer class, lr, weight decay, architecture name (mlp, deepfm, dcn),
embedding dim, hidden sizes, dropout, activation, cross layers, epochs, batch size). What is left out of
their reach is only what has to be written: a reward's SQL label or weight expression, or plugin code.

So numeric search cannot win by tuning alone only if the best change on this world is such a written one;
the result measures that instead of assuming it: each evaluation is classified (search.change_kind), and
`seeds_best_is_written` counts the seeds whose best evaluation of any arm is a written change above every
numeric arm's best.

Sizes: the full size is `search`'s (5 paired seeds x 10 evaluations, four arms). `--quick` keeps 5 paired
seeds (the target is a median over at least 5) at 8 evaluations on `search --quick`'s world, with the two
arms the headline compares (tpe, builtin): at fewer than 8 evaluations the loop's first wake-up cannot reach
a reward family's second proposal (evaluations 1-2 are Φ0's noise-floor seeds).
Headline and targets as in `search`: Σ evaluations to TPE's final best, builtin / TPE (target <= 0.5), the
median of the per-seed ratios (<= 0.5), and seeds where the loop ends above TPE's final best (>= 4 of 5).
"""

from __future__ import annotations

from typing import Callable

from cambrian.bench.search import ARMS, FULL, QUICK, run_variant

PLUGIN_QUICK = {**QUICK, "seeds": [0, 1, 2, 3, 4], "budget": 8}
QUICK_ARMS = ("tpe", "builtin")


def run(quick: bool = False, progress: Callable[[str], None] | None = None,
        seeds: tuple[int, ...] | None = None) -> dict:
    return run_variant("search-plugin", PLUGIN_QUICK if quick else FULL, quick=quick, wide=True,
                       arms=QUICK_ARMS if quick else ARMS, progress=progress, seeds=seeds)


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True, progress=print), indent=2))
