"""The search's steps, each behind one small protocol: `Step.check(graph, options)` before any
compute, then `Step.run(state)`.

A search is a list of steps applied in turn to one `State` (the kept edges, the features chosen
so far, the current loss recovered on the search rows, the trace and the scorer): a removal
step (the *schedule*), then the feature step. Three are registered in `STEPS`:

- `"remove"` (`RemovalPasses`, the greedy schedule): ACDC's order -- receivers from the output
  backwards; for each, resample each incoming edge (or each node's whole output) and keep it
  resampled if loss recovered stays >= the threshold. With per-step tolerances this is done in
  passes: pass i also asks that the step cost at most `tolerances[i]`; a last pass with no
  such limit follows.
- `"ranked"` (`RankedRemoval`, the ranked schedule): attribution (EAP-IG by default) ranks the
  edges, bisection over k finds the smallest top-k that reaches the threshold, and that set is
  pruned greedily, least important edge first, in passes with per-step tolerances
  (`searching.ranked` describes it). With independent draws it refuses, in `check`, a graph
  whose trees could pass `MAX_TREE_NODES` (`edges.tree_bound`).
- `"acdc"` (`AcdcRemoval`, ACDC (Conmy et al. 2023) in causal-scrubbing semantics): the
  greedy schedule's order, one pass, no threshold: an edge stays resampled when the task's
  mean loss on the search rows (under the search's resampling) rises by less than `tau`.
- `"features"` (`FeatureStep`): for each kept node, from the output down, the candidate
  features from the most to the least specific; among those that keep loss recovered >= the
  threshold, the least specific wins (ties: the higher recovery).

A removal step scores the set it starts from itself (`State.start`, or its own first
candidate), so that its trace begins where its work does. A new step is a class with `name`,
`check(graph, options)` and `run(state)`, added to `STEPS`.

Example:
    >>> sorted(STEPS)
    ['acdc', 'features', 'ranked', 'remove']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from ..core import engine
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import Correspondence, check
from ..core.paths import Chain
from ..core.samplers import Exact, Feature, SameFeature, Sampler, SamplingContext
from ..options import SearchOptions
from .attribution import attribute, check_method
from .edges import (
    MAX_TREE_NODES,
    TreeTooLarge,
    Triple,
    build_hypothesis,
    check_tree_limit,
    effective,
    graph_edges,
)
from .scorer import Scorer

__all__ = ["RANKED_TOLERANCES", "STEPS", "AcdcRemoval", "FeatureStep", "RankedRemoval",
           "RemovalPasses", "State", "Step", "claims_by_node", "feature_classes", "removal_units"]

#: The ranked schedule's per-step tolerances by default (then a pass with no per-step limit).
RANKED_TOLERANCES = (0.002, 0.01)

log = logging.getLogger(__name__)


@dataclass
class State:
    """What the steps of one search share and change."""

    graph: Graph
    options: SearchOptions
    scorer: Scorer
    kept: set[Triple]
    current: float = math.nan  # loss recovered on the search rows
    chosen: dict[str, Sampler] = field(default_factory=dict)  # node -> claimed feature
    chosen_names: dict[str, str] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    candidates: int = 0
    bar: Any = None  # a progress bar (tqdm), or None
    too_large: int = 0  # independent draws: candidates whose tree would pass MAX_TREE_NODES
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # the graph's

    def __post_init__(self) -> None:
        self.eff = effective(self.graph, self.kept)

    def start(self) -> None:
        """Score the kept set as it is (one candidate) and record it as the search's start."""
        self.current = self.score(self.kept, {})
        self.trace.append({"step": "start", "what": "everything kept",
                           "loss_recovered": self.current, "accepted": True,
                           "kept": self.count(self.eff)})

    def count(self, edges: set[Triple]) -> int:
        """Kept edges, or kept (sender, receiver) pairs with granularity "nodes"."""
        if self.options.granularity == "edges":
            return len(edges)
        return len({(u, v) for u, v, _ in edges})

    def score(self, kept: set[Triple], feats: Mapping[str, Sampler]) -> float:
        """Loss recovered by `kept` with `feats` claimed, on the search rows (one candidate)."""
        self.candidates += 1
        if self.options.draws == "shared" and not feats:
            return self.scorer.compact(kept)
        try:
            root = build_hypothesis(self.graph, kept, feats, draws=self.options.draws)
        except TreeTooLarge:  # fallback: the candidate is rejected unscored, the search goes on
            self.too_large += 1
            return math.nan
        return self.scorer.recovered(self.scorer.losses(root))

    def tick(self, total: int = 0) -> None:
        """Advance the progress bar by one candidate, or grow it by `total`."""
        if self.bar is None:
            return
        if total:
            self.bar.total += total
            self.bar.refresh()
        else:
            self.bar.update(1)


