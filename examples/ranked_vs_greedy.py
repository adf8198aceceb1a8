"""The ranked search beside the greedy one, on a bundled experiment's search graph.

Each SPEC is `greedy:TOLERANCES` or `ranked:PRUNE:TOLERANCES:SKIP` (TOLERANCES comma-separated,
empty for one pass; PRUNE `ascending` or `output-first`; SKIP `skip` or `noskip`). Both go
through `cs.search` (`schedule="greedy"`, or a configured `RankedRemoval`), so with
`--features` the experiment's features are offered to the feature step after either schedule.
Every run uses the same search rows and held-out rows (`--seed`, default 0), one torch thread,
and prints the kept edges, loss recovered on both row sets, the candidates, the seconds and
the features claimed.

    python examples/ranked_vs_greedy.py ioi --n 300 --threshold 0.9 \\
        ranked:ascending:0.002,0.01:skip ranked:ascending::skip greedy:0.002,0.01
    python examples/ranked_vs_greedy.py paren --n 300 --threshold 0.9 --features \\
        greedy: ranked:ascending:0.002,0.01:skip
"""

from __future__ import annotations

import argparse
import time

import torch

import causal_scrubbing as cs
from causal_scrubbing import experiments
from causal_scrubbing.searching import RankedRemoval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", action="store_true",
                        help="offer the experiment's features to the feature step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    exp = experiments.load(args.experiment)
    graph = exp.search_graph or exp.graph
    for spec in args.specs:
        kind, *rest = spec.split(":")
        t0 = time.perf_counter()
        schedule: str | RankedRemoval
        if kind == "ranked":
            prune, tol, skip = rest
            schedule = RankedRemoval(prune=prune, skip=skip == "skip")  # type: ignore
        elif kind == "greedy":
            schedule, tol = "greedy", rest[0] if rest else ""
        else:
            raise SystemExit(f"unknown schedule {kind!r} in {spec!r}")
        found = cs.search(graph, exp.dataset, exp.loss_fn, threshold=args.threshold, n=args.n,
                          seed=args.seed, schedule=schedule,
                          tolerances=tuple(float(x) for x in tol.split(",") if x),
                          features=exp.features if args.features else None,
                          baseline=exp.baseline, n_bootstrap=200)
        h = found.heldout
        print(f"{args.experiment} {spec}: {len(found.kept)} kept; {100 * found.loss_recovered:.1f}% "
              f"on the search rows, {100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}, "
              f"{100 * h.ci[1]:.1f}] held out; {found.candidates} candidates; "
              f"{time.perf_counter() - t0:.1f} s; features: "
              + (", ".join(f"{k} = {v}" for k, v in found.features.items()) or "none"),
              flush=True)


if __name__ == "__main__":
    main()
