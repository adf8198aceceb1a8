"""The fast evaluator: each distinct (node, assignment) computed once, lanes batched together.

Walk the graph from the output with a *state*: every interpretation node's matcher state on
the current path prefix. Two prefixes that reach the same graph node in the same state have
the same assignment of datasets to every path below them, so the value there is computed once
(memoised on (node, state)). As soon as a state can no longer be entered by any child of its
owner, every path below reads one dataset -- a *lane* -- and the value is just the clean
activation of that node (or of that port's input sum) on the lane's rows. All clean activations
come from one forward pass over the distinct lanes concatenated along the batch axis; only the
nodes whose inputs mix lanes are recomputed.

`compile_plan` does the walk once per hypothesis and returns a straight-line `Plan`; `evaluate`
runs it on chunks of reference rows so memory stays bounded.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: 2 * i, i="x"),
    ...               cs.Node("out", lambda l, r: l + r, l="a", r="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.arange(8.0)})
    >>> root = cs.InterpNode("out", children=[
    ...     cs.InterpNode("a", cs.Exact(), paths=cs.through("a"))])
    >>> corr = cs.check(g, root)
    >>> s = cs.draw(corr, ds, torch.arange(8), torch.Generator().manual_seed(0))
    >>> plan = cs.engine.compile_plan(corr)
    >>> plan.lanes   # the datasets: a's (node 1) and the root's "other" one
    [('ds', 1), ('other', 0)]
    >>> [op.node for op in plan.ops]  # a on its lane's input sum, then out mixes the lanes
    ['a', 'out']
    >>> torch.allclose(cs.engine.evaluate(corr, ds, s), cs.reference.evaluate(corr, ds, s))
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data import Dataset
from .draws import LaneKey, Sample
from .graph import Graph, sum_values, tensor_bytes
from .hypothesis import Correspondence, State

log = logging.getLogger(__name__)

#: Peak memory of a chunk over the most its node values and sums held at once: room for the
#: tensors inside node functions (attention scores, MLP hidden layers) that the count misses.
#: Measured on CPU (resident memory over the count): paren Ex1b 4.1, Ex4 4.2, induction naive
#: 4.0, refined 2.5, the GPT-2-shaped IOI workload 3.8.
HIDDEN_TRANSIENTS = 4.5

# A reference to a value in the plan:
#   ("clean", node, lane)         the node's clean output on the lane's rows
#   ("port", node, port, lane)    the clean input sum of that port on the lane's rows
#   ("op", k)                     the result of plan.ops[k]
Ref = tuple


@dataclass
class Op:
    """Recompute `node` from per-port lists of terms (summed in order), for the claim of
    interpretation node `owner` (its index in `Correspondence.nodes`)."""

    node: str
    ports: dict[str, list[Ref]]
    owner: int = 0


@dataclass
class Plan:
    """Straight-line program computing the scrubbed output from clean lane activations."""

    lanes: list[LaneKey]
    ops: list[Op]
    result: Ref
    stats: dict[str, int] = field(default_factory=dict)


def compile_plan(corr: Correspondence) -> Plan:
    """Walk (graph node, state) pairs from the output and emit the ops that mix lanes."""
    graph = corr.graph
    ops: list[Op] = []
    lanes: dict[LaneKey, None] = {}
    memo: dict[tuple[str, State], Ref] = {}
    same: dict[tuple, Ref] = {}  # op signature -> its result
    port_of = {ups: (n, p) for n in reversed(graph.order) for p, ups in graph.ports(n).items()}

    def settled(state: State, at_leaf: bool) -> LaneKey | None:
        lane = corr.lane(state)
        if lane is None and at_leaf:  # no child claimed the path before it ended
            lane = ("other", corr.owner(state))
        return lane

    def visit(node: str, state: State) -> Ref:
        lane = settled(state, graph.is_input(node))
        if lane is not None:
            lanes[lane] = None
            return ("clean", node, lane)
        key = (node, state)
        if key in memo:
            return memo[key]
        ports: dict[str, list[Ref]] = {}
        for port, upstream in graph.ports(node).items():
            port_state = corr.on_port(state, node, port)
            port_lane = corr.lane(port_state)
            if port_lane is not None:
                lanes[port_lane] = None
                ports[port] = [("port", node, port, port_lane)]
            else:
                terms = [visit(u, corr.on_node(port_state, u)) for u in upstream]
                ports[port] = _fold_clean_prefix(terms, upstream, port_of)
        signature = (node, tuple((p, tuple(terms)) for p, terms in ports.items()))
        if signature not in same:  # two states can still need the very same computation
            ops.append(Op(node, ports, corr.owner(state)))
            same[signature] = ("op", len(ops) - 1)
        memo[key] = same[signature]
        return memo[key]

    result = visit(graph.output, corr.start())
    ops, result = _lift_terminal_reads(graph, ops, result, port_of)
    return Plan(list(lanes), ops, result, {"lanes": len(lanes), "mixing_ops": len(ops)})


def _lift_terminal_reads(graph: Graph, ops: list[Op], result: Ref,
                         port_of: dict[tuple[str, ...], tuple[str, str]]) -> tuple[list[Op], Ref]:
    """Let lanes share one batched clean pass by asking them for port sums, not node outputs.

    A clean read ("clean", u, lane) of a node that nothing else the lane needs depends on is
    computed once whether the clean pass or an op computes it, so it becomes an op applying u
    to its clean port sums (nodes of a `Group` stay in the pass, which batches them). Port
    reads are then named by the first port summing the same upstream nodes, so lanes that read
    the same residual stream at different nodes (per-position splits) need the same things
    and run in one pass.
    """
    refs = [result] + [r for op in ops for terms in op.ports.values() for r in terms]
    outs: dict[LaneKey, set[str]] = {}
    sums: dict[LaneKey, set[tuple[str, ...]]] = {}
    for r in refs:
        if r[0] == "clean":
            outs.setdefault(r[2], set()).add(r[1])
        elif r[0] == "port":
            sums.setdefault(r[3], set()).add(graph.ports(r[1])[r[2]])
    lifted: dict[tuple[str, LaneKey], int] = {}
    for lane, names in outs.items():
        below: set[str] = set()
        for n in names:
            below |= graph.upstream[n]
        for ups in sums.get(lane, ()):
            for u in ups:
                below |= graph.upstream[u] | {u}
        for u in sorted(names):
            if not graph.is_input(u) and u not in below and u not in graph.group_of:
                lifted[(u, lane)] = len(lifted)

    def canonical(r: Ref) -> Ref:
        if r[0] == "op":
            return ("op", r[1] + len(lifted))
        if r[0] == "clean" and (r[1], r[2]) in lifted:
            return ("op", lifted[(r[1], r[2])])
        if r[0] == "port":
            return ("port", *port_of[graph.ports(r[1])[r[2]]], r[3])
        return r

    new_ops = [Op(u, {p: [canonical(("port", u, p, lane))] for p in graph.ports(u)}, lane[1])
               for (u, lane) in lifted]
    new_ops += [Op(op.node, {p: [canonical(r) for r in terms] for p, terms in op.ports.items()}, op.owner)
                for op in ops]
    return new_ops, canonical(result)


def _fold_clean_prefix(terms: list[Ref], upstream: tuple[str, ...],
                      port_of: dict[tuple[str, ...], tuple[str, str]]) -> list[Ref]:
    """Replace the longest run of leading clean terms of one lane that some port of the graph
    sums (the residual stream up to a layer) by that port's clean input sum.

    The clean pass computes that sum anyway, and adding the remaining terms after it keeps
    the left-to-right order, so the result is bit-for-bit the same as adding term by term.
    """
    if not terms or terms[0][0] != "clean":
        return terms
    lane = terms[0][2]
    run = 0
    while run < len(terms) and terms[run][0] == "clean" and terms[run][2] == lane:
        run += 1
    for k in range(run, 1, -1):
        if upstream[:k] in port_of:
            node, port = port_of[upstream[:k]]
            return [("port", node, port, lane), *terms[k:]]
    return terms


def distinct_lanes(corr: Correspondence, sample: Sample, lanes: list[LaneKey]
                   ) -> tuple[list[Tensor], dict[LaneKey, int]]:
    """Deduplicate lanes whose row indices are identical; map each lane to its slot."""
    slots: list[Tensor] = []
    seen: dict[bytes, int] = {}
    slot_of: dict[LaneKey, int] = {}
    for key in lanes:
        rows = sample.lane(corr, key)
        sig = rows.numpy().tobytes()
        if sig not in seen:
            seen[sig] = len(slots)
            slots.append(rows)
        slot_of[key] = seen[sig]
    return slots, slot_of


def lane_needs(plan: Plan) -> dict[LaneKey, tuple[set[str], set[tuple[str, str]]]]:
    """For each lane: the node outputs and port inputs the plan reads from its clean pass."""
    needs: dict[LaneKey, tuple[set[str], set[tuple[str, str]]]] = {
        lane: (set(), set()) for lane in plan.lanes}
    refs = [plan.result] + [r for op in plan.ops for terms in op.ports.values() for r in terms]
    for ref in refs:
        if ref[0] == "clean":
            needs[ref[2]][0].add(ref[1])
        elif ref[0] == "port":
            needs[ref[3]][1].add((ref[1], ref[2]))
    return needs


def slot_needs(corr: Correspondence, sample: Sample, plan: Plan
               ) -> tuple[list[Tensor], dict[LaneKey, int], dict[int, tuple[set[str], set[tuple[str, str]]]]]:
    """The distinct lanes' rows, each lane's slot, and what each slot's clean pass must keep."""
    slots, slot_of = distinct_lanes(corr, sample, plan.lanes)
    needs: dict[int, tuple[set[str], set[tuple[str, str]]]] = {i: (set(), set()) for i in range(len(slots))}
    for lane, (outs, ports) in lane_needs(plan).items():
        needs[slot_of[lane]][0].update(outs)
        needs[slot_of[lane]][1].update(ports)
    return slots, slot_of, needs


