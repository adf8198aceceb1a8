"""The tracr library suite: the search against each program's true circuit (docs/tracr.md).

For every program of `experiments.tracr.programs.PROGRAMS` (or those named on the command
line): compile it, check that its true circuit recovers all the loss (causal scrubbing, 300
rows), run `cs.search` at T = 0.95 on 300 rows, and print component-level precision and recall
with the search's time. With `--curve`, the search also runs at each threshold of THRESHOLDS
and the area under its ROC curve (true against false positive rate over the component edges
of the model's graph, step interpolation as in examples/tracr_search.py) is printed.

    python examples/tracr_lib.py                   # the whole suite
    python examples/tracr_lib.py hist reverse      # some of it
    python examples/tracr_lib.py --curve           # and the ROC areas
"""

from __future__ import annotations

import argparse
import time

import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments.tracr import programs
from causal_scrubbing.experiments.tracr.compile import component_edges
from causal_scrubbing.searching import graph_edges

#: (1.0001, in an earlier version, is refused: a threshold is a fraction in [0, 1]; the ROC
#: curve gets its (1, 1) end from `auc` anyway)
THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def auc(points: list[tuple[float, float]]) -> float:
    """Area under the ROC curve through (0, 0), `points` (fpr, tpr) and (1, 1), taking at each
    false-positive rate the best true-positive rate reached (step interpolation)."""
    pts = sorted({(0.0, 0.0), (1.0, 1.0), *points})
    best, area, prev_x, prev_y = 0.0, 0.0, 0.0, 0.0
    for x, y in pts:
        area += (x - prev_x) * prev_y
        best = max(best, y)
        prev_x, prev_y = x, best
    return area


def roc_area(exp: programs.ProgramExperiment) -> float:
    """The search's ROC area over THRESHOLDS (component edges)."""
    assert exp.search_graph is not None
    universe = component_edges(graph_edges(exp.search_graph))
    true = component_edges(exp.true_edges)
    points = []
    for t in THRESHOLDS:
        s = programs.score_search(exp, threshold=t, n_bootstrap=10)
        points.append((len(s.kept - true) / max(1, len(universe - true)), s.recall))
    return auc(points)


def main(names: list[str], curve: bool) -> None:
    torch.set_num_threads(1)
    print("| program | layers | kind | true edges | true circuit recovers | found | precision | "
          "recall | held-out recovered | search s | build s |" + (" ROC area |" if curve else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if curve else ""))
    for name in names or list(programs.PROGRAMS):
        start = time.perf_counter()
        exp = programs.build(name)
        built = time.perf_counter() - start
        true = cs.scrub(exp.graph, exp.hypotheses["true circuit"], exp.dataset, exp.loss_fn, n=300,
                        seed=0)
        s = programs.score_search(exp)
        area = f" {roc_area(exp):.3f} |" if curve else ""
        print(f"| {name} | {s.layers} | {s.kind} | {s.true_edges} | {true.loss_recovered:.4f} | "
              f"{s.found_edges} | {s.precision:.2f} | {s.recall:.2f} | {s.heldout_recovered:.4f} | "
              f"{s.seconds:.1f} | {built:.1f} |" + area, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="programs of the suite (default: all)")
    parser.add_argument("--curve", action="store_true", help="also the ROC area over thresholds")
    args = parser.parse_args()
    main(args.names, args.curve)
