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

1. ACDC's order: receivers from the output backwards; for each, try resampling each incoming
   edge (with `granularity="nodes"`, each node's whole output); keep it resampled if loss
   recovered stays >= threshold. With `tolerances` (e.g. `(0.001, 0.01)`) this is done in
   passes: pass i also asks that the step cost at most `tolerances[i]` of loss recovered (as
   ACDC's tau bounds each step), and a last pass with no such limit follows, over the edges
   still kept. Cheap edges then go first, wherever they lie, and the allowance down to the
   threshold is spent on them rather than on the first edges visited. With
   `draws="independent"` a candidate whose tree would have more than `MAX_TREE_NODES`
   interpretation nodes is rejected unscored (the edge stays kept) and the trace counts them,
   so the search never stops halfway at that limit.
2. For each kept node, the candidate features from the most to the least specific (most
   classes first): `SameFeature(f)` replaces `Exact` on that node; among the features that keep
   loss recovered >= threshold, the least specific wins (ties: the higher recovery).
3. The found hypothesis is re-scored by `scrub_many` on held-out reference rows (the rows
   `causal-scrub run` draws for the same seed and n; the search rows are drawn from the
   others), with a 95% bootstrap interval.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> found = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=400)
    >>> sorted(str(e) for e in found.kept)
    ['A -> out.resid', 'B -> out.resid', 'x -> A.x', 'x -> B.x']
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import engine
from .data import Dataset
from .draws import Sample, check_n, draw_hypothesis, generator, reference_rows, sampling_context
from .errors import ScrubError
from .graph import Graph
from .hypothesis import Correspondence, InterpNode, check
from .paths import DEAD, MATCHED, Chain, CompiledMatcher, Matcher, MatcherState, Segment
from .results import ScrubResult, atomic_write, jsonable, versions
from .samplers import Exact, Feature, SameFeature, Sampler, SamplingContext, SharedUniform, Uniform
from .scrubbing import (
    LossFn,
    _graph_device,
    check_inputs,
    per_example_loss,
    random_baseline,
    resolve_device,
    scrub_many,
)
from .statistics import recovery_defined

log = logging.getLogger(__name__)

Triple = tuple[str, str, str]
"""(sender, receiver, port)."""

Draws = Literal["shared", "independent"]
Granularity = Literal["edges", "nodes"]

#: Largest interpretation tree `build_hypothesis` writes before refusing (see its docstring).
MAX_TREE_NODES = 2_000

SEARCH_JSON = "search.json"
HYPOTHESIS_PY = "hypothesis.py"
#: Name of the interpretation node that claims every path crossing a removed edge (compact form).
RESAMPLED = "resampled"


@dataclass(frozen=True, order=True)
class Edge:
    """A sender's output as a term of a receiver's port; `port=None`: every port of the
    receiver that reads the sender (node granularity)."""

    sender: str
    receiver: str
    port: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"sender": self.sender, "receiver": self.receiver, "port": self.port}

    def __str__(self) -> str:
        return f"{self.sender} -> {self.receiver}" + ("" if self.port is None else f".{self.port}")


def check_tolerances(tolerances: Iterable[float]) -> tuple[float, ...]:
    """`search`'s per-step tolerances as a tuple of increasing fractions, or a clear error."""
    try:
        out = tuple(float(t) for t in tolerances)
    except (TypeError, ValueError):
        raise ScrubError(f"tolerances must be numbers such as 0.001, 0.01, got {tolerances!r}."
                         ) from None
    if any(not (math.isfinite(t) and t >= 0) for t in out) or list(out) != sorted(out):
        raise ScrubError(f"tolerances must be finite, non-negative and increasing (fractions of "
                         f"loss recovered, e.g. 0.001, 0.01), got {list(out)}.")
    return out


def graph_edges(graph: Graph) -> list[Triple]:
    """Every edge of the graph reachable from the output, receivers in topological order."""
    return [(u, v, p) for v in graph.order for p, ups in graph.ports(v).items() for u in ups]


