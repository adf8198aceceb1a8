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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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


@dataclass(frozen=True)
class Selection:
    """What a position-selecting node promises: its output is its one port's input at
    `positions` along `axis`, and zero at the other positions of the `size` that the split it
    belongs to covers (`rewrites.split_positions` makes such nodes). The engine uses the promise
    to take positions by index instead of adding masked full-width copies; the node's `fn`
    still computes the same value the literal way."""

    port: str
    positions: tuple[int, ...]
    axis: int
    size: int

    def runs(self) -> list[tuple[int, int]]:
        """The positions as (start, length) runs of consecutive positions."""
        out: list[tuple[int, int]] = []
        for p in self.positions:
            if out and out[-1][0] + out[-1][1] == p:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((p, 1))
        return out


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
    selects: Selection | None = field(default=None, compare=False)

    def __init__(self, name: str, fn: Callable[..., Tensor], **ports: str | Sequence[str]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(
            self, "ports", {p: (u,) if isinstance(u, str) else tuple(u) for p, u in ports.items()}
        )
        object.__setattr__(self, "selects", None)

    def selecting(self, selection: Selection) -> Node:
        """This node, marked as computing `selection` (which its `fn` must compute)."""
        if selection.port not in self.ports or len(self.ports) != 1:
            raise GraphError(f"Node {self.name!r}: a selection reads the node's only port; "
                             f"{selection.port!r} is not it (ports {sorted(self.ports)}).")
        node = Node(self.name, self.fn, **self.ports)
        object.__setattr__(node, "selects", selection)
        return node

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


class PortSums:
    """The port inputs of one evaluation of a graph, summed as node values arrive.

    A port's input is the sum of its upstream nodes' outputs, an *upstream tuple*. Invariant:
    every tuple that some node of the run reads, or that the caller keeps, is summed exactly
    once, left to right in the tuple's order, each term added as soon as its value exists and
    every earlier term has been added. A tuple that extends a shorter tuple of the run (the
    residual stream read by a later layer) starts from that tuple's finished sum, so each
    layer adds only its new terms: the same additions in the same order, so the same numbers,
    as summing from scratch. A node's value is dropped once every tuple holding it has added
    it (unless the caller wants it), and a tuple's sum once its last reader has read it
    (unless kept), so memory stays near one layer's worth however wide the graph.

    `Graph.run` drives it: `put(name, value)` when a node's value exists, `read(ups)` for a
    finished sum, `done_reading(ups)` after each reader.

    Example:
        >>> import torch, causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i + 1, i="x"),
        ...               cs.Node("out", lambda r: r, r=["x", "a"])], output="out")
        >>> sums = PortSums(g, g.order, kept=set(), wanted={"out"})
        >>> sums.put("x", torch.tensor([1.0]))
        >>> sums.done_reading(("x",))   # a read its port
        >>> sums.put("a", torch.tensor([2.0]))
        >>> sums.read(("x", "a")).tolist(), sorted(sums.values)   # x and a are no longer held
        ([3.0], [])
    """

    def __init__(self, graph: Graph, order: list[str], kept: set[tuple[str, ...]], wanted: set[str],
                 ports: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None):
        self.kept = kept
        self.wanted = wanted | {u for ups in kept for u in ups}
        #: node -> its value, while some tuple still has to add it (or the caller wants it)
        self.values: dict[str, Tensor] = {}
        # readers_left[ups]: reads still to come (a port reading it, or an extension's start)
        self.readers_left: dict[tuple[str, ...], int] = dict.fromkeys(kept, 0)
        for n in order:
            for ups in (ports or graph.run_ports).get(n, {}).values():
                self.readers_left[ups] = self.readers_left.get(ups, 0) + 1
        self.base = graph._prefix_bases(frozenset(self.readers_left))
        self.extensions: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for ups, b in self.base.items():
            self.readers_left[b] += 1  # the extension reads the base's sum once
            self.extensions.setdefault(b, []).append(ups)
        # the tuples each node is a term of (beyond the base), and how many still have to add it
        self.in_tuples: dict[str, list[tuple[str, ...]]] = {}
        self.adds_left: dict[str, int] = {}
        for ups in self.readers_left:
            for u in ups[len(self.base[ups]) if ups in self.base else 0:]:
                self.in_tuples.setdefault(u, []).append(ups)
                self.adds_left[u] = self.adds_left.get(u, 0) + 1
        # tuple -> (terms added so far, their sum or None)
        self.partial: dict[tuple[str, ...], tuple[int, Tensor | None]] = {
            ups: (0, None) for ups in self.readers_left}

    def put(self, name: str, value: Tensor) -> None:
        """Node `name`'s value exists: store it and let it `arrive`."""
        self.values[name] = value
        self.arrived(name)

    def arrived(self, name: str) -> None:
        """Node `name`'s turn (its value is in `values`, or was and has been added already):
        add it to every tuple waiting for it, then drop it if nothing else needs it."""
        for ups in self.in_tuples.get(name, ()):
            self._advance(ups)
        self._release(name)

    def read(self, ups: tuple[str, ...]) -> Tensor:
        """The finished sum of `ups` (every term added)."""
        count, total = self.partial[ups]
        assert count == len(ups) and total is not None, f"sum of {ups} read before it was finished"
        return total

    def done_reading(self, ups: tuple[str, ...]) -> None:
        """One reader of `ups` has read it; drop the sum after the last one (unless kept)."""
        self.readers_left[ups] -= 1
        if self.readers_left[ups] == 0 and ups not in self.kept:
            del self.partial[ups]

    def alive(self, exclude: Callable[[str], bool] = lambda name: False) -> list[Tensor]:
        """The tensors held now: node values (but those `exclude` names) and partial sums."""
        out = [v for k, v in self.values.items() if not exclude(k)]
        return out + [t for _, t in self.partial.values() if isinstance(t, Tensor)]

    def _release(self, name: str) -> None:
        if self.adds_left.get(name, 0) == 0 and name not in self.wanted:
            self.values.pop(name, None)

    def _advance(self, ups: tuple[str, ...]) -> None:
        """Add every term of `ups` that can be added now, in order; finish its extensions."""
        count, total = self.partial[ups]
        if count == 0 and ups in self.base:
            b = self.base[ups]
            if self.partial[b][0] < len(b):
                return  # wait for the base sum to finish
            count, total = self.partial[b]
            self.done_reading(b)
        while count < len(ups) and ups[count] in self.values:
            u = ups[count]
            total = self.values[u] if total is None else total + self.values[u]
            count += 1
            self.adds_left[u] -= 1
            self._release(u)
        self.partial[ups] = (count, total)
        if count == len(ups):
            for ext in self.extensions.get(ups, ()):
                self._advance(ext)


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
            reach: set[str] = set()
            if isinstance(node, Node):
                for us in node.ports.values():
                    for u in us:
                        reach.add(u)
                        reach |= self.upstream[u]
            self.upstream[name] = frozenset(reach)
        self._find_partitions()
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

    def _find_partitions(self) -> None:
        """Find the ports whose upstream nodes are position selections (`Selection`) of one
        upstream tuple that together cover every position once: such a port's input is that
        tuple's sum, bit for bit (each position adds one value and zeros), so `run` reads the
        sum directly instead of computing the parts (`partitions`, `run_ports`)."""
        #: (node, port) -> (the tuple its parts select from, axis, positions covered)
        self.partitions: dict[tuple[str, str], tuple[tuple[str, ...], int, int]] = {}
        #: node -> its ports as `run` evaluates them (partitioned ports read the split tuple)
        self.run_ports: dict[str, dict[str, tuple[str, ...]]] = {}
        self.literal_ports = {n: node.ports for n, node in self.nodes.items() if isinstance(node, Node)}
        for name, node in self.nodes.items():
            if isinstance(node, Input):
                continue
            ports = dict(node.ports)
            for port, ups in node.ports.items():
                parts = [n for u in ups if isinstance(n := self.nodes[u], Node) and n.selects is not None]
                if len(parts) != len(ups):
                    continue
                sels = [n.selects for n in parts if n.selects is not None]
                source = {n.ports[sel.port] for n, sel in zip(parts, sels)}
                shape = {(sel.axis, sel.size) for sel in sels}
                covered = sorted(p for sel in sels for p in sel.positions)
                if len(source) == 1 and len(shape) == 1 and covered == list(range(sels[0].size)):
                    ports[port] = source.pop()
                    self.partitions[(name, port)] = (ports[port], sels[0].axis, sels[0].size)
            self.run_ports[name] = ports
        self._run_upstream: dict[str, frozenset[str]] = {}
        for name in self.order:
            reach: set[str] = set()
            for us in self.run_ports.get(name, {}).values():
                for u in us:
                    reach.add(u)
                    reach |= self._run_upstream[u]
            self._run_upstream[name] = frozenset(reach)

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
            measure_memory: bool = False, literal: bool = False) -> Activations:
        """Evaluate the graph on `batch`, keeping node outputs and port input sums.

        With `outputs` / `ports` given, only what those need is computed, and only those are
        kept (everything else is freed as soon as its last consumer has run). `patch` maps
        `(node, port)` to a value that node reads on that port instead of the computed sum,
        as a forward hook on the port's input would (everything upstream is still computed).
        With `measure_memory`, `peak_bytes` of the result is the most memory the node values
        and partial sums held at once (tensors inside node functions are not seen).

        A port whose parts select positions of one sum and cover them all (`partitions`) reads
        that sum: the same values, without computing the parts (unless asked for them; or
        with `literal`, which computes every port as the sum of its parts, as rewrites check).
        """
        patch = patch or {}
        patched_nodes = {node for node, _ in patch}
        if outputs is None and ports is None:  # everything
            outputs = set(self.order)
            ports = {(n, p) for n in self.order for p in self.ports(n)} if keep_ports else set()
        outputs, ports = set(outputs or ()), set(ports or ())
        run_ports = self.literal_ports if literal else self.run_ports
        upstream = self.upstream if literal else self._run_upstream
        kept_sums = {run_ports[node][port] for node, port in ports}
        needed = outputs | {u for ups in kept_sums for u in ups}
        closure = set(needed)
        for name in needed:
            closure |= upstream[name]
        order = [n for n in self.order if n in closure]
        sums = PortSums(self, order, kept_sums, outputs, run_ports)
        peak = 0
        computed: set[str] = set()  # some ahead of their turn, by their group
        for name in order:
            node = self.nodes[name]
            if isinstance(node, Input):
                sums.put(name, batch[node.field])
            else:
                if name not in computed:
                    port_values = {port: patch[(name, port)] if (name, port) in patch
                                   else self._read_port(sums, name, port, ups, literal)
                                   for port, ups in run_ports[name].items()}
                    group = self.group_of.get(name)
                    members = [m for m in group.members if m in closure] if group else []
                    if patched_nodes.intersection(members):
                        members = []  # patched members read their own inputs
                    if group is not None and len(members) > 1:
                        outs = self.apply_group(group, port_values)
                        for m in members:
                            sums.values[m] = outs[m]
                        computed.update(members)
                    else:
                        sums.values[name] = self.apply(name, port_values)
                for ups in run_ports[name].values():
                    sums.done_reading(ups)
                sums.arrived(name)
            if measure_memory:
                peak = max(peak, tensor_bytes(sums.alive(exclude=self.is_input)))
        kept_ports = {(node, port): self._read_port(sums, node, port, run_ports[node][port], literal)
                      for node, port in ports}
        return Activations({k: v for k, v in sums.values.items() if k in outputs}, kept_ports, peak)

    def _read_port(self, sums: PortSums, node: str, port: str, ups: tuple[str, ...],
                   literal: bool) -> Tensor:
        """The finished sum `ups` of `node.port`, checked against its partition's size."""
        value = sums.read(ups)
        if not literal and (node, port) in self.partitions:
            _, axis, size = self.partitions[(node, port)]
            if value.shape[axis] != size:
                raise GraphError(f"Port {node}.{port} is split into positions 0..{size - 1} "
                                 f"(split_positions), but its input has {value.shape[axis]} "
                                 f"positions along axis {axis}; split it over every position "
                                 "of the data.")
        return value

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

    def forward(self, batch: Dataset, literal: bool = False) -> Tensor:
        """The ordinary, untreeified model output on `batch` (`literal`: as in `run`)."""
        return self.run(batch, outputs={self.output}, ports=set(), literal=literal).outputs[self.output]

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