class Step(Protocol):
    """One step of a search: `check` refuses bad settings before any compute; `run` changes
    `state` in place."""

    name: str

    def check(self, graph: Graph, options: SearchOptions) -> None: ...

    def run(self, state: State) -> None: ...


def removal_units(graph: Graph, granularity: str) -> list[tuple[str, list[Triple]]]:
    """The candidates to resample, in ACDC's order: receivers from the output backwards, and
    within one receiver its ports in order and the senders latest first (nodes: each node's
    whole output, latest node first). The order is a function of the graph's lists (its
    topological order and each node's declared ports and senders), never of a set's or a
    hash's, so it is the same in every process whatever `PYTHONHASHSEED` is."""
    if granularity == "edges":
        return [(f"{u} -> {v}.{p}", [(u, v, p)]) for v in reversed(graph.order)
                for p, ups in graph.ports(v).items() for u in reversed(ups)]
    out_edges: dict[str, list[Triple]] = {}
    for u, v, p in graph_edges(graph):
        out_edges.setdefault(u, []).append((u, v, p))
    return [(u, out_edges[u]) for u in reversed(graph.order) if u in out_edges]


class RemovalPasses:
    """Resample edges (or node outputs) one at a time, in passes (module docstring)."""

    name = "remove"
    schedule = "greedy"

    def check(self, graph: Graph, options: SearchOptions) -> None:
        """Nothing to refuse: a candidate whose tree would be too large is rejected unscored."""

    def run(self, state: State) -> None:
        if math.isnan(state.current):
            state.start()
        units = removal_units(state.graph, state.options.granularity)
        state.tick(len(units))
        for i, tolerance in enumerate([*state.options.tolerances, math.inf]):
            if i > 0:  # later passes visit the units still kept
                units = [(what, unit) for what, unit in units if any(e in state.eff for e in unit)]
                state.tick(len(units))
            for what, unit in units:
                self.try_unit(state, i, tolerance, what, unit)
        if state.too_large:
            log.warning("search: %d candidates were kept because their tree would have more than "
                        "%d interpretation nodes (draws='independent')", state.too_large,
                        MAX_TREE_NODES)
            state.trace.append({"step": "note", "what": f"{state.too_large} candidates rejected "
                                f"unscored: their trees would pass {MAX_TREE_NODES} nodes",
                                "loss_recovered": state.current, "accepted": False,
                                "kept": state.count(state.eff)})

    @staticmethod
    def try_unit(state: State, i: int, tolerance: float, what: str, unit: list[Triple]) -> None:
        threshold = state.options.threshold
        rec = try_removal(state, what, unit, {"pass": i},
                          lambda rec, now: rec >= threshold and now - rec <= tolerance)
        if rec is not None:
            log.info("search: pass %d: resample %s: %.1f%% %s", i, what, 100 * rec,
                     "accepted" if state.trace[-1]["accepted"] else "kept")


def try_removal(state: State, what: str, unit: list[Triple], record: dict,
                accept: Callable[[float, float], bool]) -> float | None:
    """Score the kept set without `unit` and keep that if `accept(its loss recovered, the
    current one)`; traced as a "resample" step with `record`'s keys. A unit that no kept path
    crosses goes unscored (None)."""
    state.tick()
    if not any(e in state.eff for e in unit):
        state.kept.difference_update(unit)  # no kept path crosses it: nothing to score
        return None
    trial = state.kept - set(unit)
    rec = state.score(trial, {})
    ok = bool(accept(rec, state.current))
    trial_eff = effective(state.graph, trial)
    if ok:
        state.kept, state.current, state.eff = trial, rec, trial_eff
    state.trace.append({"step": "resample", "what": what, "loss_recovered": rec,
                        "accepted": ok, "kept": state.count(trial_eff), **record})
    return rec


