"""Kept edge sets as hypotheses: edges, what they reach, and the two encodings of a kept set.

An *edge* is (sender, receiver, port): the sender's output as one term of the receiver's port
input. A set of kept edges is a hypothesis: every path of the treeified graph that crosses a
removed edge reads an "other" input from there down. `build_hypothesis` writes a kept set as an
ordinary tree of `Exact` interpretation nodes; `compact_hypothesis` writes the same assignment
(with shared draws) as two nodes, whose plan has one node per graph node however many edges
are removed. `hypothesis_from_json` rebuilds a found hypothesis from `search.json`.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.searching.edges import graph_edges
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda x: x, x="x")], output="out")
    >>> graph_edges(g)
    [('x', 'out', 'x')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import InterpNode
from ..core.paths import DEAD, MATCHED, Chain, CompiledMatcher, Matcher, MatcherState, Segment
from ..core.samplers import Exact, Feature, SameFeature, Sampler, SharedUniform, Uniform
from ..options import Draws, Granularity

__all__ = [
    "MAX_TREE_NODES", "RESAMPLED", "Crossing", "Draws", "Edge", "Granularity", "TreeTooLarge",
    "Triple", "build_hypothesis", "check_tree_limit", "compact_hypothesis", "effective",
    "graph_edges", "hypothesis_from_json", "kept_triples", "tree_bound"
]

Triple = tuple[str, str, str]
"""(sender, receiver, port)."""

#: Largest interpretation tree `build_hypothesis` writes before refusing (see its docstring).
MAX_TREE_NODES = 2_000

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
    `max_nodes` interpretation nodes (`tree_bound`).

    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> graph = toy.build().graph
    >>> check_tree_limit(graph, "independent")  # at most 7 nodes: fine
    >>> try:
    ...     check_tree_limit(graph, "independent", max_nodes=5)
    ... except cs.ScrubError as err:
    ...     print(str(err).split(";")[1].split(",")[0].strip())
    on this graph that can reach 7 nodes
    """
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
