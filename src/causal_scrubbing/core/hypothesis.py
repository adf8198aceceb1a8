"""Hypotheses: a tree of interpretation nodes, each claiming a set of paths of the model graph.

An `InterpNode` stands for one feature the hypothesis says the model computes. It has a
*sampler* (how its dataset is drawn, conditioned on its parent's: usually "same value of
feature f"), an *other-inputs sampler* (one dataset shared by every path into its claim that no
child claims; uniform by default), the *paths* it claims (a matcher), and children. The root
claims the output (every path).

`check(graph, root)` validates the correspondence before any compute and returns a
`Correspondence`: the nodes in depth-first order with their compiled matchers, and the
`TreeifiedGraph` the hypothesis induces. Each path of the graph is owned by the deepest node
of the chain root -> n1 -> ... -> nk whose claims it extends; it reads the *lane* `ds[nk]` if
nk is a leaf and `other[nk]` otherwise. The treeified graph folds the (exponentially many)
paths into *sites*, (graph node, matcher states) pairs, each with one assignment of lanes
below it; validation, the engine's plan, `show` and the benchmark's hook loop all walk it.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i, i="x"),
    ...               cs.Node("out", lambda l, r: l + r, l="a", r="x")], output="out")
    >>> root = cs.InterpNode("out", children=[
    ...     cs.InterpNode("a", cs.SameFeature("x"), paths=cs.through("a"))])
    >>> print(root)
    out  Exact()  paths: everything()  others: Uniform()
    └── a  SameFeature('x')  paths: through('a')
    >>> corr = cs.check(g, root)
    >>> [n.name for n in corr.nodes]
    ['out', 'a']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .errors import (
    EmptyClaimError,
    HypothesisError,
    InjectivityError,
    NotExtendingParentError,
    RootClaimError,
    TreeStructureError,
)
from .graph import Graph
from .paths import DEAD, MATCHED, Chain, CompiledMatcher, Everything, Matcher, MatcherState
from .samplers import Exact, Sampler, Uniform


class InterpNode:
    """One node of the interpretation: a name, a sampler, the paths it claims, its children.

    Args:
        name: unique within the hypothesis.
        sampler: draws this node's dataset given its parent's (default `Exact()`).
        paths: the paths this node claims (`cs.through(...)` etc.). Leave it out on the root,
            which claims everything.
        other: draws the one dataset fed to all paths into this node's claim that no child
            claims (default `Uniform()`; `Exact()` keeps them as they are).
        children: interpretation nodes whose claims extend this node's.
    """

    def __init__(self, name: str, sampler: Sampler | None = None, *, paths: Matcher | None = None,
                 other: Sampler | None = None, children: Iterable[InterpNode] = ()):
        self.name = str(name)
        self.sampler = Exact() if sampler is None else sampler
        self.paths = paths
        self.other = Uniform() if other is None else other
        self.children: list[InterpNode] = list(children)
        for s, what in ((self.sampler, "sampler"), (self.other, "other")):
            if not isinstance(s, Sampler):
                raise TypeError(f"InterpNode {self.name!r}: {what} must be a cs.Sampler "
                                f"(e.g. cs.SameFeature(f)), got {type(s).__name__}.")
        if paths is not None and not isinstance(paths, Matcher):
            raise TypeError(f"InterpNode {self.name!r}: paths must be a path matcher such as "
                            f"cs.through('a1.h0'), got {type(paths).__name__}.")
        for c in self.children:
            if not isinstance(c, InterpNode):
                raise TypeError(f"InterpNode {self.name!r}: children must be InterpNodes, "
                                f"got {type(c).__name__}.")

    def add(self, child: InterpNode) -> InterpNode:
        """Append `child` and return it (for building trees top-down)."""
        self.children.append(child)
        return child

    def walk(self) -> list[InterpNode]:
        """This node and its descendants, depth first (raises on a cycle)."""
        out: list[InterpNode] = []
        on_stack: set[int] = set()

        def visit(n: InterpNode) -> None:
            if id(n) in on_stack:
                raise TreeStructureError(f"InterpNode {n.name!r} is its own descendant; the "
                                         "interpretation must be a tree.")
            on_stack.add(id(n))
            out.append(n)
            for c in n.children:
                visit(c)
            on_stack.discard(id(n))

        visit(self)
        return out

    def lines(self, prefix: str = "", is_root: bool = True) -> list[str]:
        paths = "everything()" if self.paths is None else str(self.paths)
        head = f"{self.name}  {self.sampler.describe()}  paths: {paths}"
        if self.children:
            head += f"  others: {self.other.describe()}"
        out = [head]
        for i, c in enumerate(self.children):
            last = i == len(self.children) - 1
            sub = c.lines(prefix + ("    " if last else "│   "), is_root=False)
            out.append(prefix + ("└── " if last else "├── ") + sub[0])
            out.extend(sub[1:])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The tree as plain data: each node's name, sampler, claimed paths (the matcher's
        text), other-inputs sampler and children (what `results.json` and the report draw).

        >>> import causal_scrubbing as cs
        >>> root = cs.InterpNode("out", children=[
        ...     cs.InterpNode("A", cs.SameFeature("a"), paths=cs.through("A"))])
        >>> root.to_dict()["children"][0]  # doctest: +NORMALIZE_WHITESPACE
        {'name': 'A', 'sampler': "SameFeature('a')", 'paths': "through('A')", 'other': 'Uniform()',
         'children': []}
        """
        return {"name": self.name, "sampler": self.sampler.describe(),
                "paths": "everything()" if self.paths is None else str(self.paths),
                "other": self.other.describe(), "children": [c.to_dict() for c in self.children]}

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __repr__(self) -> str:
        return f"InterpNode({self.name!r}, {self.sampler.describe()}, children={len(self.children)})"


