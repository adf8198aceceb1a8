"""Hypotheses: a tree of interpretation nodes, each claiming a set of paths of the model graph.

An `InterpNode` stands for one feature the hypothesis says the model computes. It has a
*sampler* (how its dataset is drawn, conditioned on its parent's: usually "same value of
feature f"), an *other-inputs sampler* (one dataset shared by every path into its claim that no
child claims; uniform by default), the *paths* it claims (a matcher), and children. The root
claims the output (every path).

`check(graph, root)` validates the correspondence before any compute and returns a
`Correspondence`: the nodes in depth-first order with their compiled matchers. Each path of the
graph is then owned by the deepest node of the chain root -> n1 -> ... -> nk whose claims it
extends; it reads `ds[nk]` if nk is a leaf and `other[nk]` otherwise.

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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import (
    EmptyClaimError,
    HypothesisError,
    InjectivityError,
    NotExtendingParentError,
    RootClaimError,
    TreeStructureError,
)
from .graph import Graph
from .paths import DEAD, MATCHED, Chain, CompiledMatcher, Everything, Matcher
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


State = tuple  # one compiled-matcher state per interpretation node, in depth-first order


@dataclass
class Correspondence:
    """A validated hypothesis compiled against a graph (made by `check`)."""

    graph: Graph
    nodes: list[InterpNode]  # depth first; nodes[0] is the root
    parent: list[int]  # parent index (-1 for the root)
    children: list[list[int]]
    depth: list[int]
    matchers: list[CompiledMatcher]

    @property
    def root(self) -> InterpNode:
        return self.nodes[0]

    # ---- the walk from the output down one path, with all matchers stepped together ------

    def start(self) -> State:
        out = self.graph.output
        return tuple(m.on_node(m.start, out) for m in self.matchers)

    def on_node(self, state: State, node: str) -> State:
        return tuple(m.on_node(s, node) for m, s in zip(self.matchers, state))

    def on_port(self, state: State, node: str, port: str) -> State:
        return tuple(m.on_port(s, node, port) for m, s in zip(self.matchers, state))

    def owner(self, state: State) -> int:
        """The deepest interpretation node that has claimed the current path prefix."""
        best = 0
        for i, s in enumerate(state):
            if s == MATCHED and self.depth[i] > self.depth[best]:
                best = i
        return best

    def lane(self, state: State) -> tuple[str, int] | None:
        """The dataset every path extending this prefix reads, if it is already decided.

        `("ds", i)` when the owner i is a leaf; `("other", i)` when no child of the owner can
        still claim an extension; `None` while some child might.
        """
        o = self.owner(state)
        kids = self.children[o]
        if not kids:
            return ("ds", o)
        if all(state[c] == DEAD for c in kids):
            return ("other", o)
        return None


def _prefix_str(nodes: tuple[str, ...], ports: tuple[str, ...]) -> str:
    steps = [f"{n}.{p}" for n, p in zip(nodes, ports)]
    return " <- ".join(steps + list(nodes[len(ports):]))


def check(graph: Graph, root: InterpNode) -> Correspondence:
    """Validate `root`'s hypothesis against `graph` and compile it; raise a named error if not.

    Checks: the tree is a tree with unique names; the root claims the output; every matcher
    names real nodes and ports and matches at least one path; every child's claims extend its
    parent's; no path (or treeified node) is claimed by two nodes.
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
    corr = Correspondence(graph, nodes, parent, children, depth, matchers)
    _check_claims(corr)
    return corr


def _check_claims(corr: Correspondence) -> None:
    """Walk every distinct (graph node, matcher states) pair once and check each claim."""
    graph, nodes = corr.graph, corr.nodes
    ever_matched = [False] * len(nodes)

    def check_event(before: State, after: State, where: str) -> None:
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

    visited: set[tuple[str, State]] = set()

    def live(state: State) -> bool:
        return any(s != MATCHED and s != DEAD for s in state)

    def visit(node: str, state: State, trail_nodes: tuple[str, ...],
              trail_ports: tuple[str, ...]) -> None:
        if (node, state) in visited or not live(state):
            return
        visited.add((node, state))
        for port, ups in graph.ports(node).items():
            after_port = corr.on_port(state, node, port)
            check_event(state, after_port, _prefix_str(trail_nodes, (*trail_ports, port)))
            for u in ups:
                after = corr.on_node(after_port, u)
                nodes_u, ports_u = (*trail_nodes, u), (*trail_ports, port)
                check_event(after_port, after, _prefix_str(nodes_u, ports_u))
                visit(u, after, nodes_u, ports_u)

    before = tuple(m.start for m in corr.matchers)
    first = corr.start()
    if first[0] != MATCHED:
        raise RootClaimError(
            f"The root {nodes[0].name!r} must claim the model output {graph.output!r}, but its "
            f"matcher {nodes[0].paths} does not. Leave the root's paths out (it then claims "
            "everything)."
        )
    check_event(before, first, graph.output)
    visit(graph.output, first, (graph.output,), ())
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