class AcdcRemoval:
    """ACDC (Conmy et al. 2023) on this library's graph, in causal-scrubbing semantics.

    One pass over the edges in the greedy schedule's order (`removal_units`: receivers from the
    output backwards, ports in order, senders latest first; the same in every process): an
    edge stays resampled when the task's mean loss on the search rows, with every removed edge
    resampled as the search resamples (the shared draw, or independent draws), rises by less
    than `tau` over the current kept set's (ACDC's rule, with the task's loss as its metric
    where ACDC uses a KL divergence). The search's threshold plays no part. Each `tau` gives
    one circuit; a sweep of them gives a curve (`curve.faithfulness_curve(method="acdc")`).

    Args:
        tau: the allowed rise of the mean loss per removal, in the loss's units; or
        tau_fraction: the same as a fraction of the loss gap on the search rows (baseline's
            mean loss minus the model's: the 0% and 100% points), i.e. a fall of loss recovered
            of less than `tau_fraction` (give one of the two).

    >>> step = AcdcRemoval(tau_fraction=0.01)
    >>> step.name, step.tau, step.tau_fraction
    ('acdc', None, 0.01)
    """

    name = "acdc"
    schedule = "acdc"

    def __init__(self, tau: float | None = None, *, tau_fraction: float | None = None):
        if (tau is None) == (tau_fraction is None):
            raise ScrubError("AcdcRemoval takes one of tau (in the loss's units) and tau_fraction "
                             "(a fraction of the loss gap).")
        value = tau if tau is not None else tau_fraction
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ScrubError(f"ACDC's tau must be a finite number >= 0, got {value!r}.")
        self.tau, self.tau_fraction = tau, tau_fraction

    def check(self, graph: Graph, options: SearchOptions) -> None:
        """Nothing to refuse (as the greedy schedule: a tree too large is rejected unscored)."""

    def run(self, state: State) -> None:
        if math.isnan(state.current):
            state.start()
        scorer = state.scorer
        gap = float(scorer.base_losses.double().mean()) - float(scorer.model_losses.double().mean())
        tau = self.tau if self.tau is not None else self.tau_fraction * gap  # type: ignore[operator]
        units = removal_units(state.graph, state.options.granularity)
        state.tick(len(units))
        for what, unit in units:
            current = state.current
            rec = try_removal(state, what, unit, {"pass": 0},  # the mean loss's rise below tau
                              lambda rec, now: (now - rec) * gap < tau)  # (unscored: nan, kept)
            if rec is not None:
                state.trace[-1]["loss_rise"] = (current - rec) * gap
        state.trace.append({"step": "note", "what": f"acdc: tau = {tau:.6g} (loss units)",
                            "loss_recovered": state.current, "accepted": False,
                            "kept": state.count(state.eff), "tau": tau})


def feature_classes(feature: Feature, ctx: SamplingContext, name: str) -> int:
    """How many classes `feature` splits the source rows into (its specificity)."""
    return int((SameFeature(feature, name=name).classes(ctx).counts > 0).sum())


def claims_by_node(corr: Correspondence) -> dict[str, list[int]]:
    """Graph node -> the indices of the nodes of a `build_hypothesis` tree that claim it (one
    per kept route from the output; each such node's chain ends at that graph node)."""
    claims: dict[str, list[int]] = {}
    for i, node in enumerate(corr.nodes[1:], start=1):
        assert isinstance(node.paths, Chain)
        claims.setdefault(node.paths.segments[-1].node, []).append(i)
    return claims


