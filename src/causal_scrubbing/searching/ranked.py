"""A search that starts from attribution: rank the edges, take the smallest top-k that passes,
then prune it greedily.

`search` (one greedy pass over every edge, from the output backwards) scores one candidate per
edge, and most of them are edges that matter little. Attribution (`attribute`: EAP-IG by
default) estimates every edge's effect from a few forward and backward passes, in the same
semantics (the other input is the search's shared draw). `ranked_search` then:

1. ranks the edges by |score|;
2. finds, by bisection over k, the smallest top-k set whose loss recovered on the search rows
   reaches the threshold (about log2(E) causal-scrubbing evaluations; loss recovered is not
   strictly monotone in k, so this is the smallest k the bisection finds, not a proven minimum);
3. prunes that set greedily, least important edge first: an edge stays removed when loss
   recovered stays at or above the threshold, in passes with per-step `tolerances` as
   `search` does (a pass with no per-step limit comes last); a later pass does not try again
   an edge whose removal cost, when last tried, clearly more than that step may spend
   (`skip`);
4. re-scores the result on the held-out rows with an interval, exactly as `search` does.

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

import logging
import math
import time
from collections.abc import Iterable
from typing import Any, Literal

import torch

from ..core.data import Dataset
from ..core.draws import check_n, sampling_context
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import InterpNode, check
from ..options import Draws, RunOptions, check_tolerances, resolve_device
from ..pipeline import LossFn, check_inputs, graph_device, random_baseline
from ..scrubbing import scrub_many
from .attribution import attribute, check_method, search_rows
from .edges import MAX_TREE_NODES, Edge, Triple, build_hypothesis, compact_hypothesis, effective, graph_edges
from .result import SearchResult
from .scorer import Scorer, default_cache_mb

log = logging.getLogger(__name__)

#: The pruning passes' per-step tolerances by default (then a pass with no per-step limit).
DEFAULT_TOLERANCES = (0.002, 0.01)


def tree_bound(graph: Graph) -> int:
    """An upper bound on the nodes of `build_hypothesis`'s tree over every kept set: the root
    plus one node per treeified edge (route from the output through an edge).

    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> tree_bound(toy.build().graph)  # 3 edges into out, 3 below them
    7
    """
    routes = dict.fromkeys(graph.order, 0)  # routes from the output to each node
    routes[graph.output] = 1
    total = 1
    for v in reversed(graph.order):
        for ups in graph.ports(v).values():
            for u in ups:
                routes[u] += routes[v]
                total += routes[v]
    return total


def check_tree_limit(graph: Graph, draws: Draws, max_nodes: int = MAX_TREE_NODES) -> None:
    """Refuse, before any compute, a search with independent draws whose trees could exceed
    `max_nodes` interpretation nodes (`tree_bound`)."""
    if draws != "independent":
        return
    bound = tree_bound(graph)
    if bound > max_nodes:
        raise ScrubError(
            f"With draws='independent' a candidate of this search is a tree with one "
            f"interpretation node per kept route from the output; on this graph that can reach "
            f"{bound} nodes, above the limit of {max_nodes}, so the search could fail halfway. "
            "Use draws='shared' (one other input, two nodes whatever is kept), or a smaller "
            "graph (granularity or fewer layers).")


def ranked_search(graph: Graph, dataset: Dataset, loss_fn: LossFn, *, threshold: float,
                  method: str = "eap-ig", steps: int = 5, n: int | None = 1000,
                  n_heldout: int | None = None, seed: int = 0, baseline: InterpNode | None = None,
                  draws: Draws = "shared", tolerances: Iterable[float] = DEFAULT_TOLERANCES,
                  prune: Literal["ascending", "output-first", "none"] = "ascending",
                  skip: bool = True, skip_margin: float = 0.002,
                  device: str | torch.device | None = None, chunk_size: int | None = None,
                  memory_mb: float | None = None, memory_budget_mb: float | None = None,
                  cache_mb: float | None = None, n_bootstrap: int = 1000,
                  progress: bool = False) -> SearchResult:
    """Rank by attribution, bisect to the smallest passing top-k, prune (module docstring).

    Args:
        threshold: the loss recovered (a fraction) the result keeps on the search rows.
        method, steps: the attribution ("eap-ig" with 5 intervals by default, or "eap").
        tolerances: per-step limits of the pruning passes before the last (default 0.002,
            0.01); () is one pass.
        prune: the pruning order: "ascending" (least important first), "output-first"
            (`search`'s order: receivers from the output backwards), or "none" (stop at the
            top-k set).
        skip: in a later pass, do not try again an edge whose removal, when last tried, cost
            more than `skip_margin` above what this step may spend (its tolerance, and the
            allowance left above the threshold). Removal costs mostly grow as other edges go,
            so this rarely changes the result and saves most of the later passes' candidates;
            `skip=False` tries every kept edge in every pass.
        n, n_heldout, seed, baseline, draws, device, chunk_size, memory_mb, memory_budget_mb,
            cache_mb, n_bootstrap, progress: as for `search`.
    """
    start_time = time.perf_counter()
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ScrubError(f"threshold must be a number such as 0.95, got {threshold!r}.") from None
    if not math.isfinite(threshold):
        raise ScrubError(f"threshold must be a finite number such as 0.95, got {threshold}.")
    if draws not in ("shared", "independent"):
        raise ScrubError(f"draws must be 'shared' or 'independent', got {draws!r}.")
    if prune not in ("ascending", "output-first", "none"):
        raise ScrubError(f"prune must be 'ascending', 'output-first' or 'none', got {prune!r}.")
    meth = check_method(method)
    steps_t = check_tolerances(tolerances)
    check_tree_limit(graph, draws)
    rows = check_n(n) or 1000
    n_heldout = check_n(n_heldout) or rows
    base_root = baseline if baseline is not None else random_baseline()
    check(graph, base_root)
    dev = resolve_device(device) if device is not None else graph_device(graph)
    check_inputs(graph, dataset)
    graph.to(dev)
    table = dataset.to(dev)
    ref = search_rows(len(dataset), rows, n_heldout, seed)  # the rows `search` uses
    ctx = sampling_context(table, seed)
    run_options = RunOptions(seed=seed, chunk_size=chunk_size, memory_mb=memory_mb,
                             memory_budget_mb=memory_budget_mb)
    scorer = Scorer(graph, table, ref, loss_fn, run_options, ctx,
                    default_cache_mb(cache_mb, memory_budget_mb))
    scorer.set_ends(InterpNode(graph.output), base_root)

    candidates = 0
    trace: list[dict[str, Any]] = []

    def score(kept: set[Triple]) -> float:
        nonlocal candidates
        candidates += 1
        if draws == "shared":
            return scorer.compact(kept)
        return scorer.recovered(scorer.losses(build_hypothesis(graph, kept, draws=draws)))

    # ---- 1. rank -----------------------------------------------------------------------------
    att = attribute(graph, dataset, loss_fn, method=meth, steps=steps, ref=ref, seed=seed,
                    device=dev)
    ranking = att.ranking()
    all_edges = graph_edges(graph)
    trace.append({"step": "rank", "what": f"{meth}: {len(ranking)} edges by |score|",
                  "loss_recovered": math.nan, "accepted": True, "kept": len(all_edges),
                  "seconds": att.seconds,
                  "ranking": [f"{u} -> {v}.{p}" for u, v, p in ranking]})

    # ---- 2. the smallest passing top-k, by bisection -----------------------------------------
    lo, hi = 0, len(ranking)  # f(hi) passes (everything kept: 100%); f(lo) is not tried
    cache: dict[int, float] = {len(ranking): score(set(all_edges))}
    trace.append({"step": "top-k", "what": f"top {hi} (everything)", "loss_recovered": cache[hi],
                  "accepted": True, "kept": len(effective(graph, all_edges))})
    while hi - lo > 1:
        mid = (lo + hi) // 2
        rec = cache[mid] = score(set(ranking[:mid]))
        ok = rec >= threshold
        trace.append({"step": "top-k", "what": f"top {mid}", "loss_recovered": rec,
                      "accepted": ok, "kept": len(effective(graph, ranking[:mid]))})
        log.info("ranked search: top %d: %.1f%%", mid, 100 * rec)
        if ok:
            hi = mid
        else:
            lo = mid
    kept = effective(graph, ranking[:hi])
    current = cache[hi]
    trace.append({"step": "start", "what": f"top {hi}", "loss_recovered": current,
                  "accepted": True, "kept": len(kept)})

    # ---- 3. prune, least important first, in passes with per-step tolerances ------------------
    if prune != "none":
        order = list(reversed(ranking)) if prune == "ascending" else [
            (u, v, p) for v in reversed(graph.order) for p, ups in graph.ports(v).items()
            for u in reversed(ups)]
        last_cost: dict[Triple, float] = {}
        skipped = 0
        for i, tolerance in enumerate([*steps_t, math.inf]):
            for e in [e for e in order if e in kept]:
                if e not in kept:
                    continue  # dropped with an edge removed before it
                limit = min(tolerance, current - threshold)  # the most this step may cost
                if skip and last_cost.get(e, -math.inf) > limit + skip_margin:
                    skipped += 1  # it cost more than that when last tried
                    continue
                trial = effective(graph, kept - {e})
                rec = score(trial)
                last_cost[e] = current - rec
                ok = rec >= threshold and current - rec <= tolerance
                if ok:
                    kept, current = trial, rec
                trace.append({"step": "resample", "what": f"{e[0]} -> {e[1]}.{e[2]}",
                              "loss_recovered": rec, "accepted": ok, "kept": len(trial), "pass": i})
        if skipped:
            trace.append({"step": "skipped", "what": f"{skipped} tries of edges whose last cost "
                          "exceeded what the step could spend", "loss_recovered": current,
                          "accepted": False, "kept": len(kept)})

    if scorer.cache is not None:
        scorer.cache = None

    # ---- 4. held out ---------------------------------------------------------------------------
    encoding: Literal["tree", "compact"] = "tree"
    try:
        root = build_hypothesis(graph, kept, draws=draws)
    except ScrubError:
        if draws != "shared":
            raise
        root, encoding = compact_hypothesis(graph, kept), "compact"
    heldout = scrub_many(graph, {"found": root}, dataset, loss_fn, n=n_heldout, seed=seed,
                         baseline=baseline, device=device, chunk_size=chunk_size,
                         memory_mb=memory_mb, memory_budget_mb=memory_budget_mb,
                         n_bootstrap=n_bootstrap)["found"]
    return SearchResult(
        threshold=threshold, granularity="edges", draws=draws, tolerances=steps_t,
        kept=sorted(Edge(u, v, p) for u, v, p in kept), features={}, loss_recovered=current,
        heldout=heldout, hypothesis=root, candidates=candidates,
        seconds=time.perf_counter() - start_time, n=rows, seed=seed,
        model_loss=float(scorer.model_losses.mean()), baseline_loss=float(scorer.base_losses.mean()),
        trace=trace, encoding=encoding, n_edges=len(all_edges))


__all__ = ["DEFAULT_TOLERANCES", "check_tree_limit", "ranked_search", "tree_bound"]