# ---- the treeified graph a hypothesis induces -------------------------------------------------

States = tuple[MatcherState, ...]
"""One compiled-matcher state per interpretation node, in depth-first order."""


@dataclass(frozen=True)
class Lane:
    """One dataset the treeified model reads: `ds[n]` (interpretation node n's own draw, read
    by the paths n claims when n is a leaf) or `other[n]` (the draw read by every path into
    n's claim that no child of n claims). Every path reads exactly one lane."""

    kind: Literal["ds", "other"]
    index: int  # the interpretation node's position in `Correspondence.nodes`
    name: str  # the interpretation node's name

    def __str__(self) -> str:
        return f"{self.kind}[{self.name}]"


@dataclass(frozen=True)
class Site:
    """A node of the treeified graph, up to what matters: graph node `node` reached along a
    path prefix on which the interpretation nodes' matchers are in `states`. Every prefix
    reaching the same site has the same assignment of lanes to the paths below it."""

    node: str
    states: States


@dataclass(frozen=True)
class PortView:
    """Port `port` of a site: the matcher states on entering it, the lane every path through
    it reads (None while a child interpretation node may still claim some of them), and the
    sites of its upstream nodes, in the port's order."""

    port: str
    states: States
    lane: Lane | None
    inputs: tuple[Site, ...]


class TreeifiedGraph:
    """The treeified graph that a hypothesis induces on a model graph, memoised by site.

    Treeifying gives every path from the output its own copy of the input; the hypothesis
    assigns each copy a lane. Walking from the output, the state of every interpretation
    node's path matcher is all that decides the assignment below a point, so the treeified
    graph (exponentially many paths) folds into sites, (graph node, states) pairs, of which
    there are few. `check` builds one per hypothesis; validation, the engine's plan, `show`
    and the benchmark's hook loop all walk it (the literal `reference` evaluator does not: it
    is the independent oracle). Sites and their ports are computed on first use and kept.

    Example:
        >>> import causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i, i="x"),
        ...               cs.Node("out", lambda l, r: l + r, l="a", r="x")], output="out")
        >>> tree = cs.check(g, cs.InterpNode("out", children=[
        ...     cs.InterpNode("a", cs.Exact(), paths=cs.through("a"))])).tree
        >>> [(p.port, up.node, str(tree.lane(up))) for p in tree.ports(tree.root) for up in p.inputs]
        [('l', 'a', 'ds[a]'), ('r', 'x', 'other[out]')]
    """

    def __init__(self, graph: Graph, nodes: list[InterpNode], children: list[list[int]],
                 depth: list[int], matchers: list[CompiledMatcher]):
        self.graph = graph
        self.children = children
        self.depth = depth
        self.matchers = matchers
        self.names = [n.name for n in nodes]
        #: the matchers' states before anything is read, and at the output
        self.initial: States = tuple(m.start for m in matchers)
        self.root = Site(graph.output, self.on_node(self.initial, graph.output))
        self._lanes: dict[Site, Lane | None] = {}
        self._ports: dict[Site, tuple[PortView, ...]] = {}

    # ---- one step of a walk down a path, every matcher stepped together --------------------

    def on_node(self, states: States, node: str) -> States:
        return tuple(m.on_node(s, node) for m, s in zip(self.matchers, states))

    def on_port(self, states: States, node: str, port: str) -> States:
        return tuple(m.on_port(s, node, port) for m, s in zip(self.matchers, states))

    def owner(self, states: States) -> int:
        """The deepest interpretation node that has claimed the current path prefix."""
        best = 0
        for i, s in enumerate(states):
            if s == MATCHED and self.depth[i] > self.depth[best]:
                best = i
        return best

    def decided_lane(self, states: States) -> Lane | None:
        """The lane every path extending this prefix reads, if it is already decided:
        `ds[o]` when the owner o is a leaf, `other[o]` when no child of o can still claim an
        extension, None while some child might."""
        o = self.owner(states)
        kids = self.children[o]
        if not kids:
            return Lane("ds", o, self.names[o])
        if all(states[c] == DEAD for c in kids):
            return Lane("other", o, self.names[o])
        return None

    @staticmethod
    def live(states: States) -> bool:
        """Whether some matcher may still match further down (validation walks on)."""
        return any(s != MATCHED and s != DEAD for s in states)

    # ---- the memoised structure --------------------------------------------------------------

    def lane(self, site: Site) -> Lane | None:
        """The lane every path below `site` reads, or None if they read several. At an input
        leaf that no child claimed, the path reads its owner's other inputs."""
        if site not in self._lanes:
            lane = self.decided_lane(site.states)
            if lane is None and self.graph.is_input(site.node):
                o = self.owner(site.states)
                lane = Lane("other", o, self.names[o])
            self._lanes[site] = lane
        return self._lanes[site]

    def ports(self, site: Site) -> tuple[PortView, ...]:
        """The site's ports (none for an input leaf), each with its upstream sites."""
        if site not in self._ports:
            views = []
            for port, upstream in self.graph.ports(site.node).items():
                states = self.on_port(site.states, site.node, port)
                inputs = tuple(Site(u, self.on_node(states, u)) for u in upstream)
                views.append(PortView(port, states, self.decided_lane(states), inputs))
            self._ports[site] = tuple(views)
        return self._ports[site]


