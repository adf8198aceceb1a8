"""Search in causal-scrubbing semantics: which edges matter, then what the kept nodes compute.

An *edge* is (sender, receiver, port): the sender's output as one term of the receiver's port
input. A set of kept edges is a hypothesis: every path of the treeified graph that crosses a
removed (resampled) edge reads an "other" input from there down, exactly as a path that no
interpretation node claims does; a path whose every edge is kept reads the reference input.
`build_hypothesis` writes a kept set as an ordinary tree of `Exact` interpretation nodes (one
per kept treeified edge with something resampled below it), so `check` validates it and the
ordinary engine scores it; `compact_hypothesis` writes the same assignment as two nodes (the
root, and one node claiming every path that crosses a removed edge), which is what the edge
search scores because its plan has one node per graph node however many edges are removed.

The "other" input. With `draws="shared"` (the default) every resampled path reads one shared
random input per reference row (one extra lane, as ACDC's single corrupted input): the number
is then a property of the kept set alone, resampling everything gives exactly the random
baseline (0%), and the search is fast. With `draws="independent"` each interpretation node of
`build_hypothesis`'s tree draws its own other input (Redwood's rule for unclaimed inputs),
which is stricter, but depends on the tree's shape and costs one lane per node.

`search` then runs, on its own reference rows:

1. The removal step, the *schedule*: `schedule="ranked"` (`RankedRemoval`, the default for
   edge searches: attribution (EAP-IG) ranks the edges, bisection finds the smallest top-k
   that passes, and that set is pruned; `searching.ranked`; per-step tolerances 0.002, 0.01
   by default) or `schedule="greedy"` (`RemovalPasses`, the default for node searches, and
   for independent draws on a graph whose trees the ranked schedule refuses:
   `default_schedule`). The greedy one is ACDC's order: receivers from the
   output backwards; for each, try resampling each incoming edge (with
   `granularity="nodes"`, each node's whole output); keep it resampled if loss recovered
   stays >= threshold. With `tolerances` (e.g. `(0.001, 0.01)`) this is done in passes: pass
   i also asks that the step cost at most `tolerances[i]` of loss recovered (as ACDC's tau
   bounds each step), and a last pass with no such limit follows, over the edges still kept.
   Cheap edges then go first, wherever they lie, and the allowance down to the threshold is
   spent on them rather than on the first edges visited. With `draws="independent"` a
   candidate whose tree would have more than `MAX_TREE_NODES` interpretation nodes is
   rejected unscored (the edge stays kept) and the trace counts them, so the greedy search
   never stops halfway at that limit; the ranked one refuses such a graph before starting.
2. The feature step, after either schedule: for each kept node, the candidate features from
   the most to the least specific (most classes first): `SameFeature(f)` replaces `Exact` on
   that node; among the features that keep loss recovered >= threshold, the least specific
   wins (ties: the higher recovery).
3. The found hypothesis is re-scored by `scrub_many` on held-out reference rows (the rows
   `causal-scrub run` draws for the same seed and n; the search rows are drawn from the
   others), with a 95% bootstrap interval.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> found = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=400)
    >>> sorted(str(e) for e in found.kept), found.schedule
    (['A -> out.resid', 'B -> out.resid', 'x -> A.x', 'x -> B.x'], 'ranked')
    >>> greedy = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=400,
    ...                    schedule="greedy")
    >>> greedy.kept == found.kept, greedy.schedule
    (True, 'greedy')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.data import Dataset
from ..core.draws import sampling_context
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import InterpNode, check
from ..core.samplers import Feature
from ..options import Draws, Granularity, SearchOptions, check_tolerances
from ..pipeline import LossFn, check_inputs, graph_device, random_baseline
from ..scrubbing import scrub_many
from .edges import (
    MAX_TREE_NODES,
    RESAMPLED,
    Crossing,
    Edge,
    TreeTooLarge,
    Triple,
    build_hypothesis,
    check_tree_limit,
    compact_hypothesis,
    effective,
    graph_edges,
    hypothesis_from_json,
    kept_triples,
    tree_bound,
)
from .result import HYPOTHESIS_PY, REPRODUCED, SEARCH_JSON, SearchResult, hypothesis_file
from .scorer import Scorer, default_cache_mb, split_rows
from .steps import (
    RANKED_TOLERANCES,
    STEPS,
    AcdcRemoval,
    FeatureStep,
    RankedRemoval,
    RemovalPasses,
    State,
    Step,
    feature_classes,
)

__all__ = [
    "HYPOTHESIS_PY", "MAX_TREE_NODES", "REPRODUCED", "RESAMPLED", "SEARCH_JSON", "STEPS",
    "RANKED_TOLERANCES", "AcdcRemoval", "Crossing", "Draws", "Edge", "FeatureStep", "TreeTooLarge",
    "Granularity", "RankedRemoval", "RemovalPasses", "Schedule", "Scorer", "SearchOptions",
    "SearchResult", "State", "Step", "Triple", "build_hypothesis", "check_tolerances",
    "check_tree_limit", "compact_hypothesis", "default_schedule", "effective", "feature_classes",
    "graph_edges", "hypothesis_file", "hypothesis_from_json", "kept_triples", "removal_step", "search",
    "tree_bound"
]

#: The removal schedules `search` knows by name.
Schedule = Literal["greedy", "ranked"]

log = logging.getLogger(__name__)


def search_rows(n_rows: int, options: SearchOptions) -> tuple[Tensor, Tensor]:
    """(held-out rows, search rows) of a search with `options` (`scorer.split_rows`)."""
    assert options.n is not None and options.n_heldout is not None
    return split_rows(n_rows, options.n, options.n_heldout, options.seed)


def default_schedule(graph: Graph, options: SearchOptions) -> Schedule:
    """The schedule `search` runs when none is given: "ranked" for an edge search, "greedy"
    where the ranked schedule does not apply (`granularity="nodes"`, or independent draws on a
    graph whose trees could pass `MAX_TREE_NODES`, which the ranked schedule refuses and the
    greedy one handles by rejecting such candidates unscored).

    >>> from causal_scrubbing.experiments import toy
    >>> g = toy.build().graph
    >>> default_schedule(g, SearchOptions(threshold=0.9))
    'ranked'
    >>> default_schedule(g, SearchOptions(threshold=0.9, granularity="nodes"))
    'greedy'
    """
    if options.granularity != "edges":
        return "greedy"
    if options.draws == "independent" and tree_bound(graph) > MAX_TREE_NODES:
        return "greedy"
    return "ranked"


def removal_step(schedule: Schedule | Step) -> Step:
    """The removal step of `schedule`: "greedy" (`RemovalPasses`), "ranked" (`RankedRemoval`
    with its defaults), or a step given as it is (e.g. `RankedRemoval(prune="none")`).

    >>> removal_step("ranked").name, removal_step("greedy").name
    ('ranked', 'remove')
    """
    if schedule == "greedy":
        return RemovalPasses()
    if schedule == "ranked":
        return RankedRemoval()
    if isinstance(schedule, str) or not callable(getattr(schedule, "run", None)):
        raise ScrubError(f"schedule must be 'greedy', 'ranked' or a removal step, got "
                         f"{schedule!r}.")
    return schedule


def search(graph: Graph, dataset: Dataset, loss_fn: LossFn, *, threshold: float | None = None,
           options: SearchOptions | None = None, features: Mapping[str, Feature] | None = None,
           schedule: Schedule | Step | None = None,
           baseline: InterpNode | None = None, granularity: Granularity | None = None,
           n: int | None = None, n_heldout: int | None = None, seed: int | None = None,
           draws: Draws | None = None, device: str | torch.device | None = None,
           chunk_size: int | None = None, memory_mb: float | None = None,
           memory_budget_mb: float | None = None, cache_mb: float | None = None,
           tolerances: Iterable[float] | None = None, n_bootstrap: int | None = None,
           progress: bool | None = None) -> SearchResult:
    """Find the edges (or nodes) that matter and what the kept nodes compute (module docstring).

    Args:
        threshold: the loss recovered (a fraction in [0, 1], e.g. 0.95) every accepted step
            keeps. Required, here or in `options`.
        options: a `SearchOptions`; each keyword option given (not None) replaces its field.
        features: name -> feature (a dataset field or a function of the Dataset), the candidates
            of the feature step; none: the step is skipped.
        schedule: the removal step (`removal_step`): "ranked" (edges only; with independent
            draws, refused before any compute where the trees could pass `MAX_TREE_NODES`),
            "greedy", or a configured step such as `RankedRemoval(prune="none")`. Default
            (None): `default_schedule`, i.e. "ranked" for edges, "greedy" for nodes (and for
            independent draws on a graph the ranked schedule refuses).
        baseline: the 0% point (default: the random baseline).
        granularity: "edges" (a sender's term in a receiver's port) or "nodes" (a node's output).
        n: search rows (default 1000), drawn from the rows the held-out scoring does not use.
        n_heldout: held-out rows (default: `n`): exactly the reference rows `scrub` (and
            `causal-scrub run`) draws for `seed` and this n.
        draws: "shared" (one other input, the default) or "independent" (module docstring).
        cache_mb: memory for clean activations kept across candidates (`engine.CleanCache`;
            default 1024 MB, or a quarter of `memory_budget_mb` if that is less; 0: none).
        tolerances: per-step limits (fractions of loss recovered, increasing) of the passes
            before the last (module docstring); default none: one pass, except for the ranked
            schedule, whose default (where neither this nor `options` gives any) is
            `RANKED_TOLERANCES`; `()` asks for one pass.
        device, chunk_size, memory_mb, memory_budget_mb, n_bootstrap, progress: as for
            `scrub_many`.
    """
    start_time = time.perf_counter()
    if threshold is None and options is None:
        raise ScrubError("search() needs a threshold: the loss recovered (a fraction such as 0.95) "
                         "every accepted step keeps.")
    opts = SearchOptions.of(options, threshold=threshold, granularity=granularity, n=n,
                            n_heldout=n_heldout, seed=seed, draws=draws,
                            device=None if device is None else str(device), chunk_size=chunk_size,
                            memory_mb=memory_mb, memory_budget_mb=memory_budget_mb,
                            cache_mb=cache_mb,
                            tolerances=None if tolerances is None else tuple(tolerances),
                            n_bootstrap=n_bootstrap, progress=progress)
    assert isinstance(opts, SearchOptions)
    removal = removal_step(default_schedule(graph, opts) if schedule is None else schedule)
    if isinstance(removal, RankedRemoval) and tolerances is None and not opts.tolerances:
        opts = opts.replace(tolerances=RANKED_TOLERANCES)
    steps: list[Step] = [removal, FeatureStep(features or {})]
    for step in steps:  # before any compute
        step.check(graph, opts)
    base_root = baseline if baseline is not None else random_baseline()
    check(graph, base_root)
    dev = torch.device(opts.device) if opts.device is not None else graph_device(graph)
    check_inputs(graph, dataset)
    graph.to(dev)
    table = dataset.to(dev)

    heldout_idx, ref = search_rows(len(dataset), opts)
    scorer = Scorer(graph, table, ref, loss_fn, opts.run_options(), sampling_context(table, opts.seed),
                    default_cache_mb(opts.cache_mb, opts.memory_budget_mb))
    scorer.set_ends(InterpNode(graph.output), base_root)

    all_edges = set(graph_edges(graph))
    state = State(graph, opts, scorer, set(all_edges), device=dev)
    with tqdm(total=0, desc="search", unit="candidate", disable=not opts.progress,
              leave=False) as bar:
        state.bar = bar
        for step in steps:
            step.run(state)
    if scorer.cache is not None:
        log.info("search: %d clean activations read from the cache, %d computed (%.0f MB kept)",
                 scorer.cache.hits, scorer.cache.misses, scorer.cache.nbytes / 2**20)
        scorer.cache = None  # (the held-out rows are other rows)
    return _rescored(state, dataset, loss_fn, baseline, state.count(all_edges),
                     time.perf_counter() - start_time, heldout_idx,
                     getattr(removal, "schedule", removal.name))


def _rescored(state: State, dataset: Dataset, loss_fn: LossFn, baseline: InterpNode | None,
              n_edges: int, seconds_so_far: float, heldout_idx: Tensor,
              schedule: str) -> SearchResult:
    """The found hypothesis, re-scored on the held-out rows, as a `SearchResult`."""
    began = time.perf_counter()
    graph, opts = state.graph, state.options
    encoding: Literal["tree", "compact"] = "tree"
    try:
        root = build_hypothesis(graph, state.eff, state.chosen, draws=opts.draws)
    except ScrubError:
        if state.chosen or opts.draws != "shared":
            raise
        root, encoding = compact_hypothesis(graph, state.eff), "compact"
    heldout = scrub_many(graph, {"found": root}, dataset, loss_fn, baseline=baseline,
                         options=opts.run_options().replace(n=opts.n_heldout, progress=False)
                         )["found"]
    assert heldout.n == len(heldout_idx)
    if opts.granularity == "edges":
        kept_edges = sorted(Edge(u, v, p) for u, v, p in state.eff)
    else:
        kept_edges = sorted({Edge(u, v, None) for u, v, _ in state.eff})
    assert opts.n is not None
    return SearchResult(
        threshold=opts.threshold, granularity=opts.granularity, draws=opts.draws,
        tolerances=opts.tolerances, kept=kept_edges, features=dict(state.chosen_names),
        loss_recovered=state.current, heldout=heldout, hypothesis=root,
        candidates=state.candidates, seconds=seconds_so_far + time.perf_counter() - began,
        n=opts.n, seed=opts.seed, model_loss=float(state.scorer.model_losses.mean()),
        baseline_loss=float(state.scorer.base_losses.mean()), trace=state.trace,
        encoding=encoding, n_edges=n_edges, graph_edges=graph_edges(graph), schedule=schedule)
