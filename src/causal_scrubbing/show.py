"""Inspecting a hypothesis: its tree, and what one reference row's scrubbed run actually reads.

A scrub is a cloud of random draws, which makes a wrong hypothesis hard to debug from its
loss alone. `explain` replays the draw `scrub` makes for one reference row and lays it out:

- the interpretation tree (each node's sampler and feature, path matcher, other-inputs sampler);
- for every node, the row its sampler was conditioned on (its parent's), the feature value
  that conditioned it, and the dataset row it drew; the same for each node's other inputs;
- the *lanes*: the distinct datasets the treeified model reads, the row each lane received,
  how many paths of the graph read it, and the path prefixes that lead into it (every path
  that starts with a listed prefix reads that lane's row);
- the graph's input fields on every row used.

With the same `n` and `seed`, reference row `i` here is reference row `i` of `scrub` (and of
`causal-scrub run`), and every drawn row is the one that run used.

Example:
    >>> from causal_scrubbing.experiments import toy
    >>> from causal_scrubbing.show import explain
    >>> exp = toy.build()
    >>> e = explain(exp.graph, exp.hypotheses["only_a"], exp.dataset, row=0, seed=0)
    >>> [lane.label for lane in e.lanes]
    ['ds[A]', 'other[out]']
    >>> a = e.draw("A")   # SameFeature('a'), conditioned on the root's row
    >>> a.condition, int(exp.dataset["a"][a.row]) == int(exp.dataset["a"][a.parent_row])
    ('a = 0', True)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor

from .core.data import Dataset
from .core.draws import draw_hypothesis, reference_rows, sampling_context
from .core.engine import compile_plan
from .core.errors import ScrubError, unknown_name
from .core.graph import Graph, Input, Path
from .core.hypothesis import Correspondence, InterpNode, Lane, Site, check
from .core.samplers import Exact, Pooled, SameFeature, Sampler, SamplingContext, SharedUniform, Uniform

log = logging.getLogger(__name__)


@dataclass
class Draw:
    """One drawn dataset: `ds[node]` or `other[node]`, at the explained reference row."""

    label: str  # "A" (the node's own dataset) or "other[A]" (its other inputs)
    sampler: str  # the sampler's description
    parent_row: int  # the dataset row the sampler was conditioned on
    parent: str  # whose row that is: "reference", a node's name, or "A" for other[A]
    condition: str  # what the draw kept fixed: "a = 1", "the same row", "nothing"
    row: int  # the dataset row drawn
    depth: int = 0  # depth in the interpretation tree (for indentation)


@dataclass(frozen=True)
class Prefix:
    """The start of a path, from the output: `nodes[i]` reads `nodes[i+1]` on `ports[i]`.

    It ends at a node (`len(ports) == len(nodes) - 1`) or entering a node's port
    (`len(ports) == len(nodes)`).
    """

    nodes: tuple[str, ...]
    ports: tuple[str, ...]

    def covers(self, path: Path) -> bool:
        """Whether `path` starts with this prefix."""
        k = len(self.nodes)
        return path.nodes[:k] == self.nodes and path.ports[:len(self.ports)] == self.ports

    def __str__(self) -> str:
        steps = [f"{a}.{p}" for a, p in zip(self.nodes, self.ports)]
        return " <- ".join(steps + list(self.nodes[len(self.ports):]))


@dataclass
class LaneRead:
    """One distinct dataset the treeified model reads, at the explained reference row."""

    lane: Lane
    label: str  # "ds[A]" or "other[out]"
    row: int
    n_paths: int  # paths of the graph (input copies) that read this lane
    prefixes: list[Prefix]  # up to `max_prefixes` path prefixes leading into the lane
    more_prefixes: bool  # whether there are prefixes beyond those listed


@dataclass
class Explanation:
    """What `explain` found; `str()` lays it out as text."""

    name: str
    description: str
    tree: str
    index: int  # position of the reference row among the n drawn
    n: int
    seed: int
    ref_row: int
    draws: list[Draw]
    lanes: list[LaneRead]
    ref_fields: str = ""  # every field of the reference row
    rows: dict[int, str] = field(default_factory=dict)  # dataset row -> its input fields

    def draw(self, label: str) -> Draw:
        """The draw labelled `label` (a node's name, or `other[name]`)."""
        for d in self.draws:
            if d.label == label:
                return d
        raise unknown_name("draw", label, [d.label for d in self.draws])

    def __str__(self) -> str:
        head = f"hypothesis {self.name!r}" + (f": {self.description}" if self.description else "")
        lines = [head, self.tree, "",
                 f"reference row {self.index} of {self.n} (seed {self.seed}) is dataset row "
                 f"{self.ref_row}: {self.ref_fields}", "",
                 "draws (each sampler is conditioned on its parent's row; other[X] on X's row)"]
        lines += _table(["node", "sampler", "conditioned on row", "kept", "row"],
                        [["  " * d.depth + d.label, d.sampler, f"{d.parent_row} ({d.parent})",
                          d.condition, str(d.row)] for d in self.draws])
        k = len(self.lanes)
        lines += ["", f"lanes: {k} distinct dataset{'s' if k != 1 else ''} (every path that starts "
                      "with a listed prefix reads the lane's row)"]
        lines += _table(["lane", "row", "paths", "path prefixes"],
                        [[ln.label, str(ln.row), _count(ln.n_paths),
                          " | ".join(map(str, ln.prefixes)) + (" | ..." if ln.more_prefixes else "")]
                         for ln in self.lanes])
        lines += ["", "inputs on each row used"]
        lines += _table(["row", "", "inputs"],
                        [[str(r), "reference" if r == self.ref_row else "", text]
                         for r, text in self.rows.items()])
        return "\n".join(lines)


def explain(graph: Graph, hypothesis: InterpNode, dataset: Dataset, *, row: int = 0,
            n: int | None = None, seed: int = 0, name: str | None = None, description: str = "",
            max_prefixes: int = 3, ctx: SamplingContext | None = None,
            format_inputs: Callable[[Dataset, int], str] | None = None) -> Explanation:
    """Replay `scrub`'s draw for reference row `row` of `n` (same `seed`) and lay it out.

    Args:
        row: which of the `n` reference rows to explain (0-based).
        n: as for `scrub`: `None` takes every dataset row once, so `row` is a dataset row.
        max_prefixes: how many path prefixes to list for each lane.
        ctx: a `SamplingContext` on `dataset` to reuse feature classes across calls.
        format_inputs: `(dataset, row) -> text` for a row's inputs (e.g. the string a row of
            token ids encodes); by default each input field's values are listed.
    """
    corr = check(graph, hypothesis)
    ref_idx = reference_rows(len(dataset), n, seed)  # [n]
    if not 0 <= row < len(ref_idx):
        raise ScrubError(f"Reference row {row} does not exist: there are {len(ref_idx)} "
                         f"reference rows (0..{len(ref_idx) - 1}); pick --row in that range.")
    if ctx is None:
        ctx = sampling_context(dataset, seed)
    log.info("drawing %d reference rows for %r", len(ref_idx), hypothesis.name)
    sample = draw_hypothesis(corr, dataset, ref_idx, seed, ctx=ctx)  # the run's draws
    draws = []
    for i, node in enumerate(corr.nodes):
        p = corr.parent[i]
        parent_row = int(ref_idx[row] if p < 0 else sample.ds[corr.nodes[p].name][row])
        parent = "reference" if p < 0 else corr.nodes[p].name
        own = int(sample.ds[node.name][row])
        draws.append(Draw(node.name, node.sampler.describe(), parent_row, parent,
                          _condition(node.sampler, ctx, parent_row), own, corr.depth[i]))
        if node.children:
            draws.append(Draw(f"other[{node.name}]", node.other.describe(), own, node.name,
                              _condition(node.other, ctx, own), int(sample.other[node.name][row]),
                              corr.depth[i] + 1))
    counts, prefixes = _lane_paths(corr, max_prefixes)
    lanes = []
    for lane in compile_plan(corr).lanes:
        label = str(lane)
        shown = prefixes.get(lane, [])
        lanes.append(LaneRead(lane, label, int(sample.lane(lane)[row]), counts.get(lane, 0),
                          shown[:max_prefixes], len(shown) > max_prefixes))
    used = dict.fromkeys([int(ref_idx[row])] + [d.row for d in draws] + [ln.row for ln in lanes])
    fields = list(dict.fromkeys(n.field for n in graph.nodes.values() if isinstance(n, Input)))
    ref = int(ref_idx[row])
    if format_inputs is None:
        rows = {r: ", ".join(f"{f} = {_values(dataset[f][r])}" for f in fields) for r in used}
        ref_fields = ", ".join(f"{f} = {_values(dataset[f][ref])}" for f in dataset)
    else:  # the experiment's own text for the inputs, then the other fields' values
        rows = {r: format_inputs(dataset, r) for r in used}
        ref_fields = ", ".join([rows[ref]] + [f"{f} = {_values(dataset[f][ref])}"
                                              for f in dataset if f not in fields])
    return Explanation(name or hypothesis.name, description, str(hypothesis), row, len(ref_idx),
                       seed, int(ref_idx[row]), draws, lanes, ref_fields, rows)


def explain_experiment(exp, hypothesis: str | None = None, *, row: int = 0, n: int | None = None,
                       seed: int = 0) -> list[Explanation]:
    """`explain` every hypothesis of an `Experiment` (or just `hypothesis`) at reference row `row`.

    `n` defaults to the experiment's own, as in `causal-scrub run`, so the draws are the run's.

    >>> from causal_scrubbing.experiments import toy
    >>> [e.name for e in explain_experiment(toy.build(), row=2)][:2]
    ['correct', 'only_a']
    """
    hyps: Mapping[str, InterpNode] = exp.hypotheses
    if hypothesis is not None:
        if hypothesis not in hyps:
            raise unknown_name("hypothesis id", hypothesis, hyps, f" of experiment {exp.name!r}")
        hyps = {hypothesis: hyps[hypothesis]}
    n = n if n is not None else exp.default_n
    ctx = sampling_context(exp.dataset, seed)
    return [explain(exp.graph, root, exp.dataset, row=row, n=n, seed=seed, name=key,
                    description=exp.descriptions.get(key, ""), ctx=ctx,
                    format_inputs=getattr(exp, "format_inputs", None))
            for key, root in hyps.items()]


# ---- helpers -------------------------------------------------------------------------------


def _condition(sampler: Sampler, ctx: SamplingContext, parent_row: int) -> str:
    """What `sampler` keeps fixed from `parent_row`: a feature value, the row, or nothing."""
    inner = sampler.sampler if isinstance(sampler, Pooled) else sampler
    if isinstance(inner, SameFeature):
        classes = inner.classes(ctx)
        return f"{inner.name} = {_values(classes.values[classes.class_of[parent_row]])}"
    if isinstance(inner, Exact):
        return "the same row"
    if isinstance(inner, Uniform | SharedUniform):
        return "nothing"
    return "(custom sampler)"


def _values(v: Tensor, width: int = 48) -> str:
    """A short text form of one example's value (a scalar, or a truncated list)."""
    flat = [f"{x:.4g}" if isinstance(x, float) else str(x) for x in v.flatten().tolist()]
    text = flat[0] if len(flat) == 1 else "[" + ", ".join(flat) + "]"
    if len(text) > width:
        text = text[:width - 4].rsplit(",", 1)[0] + ", ...]" + f" ({len(flat)} values)"
    return text


def _count(n: int) -> str:
    """A path count: exact up to ten million, then in scientific notation."""
    return str(n) if n < 10**7 else f"{n:.2e}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(head)] + [fmt(r) for r in rows]


def _lane_paths(corr: Correspondence, max_prefixes: int
                ) -> tuple[dict[Lane, int], dict[Lane, list[Prefix]]]:
    """Paths per lane, and up to `max_prefixes + 1` path prefixes at which each lane is decided.

    Both walk the treeified graph (`corr.tree`) down to the sites and ports where a lane is
    decided, as the engine's plan does. Counts are memoised on sites, and the prefix search
    only enters subtrees that still lead to a lane short of prefixes.
    """
    graph, tree = corr.graph, corr.tree
    below: dict[str, int] = {}  # graph node -> paths from it down to the inputs
    for name in graph.order:
        ports = graph.ports(name)
        below[name] = 1 if not ports else sum(below[u] for us in ports.values() for u in us)

    memo: dict[Site, dict[Lane, int]] = {}

    def count(site: Site) -> dict[Lane, int]:
        lane = tree.lane(site)
        if lane is not None:
            return {lane: below[site.node]}
        if site not in memo:
            out: dict[Lane, int] = {}
            for port in tree.ports(site):
                parts = ([{port.lane: sum(below[up.node] for up in port.inputs)}] if port.lane is not None
                         else [count(up) for up in port.inputs])
                for part in parts:
                    for k, v in part.items():
                        out[k] = out.get(k, 0) + v
            memo[site] = out
        return memo[site]

    want = max_prefixes + 1  # one extra tells whether there are more
    found: dict[Lane, list[Prefix]] = {}

    def needed(lanes: dict[Lane, int]) -> bool:
        return any(len(found.get(k, [])) < want for k in lanes)

    def search(site: Site, nodes: tuple[str, ...], ports: tuple[str, ...]) -> None:
        lane = tree.lane(site)
        if lane is not None:
            found.setdefault(lane, []).append(Prefix(nodes, ports))
            return
        for port in tree.ports(site):
            if port.lane is not None:
                if len(found.get(port.lane, [])) < want:
                    found.setdefault(port.lane, []).append(Prefix(nodes, (*ports, port.port)))
                continue
            for up in port.inputs:
                if needed(count(up)):
                    search(up, (*nodes, up.node), (*ports, port.port))

    total = count(tree.root)
    search(tree.root, (graph.output,), ())
    return total, found