def effective(graph: Graph, kept: Iterable[Triple]) -> set[Triple]:
    """The kept edges that lie on some path whose every edge is kept.

    A kept edge whose sender has no kept route down to an input, or whose receiver has no
    kept route up to the output, changes nothing: every path through it crosses a removed
    edge anyway. Dropping such edges gives the same assignment of inputs to paths.
    """
    kept = set(kept)
    alive: dict[str, bool] = {}
    for v in graph.order:  # inputs first
        alive[v] = graph.is_input(v) or any(
            (u, v, p) in kept and alive[u] for p, ups in graph.ports(v).items() for u in ups)
    reach = {graph.output}
    for v in reversed(graph.order):
        if v in reach:
            for p, ups in graph.ports(v).items():
                reach.update(u for u in ups if (u, v, p) in kept and alive[u])
    return {(u, v, p) for (u, v, p) in kept if v in reach and alive[u]}


# ---- the two encodings of a kept set ------------------------------------------------------------


@dataclass(frozen=True)
class Crossing(Matcher):
    """The paths that cross at least one of `edges` ((sender, receiver, port) triples): the
    union of `through(receiver, port=port).then(sender, direct=True)` over the edges, compiled
    into one automaton whose state is just the current node (so its cost does not grow with
    the number of edges). The claimed treeified node is where the path first crosses one."""

    edges: frozenset[Triple]

    def compile(self, graph: Graph) -> CompiledMatcher:
        for s, r, p in self.edges:
            graph.check_node(s, f" (in {self.__class__.__name__})")
            graph.check_port(r, p, f" (in {self.__class__.__name__})")
            if s not in graph.ports(r)[p]:
                raise ScrubError(f"{s!r} does not feed {r}.{p}, so {s} -> {r}.{p} is no edge.")
        return _CompiledCrossing(self.edges, graph)

    def __str__(self) -> str:
        return " | ".join(f"through({r!r}, port={p!r}).then({s!r}, direct=True)"
                          for s, r, p in sorted(self.edges, key=lambda e: (e[1], e[2], e[0])))


class _CompiledCrossing(CompiledMatcher):
    # States: ("at", v) after reading node v with a removed edge still reachable below it;
    # ("in", v, p) after entering v's port p; MATCHED once an edge was crossed; DEAD when no
    # removed edge is reachable any more.

    def __init__(self, edges: frozenset[Triple], graph: Graph):
        self.edges = edges
        receivers = {r for _, r, _ in edges}
        self.below = {v: v in receivers or bool(graph.upstream[v] & receivers) for v in graph.nodes}
        self.start = ("start",)

    def on_node(self, state: MatcherState, node: str) -> MatcherState:
        if state == MATCHED or state == DEAD:
            return state
        if state[0] == "in" and (node, state[1], state[2]) in self.edges:
            return MATCHED
        return ("at", node) if self.below[node] else DEAD

    def on_port(self, state: MatcherState, node: str, port: str) -> MatcherState:
        if state == MATCHED or state == DEAD:
            return state
        return ("in", node, port)


def compact_hypothesis(graph: Graph, kept: Iterable[Triple], other: Sampler | None = None
                       ) -> InterpNode:
    """The kept set as two interpretation nodes: the root (`Exact`, its unclaimed paths read
    the reference: `other=Exact()`) and one leaf claiming every path that crosses a removed
    edge, drawn by `other` (default a fresh `SharedUniform()`: the shared other input)."""
    removed = set(graph_edges(graph)) - effective(graph, kept)
    if not removed:
        return InterpNode(graph.output, Exact())
    return InterpNode(graph.output, Exact(), other=Exact(), children=[
        InterpNode(RESAMPLED, other or SharedUniform(), paths=Crossing(frozenset(removed)))])


class TreeTooLarge(ScrubError):
    """`build_hypothesis` would write more than `max_nodes` interpretation nodes."""