def evaluate(corr: Correspondence, table: Dataset, sample: Sample, *, chunk_size: int | None = None,
             memory_mb: float | None = None, plan: Plan | None = None,
             reduce: Callable[[Tensor, int, int], Tensor] | None = None,
             progress: bool = False) -> Tensor:
    """The scrubbed model output [n, ...] for `sample`, in chunks of reference rows
    (`progress`: a progress bar over the rows).

    Lanes with identical rows are computed once. Lanes that need the same clean activations
    are concatenated into one forward pass, which computes only those activations (and what
    they depend on). `chunk_size` defaults to what fits in `memory_mb` (default
    `default_memory_mb`: 512 MB on CPU, a quarter of the free GPU memory), measured on a small
    probe chunk (the first 8 rows; the estimate is logged). `table` must already be on the
    device the graph runs on. With `reduce`, each chunk's output is replaced by
    `reduce(output, start, stop)` (e.g. its per-example loss on reference rows [start, stop))
    before the chunks are joined, so a large output (an LM's logits) never exists for all
    rows at once.
    """
    reduce = reduce or (lambda out, start, stop: out)
    plan = plan or compile_plan(corr)
    slots, slot_of, needs = slot_needs(corr, sample, plan)
    groups: dict[tuple[frozenset, frozenset], list[int]] = {}
    for i, (outs, ports) in needs.items():
        groups.setdefault((frozenset(outs), frozenset(ports)), []).append(i)
    n = len(sample)
    outputs = []
    with torch.inference_mode():
        # A small first chunk measures what a row holds; the chunk size follows from it.
        probe = min(n, 8)
        out, nbytes = _run_chunk(corr, table, plan, slots, slot_of, groups, 0, probe, True)
        outputs.append(reduce(out, 0, probe))
        per_row = HIDDEN_TRANSIENTS * nbytes / probe
        if chunk_size is None:
            budget = memory_mb if memory_mb is not None else default_memory_mb(table.device)
            chunk_size = max(1, int(budget * 2**20 / max(1.0, per_row)))
        log.info("engine: %d lanes (%d distinct), %d mixing ops; chunks of %d rows, estimated "
                 "peak %.0f MB", len(plan.lanes), len(slots), len(plan.ops), min(chunk_size, n),
                 per_row * min(chunk_size, n) / 2**20)
        start = probe
        with tqdm(total=n, initial=probe, unit="row", desc="evaluating", leave=False,
                  disable=not progress or n <= probe) as bar:
            while start < n:
                stop = min(n, start + chunk_size)
                out = _run_chunk(corr, table, plan, slots, slot_of, groups, start, stop)[0]
                outputs.append(reduce(out, start, stop))
                bar.update(stop - start)
                start = stop
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def op_batches(graph: Graph, plan: Plan) -> list[list[int]]:
    """The plan's ops in order, with ops of one node `Group` that read identical terms put
    together (they are computed by one call of the group's function)."""
    batches: list[list[int]] = []
    index: dict[tuple, int] = {}
    for k, op in enumerate(plan.ops):
        group = graph.group_of.get(op.node)
        if group is None:
            batches.append([k])
            continue
        key = (id(group), tuple((p, tuple(t)) for p, t in op.ports.items()))
        if key in index:
            batches[index[key]].append(k)
        else:
            index[key] = len(batches)
            batches.append([k])
    return batches


