"""Path matchers: declarative descriptions of sets of paths through a model graph.

An interpretation node claims paths with a matcher. `through("a2.h0")` claims every path that
passes through node `a2.h0`; `through("a2.h0", port="q")` only those entering it by its `q`
port; `direct("a2.h0")` only the path where `a2.h0` feeds the output straight away;
`.then(...)` continues a chain further towards the inputs; `excluding=` rules out paths that
pass through the given nodes on the way; `m1 | m2` is a union. The claimed *treeified node* is
the path prefix ending where the matcher first matches; every path extending it is claimed.

Matchers are absolute: each is read from the output down, so a child's matcher usually extends
its parent's (`parent_paths.then(...)`), and validation checks that it does.

Internally a matcher compiles, against a graph, into a small automaton that reads a path one
step at a time (`on_node`, `on_port`). Its states are hashable, which lets the engine and the
validator walk the graph once per distinct state instead of once per path.

Example:
    >>> import causal_scrubbing as cs
    >>> m = cs.through("a2.h0", port="q").then("a1.h1", excluding=["m1"])
    >>> print(m)
    through('a2.h0', port='q').then('a1.h1', excluding=['m1'])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .graph import Graph
from .names import head_name, parse_head

#: Automaton state of a matcher that has matched a prefix of the current path (sticky).
MATCHED = "matched"
#: Automaton state of a matcher that can no longer match any extension of the current path.
DEAD = "dead"

MatcherState = Any
"""One compiled matcher's automaton state: hashable; `MATCHED` and `DEAD` are absorbing."""


@dataclass(frozen=True)
class Segment:
    """One link of a chain: reach `node` (then its `port`), avoiding `excluding` on the way.

    With `direct`, `node` must be the very next node after the previous match point (the
    output, for the first segment).
    """

    node: str
    port: str | None = None
    excluding: frozenset[str] = frozenset()
    direct: bool = False

    def __str__(self) -> str:
        args = [repr(self.node)]
        if self.port is not None:
            args.append(f"port={self.port!r}")
        if self.excluding:
            args.append(f"excluding={sorted(self.excluding)!r}")
        return f"({', '.join(args)})"


class Matcher:
    """A set of paths through a graph. Combine with `|`; compile with `.compile(graph)`."""

    def compile(self, graph: Graph) -> CompiledMatcher:
        raise NotImplementedError

    def resolve(self, graph: Graph) -> Matcher:
        return self

    def __or__(self, other: Matcher) -> Matcher:
        if not isinstance(other, Matcher):
            return NotImplemented
        return Union((self, other))


@dataclass(frozen=True)
class Everything(Matcher):
    """All paths: the claim of the root, which owns the model's output."""

    def compile(self, graph: Graph) -> CompiledMatcher:
        return _CompiledEverything()

    def __str__(self) -> str:
        return "everything()"


@dataclass(frozen=True)
class Chain(Matcher):
    """Paths that pass through each segment's node in turn (see `Segment`)."""

    segments: tuple[Segment, ...]

    def then(self, node: str, port: str | None = None, *, excluding: Iterable[str] = (),
             direct: bool = False) -> Chain:
        """Continue the chain: below the current match, go on through `node` (and `port`).

        `.then(same_node, port=p)` right after matching `same_node` (with no port) narrows the
        match to that node's port `p` instead.
        """
        last = self.segments[-1]
        if node == last.node and last.port is None and port is not None and not excluding:
            return Chain((*self.segments[:-1], Segment(last.node, port, last.excluding,
                                                       last.direct)))
        return Chain((*self.segments, _segment(node, port, excluding, direct)))

    def resolve(self, graph: Graph) -> Chain:
        """The same chain with familiar head names (`L1H0`) replaced by the graph's (`a1.h0`)."""
        return Chain(tuple(Segment(_resolve(graph, seg.node), seg.port,
                                   frozenset(_resolve(graph, e) for e in seg.excluding), seg.direct)
                           for seg in self.segments))

    def compile(self, graph: Graph) -> CompiledMatcher:
        segments = self.resolve(graph).segments
        for seg in segments:
            where = f" (in matcher {self})"
            if seg.port is None:
                graph.check_node(seg.node, where)
            else:
                graph.check_port(seg.node, seg.port, where)
            for ex in seg.excluding:
                graph.check_node(ex, where)
        return _CompiledChain(segments, graph)

    def __str__(self) -> str:
        parts = []
        for i, seg in enumerate(self.segments):
            fn = ("direct" if seg.direct else "through") if i == 0 else "then"
            if seg.direct and i > 0:
                inner = str(seg)[1:-1] + ", direct=True"
                parts.append(f"then({inner})")
            else:
                parts.append(f"{fn}{seg}")
        return ".".join(parts)


@dataclass(frozen=True)
class Union(Matcher):
    """Paths matched by any of `parts`."""

    parts: tuple[Matcher, ...]

    def resolve(self, graph: Graph) -> Union:
        return Union(tuple(p.resolve(graph) for p in self.parts))

    def compile(self, graph: Graph) -> CompiledMatcher:
        return _CompiledUnion(tuple(p.compile(graph) for p in self.parts))

    def __str__(self) -> str:
        return " | ".join(str(p) for p in self.parts)