class FeatureStep:
    """Claim, for each kept node, the least specific feature that keeps the threshold."""

    name = "features"

    def __init__(self, features: Mapping[str, Feature]):
        self.features = dict(features)

    def check(self, graph: Graph, options: SearchOptions) -> None:
        """Nothing to refuse: a tree of feature claims that is too large skips the step."""

    def run(self, state: State) -> None:
        if not self.features:
            return
        graph = state.graph
        n_classes = {k: feature_classes(f, state.scorer.ctx, k) for k, f in self.features.items()}
        order_f = sorted(self.features, key=lambda k: -n_classes[k])  # most specific first
        nodes = {u for u, _, _ in state.eff} | {v for _, v, _ in state.eff}
        order = [v for v in reversed(graph.order)
                 if v in nodes and v != graph.output and not graph.is_input(v)]
        if not order:
            return
        # Every candidate of this step is one tree, with a node per kept route from the output
        # to each node that may claim a feature, that differs only in the samplers of those
        # nodes: it is checked and compiled once, and each candidate swaps samplers in.
        try:
            tree_root = build_hypothesis(graph, state.eff, {v: Exact() for v in order},
                                         draws=state.options.draws)
        except ScrubError as err:  # too many kept routes for a tree of feature claims
            log.warning("search: feature step skipped: %s", err)
            state.trace.append({"step": "feature", "what": "skipped: the tree is too large",
                                "loss_recovered": state.current, "accepted": False,
                                "kept": state.count(state.eff), "reason": str(err)})
            return
        corr = check(graph, tree_root)
        plan, claims = engine.compile_plan(corr), claims_by_node(corr)
        state.tick(len(order) * len(order_f))

        def score(feats: Mapping[str, Sampler]) -> float:
            state.candidates += 1
            swapped = corr.with_samplers({i: s for v, s in feats.items() for i in claims[v]})
            return state.scorer.recovered(state.scorer.losses_of(swapped, plan))

        for v in order:
            best: tuple[int, float, str] | None = None
            for name in order_f:
                state.tick()
                rec = score({**state.chosen, v: SameFeature(self.features[name], name=name)})
                ok = rec >= state.options.threshold
                state.trace.append({"step": "feature", "what": f"{v}: {name}", "loss_recovered": rec,
                                    "accepted": False, "kept": state.count(state.eff), "passes": ok})
                if ok and (best is None or (n_classes[name], -rec) < (best[0], -best[1])):
                    best = (n_classes[name], rec, name)
            if best is not None:
                state.chosen[v] = SameFeature(self.features[best[2]], name=best[2])
                state.chosen_names[v] = best[2]
                state.current = best[1]
                for t in state.trace[::-1]:
                    if t["step"] == "feature" and t["what"] == f"{v}: {best[2]}":
                        t["accepted"] = True
                        break


Prune = Literal["ascending", "output-first", "none"]