def build_hypothesis(graph: Graph, kept: Iterable[Triple],
                     features: Mapping[str, Sampler] | None = None, *, draws: Draws = "shared",
                     max_nodes: int = MAX_TREE_NODES) -> InterpNode:
    """The kept set (and features) as a tree of interpretation nodes.

    Each node of the tree claims one kept treeified edge, `through(out, port=p).then(n1,
    direct=True).then(...)`: the route from the output down to its graph node. Its sampler is
    `Exact()`, or `features[node]` (e.g. `SameFeature(f)`) where a feature is claimed. A node
    is a leaf when everything below its graph node is kept and unclaimed by features (so every
    path below reads its draw); otherwise it has one child per kept incoming edge, and the
    paths through its removed incoming edges read its `other` draw: with `draws="shared"` one
    `SharedUniform` shared by the whole tree, with `"independent"` a `Uniform()` per node. With
    nothing kept, the root itself reads the other input. Raises `TreeTooLarge` (a
    `ScrubError`) when the tree would have more than `max_nodes` nodes (many kept routes):
    use `compact_hypothesis`.
    """
    if draws not in ("shared", "independent"):
        raise ScrubError(f"draws must be 'shared' or 'independent', got {draws!r}.")
    features = dict(features or {})
    eff = effective(graph, kept)
    kept_in = {v: [(p, u) for p, ups in graph.ports(v).items() for u in ups if (u, v, p) in eff]
               for v in graph.order}
    expand: dict[str, bool] = {}
    for v in graph.order:
        n_in = sum(len(ups) for ups in graph.ports(v).values())
        expand[v] = not graph.is_input(v) and (
            len(kept_in[v]) < n_in or any(expand[u] or u in features for _, u in kept_in[v]))
    shared = SharedUniform() if draws == "shared" else None

    def other() -> Sampler:
        return shared if shared is not None else Uniform()

    out = graph.output
    if not kept_in[out]:
        return InterpNode(out, other())
    if not expand[out]:
        return InterpNode(out, Exact())
    root = InterpNode(out, Exact(), other=other())
    single = len(graph.ports(out)) == 1
    count = 1
    stack: list[tuple[InterpNode, str, tuple[Segment, ...], str]] = [(root, out, (), "")]
    while stack:
        parent, v, segments, name = stack.pop()
        for p, u in kept_in[v]:
            if segments:
                last = segments[-1]
                segs = (*segments[:-1], Segment(v, p, last.excluding, last.direct),
                        Segment(u, None, direct=True))
                child_name = f"{name}.{p} <- {u}"
            else:
                segs = (Segment(out, p), Segment(u, None, direct=True))
                child_name = u if single else f"{out}.{p} <- {u}"
            sampler = features.get(u, Exact())
            if expand[u]:
                child = InterpNode(child_name, sampler, paths=Chain(segs), other=other())
                stack.append((child, u, segs, child_name))
            else:
                child = InterpNode(child_name, sampler, paths=Chain(segs))
            parent.add(child)
            count += 1
            if count > max_nodes:
                raise TreeTooLarge(
                    f"The hypothesis tree of these {len(eff)} kept edges has more than "
                    f"{max_nodes} interpretation nodes (one per kept route from the output); "
                    "keep fewer edges (a higher threshold), or score it with draws='shared' "
                    "and no features, which needs only two nodes (compact_hypothesis).")
    return root


