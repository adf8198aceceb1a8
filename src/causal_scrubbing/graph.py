"""The model as a DAG of named nodes with named input ports.

Causal scrubbing talks about *paths*: routes from the model's output down to one of its inputs.
So the model is written as a graph. An `Input` leaf reads one field of a `Dataset`. Every other
`Node` has named input **ports** (an attention head has `q`, `k` and `v`); the value arriving at a
port is the *sum* of the outputs of the nodes wired into it (for a transformer: the residual
stream, decomposed into the heads and MLPs that write to it), and the node's `fn` maps its port
values to its output.

A `Path` runs from the output through `(node, port)` steps to an input leaf. *Treeifying* the
graph gives every path its own copy of the input; causal scrubbing then feeds each copy its own
rows of data. `Graph.run` evaluates the ordinary (untreeified) graph on one batch and can keep
every node's output and every port's input for later reuse.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([
    ...     cs.Input("x"),
    ...     cs.Node("double", lambda inp: 2 * inp, inp=["x"]),
    ...     cs.Node("out", lambda a, b: a * b, a=["double", "x"], b=["x"]),
    ... ], output="out")
    >>> g.forward(cs.Dataset({"x": torch.tensor([1.0, 2.0])})).tolist()
    [3.0, 12.0]
    >>> [str(p) for p in g.paths()]
    ['out.a <- double.inp <- x', 'out.a <- x', 'out.b <- x']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from .data import Dataset
from .errors import GraphError, unknown_name


@dataclass(frozen=True)
class Input:
    """A leaf of the graph: the dataset field `field` (defaults to the node's name)."""

    name: str
    field: str = ""

    def __post_init__(self) -> None:
        if not self.field:
            object.__setattr__(self, "field", self.name)


@dataclass(frozen=True, init=False)
class Node:
    """A computation `fn(**ports)`; each port receives the sum of the named upstream nodes.

    Args:
        name: unique node name, e.g. ``"a1.h0"``.
        fn: called with one keyword argument per port, each a tensor with a leading batch axis.
        **ports: port name -> upstream node name(s) whose outputs are summed into that port.
    """

    name: str
    fn: Callable[..., Tensor] = field(compare=False)
    ports: dict[str, tuple[str, ...]]

    def __init__(self, name: str, fn: Callable[..., Tensor], **ports: str | Sequence[str]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(
            self, "ports", {p: (u,) if isinstance(u, str) else tuple(u) for p, u in ports.items()}
        )

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class Group:
    """Nodes with identical ports that one batched call can compute together (a layer's heads).

    `fn(**ports)` returns `{member: output}`, each equal (up to float rounding) to that
    member's own `fn(**ports)`. `Graph.run` uses it when two or more members are needed and
    read the same sums; a recomputed single node always uses its own `fn`.
    """

    members: tuple[str, ...]
    fn: Callable[..., dict[str, Tensor]] = field(compare=False)


@dataclass(frozen=True)
class Path:
    """A route from the output to an input leaf: `nodes[i]` reads `nodes[i+1]` on `ports[i]`."""

    nodes: tuple[str, ...]
    ports: tuple[str, ...]

    @property
    def leaf(self) -> str:
        return self.nodes[-1]

    def __str__(self) -> str:
        steps = [f"{n}.{p}" for n, p in zip(self.nodes, self.ports)]
        return " <- ".join([*steps, self.nodes[len(self.ports)]])


@dataclass
class Activations:
    """Everything `Graph.run` kept: node outputs and port inputs (the sums), by name."""

    outputs: dict[str, Tensor]
    port_inputs: dict[tuple[str, str], Tensor]
    peak_bytes: int = 0  # most bytes of node values and sums alive at once (with measure_memory)


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):
        err.add_note(note)


class Graph:
    """A DAG of `Input` leaves and `Node`s with one output node.

    Args:
        nodes: the nodes, in any order; names must be unique.
        output: name of the node whose value the loss is computed from.
        module: optional `torch.nn.Module` owning the parameters the node functions use (so the
            graph can be moved with `.to(device)`).
        groups: optional `Group`s of nodes computed together when possible (speed only).
    """

    def __init__(self, nodes: Sequence[Input | Node], output: str, module=None,
                 groups: Sequence[Group] = ()):
        self.nodes: dict[str, Input | Node] = {}
        for n in nodes:
            if not isinstance(n, Input | Node):
                raise GraphError(f"Graph nodes must be cs.Input or cs.Node, got {type(n).__name__}.")
            if n.name in self.nodes:
                raise GraphError(f"Two graph nodes are named {n.name!r}; node names must be unique.")
            self.nodes[n.name] = n
        if output not in self.nodes:
            raise unknown_name("node", output, self.nodes, " (the graph output)")
        self.output = output
        self.module = module
        for n in self.nodes.values():
            if isinstance(n, Input):
                continue
            if not n.ports:
                raise GraphError(f"Node {n.name!r} has no input ports; give it at least one, "
                                 "or make it a cs.Input leaf.")
            for port, ups in n.ports.items():
                if not ups:
                    raise GraphError(f"Port {n.name}.{port} has no upstream nodes.")
                for u in ups:
                    if u not in self.nodes:
                        raise unknown_name("node", u, self.nodes, f" (wired into {n.name}.{port})")
                if len(set(ups)) != len(ups):
                    raise GraphError(f"Port {n.name}.{port} lists an upstream node twice: {ups}.")
        self.order = self._topological_order()
        # upstream[n]: every node some path from n reaches (n excluded).
        self.upstream: dict[str, frozenset[str]] = {}
        for name in self.order:
            node = self.nodes[name]
            ups: set[str] = set()
            if isinstance(node, Node):
                for us in node.ports.values():
                    for u in us:
                        ups.add(u)
                        ups |= self.upstream[u]
            self.upstream[name] = frozenset(ups)
        self._bases_cache: dict[frozenset, dict] = {}
        self._prefixes: dict[tuple[str, ...], list[tuple[str, ...]]] | None = None
        self.groups = tuple(groups)
        self.group_of: dict[str, Group] = {}
        for group in self.groups:
            for m in group.members:
                self.check_node(m, " (a member of a node group)")
                if self.group_of.get(m, group) is not group:
                    raise GraphError(f"Node {m!r} is in two node groups.")
                if self.ports(m) != self.ports(group.members[0]) or self.is_input(m):
                    raise GraphError(f"Node group {group.members}: {m!r} does not have the same "
                                     "ports as the other members; a group's members must share them.")
                self.group_of[m] = group

    def _topological_order(self) -> list[str]:
        """Nodes reachable from the output, inputs first; raises on a cycle."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*trail[trail.index(name):], name])
                raise GraphError(f"The graph has a cycle: {cycle}. A model graph must be a DAG.")
            state[name] = 1
            node = self.nodes[name]
            if isinstance(node, Node):
                for ups in node.ports.values():
                    for u in ups:
                        visit(u, [*trail, name])
            state[name] = 2
            order.append(name)

        visit(self.output, [])
        reachable = list(order)
        for name in self.nodes:  # unreachable nodes are allowed, cycles among them are not
            visit(name, [])
        return reachable

    # ---- structure -------------------------------------------------------------------------

    def is_input(self, name: str) -> bool:
        return isinstance(self.nodes[name], Input)

    def ports(self, name: str) -> dict[str, tuple[str, ...]]:
        """Port name -> upstream node names (empty for an input leaf)."""
        node = self.nodes[name]
        return {} if isinstance(node, Input) else node.ports

    def check_node(self, name: str, where: str = "") -> None:
        if name not in self.nodes:
            raise unknown_name("node", name, self.nodes, where)

    def check_port(self, name: str, port: str, where: str = "") -> None:
        self.check_node(name, where)
        if port not in self.ports(name):
            raise unknown_name("port", port, self.ports(name), f" of node {name!r}{where}")

    def paths(self, start: str | None = None) -> Iterator[Path]:
        """Every path from `start` (default: the output) down to an input leaf, depth first."""

        def walk(nodes: tuple[str, ...], ports: tuple[str, ...]) -> Iterator[Path]:
            here = nodes[-1]
            if self.is_input(here):
                yield Path(nodes, ports)
                return
            for port, ups in self.ports(here).items():
                for u in ups:
                    yield from walk((*nodes, u), (*ports, port))

        yield from walk((start or self.output,), ())

    def count_paths(self) -> int:
        """The number of output-to-input paths (copies of the input after treeifying)."""
        count: dict[str, int] = {}
        for name in self.order:
            ports = self.ports(name)
            count[name] = 1 if not ports else sum(count[u] for us in ports.values() for u in us)
        return count[self.output]

    # ---- evaluation ------------------------------------------------------------------------

    def apply(self, name: str, port_values: dict[str, Tensor]) -> Tensor:
        """Run node `name`'s function on already-summed port values."""
        node = self.nodes[name]
        assert isinstance(node, Node)
        try:
            return node.fn(**port_values)
        except Exception as err:
            _add_note(err, f"(while computing graph node {name!r})")
            raise

    def apply_group(self, group: Group, port_values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run `group`'s batched function on already-summed port values."""
        try:
            return group.fn(**port_values)
        except Exception as err:
            _add_note(err, f"(while computing the node group {group.members[0]!r}...)")
            raise

    def run(self, batch: Dataset, keep_ports: bool = True, outputs: set[str] | None = None,
            ports: set[tuple[str, str]] | None = None,
            patch: dict[tuple[str, str], Tensor] | None = None,
            measure_memory: bool = False) -> Activations:
        """Evaluate the graph on `batch`, keeping node outputs and port input sums.

        With `outputs` / `ports` given, only what those need is computed, and only those are
        kept (everything else is freed as soon as its last consumer has run). `patch` maps
        `(node, port)` to a value that node reads on that port instead of the computed sum,
        as a forward hook on the port's input would (everything upstream is still computed).
        With `measure_memory`, `peak_bytes` of the result is the most memory the node values
        and partial sums held at once (tensors inside node functions are not seen).
        """
        patch = patch or {}
        patched_nodes = {node for node, _ in patch}
        if outputs is None and ports is None:  # everything
            outputs = set(self.order)
            ports = {(n, p) for n in self.order for p in self.ports(n)} if keep_ports else set()
        outputs, ports = set(outputs or ()), set(ports or ())
        kept_sums = {self.ports(node)[port] for node, port in ports}
        needed = outputs | {u for ups in kept_sums for u in ups}
        closure = set(needed)
        for name in needed:
            closure |= self.upstream[name]
        order = [n for n in self.order if n in closure]
        # Port inputs are sums over upstream tuples. Each distinct tuple is summed once, left
        # to right, adding every value as soon as it exists, so values (and sums) can be freed
        # as early as possible: memory stays near one layer's worth, however wide the graph.
        # A tuple that extends another (the residual stream read by a later layer) starts from
        # that tuple's finished sum, so each layer adds only its new terms (same order, same
        # numbers as summing from scratch).
        readers_left: dict[tuple[str, ...], int] = dict.fromkeys(kept_sums, 0)
        for n in order:
            for ups in self.ports(n).values():
                readers_left[ups] = readers_left.get(ups, 0) + 1
        base = self._prefix_bases(frozenset(readers_left))
        dependents: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for ups, b in base.items():
            readers_left[b] += 1  # the extension reads the base's sum once
            dependents.setdefault(b, []).append(ups)
        in_tuples: dict[str, list[tuple[str, ...]]] = {}
        adds_left: dict[str, int] = {}
        for ups in readers_left:
            for u in ups[len(base[ups]) if ups in base else 0:]:
                in_tuples.setdefault(u, []).append(ups)
                adds_left[u] = adds_left.get(u, 0) + 1
        partial: dict[tuple[str, ...], list] = {ups: [0, None] for ups in readers_left}
        values: dict[str, Tensor] = {}

        def release(name: str) -> None:
            if adds_left.get(name, 0) == 0 and name not in needed:
                values.pop(name, None)

        def read_done(ups: tuple[str, ...]) -> None:
            readers_left[ups] -= 1
            if readers_left[ups] == 0 and ups not in kept_sums:
                del partial[ups]

        def advance(ups: tuple[str, ...]) -> None:
            state = partial[ups]
            if state[0] == 0 and ups in base:
                b = base[ups]
                if partial[b][0] < len(b):
                    return  # wait for the base sum to finish
                state[0], state[1] = len(b), partial[b][1]
                read_done(b)
            while state[0] < len(ups) and ups[state[0]] in values:
                u = ups[state[0]]
                state[1] = values[u] if state[1] is None else state[1] + values[u]
                state[0] += 1
                adds_left[u] -= 1
                release(u)
            if state[0] == len(ups):
                for ext in dependents.get(ups, ()):
                    advance(ext)

        in_closure = set(order)
        peak = 0
        computed: set[str] = set()  # computed ahead of their turn, by their group
        for name in order:
            node = self.nodes[name]
            if isinstance(node, Input):
                values[name] = batch[node.field]
            else:
                if name not in computed:
                    port_values = {port: patch[(name, port)] if (name, port) in patch else partial[ups][1]
                                   for port, ups in node.ports.items()}
                    group = self.group_of.get(name)
                    members = [m for m in group.members if m in in_closure] if group else []
                    if patched_nodes.intersection(members):
                        members = []  # patched members read their own inputs
                    if len(members) > 1:
                        outs = self.apply_group(group, port_values)
                        for m in members:
                            values[m] = outs[m]
                        computed.update(members)
                    else:
                        values[name] = self.apply(name, port_values)
                for ups in node.ports.values():
                    read_done(ups)
            for ups in in_tuples.get(name, ()):
                advance(ups)
            release(name)
            if measure_memory:
                alive = [v for k, v in values.items() if not self.is_input(k)]
                alive += [st[1] for st in partial.values() if isinstance(st[1], Tensor)]
                peak = max(peak, tensor_bytes(alive))
        kept_ports = {(node, port): partial[self.ports(node)[port]][1] for node, port in ports}
        return Activations({k: v for k, v in values.items() if k in outputs}, kept_ports, peak)

    def _prefix_bases(self, tuples: frozenset[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[str, ...]]:
        """For each tuple, the longest other tuple in `tuples` that is a strict prefix of it."""
        if tuples not in self._bases_cache:
            if self._prefixes is None:  # every port tuple's strict prefixes that are port tuples
                all_tuples = {ups for n in self.order for ups in self.ports(n).values()}
                self._prefixes = {ups: [ups[:k] for k in range(len(ups) - 1, 0, -1)
                                        if ups[:k] in all_tuples] for ups in all_tuples}
            found = {}
            for ups in tuples:
                base = next((p for p in self._prefixes.get(ups, ()) if p in tuples), None)
                if base is not None:
                    found[ups] = base
            self._bases_cache[tuples] = found
        return self._bases_cache[tuples]

    def with_groups(self, groups: Sequence[Group]) -> Graph:
        """The same graph with `groups` added (speed only: a group computes its members at once)."""
        return Graph(list(self.nodes.values()), self.output, self.module, [*self.groups, *groups])

    def forward(self, batch: Dataset) -> Tensor:
        """The ordinary, untreeified model output on `batch`."""
        return self.run(batch, outputs={self.output}, ports=set()).outputs[self.output]

    __call__ = forward

    def to(self, device) -> Graph:
        if self.module is not None:
            self.module.to(device)
        return self

    def __repr__(self) -> str:
        n_inputs = sum(isinstance(n, Input) for n in self.nodes.values())
        return (f"Graph({len(self.nodes) - n_inputs} nodes, {n_inputs} inputs, "
                f"output={self.output!r}, {self.count_paths()} paths)")


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of memory behind `tensors`, counting each storage once (views share one)."""
    storages = {}
    for t in tensors:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
    return sum(storages.values())


def sum_values(values: Sequence[Tensor]) -> Tensor:
    """Sum tensors left to right without modifying any of them."""
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total