class RankedRemoval:
    """Rank the edges by attribution, bisect to the smallest passing top-k, then prune it
    (module docstring; `searching.ranked`).

    Args:
        method, steps: the attribution ("eap-ig" with 5 intervals by default, or "eap").
        prune: the pruning order: "ascending" (least important first), "output-first" (the
            greedy schedule's order: receivers from the output backwards), or "none" (stop at
            the top-k set).
        skip: in a later pass, do not try again an edge whose removal, when last tried, cost
            more than `skip_margin` above what this step may spend (its tolerance, and the
            allowance left above the threshold); `skip=False` tries every kept edge in every
            pass.

    The per-step tolerances of its pruning passes are the search's (`SearchOptions.tolerances`).

    >>> step = RankedRemoval(prune="output-first")
    >>> step.name, step.method, step.prune
    ('ranked', 'eap-ig', 'output-first')
    """

    name = "ranked"
    schedule = "ranked"

    def __init__(self, method: str = "eap-ig", steps: int = 5, prune: Prune = "ascending",
                 skip: bool = True, skip_margin: float = 0.002):
        if prune not in ("ascending", "output-first", "none"):
            raise ScrubError(f"prune must be 'ascending', 'output-first' or 'none', got {prune!r}.")
        self.method, self.steps, self.prune = check_method(method), steps, prune
        self.skip, self.skip_margin = skip, skip_margin

    def check(self, graph: Graph, options: SearchOptions) -> None:
        """Edges only; with independent draws, a graph whose trees fit (`check_tree_limit`)."""
        if options.granularity != "edges":
            raise ScrubError("The ranked schedule searches edges; use granularity='edges' (or "
                             "the greedy schedule for nodes).")
        check_tree_limit(graph, options.draws)

    def run(self, state: State) -> None:
        graph, opts, scorer = state.graph, state.options, state.scorer
        threshold = opts.threshold

        def score(kept: set[Triple], grow: bool = False) -> float:
            if grow:  # (the bisection's length is known only as it goes)
                state.tick(1)
            state.tick()
            return state.score(kept, {})

        # ---- 1. rank -------------------------------------------------------------------------
        att = attribute(graph, scorer.table, scorer.loss_fn, method=self.method, steps=self.steps,
                        ref=scorer.ref, seed=opts.seed, device=state.device)
        ranking = att.ranking()
        all_edges = graph_edges(graph)
        state.trace.append({"step": "rank", "what": f"{self.method}: {len(ranking)} edges by "
                            "|score|", "loss_recovered": math.nan, "accepted": True,
                            "kept": len(all_edges), "seconds": att.seconds,
                            "ranking": [f"{u} -> {v}.{p}" for u, v, p in ranking]})

        # ---- 2. the smallest passing top-k, by bisection -------------------------------------
        lo, hi = 0, len(ranking)  # f(hi) passes (everything kept: 100%); f(lo) is not tried
        rec_hi = score(set(all_edges), grow=True)
        state.trace.append({"step": "top-k", "what": f"top {hi} (everything)",
                            "loss_recovered": rec_hi, "accepted": True,
                            "kept": len(effective(graph, all_edges))})
        while hi - lo > 1:
            mid = (lo + hi) // 2
            rec = score(set(ranking[:mid]), grow=True)
            ok = rec >= threshold
            state.trace.append({"step": "top-k", "what": f"top {mid}", "loss_recovered": rec,
                                "accepted": ok, "kept": len(effective(graph, ranking[:mid]))})
            log.info("ranked search: top %d: %.1f%%", mid, 100 * rec)
            if ok:
                hi, rec_hi = mid, rec
            else:
                lo = mid
        kept = effective(graph, ranking[:hi])
        current = rec_hi
        state.trace.append({"step": "start", "what": f"top {hi}", "loss_recovered": current,
                            "accepted": True, "kept": len(kept)})

        # ---- 3. prune, in passes with per-step tolerances ------------------------------------
        if self.prune != "none":
            order = list(reversed(ranking)) if self.prune == "ascending" else [
                (u, v, p) for v in reversed(graph.order) for p, ups in graph.ports(v).items()
                for u in reversed(ups)]
            last_cost: dict[Triple, float] = {}
            skipped = 0
            for i, tolerance in enumerate([*opts.tolerances, math.inf]):
                tries = [e for e in order if e in kept]
                state.tick(len(tries))
                for e in tries:
                    if e not in kept:
                        state.tick()
                        continue  # dropped with an edge removed before it
                    limit = min(tolerance, current - threshold)  # the most this step may cost
                    if self.skip and last_cost.get(e, -math.inf) > limit + self.skip_margin:
                        state.tick()
                        skipped += 1  # it cost more than that when last tried
                        continue
                    trial = effective(graph, kept - {e})
                    rec = score(trial)
                    last_cost[e] = current - rec
                    ok = rec >= threshold and current - rec <= tolerance
                    if ok:
                        kept, current = trial, rec
                    state.trace.append({"step": "resample", "what": f"{e[0]} -> {e[1]}.{e[2]}",
                                        "loss_recovered": rec, "accepted": ok, "kept": len(trial),
                                        "pass": i})
            if skipped:
                state.trace.append({"step": "skipped", "what": f"{skipped} tries of edges whose "
                                    "last cost exceeded what the step could spend",
                                    "loss_recovered": current, "accepted": False,
                                    "kept": len(kept)})
        state.kept, state.eff, state.current = set(kept), set(kept), current


#: The registered steps, by name.
STEPS: dict[str, type] = {RemovalPasses.name: RemovalPasses, RankedRemoval.name: RankedRemoval,
                          AcdcRemoval.name: AcdcRemoval, FeatureStep.name: FeatureStep}
