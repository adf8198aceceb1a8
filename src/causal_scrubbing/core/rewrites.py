"""Rewrites: the same computation, written as a different graph, checked when built.

Hypotheses often need the graph cut differently from how the model was written. Each rewrite
returns a new `Graph` that must compute the same function as the original; it is evaluated on
a check batch when it is built and refused (`RewriteError`) if the outputs differ.

- `split_node(graph, node, parts)`: replace a node by the sum of parts, each a node of its own
  with the same ports (plus any extra ports it needs), e.g. an attention head split into its
  attention to the previous position and the rest, or h = g(x) + (h - g(x)).
- `split_port(graph, node, port, parts)`: insert pass-through nodes on one port, e.g. one per
  sequence position, so that each part can be claimed (and fed data) separately.
- `split_positions` / `split_output_positions`: the by-position special cases.
- `add_estimate`: h = g(x) + (h - g(x)) with the estimate g a function of the node's output
  (a projection) or of other inputs (a hand-written function of the tokens).
- `split_attention`: an attention head as the sum of heads whose patterns are masked (e.g. the
  previous position, and the rest), each with its own q/k/v inputs.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.core import rewrites
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i.cumsum(1), i="x"),
    ...               cs.Node("out", lambda r: r.sum(1), r="a")], output="out")
    >>> batch = cs.Dataset({"x": torch.randn(4, 3)})
    >>> g2 = rewrites.split_positions(g, "a", "i", {"first": [0], "rest": [1, 2]}, check_on=batch)
    >>> sorted(g2.ports("a")["i"])
    ['a.i@first', 'a.i@rest']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .data import Dataset
from .errors import ScrubError
from .graph import Graph, Group, Input, Node, Selection


class RewriteError(ScrubError):
    """A rewritten graph does not compute the same function as the original."""


@dataclass
class Part:
    """One term of a split node: `fn(**ports)`; `extra_ports` are wired in addition to the
    node's own ports (e.g. `{"tokens": ["tokens"]}` for an estimate computed from tokens)."""

    fn: Callable[..., Tensor]
    extra_ports: Mapping[str, Sequence[str]] = field(default_factory=dict)
    own_ports: bool = True  # receive the original node's ports too


def check_equal(original: Graph, rewritten: Graph, batch: Dataset, what: str,
                atol: float = 1e-5, rtol: float = 1e-4) -> Graph:
    """Refuse `rewritten` unless it gives `original`'s output on `batch` (to tolerance)."""
    with torch.inference_mode():
        a, b = original.forward(batch, literal=True), rewritten.forward(batch, literal=True)
    if a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=rtol):
        diff = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(b.shape)}"
        raise RewriteError(f"Rewrite {what} changes the model's output (max |difference| "
                           f"{diff} on the check batch); it is not an equivalent graph. Check "
                           "that the parts sum to the original node.")
    return rewritten


def replace_nodes(graph: Graph, replacements: Mapping[str, list[Input | Node]],
                  rewire: Callable[[Node], Node] | None = None) -> Graph:
    """`graph` with each node of `replacements` replaced by its list of new nodes (in place in
    the order), and every other node passed through `rewire`; not checked (see `check_equal`)."""
    nodes: list[Input | Node] = []
    for name, node in graph.nodes.items():
        if name in replacements:
            nodes.extend(replacements[name])
        else:
            nodes.append(rewire(node) if rewire is not None and isinstance(node, Node) else node)
    return Graph(nodes, output=graph.output, module=graph.module,
                 groups=_surviving_groups(graph, {n.name: n for n in nodes}))


def _surviving_groups(graph: Graph, nodes: Mapping[str, Input | Node]) -> list[Group]:
    """The node groups whose members a rewrite kept (same function, still sharing ports)."""
    groups = []
    for group in graph.groups:
        kept: list[tuple[str, Node]] = []
        for m in group.members:
            new, old = nodes.get(m), graph.nodes.get(m)
            if isinstance(new, Node) and isinstance(old, Node) and new.fn is old.fn:
                kept.append((m, new))
        if len(kept) > 1 and len({tuple(n.ports.items()) for _, n in kept}) == 1:
            groups.append(Group(tuple(m for m, _ in kept), group.fn))
    return groups


