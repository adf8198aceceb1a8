"""A search that starts from attribution: rank the edges, take the smallest top-k that passes,
then prune it greedily.

The greedy schedule (one pass over every edge, from the output backwards) scores one candidate
per edge, and most of them are edges that matter little. Attribution (`attribute`: EAP-IG by
default) estimates every edge's effect from a few forward and backward passes, in the same
semantics (the other input is the search's shared draw). The ranked schedule
(`search(..., schedule="ranked")`, the step `steps.RankedRemoval`) then:

1. ranks the edges by |score|;
2. finds, by bisection over k, the smallest top-k set whose loss recovered on the search rows
   reaches the threshold (about log2(E) causal-scrubbing evaluations; loss recovered is not
   strictly monotone in k, so this is the smallest k the bisection finds, not a proven minimum);
3. prunes that set greedily, least important edge first: an edge stays removed when loss
   recovered stays at or above the threshold, in passes with per-step `tolerances` as the
   greedy schedule does (a pass with no per-step limit comes last); a later pass does not try
   again an edge whose removal cost, when last tried, clearly more than that step may spend
   (`skip`);

and `search` goes on as for any schedule: the feature step (when features are given), then the
held-out rescoring with an interval. `ranked_search` is that search with the ranked schedule's
options spelled out as keywords (and no feature step).

Every number is a causal-scrubbing evaluation of the kept set (`compact_hypothesis` with the
shared draw, or `build_hypothesis`'s tree with independent draws); the attribution scores only
choose the order.

**Independent draws and the tree limit.** With `draws="independent"` each candidate is a tree
with one interpretation node per kept route from the output, which grows as edges are removed,
and `build_hypothesis` refuses trees above `MAX_TREE_NODES`. `tree_bound` bounds the size of
that tree over every kept set (one node per treeified edge, plus the root); when the bound is
above the limit the search refuses *before starting*, with the numbers and the fix
(`draws="shared"`), rather than failing halfway.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> found = ranked_search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=400)
    >>> sorted(str(e) for e in found.kept)
    ['A -> out.resid', 'B -> out.resid', 'x -> A.x', 'x -> B.x']
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..core.data import Dataset
from ..core.graph import Graph
from ..core.hypothesis import InterpNode
from ..options import Draws
from ..pipeline import LossFn
from . import search
from .edges import check_tree_limit, tree_bound
from .result import SearchResult
from .steps import RANKED_TOLERANCES, Prune, RankedRemoval

__all__ = ["DEFAULT_TOLERANCES", "RankedRemoval", "check_tree_limit", "ranked_search",
           "tree_bound"]

#: The pruning passes' per-step tolerances by default (then a pass with no per-step limit).
DEFAULT_TOLERANCES = RANKED_TOLERANCES


def ranked_search(graph: Graph, dataset: Dataset, loss_fn: LossFn, *, threshold: float,
                  method: str = "eap-ig", steps: int = 5, n: int | None = 1000,
                  n_heldout: int | None = None, seed: int = 0, baseline: InterpNode | None = None,
                  draws: Draws = "shared", tolerances: Iterable[float] = DEFAULT_TOLERANCES,
                  prune: Prune = "ascending", skip: bool = True, skip_margin: float = 0.002,
                  device: str | torch.device | None = None, chunk_size: int | None = None,
                  memory_mb: float | None = None, memory_budget_mb: float | None = None,
                  cache_mb: float | None = None, n_bootstrap: int = 1000,
                  progress: bool = False) -> SearchResult:
    """Rank by attribution, bisect to the smallest passing top-k, prune (module docstring):
    `search(..., schedule=RankedRemoval(method, steps, prune, skip, skip_margin))`.

    Args:
        threshold: the loss recovered (a fraction) the result keeps on the search rows.
        method, steps: the attribution ("eap-ig" with 5 intervals by default, or "eap").
        tolerances: per-step limits of the pruning passes before the last (default 0.002,
            0.01); () is one pass.
        prune: the pruning order: "ascending" (least important first), "output-first"
            (the greedy schedule's order: receivers from the output backwards), or "none"
            (stop at the top-k set).
        skip: in a later pass, do not try again an edge whose removal, when last tried, cost
            more than `skip_margin` above what this step may spend (its tolerance, and the
            allowance left above the threshold). Removal costs mostly grow as other edges go,
            so this rarely changes the result and saves most of the later passes' candidates;
            `skip=False` tries every kept edge in every pass.
        n, n_heldout, seed, baseline, draws, device, chunk_size, memory_mb, memory_budget_mb,
            cache_mb, n_bootstrap, progress: as for `search`.
    """
    step = RankedRemoval(method=method, steps=steps, prune=prune, skip=skip,
                         skip_margin=skip_margin)
    return search(graph, dataset, loss_fn, threshold=threshold, schedule=step, n=n,
                  n_heldout=n_heldout, seed=seed, baseline=baseline, draws=draws,
                  tolerances=tuple(tolerances), device=device, chunk_size=chunk_size,
                  memory_mb=memory_mb, memory_budget_mb=memory_budget_mb, cache_mb=cache_mb,
                  n_bootstrap=n_bootstrap, progress=progress)