# ---- the result -----------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What `search` found: the kept edges, the features, and the numbers on both row sets."""

    threshold: float
    granularity: Granularity
    draws: Draws
    tolerances: tuple[float, ...]  # per-step limits of the passes before the last
    kept: list[Edge]
    features: dict[str, str]  # graph node -> feature name
    loss_recovered: float  # on the search rows
    heldout: ScrubResult
    hypothesis: InterpNode
    candidates: int
    seconds: float
    n: int  # search rows
    seed: int
    model_loss: float  # on the search rows
    baseline_loss: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    encoding: Literal["tree", "compact"] = "tree"
    n_edges: int = 0  # edges of the graph (node outputs, with granularity "nodes")

    @property
    def candidates_per_second(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The `search.json` dictionary."""
        h = self.heldout
        return jsonable({
            "threshold": self.threshold, "granularity": self.granularity,
            "tolerances": list(self.tolerances), "kept": [e.to_dict() for e in self.kept],
            "features": dict(self.features),
            "loss_recovered": self.loss_recovered,
            "heldout": {"loss_recovered": h.loss_recovered, "ci_low": h.ci[0], "ci_high": h.ci[1],
                        "n": h.n, "scrubbed_loss": h.loss, "model_loss": h.model_loss,
                        "baseline_loss": h.baseline_loss, "recovery_defined": h.recovery_defined},
            "candidates": self.candidates, "seconds": self.seconds,
            "candidates_per_second": self.candidates_per_second,
            "draws": self.draws, "encoding": self.encoding, "n": self.n, "seed": self.seed,
            "n_edges": self.n_edges,
            "model_loss": self.model_loss, "baseline_loss": self.baseline_loss,
            "tree": self.hypothesis.to_dict(), "trace": self.trace, "versions": versions(),
        })

    def __repr__(self) -> str:
        h = self.heldout
        feats = ", ".join(f"{k}: {v}" for k, v in self.features.items()) or "none"
        unit = "edges" if self.granularity == "edges" else "node outputs"
        return (f"SearchResult({len(self.kept)} kept {unit}"
                f", features {feats}; loss recovered {100 * self.loss_recovered:.1f}% on {self.n} search "
                f"rows, {100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}%, {100 * h.ci[1]:.1f}%] on "
                f"{h.n} held-out rows; {self.candidates} candidates in {self.seconds:.1f} s)")

    def save(self, out: str | os.PathLike, experiment: str) -> tuple[FsPath, FsPath]:
        """Write `out/search.json` and `out/hypothesis.py` (an experiment file rebuilding the
        found hypothesis of `experiment`, a bundled name or a path), each atomically."""
        target = FsPath(out)
        data = self.to_dict()
        data["experiment"] = experiment
        data["reproduce"] = f"causal-scrub run {target / HYPOTHESIS_PY} --seed {self.seed}"
        json_path, py_path = target / SEARCH_JSON, target / HYPOTHESIS_PY
        atomic_write(json_path, json.dumps(data, indent=2) + "\n")
        atomic_write(py_path, hypothesis_file(experiment, self, str(py_path)))
        return json_path, py_path


_HYPOTHESIS_FILE = '''"""The hypothesis that `causal-scrub search` found in {experiment}.

Granularity {granularity}, threshold {threshold}.

{n_kept} kept {unit}; features: {features}. Loss recovered {search_pct} on the search rows,
{heldout_pct} [{ci_low}, {ci_high}] on {n} held-out rows. Reproduce the held-out number with

    causal-scrub run {this_file} --seed {seed}

The kept edges and features are read from search.json beside this file.
"""

from __future__ import annotations

import json
from pathlib import Path

from causal_scrubbing import experiments
from causal_scrubbing.searching import hypothesis_from_json

EXPERIMENT = {experiment_repr}


def build() -> experiments.Experiment:
    found = json.loads((Path(__file__).parent / "search.json").read_text(encoding="utf-8"))
    exp = experiments.load(EXPERIMENT)
    exp.graph = exp.search_graph or exp.graph  # the graph the search walked
    exp.hypotheses = {{"found": hypothesis_from_json(exp.graph, found, exp.features)}}
    exp.published = {{"found": found["heldout"]["loss_recovered"]}}
    exp.published_label = "search (held-out)"
    exp.descriptions = {{"found": f"{{len(found['kept'])}} kept, threshold {{found['threshold']}}"}}
    exp.default_n = found["heldout"]["n"]
    return exp
'''


def hypothesis_file(experiment: str, result: SearchResult, this_file: str = HYPOTHESIS_PY) -> str:
    """The text of `hypothesis.py` for `result` (see `SearchResult.save`)."""
    h = result.heldout

    def p(x: float) -> str:
        return f"{100 * x:.1f}%"

    return _HYPOTHESIS_FILE.format(
        experiment=experiment, experiment_repr=repr(experiment), threshold=result.threshold,
        granularity=result.granularity, n_kept=len(result.kept),
        unit="edges" if result.granularity == "edges" else "node outputs",
        features=", ".join(f"{k} = {v}" for k, v in result.features.items()) or "none",
        search_pct=p(result.loss_recovered), heldout_pct=p(h.loss_recovered), ci_low=p(h.ci[0]),
        ci_high=p(h.ci[1]), n=h.n, this_file=this_file, seed=result.seed)


def kept_triples(graph: Graph, kept: Iterable[Mapping[str, Any]]) -> set[Triple]:
    """`search.json`'s `kept` entries as (sender, receiver, port) triples; `port: null` stands
    for every port of the receiver that reads the sender."""
    out: set[Triple] = set()
    for e in kept:
        s, r, p = e["sender"], e["receiver"], e.get("port")
        graph.check_node(s, " (a kept edge's sender in search.json)")
        graph.check_node(r, " (a kept edge's receiver in search.json)")
        ports = [p] if p is not None else [q for q, ups in graph.ports(r).items() if s in ups]
        for q in ports:
            graph.check_port(r, q, " (in search.json)")
            out.add((s, r, q))
    return out


def hypothesis_from_json(graph: Graph, data: Mapping[str, Any],
                         features: Mapping[str, Feature] | None = None) -> InterpNode:
    """Rebuild the found hypothesis from a `search.json` dictionary, with the experiment's
    declared `features` (name -> feature) for the nodes that claim one."""
    features = features or {}
    chosen = {}
    for node, name in (data.get("features") or {}).items():
        if name not in features:
            raise ScrubError(f"search.json claims feature {name!r} for node {node!r}, but the "
                             f"experiment declares no such feature (it has {sorted(features)}).")
        chosen[node] = SameFeature(features[name], name=name)
    kept = kept_triples(graph, data["kept"])
    if data.get("encoding") == "compact":
        return compact_hypothesis(graph, kept)
    return build_hypothesis(graph, kept, chosen, draws=data.get("draws", "shared"))


# ---- the search -----------------------------------------------------------------------------------


class _Scorer:
    """Scores candidate hypotheses on the search rows, sharing everything that does not change
    between candidates: the rows, the sampling context (feature classes), the model and baseline
    losses, (shared draws, compact form) the one drawn sample, and the clean activations of
    every lane whose rows an earlier candidate already ran (`engine.CleanCache`)."""

    def __init__(self, graph: Graph, table: Dataset, ref: Tensor, loss_fn: LossFn, seed: int,
                 ctx: SamplingContext, chunk_size: int | None, memory_mb: float | None,
                 memory_budget_mb: float | None = None, cache_mb: float = 0.0):
        self.graph, self.table, self.ref, self.loss_fn, self.seed = graph, table, ref, loss_fn, seed
        self.ctx, self.chunk_size, self.memory_mb = ctx, chunk_size, memory_mb
        self.memory_budget_mb = memory_budget_mb
        self.cache = engine.CleanCache(cache_mb) if cache_mb > 0 else None
        self.model_losses = torch.empty(0)
        self.base_losses = torch.empty(0)
        self.compact_sample: Sample | None = None

    def losses(self, root: InterpNode, sample: Sample | None = None, what: str = "a candidate"
               ) -> Tensor:
        return self.losses_of(check(self.graph, root), None, sample, what)

    def losses_of(self, corr: Correspondence, plan: engine.Plan | None = None,
                  sample: Sample | None = None, what: str = "a candidate") -> Tensor:
        if sample is None:
            sample = draw_hypothesis(corr, self.table, self.ref, self.seed, ctx=self.ctx)
        n = len(self.ref)

        def reduce(out: Tensor, start: int, stop: int) -> Tensor:
            return per_example_loss(self.loss_fn, out, self.table.rows(self.ref[start:stop]), what,
                                    start, n)

        return engine.evaluate(corr, self.table, sample, chunk_size=self.chunk_size,
                               memory_mb=self.memory_mb, memory_budget_mb=self.memory_budget_mb,
                               reduce=reduce, cache=self.cache, plan=plan)

    def recovered(self, losses: Tensor) -> float:
        b, m = float(self.base_losses.double().mean()), float(self.model_losses.double().mean())
        return (b - float(losses.double().mean())) / (b - m)

    def compact(self, kept: set[Triple]) -> float:
        root = compact_hypothesis(self.graph, kept)
        if self.compact_sample is None:  # every compact candidate reads the same two lanes
            full = compact_hypothesis(self.graph, set())
            self.compact_sample = draw_hypothesis(check(self.graph, full), self.table, self.ref,
                                                  self.seed, ctx=self.ctx)
        return self.recovered(self.losses(root, self.compact_sample))


def _claims_by_node(corr: Correspondence) -> dict[str, list[int]]:
    """Graph node -> the indices of the nodes of a `build_hypothesis` tree that claim it (one
    per kept route from the output; each such node's chain ends at that graph node)."""
    claims: dict[str, list[int]] = {}
    for i, node in enumerate(corr.nodes[1:], start=1):
        assert isinstance(node.paths, Chain)
        claims.setdefault(node.paths.segments[-1].node, []).append(i)
    return claims


def _cache_mb(cache_mb: float | None, memory_budget_mb: float | None) -> float:
    if cache_mb is not None:
        if not cache_mb >= 0:
            raise ScrubError(f"cache_mb = {cache_mb}: give a number of MB, 0 or more (0: no cache).")
        return float(cache_mb)
    return 1024.0 if memory_budget_mb is None else min(1024.0, memory_budget_mb / 4)


def _units(graph: Graph, granularity: Granularity) -> list[tuple[str, list[Triple]]]:
    """The candidates to resample, in ACDC's order: receivers from the output backwards, and
    within one receiver its ports in order and the senders latest first (nodes: each node's
    whole output, latest node first)."""
    if granularity == "edges":
        return [(f"{u} -> {v}.{p}", [(u, v, p)]) for v in reversed(graph.order)
                for p, ups in graph.ports(v).items() for u in reversed(ups)]
    out_edges: dict[str, list[Triple]] = {}
    for u, v, p in graph_edges(graph):
        out_edges.setdefault(u, []).append((u, v, p))
    return [(u, out_edges[u]) for u in reversed(graph.order) if u in out_edges]


def feature_classes(feature: Feature, ctx: SamplingContext, name: str) -> int:
    """How many classes `feature` splits the source rows into (its specificity)."""
    return int((SameFeature(feature, name=name).classes(ctx).counts > 0).sum())


def search(graph: Graph, dataset: Dataset, loss_fn: LossFn, *, threshold: float,
           granularity: Granularity = "edges", features: Mapping[str, Feature] | None = None,
           n: int | None = 1000, n_heldout: int | None = None, seed: int = 0,
           baseline: InterpNode | None = None, draws: Draws = "shared",
           device: str | torch.device | None = None, chunk_size: int | None = None,
           memory_mb: float | None = None, memory_budget_mb: float | None = None,
           cache_mb: float | None = None, tolerances: Iterable[float] = (),
           n_bootstrap: int = 1000, progress: bool = False) -> SearchResult:
    """Find the edges (or nodes) that matter and what the kept nodes compute (module docstring).

    Args:
        threshold: the loss recovered (a fraction, e.g. 0.95) every accepted step keeps.
        granularity: "edges" (a sender's term in a receiver's port) or "nodes" (a node's output).
        features: name -> feature (a dataset field or a function of the Dataset), the candidates
            of the feature step; none: the step is skipped.
        n: search rows (default 1000), drawn from the rows the held-out scoring does not use.
        n_heldout: held-out rows (default: `n`): exactly the reference rows `scrub` (and
            `causal-scrub run`) draws for `seed` and this n.
        baseline: the 0% point (default: the random baseline).
        draws: "shared" (one other input, the default) or "independent" (module docstring).
        cache_mb: memory for clean activations kept across candidates (`engine.CleanCache`;
            default 1024 MB, or a quarter of `memory_budget_mb` if that is less; 0: none).
        tolerances: per-step limits (fractions of loss recovered, increasing) of the passes
            before the last (module docstring); default none: one pass.
        device, chunk_size, memory_mb, memory_budget_mb, n_bootstrap, progress: as for
            `scrub_many`.
    """
    start_time = time.perf_counter()
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ScrubError(f"threshold must be a number such as 0.95, got {threshold!r}.") from None
    if not math.isfinite(threshold):
        raise ScrubError(f"threshold must be a finite number such as 0.95, got {threshold}.")
    if granularity not in ("edges", "nodes"):
        raise ScrubError(f"granularity must be 'edges' or 'nodes', got {granularity!r}.")
    if draws not in ("shared", "independent"):
        raise ScrubError(f"draws must be 'shared' or 'independent', got {draws!r}.")
    tolerances = check_tolerances(tolerances)
    n = check_n(n) or 1000
    n_heldout = check_n(n_heldout) or n
    features = dict(features or {})
    base_root = baseline if baseline is not None else random_baseline()
    check(graph, base_root)
    dev = resolve_device(device) if device is not None else _graph_device(graph)
    check_inputs(graph, dataset)
    graph.to(dev)
    table = dataset.to(dev)

    # ---- rows: held-out first (what `scrub` draws), the search rows from the rest ------------
    heldout_idx = reference_rows(len(dataset), n_heldout, seed)
    free = torch.ones(len(dataset), dtype=torch.bool)
    free[heldout_idx] = False
    pool = torch.nonzero(free).flatten()
    if len(pool) == 0:
        raise ScrubError(f"The {n_heldout} held-out rows use every one of the dataset's "
                         f"{len(dataset)} rows, leaving none to search on; use a smaller n.")
    ref = pool[torch.randint(len(pool), (n,), generator=generator(seed, "search"))]
    ctx = sampling_context(table, seed)
    scorer = _Scorer(graph, table, ref, loss_fn, seed, ctx, chunk_size, memory_mb,
                     memory_budget_mb, _cache_mb(cache_mb, memory_budget_mb))
    scorer.model_losses = scorer.losses(InterpNode(graph.output), what="the unscrubbed model")
    scorer.base_losses = scorer.losses(base_root, what=f"baseline {base_root.name!r}")
    if not recovery_defined(scorer.base_losses, scorer.model_losses):
        raise ScrubError(
            f"On the {n} search rows the baseline's loss ({float(scorer.base_losses.mean()):.4g}) "
            f"and the model's ({float(scorer.model_losses.mean()):.4g}) coincide within noise, so "
            "loss recovered is undefined and nothing can be searched; use a baseline that does "
            "clearly worse than the model, or more rows (n).")

    all_edges = graph_edges(graph)

    def count(edges: set[Triple]) -> int:  # kept edges, or kept (sender, receiver) pairs
        return len(edges) if granularity == "edges" else len({(u, v) for u, v, _ in edges})
    kept: set[Triple] = set(all_edges)
    eff = effective(graph, kept)
    trace: list[dict[str, Any]] = []
    candidates = 0

    too_large = 0  # independent draws: candidates whose tree would pass MAX_TREE_NODES

    def score(kept_set: set[Triple], feats: Mapping[str, Sampler]) -> float:
        nonlocal too_large
        if draws == "shared" and not feats:
            return scorer.compact(kept_set)
        try:
            tree_root = build_hypothesis(graph, kept_set, feats, draws=draws)
        except TreeTooLarge:  # fallback: the candidate is rejected, the search goes on
            too_large += 1
            return math.nan
        return scorer.recovered(scorer.losses(tree_root))

    current = score(kept, {})
    candidates += 1
    trace.append({"step": "start", "what": "everything kept", "loss_recovered": current,
                  "accepted": True, "kept": count(eff)})
    units = _units(graph, granularity)
    n_classes = {k: feature_classes(features[k], ctx, k) for k in features}
    feature_order = sorted(features, key=lambda k: -n_classes[k])  # most specific first

    passes = [*tolerances, math.inf]
    with tqdm(total=len(units), desc="search", unit="candidate", disable=not progress,
              leave=False) as bar:
        for i, tolerance in enumerate(passes):
            if i > 0:  # later passes visit the units still kept
                units = [(what, unit) for what, unit in units if any(e in eff for e in unit)]
                bar.total += len(units)
                bar.refresh()
            for what, unit in units:
                bar.update(1)
                if not any(e in eff for e in unit):
                    kept.difference_update(unit)  # no kept path crosses it: nothing to score
                    continue
                trial = kept - set(unit)
                rec = score(trial, {})
                candidates += 1
                ok = rec >= threshold and current - rec <= tolerance
                trial_eff = effective(graph, trial)
                if ok:
                    kept, current, eff = trial, rec, trial_eff
                trace.append({"step": "resample", "what": what, "loss_recovered": rec,
                              "accepted": ok, "kept": count(trial_eff), "pass": i})
                log.info("search: pass %d: resample %s: %.1f%% %s", i, what, 100 * rec,
                         "accepted" if ok else "kept")

        if too_large:
            log.warning("search: %d candidates were kept because their tree would have more than "
                        "%d interpretation nodes (draws='independent')", too_large, MAX_TREE_NODES)
            trace.append({"step": "note", "what": f"{too_large} candidates rejected unscored: "
                          f"their trees would pass {MAX_TREE_NODES} nodes",
                          "loss_recovered": current, "accepted": False, "kept": count(eff)})

        # ---- what the kept nodes compute ----------------------------------------------------
        chosen: dict[str, Sampler] = {}
        chosen_names: dict[str, str] = {}
        nodes = {u for u, _, _ in eff} | {v for _, v, _ in eff}
        order = [v for v in reversed(graph.order)
                 if v in nodes and v != graph.output and not graph.is_input(v)]
        # Every candidate of this step is one tree, with a node per kept route from the output
        # to each node that may claim a feature, that differs only in the samplers of those
        # nodes: it is checked and compiled once, and each candidate swaps samplers in.
        tree: tuple[Correspondence, engine.Plan, dict[str, list[int]]] | None = None
        if feature_order and order:
            try:
                tree_root = build_hypothesis(graph, eff, {v: Exact() for v in order}, draws=draws)
            except ScrubError as err:  # too many kept routes for a tree of feature claims
                log.warning("search: feature step skipped: %s", err)
                trace.append({"step": "feature", "what": "skipped: the tree is too large",
                              "loss_recovered": current, "accepted": False, "kept": count(eff)})
                order = []
            else:
                corr = check(graph, tree_root)
                tree = corr, engine.compile_plan(corr), _claims_by_node(corr)
            bar.total += len(order) * len(feature_order)
            bar.refresh()

        def score_features(feats: Mapping[str, Sampler]) -> float:
            assert tree is not None
            corr, plan, claims = tree
            swapped = corr.with_samplers({i: s for v, s in feats.items() for i in claims[v]})
            return scorer.recovered(scorer.losses_of(swapped, plan))

        for v in order if feature_order else []:
            best: tuple[int, float, str] | None = None
            for name in feature_order:
                bar.update(1)
                trial_feats = {**chosen, v: SameFeature(features[name], name=name)}
                rec = score_features(trial_feats)
                candidates += 1
                ok = rec >= threshold
                trace.append({"step": "feature", "what": f"{v}: {name}", "loss_recovered": rec,
                              "accepted": False, "kept": count(eff), "passes": ok})
                if ok and (best is None or (n_classes[name], -rec) < (best[0], -best[1])):
                    best = (n_classes[name], rec, name)
            if best is not None:
                chosen[v] = SameFeature(features[best[2]], name=best[2])
                chosen_names[v] = best[2]
                current = best[1]
                for t in trace[::-1]:
                    if t["step"] == "feature" and t["what"] == f"{v}: {best[2]}":
                        t["accepted"] = True
                        break

    if scorer.cache is not None:
        log.info("search: %d clean activations read from the cache, %d computed (%.0f MB kept)",
                 scorer.cache.hits, scorer.cache.misses, scorer.cache.nbytes / 2**20)
        scorer.cache = None  # (the held-out rows are other rows)

    # ---- the found hypothesis, re-scored on held-out rows ---------------------------------------
    encoding: Literal["tree", "compact"] = "tree"
    try:
        root = build_hypothesis(graph, eff, chosen, draws=draws)
    except ScrubError:
        if chosen or draws != "shared":
            raise
        root, encoding = compact_hypothesis(graph, eff), "compact"
    heldout = scrub_many(graph, {"found": root}, dataset, loss_fn, n=n_heldout, seed=seed,
                         baseline=baseline, device=device, chunk_size=chunk_size,
                         memory_mb=memory_mb, memory_budget_mb=memory_budget_mb,
                         n_bootstrap=n_bootstrap)["found"]
    if granularity == "edges":
        kept_edges = sorted(Edge(u, v, p) for u, v, p in eff)
    else:
        kept_edges = sorted({Edge(u, v, None) for u, v, _ in eff})
    seconds = time.perf_counter() - start_time
    return SearchResult(
        threshold=threshold, granularity=granularity, draws=draws, tolerances=tolerances,
        kept=kept_edges,
        features=chosen_names, loss_recovered=current, heldout=heldout, hypothesis=root,
        candidates=candidates, seconds=seconds, n=n, seed=seed,
        model_loss=float(scorer.model_losses.mean()), baseline_loss=float(scorer.base_losses.mean()),
        trace=trace, encoding=encoding, n_edges=count(set(all_edges)))