def split_node(graph: Graph, node: str, parts: Mapping[str, Part | Callable[..., Tensor]], *,
               check_on: Dataset, sep: str = ".") -> Graph:
    """Write `node` as the sum of `parts` (nodes named `{node}{sep}{part}`), checked on a batch.

    `node` keeps its name and becomes the sum node (port `parts`), so matchers through it
    still work, and `through(node).then(f"{node}.{part}")` claims one part.
    """
    graph.check_node(node, " (in split_node)")
    original = graph.nodes[node]
    if not isinstance(original, Node):
        raise RewriteError(f"Cannot split input leaf {node!r}; split the node that reads it.")
    new_nodes: list[Input | Node] = []
    names = []
    for pname, part in parts.items():
        part = part if isinstance(part, Part) else Part(part)
        ports: dict[str, Sequence[str]] = dict(original.ports) if part.own_ports else {}
        for p, ups in part.extra_ports.items():
            if p in ports:
                raise RewriteError(f"Part {pname!r} of {node!r}: extra port {p!r} clashes with "
                                   "one of the node's own ports; rename it.")
            ports[p] = list(ups)
        name = f"{node}{sep}{pname}"
        new_nodes.append(Node(name, part.fn, **ports))
        names.append(name)
    new_nodes.append(Node(node, lambda parts: parts, parts=names))
    return check_equal(graph, replace_nodes(graph, {node: new_nodes}), check_on, f"split_node({node!r})")


def split_port(graph: Graph, node: str, port: str,
               parts: Mapping[str, Callable[[Tensor], Tensor]], *, check_on: Dataset,
               selections: Mapping[str, Selection] | None = None) -> Graph:
    """Feed `node.port` through pass-through nodes `{node}.{port}@{part}`, one per part.

    Each part maps the port's input to a term (e.g. one position's slice, zeros elsewhere);
    the terms must sum back to the input. Each new node reads everything the port read.
    `selections` marks parts that select positions (`split_positions` does), which lets the
    engine take them by index.
    """
    graph.check_port(node, port, " (in split_port)")
    original = graph.nodes[node]
    assert isinstance(original, Node)
    upstream = original.ports[port]
    new_nodes: list[Input | Node] = []
    names = []
    for pname, fn in parts.items():
        name = f"{node}.{port}@{pname}"
        part = Node(name, lambda _fn=fn, **kw: _fn(kw["in"]), **{"in": list(upstream)})
        if selections is not None and pname in selections:
            part = part.selecting(selections[pname])
        new_nodes.append(part)
        names.append(name)
    new_ports = {**original.ports, port: tuple(names)}
    rewired = Node(node, original.fn, **new_ports)
    return check_equal(graph, replace_nodes(graph, {node: [*new_nodes, rewired]}), check_on,
                       f"split_port({node!r}, {port!r})")


def position_mask(positions: Iterable[int], like: Tensor, axis: int = 1) -> Tensor:
    """A 0/1 mask broadcastable against `like`, 1 at `positions` along `axis`."""
    n = like.shape[axis]
    mask = torch.zeros(n, dtype=like.dtype, device=like.device)
    mask[list(positions)] = 1
    shape = [1] * like.dim()
    shape[axis] = n
    return mask.reshape(shape)