@dataclass
class Correspondence:
    """A validated hypothesis compiled against a graph (made by `check`): the interpretation
    nodes in depth-first order, their tree structure, and the treeified graph they induce."""

    graph: Graph
    nodes: list[InterpNode]  # depth first; nodes[0] is the root
    parent: list[int]  # parent index (-1 for the root)
    children: list[list[int]]
    depth: list[int]
    matchers: list[CompiledMatcher]
    tree: TreeifiedGraph

    @property
    def root(self) -> InterpNode:
        return self.nodes[0]

    def with_samplers(self, samplers: Mapping[int, Sampler]) -> Correspondence:
        """The same hypothesis with the samplers of some nodes (by index in `nodes`) replaced.

        What `check` validated and built (the claims, the treeified graph, so also the
        engine's plan) depends only on the nodes' paths, never on their samplers, so nothing
        is re-checked: this is how many hypotheses that differ only in what their nodes
        claim are scored cheaply (the search's feature step).
        """
        copies = [InterpNode(n.name, samplers.get(i, n.sampler), paths=n.paths, other=n.other)
                  for i, n in enumerate(self.nodes)]
        for i, kids in enumerate(self.children):
            copies[i].children = [copies[c] for c in kids]
        return replace(self, nodes=copies)


def _prefix_str(nodes: tuple[str, ...], ports: tuple[str, ...]) -> str:
    steps = [f"{n}.{p}" for n, p in zip(nodes, ports)]
    return " <- ".join(steps + list(nodes[len(ports):]))


def check(graph: Graph, root: InterpNode) -> Correspondence:
    """Validate `root`'s hypothesis against `graph` and compile it; raise a named error if not.

    Checks: the tree is a tree with unique names; the root claims the output; every matcher
    names real nodes and ports and matches at least one path; every child's claims extend its
    parent's; no path (or treeified node) is claimed by two nodes. The treeified graph built
    for the checks is kept (`Correspondence.tree`) for everything that runs the hypothesis.
    """
    if not isinstance(root, InterpNode):
        raise TypeError(f"A hypothesis is a root cs.InterpNode, got {type(root).__name__}.")
    nodes = root.walk()
    seen: dict[int, InterpNode] = {}
    names: dict[str, InterpNode] = {}
    for n in nodes:
        if id(n) in seen:
            raise TreeStructureError(f"InterpNode {n.name!r} appears twice in the hypothesis; "
                                     "each node may have only one parent (make a new node).")
        seen[id(n)] = n
        if n.name in names:
            raise TreeStructureError(f"Two interpretation nodes are named {n.name!r}; "
                                     "names must be unique.")
        names[n.name] = n
    index = {id(n): i for i, n in enumerate(nodes)}
    parent = [-1] * len(nodes)
    children: list[list[int]] = [[] for _ in nodes]
    depth = [0] * len(nodes)
    for i, n in enumerate(nodes):
        for c in n.children:
            parent[index[id(c)]] = i
            children[i].append(index[id(c)])
            depth[index[id(c)]] = depth[i] + 1
    for n in nodes[1:]:
        if n.paths is None:
            raise HypothesisError(f"InterpNode {n.name!r} claims no paths; give it paths=..., "
                                  "e.g. paths=cs.through('a1.h0'). Only the root may omit them.")
    matchers = [(Everything() if n.paths is None else n.paths).compile(graph) for n in nodes]
    tree = TreeifiedGraph(graph, nodes, children, depth, matchers)
    corr = Correspondence(graph, nodes, parent, children, depth, matchers, tree)
    _check_claims(corr)
    return corr