def _segment(node: str | tuple[int, int], port: str | None, excluding: Iterable[str],
             direct: bool) -> Segment:
    if isinstance(excluding, str):
        excluding = [excluding]
    if isinstance(node, tuple):  # (layer, head)
        node = head_name(*node)
    return Segment(str(node), port, frozenset(str(e) for e in excluding), direct)


def _resolve(graph: Graph, name: str) -> str:
    """`name` if the graph has it; else its canonical head name (`L1H0`, `1.0` -> `a1.h0`)."""
    if name in graph.nodes:
        return name
    canonical = parse_head(name, strict=False)
    return canonical if canonical is not None and canonical in graph.nodes else name


def through(node: str, port: str | None = None, *, excluding: Iterable[str] = (),
            direct: bool = False) -> Chain:
    """Paths through `node` (entering it by `port`, if given), avoiding `excluding` on the way."""
    return Chain((_segment(node, port, excluding, direct),))


def direct(node: str, port: str | None = None) -> Chain:
    """The paths on which `node` feeds the output with nothing in between."""
    return through(node, port, direct=True)


def union(matchers: Iterable[Matcher]) -> Matcher:
    """Paths matched by any of `matchers` (the same as `m1 | m2 | ...`)."""
    matchers = list(matchers)
    if not matchers:
        raise ValueError("union() needs at least one matcher.")
    return matchers[0] if len(matchers) == 1 else Union(tuple(matchers))


def chains(*steps: tuple[Iterable[str], str | None]) -> Matcher:
    """Union, over every choice of one node per step, of the direct chain through them: the
    first step's node feeds the output directly, each later step's node feeds the previous
    one's port directly; step i is `(nodes, port)`, the port by which its node is entered
    (None: any). The circuit-diagram claim "these heads' output, into those heads' queries".

    >>> print(chains((["a1.h0", "a1.h1"], "q")))
    direct('a1.h0', port='q') | direct('a1.h1', port='q')
    >>> print(chains((["a1.h0"], None), (["a0.h0"], "v")))
    direct('a1.h0').then('a0.h0', port='v', direct=True)
    """
    matchers: list = [None]
    for i, (nodes, port) in enumerate(steps):
        matchers = [direct(n, port) if i == 0 else m.then(n, port, direct=True)
                    for m in matchers for n in nodes]
    return union(matchers)


def everything() -> Everything:
    """All paths (the root's claim)."""
    return Everything()


# ---- compiled automata -----------------------------------------------------------------------


class CompiledMatcher:
    """An automaton over the events of a walk from the output down one path.

    The walk is `on_node(output)`, then for each step `on_port(node, port)` followed by
    `on_node(upstream)`. States are hashable; `MATCHED` and `DEAD` are absorbing.
    """

    start: MatcherState

    def on_node(self, state: MatcherState, node: str) -> MatcherState:
        raise NotImplementedError

    def on_port(self, state: MatcherState, node: str, port: str) -> MatcherState:
        raise NotImplementedError


class _CompiledEverything(CompiledMatcher):
    start = "start"

    def on_node(self, state: MatcherState, node: str) -> MatcherState:
        return MATCHED

    def on_port(self, state: MatcherState, node: str, port: str) -> MatcherState:
        return MATCHED


class _CompiledChain(CompiledMatcher):
    # A live state is (segment index, waiting for the segment's port, gap) where gap is -1
    # before the output node is read and 0 afterwards (only `direct` segments care).

    def __init__(self, segments: tuple[Segment, ...], graph: Graph):
        self.segments = segments
        self.upstream = graph.upstream
        self.start = (0, False, -1)

    def _advance(self, i: int) -> MatcherState:
        return MATCHED if i + 1 == len(self.segments) else (i + 1, False, 0)

    def on_node(self, state: MatcherState, node: str) -> MatcherState:
        if state == MATCHED or state == DEAD:
            return state
        i, waiting, gap = state
        seg = self.segments[i]
        if waiting:  # the target node was read but the walk did not go through its port
            return DEAD
        if node == seg.node:
            return self._advance(i) if seg.port is None else (i, True, 0)
        if gap >= 0 and (seg.direct or node in seg.excluding):
            return DEAD
        if seg.node not in self.upstream.get(node, ()):
            return DEAD  # the target can no longer be reached below this node
        return (i, False, 0)

    def on_port(self, state: MatcherState, node: str, port: str) -> MatcherState:
        if state == MATCHED or state == DEAD:
            return state
        i, waiting, _ = state
        if not waiting:
            return state
        return self._advance(i) if port == self.segments[i].port else DEAD


class _CompiledUnion(CompiledMatcher):
    def __init__(self, parts: tuple[CompiledMatcher, ...]):
        self.parts = parts
        self.start = tuple(p.start for p in parts)

    def _join(self, states: tuple) -> MatcherState:
        if any(s == MATCHED for s in states):
            return MATCHED
        if all(s == DEAD for s in states):
            return DEAD
        return states

    def on_node(self, state: MatcherState, node: str) -> MatcherState:
        if state == MATCHED or state == DEAD:
            return state
        return self._join(tuple(p.on_node(s, node) for p, s in zip(self.parts, state)))

    def on_port(self, state: MatcherState, node: str, port: str) -> MatcherState:
        if state == MATCHED or state == DEAD:
            return state
        return self._join(tuple(p.on_port(s, node, port) for p, s in zip(self.parts, state)))