def _check_partition(groups: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    sorted_groups = {k: sorted(int(p) for p in v) for k, v in groups.items()}
    seen: dict[int, str] = {}
    for k, ps in sorted_groups.items():
        for p in ps:
            if p in seen:
                raise RewriteError(f"Position {p} is in both groups {seen[p]!r} and {k!r}; "
                                   "position groups must not overlap.")
            seen[p] = k
    return sorted_groups


def split_positions(graph: Graph, node: str, ports: str | Sequence[str],
                    groups: Mapping[str, Iterable[int]], *, check_on: Dataset,
                    axis: int = 1) -> Graph:
    """Split the input of each of `ports` of `node` by sequence position, into nodes
    `{node}.{port}@{group}`. The groups must cover every position (the check refuses the
    rewrite otherwise)."""
    groups = _check_partition(groups)
    size = 1 + max((p for ps in groups.values() for p in ps), default=-1)
    for port in [ports] if isinstance(ports, str) else ports:
        parts = {k: (lambda x, _ps=ps: x * position_mask(_ps, x, axis)) for k, ps in groups.items()}
        selections = {k: Selection("in", tuple(ps), axis, size) for k, ps in groups.items()}
        graph = split_port(graph, node, port, parts, check_on=check_on, selections=selections)
    return graph


def split_output_positions(graph: Graph, node: str, groups: Mapping[str, Iterable[int]], *,
                           check_on: Dataset, axis: int = 1) -> Graph:
    """Write `node`'s output as a sum over position groups (nodes `{node}@{group}`)."""
    groups = _check_partition(groups)
    original = graph.nodes[node]
    if not isinstance(original, Node):
        raise RewriteError(f"Cannot split input leaf {node!r} by position.")
    fn = original.fn
    parts = {k: (lambda _ps=ps, **kw: (lambda y: y * position_mask(_ps, y, axis))(fn(**kw)))
             for k, ps in groups.items()}
    return split_node(graph, node, parts, check_on=check_on, sep="@")


def add_estimate(graph: Graph, node: str, estimate: Callable[..., Tensor], *, check_on: Dataset,
                 inputs: Mapping[str, Sequence[str]] | None = None, name: str = "est") -> Graph:
    """h = g + (h - g): split `node` into `{node}.{name}` (the estimate) and `{node}.resid`.

    With `inputs=None`, `estimate(h)` is a function of the node's output (e.g. a projection
    onto a direction) and both parts read the node's ports. Otherwise `estimate(**inputs)`
    reads only the given ports (e.g. `{"tokens": ["tokens"]}`), and the residual reads the
    node's ports plus those.
    """
    original = graph.nodes[node]
    if not isinstance(original, Node):
        raise RewriteError(f"Cannot add an estimate to input leaf {node!r}.")
    fn = original.fn
    own = set(original.ports)
    if inputs is None:
        parts = {name: Part(lambda **kw: estimate(fn(**kw))),
                 "resid": Part(lambda **kw: (lambda h: h - estimate(h))(fn(**kw)))}
    else:
        extra = {p: list(u) for p, u in inputs.items()}

        def resid(**kw):
            mine = {k: v for k, v in kw.items() if k in own}
            return fn(**mine) - estimate(**{k: kw[k] for k in extra})

        parts = {name: Part(estimate, extra_ports=extra, own_ports=False),
                 "resid": Part(resid, extra_ports=extra)}
    return split_node(graph, node, parts, check_on=check_on)


def previous_position(n_q: int, n_k: int) -> Tensor:
    """[n_q, n_k] mask with 1 where the key is the position just before the query."""
    return torch.ones(n_q, n_k).tril(-1).triu(-1)


def split_attention(graph: Graph, node: str, head_fn: Callable[[Callable | None], Callable],
                    masks: Mapping[str, Callable[[int, int], Tensor]], *,
                    check_on: Dataset) -> Graph:
    """Split attention head `node` into parts whose attention patterns are multiplied by
    `masks` (functions of (n_query, n_key) giving [n_query, n_key] weights that sum to one
    elementwise, e.g. `previous_position` and one minus it). `head_fn(weight)` must return
    the head's node function with its pattern multiplied by `weight` (e.g.
    `lambda w: model.head_fn(0, 0, w)`). Each part is a node `{node}.{name}` with the
    head's own ports, so each can be fed different inputs."""
    return split_node(graph, node, {k: Part(head_fn(m)) for k, m in masks.items()},
                      check_on=check_on)


def complement(mask: Callable[[int, int], Tensor]) -> Callable[[int, int], Tensor]:
    """1 - mask."""
    return lambda n_q, n_k: 1 - mask(n_q, n_k)
