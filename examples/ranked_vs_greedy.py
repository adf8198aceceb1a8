"""The ranked search beside the greedy one, on a bundled experiment's search graph.

Each SPEC is `greedy:TOLERANCES` or `ranked:PRUNE:TOLERANCES:SKIP` (TOLERANCES comma-separated,
empty for one pass; PRUNE `ascending` or `output-first`; SKIP `skip` or `noskip`). Every run
uses the same search rows and held-out rows (seed 0), one torch thread, and prints the kept
edges, loss recovered on both row sets, the candidates and the seconds.

    python examples/ranked_vs_greedy.py ioi --n 300 --threshold 0.9 \\
        ranked:ascending:0.002,0.01:skip ranked:ascending::skip greedy:0.002,0.01
"""

from __future__ import annotations

import argparse
import time

import torch

import causal_scrubbing as cs
from causal_scrubbing import experiments
from causal_scrubbing.searching.ranked import ranked_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    exp = experiments.load(args.experiment)
    graph = exp.search_graph or exp.graph
    for spec in args.specs:
        kind, *rest = spec.split(":")
        t0 = time.perf_counter()
        if kind == "ranked":
            prune, tol, skip = rest
            steps = tuple(float(x) for x in tol.split(",") if x)
            found = ranked_search(graph, exp.dataset, exp.loss_fn, threshold=args.threshold,
                                  n=args.n, tolerances=steps, prune=prune, skip=skip == "skip",
                                  n_bootstrap=200)
        elif kind == "greedy":
            steps = tuple(float(x) for x in rest[0].split(",") if x) if rest else ()
            found = cs.search(graph, exp.dataset, exp.loss_fn, threshold=args.threshold, n=args.n,
                              tolerances=steps, n_bootstrap=200)
        else:
            raise SystemExit(f"unknown schedule {kind!r} in {spec!r}")
        h = found.heldout
        print(f"{args.experiment} {spec}: {len(found.kept)} kept; {100 * found.loss_recovered:.1f}% "
              f"on the search rows, {100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}, "
              f"{100 * h.ci[1]:.1f}] held out; {found.candidates} candidates; "
              f"{time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