def default_memory_mb(device: torch.device) -> float:
    """The memory budget of a chunk when none is given: 512 MB on CPU (on paren, 1 GB chunks
    were no faster and peaked 1.2 GB higher: the C allocator keeps freed blocks), a quarter of
    what is free on a CUDA device (a GPU runs small chunks far below its speed)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1024.0, free / 4 / 2**20)
    return 512.0


def _run_chunk(corr: Correspondence, table: Dataset, plan: Plan, slots: list[Tensor],
               slot_of: dict[LaneKey, int], groups: dict, start: int, stop: int,
               measure_memory: bool = False) -> tuple[Tensor, int]:
    """Run the plan on reference rows [start, stop); with `measure_memory`, also return the
    most bytes its activations held at once (0 otherwise)."""
    graph = corr.graph
    m = stop - start
    where: dict[int, tuple[int, int]] = {}  # slot -> (group index, offset)
    acts = []
    peak = kept = 0
    for g, ((outs, ports), members) in enumerate(groups.items()):
        rows = torch.cat([slots[i][start:stop] for i in members])
        act = graph.run(table.rows(rows), outputs=set(outs), ports=set(ports),
                        measure_memory=measure_memory)
        acts.append(act)
        if measure_memory:  # earlier passes' kept activations stay alive during this one
            peak = max(peak, kept + act.peak_bytes)
            kept += tensor_bytes([*act.outputs.values(), *act.port_inputs.values()])
        for j, i in enumerate(members):
            where[i] = (g, j * m)

    def lookup(ref: Ref, results: list[Tensor]) -> Tensor:
        if ref[0] == "op":
            return results[ref[1]]
        g, offset = where[slot_of[ref[-1]]]
        full = acts[g].outputs[ref[1]] if ref[0] == "clean" else acts[g].port_inputs[(ref[1], ref[2])]
        return full[offset:offset + m]

    results: list[Tensor] = [None] * len(plan.ops)  # type: ignore[list-item]
    for batch in op_batches(graph, plan):
        first = plan.ops[batch[0]]
        port_values = {p: sum_values([lookup(r, results) for r in terms])
                       for p, terms in first.ports.items()}
        if len(batch) == 1:
            results[batch[0]] = graph.apply(first.node, port_values)
        else:  # group members reading the same inputs: one batched call
            outs = graph.apply_group(graph.group_of[first.node], port_values)
            for k in batch:
                results[k] = outs[plan.ops[k].node]
    if measure_memory:
        peak = max(peak, kept + tensor_bytes(results))
    return lookup(plan.result, results), peak
