"""The tracr library suite: the search against each program's true circuit (docs/tracr.md).

For every program of `experiments.tracr.programs.PROGRAMS` (or those named on the command
line): compile it, check that its true circuit recovers all the loss, run `cs.search` at
T = 0.95 on 300 rows, and print component-level precision and recall with the search's time.

    python examples/tracr_lib.py                 # the whole suite
    python examples/tracr_lib.py hist reverse    # some of it
"""

from __future__ import annotations

import sys
import time

import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments.tracr import programs


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    print("| program | layers | kind | true edges | true circuit recovers | found | precision | "
          "recall | held-out recovered | search s | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names or list(programs.PROGRAMS):
        start = time.perf_counter()
        exp = programs.build(name)
        built = time.perf_counter() - start
        true = cs.scrub(exp.graph, exp.hypotheses["true circuit"], exp.dataset, exp.loss_fn, n=300,
                        seed=0)
        s = programs.score_search(exp)
        print(f"| {name} | {s.layers} | {s.kind} | {s.true_edges} | {true.loss_recovered:.4f} | "
              f"{s.found_edges} | {s.precision:.2f} | {s.recall:.2f} | {s.heldout_recovered:.4f} | "
              f"{s.seconds:.1f} | {built:.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