def _check_claims(corr: Correspondence) -> None:
    """Walk every live site of the treeified graph once and check each claim made on the way.

    A claim is made where a matcher's state becomes MATCHED: on entering a port or reaching
    a node. The walk goes on while some matcher is still undecided, so every claim is seen.
    """
    graph, nodes, tree = corr.graph, corr.nodes, corr.tree
    ever_matched = [False] * len(nodes)

    def check_event(before: States, after: States, where: str) -> None:
        for i, (b, a) in enumerate(zip(before, after)):
            if a != MATCHED or b == MATCHED:
                continue
            ever_matched[i] = True
            p = corr.parent[i]
            if p < 0:
                continue
            if after[p] != MATCHED:
                raise NotExtendingParentError(
                    f"InterpNode {nodes[i].name!r} claims {where}, which its parent "
                    f"{nodes[p].name!r} does not claim (child: {nodes[i].paths}; parent: "
                    f"{nodes[p].paths or 'everything()'}). A child's paths must extend its "
                    f"parent's: build it as parent_paths.then(...), or move the node."
                )
            if before[p] != MATCHED:
                raise InjectivityError(
                    f"InterpNode {nodes[i].name!r} and its parent {nodes[p].name!r} both claim "
                    f"the same treeified node {where}. A child must claim something strictly "
                    "below its parent: continue its matcher with .then(...)."
                )
        matched = [i for i, a in enumerate(after) if a == MATCHED]
        for i in matched:
            kids = [c for c in corr.children[i] if after[c] == MATCHED]
            if len(kids) > 1:
                a, b = nodes[kids[0]].name, nodes[kids[1]].name
                raise InjectivityError(
                    f"InterpNodes {a!r} and {b!r} both claim the paths through {where}. No path may be "
                    f"claimed by two nodes: narrow one matcher (e.g. with excluding=[...] or "
                    f"direct(...)) so their claims are disjoint."
                )

    visited: set[Site] = set()

    def visit(site: Site, trail_nodes: tuple[str, ...], trail_ports: tuple[str, ...]) -> None:
        if site in visited or not tree.live(site.states):
            return
        visited.add(site)
        for port in tree.ports(site):
            check_event(site.states, port.states, _prefix_str(trail_nodes, (*trail_ports, port.port)))
            for up in port.inputs:
                nodes_u, ports_u = (*trail_nodes, up.node), (*trail_ports, port.port)
                check_event(port.states, up.states, _prefix_str(nodes_u, ports_u))
                visit(up, nodes_u, ports_u)

    if tree.root.states[0] != MATCHED:
        raise RootClaimError(
            f"The root {nodes[0].name!r} must claim the model output {graph.output!r}, but its "
            f"matcher {nodes[0].paths} does not. Leave the root's paths out (it then claims "
            "everything)."
        )
    check_event(tree.initial, tree.root.states, graph.output)
    visit(tree.root, (graph.output,), ())
    for i, ok in enumerate(ever_matched):
        if not ok:
            raise EmptyClaimError(
                f"InterpNode {nodes[i].name!r} claims no path: its matcher {nodes[i].paths} "
                f"matches no path of the graph.{_empty_hint(graph, nodes[i].paths)}"
            )


def _empty_hint(graph: Graph, matcher: Matcher | None) -> str:
    if not isinstance(matcher, Chain):
        return ""
    prev = graph.output
    for seg in matcher.segments:
        if seg.node != prev and seg.node not in graph.upstream[prev]:
            return (f" Node {seg.node!r} is not upstream of {prev!r}, so no path reaches it "
                    "there; check the order of the chain.")
        prev = seg.node
    return " Check its excluding=/direct= settings, which may rule out every route."
