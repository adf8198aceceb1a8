"""The literal causal-scrubbing evaluator: one path at a time, no caching. The test oracle.

This follows the definition directly. Treeify the graph, so that every path from the output
to an input leaf has its own copy of the input. For each path, walk the interpretation tree
from the root: while some child of the current node claims the path, step into that child.
The path reads the deepest node's dataset if that node is a leaf of the interpretation, and
its "other inputs" dataset otherwise. Then evaluate the treeified graph bottom-up, each input
copy holding the rows its path was assigned, row-aligned with the reference.

Path claims are decided here by reading the path against the matcher's declaration, not by
the compiled automata the engine and the validator use, so the two evaluators share no
matching code. The cost is one evaluation per path (exponential in depth): use it only on
small graphs, as a check.
"""

from __future__ import annotations

from torch import Tensor

from .data import Dataset
from .draws import Sample
from .graph import Input, Path, sum_values
from .hypothesis import Correspondence, InterpNode
from .paths import Chain, Everything, Matcher, Union


def claims(matcher: Matcher | None, path: Path) -> bool:
    """Does `matcher` claim `path`? (Read literally from the matcher's segments.)"""
    if matcher is None or isinstance(matcher, Everything):
        return True
    if isinstance(matcher, Union):
        return any(claims(m, path) for m in matcher.parts)
    assert isinstance(matcher, Chain)
    nodes, ports = path.nodes, path.ports
    start = 0  # first index where this segment's node may be found
    for k, seg in enumerate(matcher.segments):
        hits = [m for m in range(start, len(nodes)) if nodes[m] == seg.node]
        if not hits:
            return False
        m = hits[0]
        between = nodes[1 if k == 0 else start:m]  # strictly between the last match and here
        if seg.direct and between:
            return False
        if any(b in seg.excluding for b in between):
            return False
        if seg.port is not None and (m >= len(ports) or ports[m] != seg.port):
            return False
        start = m + 1
    return True


def dataset_for_path(corr: Correspondence, sample: Sample, path: Path) -> Tensor:
    """The rows (indices into the table) that `path`'s copy of the input reads."""
    node: InterpNode = corr.root
    while True:
        claiming = [c for c in node.children
                    if claims(c.paths.resolve(corr.graph) if c.paths else None, path)]
        if len(claiming) > 1:
            raise AssertionError(f"path {path} claimed by {[c.name for c in claiming]}")
        if not claiming:
            break
        node = claiming[0]
    return sample.ds[node.name] if not node.children else sample.other[node.name]


def evaluate(corr: Correspondence, table: Dataset, sample: Sample) -> Tensor:
    """The scrubbed model output [n, ...], computed path by path."""
    graph = corr.graph

    def value(nodes: tuple[str, ...], ports: tuple[str, ...]) -> Tensor:
        here = graph.nodes[nodes[-1]]
        if isinstance(here, Input):
            rows = dataset_for_path(corr, sample, Path(nodes, ports))
            return table.rows(rows)[here.field]
        port_values = {
            port: sum_values([value((*nodes, u), (*ports, port)) for u in upstream])
            for port, upstream in graph.ports(here.name).items()
        }
        return graph.apply(here.name, port_values)

    return value((graph.output,), ())
