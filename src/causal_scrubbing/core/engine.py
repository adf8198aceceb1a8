"""The fast evaluator: each distinct (node, assignment) computed once, lanes batched together.

The treeified graph of a hypothesis (`Correspondence.tree`) folds every path prefix into a
*site*: the graph node it reaches and the state of every interpretation node's matcher there.
Two prefixes at the same site have the same assignment of datasets below them, so the value
there is computed once. Below a site whose lane is decided, every path reads one dataset -- a
*lane* -- and the value is just the clean activation of that node (or of that port's input
sum) on the lane's rows. All clean activations come from batched forward passes over the
distinct lanes; only the nodes whose inputs mix lanes are recomputed, by the *ops* of a plan.

`compile_plan` turns the treeified graph into a `Plan`, a straight-line program that
`print(plan)` shows; `evaluate` runs it on chunks of reference rows so memory stays bounded.

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
    >>> print(plan)  # a on its lane's input sum, then out mixes the lanes
    plan: 2 lanes, 2 ops
      L0 = ds[a]
      L1 = other[out]
      %0 = a(i: L0:sum(a.i))  # for 'a'
      %1 = out(l: %0, r: L1:x)  # for 'out'
      result: %1
    >>> torch.allclose(cs.engine.evaluate(corr, ds, s), cs.reference.evaluate(corr, ds, s))
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data import Dataset
from .draws import Sample
from .errors import ScrubError
from .graph import Graph, Selection, sum_values, tensor_bytes
from .hypothesis import Correspondence, Lane, Site, TreeifiedGraph
from .memory import ResidentGuard, settled_mb

log = logging.getLogger(__name__)

#: Peak memory of a chunk over the most its node values and sums held at once: room for the
#: tensors inside node functions (attention scores, MLP hidden layers) that the count misses.
#: Measured on CPU (resident memory over the count): paren Ex1b 4.1, Ex4 4.2, induction naive
#: 4.0, refined 2.5, the GPT-2-shaped IOI workload 3.8.
HIDDEN_TRANSIENTS = 4.5


# ---- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanOutput:
    """Graph node `node`'s output in the clean (ordinary) model run on `lane`'s rows."""

    node: str
    lane: Lane

    def __str__(self) -> str:
        return f"{self.lane}:{self.node}"


@dataclass(frozen=True)
class CleanPortSum:
    """The input sum arriving at `node`'s port `port` in the clean model run on `lane`'s rows."""

    node: str
    port: str
    lane: Lane

    def __str__(self) -> str:
        return f"{self.lane}:sum({self.node}.{self.port})"


@dataclass(frozen=True)
class OpResult:
    """The value computed by `plan.ops[index]`."""

    index: int

    def __str__(self) -> str:
        return f"%{self.index}"


Term = CleanOutput | CleanPortSum | OpResult
"""One summand of a port's input in the plan."""


@dataclass(frozen=True)
class Op:
    """Recompute graph node `node` from per-port terms (each port's terms summed left to
    right), for the claim of interpretation node `serves`."""

    node: str
    ports: tuple[tuple[str, tuple[Term, ...]], ...]
    serves: str

    def reads(self) -> list[Term]:
        return [t for _, terms in self.ports for t in terms]

    def inputs_text(self, term_text: Callable[[Term], str] = str) -> str:
        """`port: term + term, ...`, ports that read the same terms listed together."""
        by_terms: dict[tuple[Term, ...], list[str]] = {}
        for p, terms in self.ports:
            by_terms.setdefault(terms, []).append(p)
        return ", ".join(f"{', '.join(ps)}: {' + '.join(map(term_text, terms))}"
                         for terms, ps in by_terms.items())


@dataclass
class Plan:
    """A straight-line program that computes the scrubbed output from clean lane activations.

    Reading a plan: `lanes` are the datasets the treeified model reads (each is run through
    the ordinary model once, in batched clean passes; `print` numbers them L0, L1, ...);
    `ops[k]` recomputes one graph node whose inputs mix lanes, from terms that are clean
    activations (`CleanOutput`: node n's output on lane L, printed `L:n`; `CleanPortSum`: the
    input sum of n's port p on L, printed `L:sum(n.p)`) or earlier ops' results (`%k`);
    `result` is the scrubbed output. Running the ops in order, each port's terms summed left
    to right, gives exactly what the treeified model computes. `batches` lists the ops in
    order, with ops of one node `Group` that read identical terms together (one call of the
    group's function computes them).
    """

    lanes: list[Lane]
    ops: list[Op]
    result: Term
    batches: list[list[int]] = field(default_factory=list)
    shared_sums: dict[tuple[Term, ...], SharedSum] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, int]:
        return {"lanes": len(self.lanes), "mixing_ops": len(self.ops)}

    def reads(self) -> list[Term]:
        """Every term the plan reads (the result first), in order."""
        return [self.result] + [t for op in self.ops for t in op.reads()]

    def __str__(self) -> str:
        n_lanes, n_ops = len(self.lanes), len(self.ops)
        ids = {lane: f"L{i}" for i, lane in enumerate(self.lanes)}

        def text(t: Term) -> str:
            if isinstance(t, CleanOutput):
                return f"{ids[t.lane]}:{t.node}"
            if isinstance(t, CleanPortSum):
                return f"{ids[t.lane]}:sum({t.node}.{t.port})"
            return str(t)

        lines = [f"plan: {n_lanes} lane{'s' if n_lanes != 1 else ''}, {n_ops} op{'s' if n_ops != 1 else ''}"]
        lines += [f"  {ids[lane]} = {lane}" for lane in self.lanes]
        for batch in self.batches or [[k] for k in range(n_ops)]:
            first = self.ops[batch[0]]
            if len(batch) == 1:
                lines.append(f"  %{batch[0]} = {first.node}({first.inputs_text(text)})"
                             f"  # for {first.serves!r}")
            else:
                targets = ", ".join(f"%{k}" for k in batch)
                nodes = ", ".join(self.ops[k].node for k in batch)
                serves = sorted({self.ops[k].serves for k in batch})
                lines.append(f"  {targets} = [{nodes}]({first.inputs_text(text)})  # for "
                             + ", ".join(map(repr, serves)))
        lines.append(f"  result: {text(self.result)}")
        return "\n".join(lines)


# ---- compiling: three passes over the treeified graph -------------------------------------------


def compile_plan(corr: Correspondence) -> Plan:
    """The plan that evaluates `corr`'s hypothesis: `lower`, then `share_clean_passes`, then
    `batch_group_ops`, then `share_sums`."""
    graph = corr.graph
    return share_sums(batch_group_ops(graph, share_clean_passes(graph, lower(corr.tree))))


def lower(tree: TreeifiedGraph) -> Plan:
    """Pass 1: walk the treeified graph from the output and emit one op per site that mixes lanes.

    Pre: `tree` is a validated hypothesis' treeified graph.
    Post: every op reads only clean terms and earlier ops; no two ops compute the same node
    from the same terms (two sites can need the very same computation); a port whose leading
    terms are clean outputs of one lane that some port of the graph sums reads that port's
    clean sum instead (bit for bit the same); `lanes` lists every lane read, in the order
    first read.
    """
    graph = tree.graph
    ops: list[Op] = []
    lanes: dict[Lane, None] = {}
    memo: dict[Site, Term] = {}
    same: dict[Op, OpResult] = {}  # op -> its result
    port_of = _port_of(graph)

    def visit(site: Site) -> Term:
        lane = tree.lane(site)
        if lane is not None:
            lanes[lane] = None
            return CleanOutput(site.node, lane)
        if site in memo:
            return memo[site]
        ports: list[tuple[str, tuple[Term, ...]]] = []
        for port in tree.ports(site):
            if port.lane is not None:
                lanes[port.lane] = None
                ports.append((port.port, (CleanPortSum(site.node, port.port, port.lane),)))
            else:
                terms = [visit(up) for up in port.inputs]
                upstream = tuple(up.node for up in port.inputs)
                ports.append((port.port, _fold_clean_prefix(terms, upstream, port_of)))
        op = Op(site.node, tuple(ports), tree.names[tree.owner(site.states)])
        key = replace(op, serves="")  # what it computes, whichever claim it serves
        if key not in same:
            ops.append(op)
            same[key] = OpResult(len(ops) - 1)
        memo[site] = same[key]
        return memo[site]

    result = visit(tree.root)
    return Plan(list(lanes), ops, result)


def _port_of(graph: Graph) -> dict[tuple[str, ...], tuple[str, str]]:
    """Upstream tuple -> the first (node, port) of the graph that sums exactly it."""
    return {ups: (n, p) for n in reversed(graph.order) for p, ups in graph.ports(n).items()}


def _fold_clean_prefix(terms: list[Term], upstream: tuple[str, ...],
                       port_of: dict[tuple[str, ...], tuple[str, str]]) -> tuple[Term, ...]:
    """Replace the longest run of leading clean terms of one lane that some port of the graph
    sums (the residual stream up to a layer) by that port's clean input sum.

    The clean pass computes that sum anyway, and adding the remaining terms after it keeps
    the left-to-right order, so the result is bit-for-bit the same as adding term by term.
    """
    first = terms[0] if terms else None
    if not isinstance(first, CleanOutput):
        return tuple(terms)
    run = 0
    while run < len(terms) and isinstance(t := terms[run], CleanOutput) and t.lane == first.lane:
        run += 1
    for k in range(run, 1, -1):
        if upstream[:k] in port_of:
            node, port = port_of[upstream[:k]]
            return (CleanPortSum(node, port, first.lane), *terms[k:])
    return tuple(terms)


def share_clean_passes(graph: Graph, plan: Plan) -> Plan:
    """Pass 2: let lanes share one batched clean pass by asking them for port sums, not outputs.

    Pre: a plan from `lower`.
    Post: the same values, with (a) every clean output read `u@L` that nothing else lane L
    needs depends on turned into an op applying u to its clean port sums, placed first (it
    costs the same whether the clean pass or an op computes it; nodes of a `Group` stay in
    the pass, which batches them); (b) every port-sum read named by the first port of the
    graph that sums the same upstream nodes, so lanes that read the same residual stream at
    different nodes (per-position splits) need the same activations and run in one pass.
    """
    outs: dict[Lane, set[str]] = {}
    sums: dict[Lane, set[tuple[str, ...]]] = {}
    for t in plan.reads():
        if isinstance(t, CleanOutput):
            outs.setdefault(t.lane, set()).add(t.node)
        elif isinstance(t, CleanPortSum):
            sums.setdefault(t.lane, set()).add(graph.ports(t.node)[t.port])
    lifted: dict[tuple[str, Lane], int] = {}
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
    port_of = _port_of(graph)

    def canonical(t: Term) -> Term:
        if isinstance(t, OpResult):
            return OpResult(t.index + len(lifted))
        if isinstance(t, CleanOutput) and (t.node, t.lane) in lifted:
            return OpResult(lifted[(t.node, t.lane)])
        if isinstance(t, CleanPortSum):
            return CleanPortSum(*port_of[graph.ports(t.node)[t.port]], t.lane)
        return t

    ops = [Op(u, tuple((p, (canonical(CleanPortSum(u, p, lane)),)) for p in graph.ports(u)), lane.name)
           for (u, lane) in lifted]
    ops += [Op(op.node, tuple((p, tuple(canonical(t) for t in terms)) for p, terms in op.ports), op.serves)
            for op in plan.ops]
    return Plan(plan.lanes, ops, canonical(plan.result))


def batch_group_ops(graph: Graph, plan: Plan) -> Plan:
    """Pass 3: put together the ops of one node `Group` that read identical terms.

    Pre: any plan. Post: the same ops and result, with `batches` listing every op once, in
    an order that respects dependencies (a batch sits where its first op did, and ops of a
    group reading identical terms depend on nothing the first of them does not), each batch
    either one op or several members of one group computed by one call of its function.
    """
    batches: list[list[int]] = []
    index: dict[tuple, int] = {}
    for k, op in enumerate(plan.ops):
        group = graph.group_of.get(op.node)
        if group is None:
            batches.append([k])
            continue
        key = (id(group), op.ports)
        if key in index:
            batches[index[key]].append(k)
        else:
            index[key] = len(batches)
            batches.append([k])
    return Plan(plan.lanes, plan.ops, plan.result, batches)


@dataclass(frozen=True)
class SharedSum:
    """How one port sum of a plan shares additions with the others (`share_sums`)."""

    base: tuple[Term, ...] | None  # the longest sum computed earlier that this one starts from
    keep_until: int  # the last op batch that starts from this sum (-1: none does)


def share_sums(plan: Plan) -> Plan:
    """Pass 4: let a port sum start from the longest sum of its leading terms computed earlier.

    Pre: a plan with `batches`. Post: the same plan with `shared_sums`, mapping each ops'
    port term tuple (of two or more terms) to the longest earlier tuple that is a prefix of it
    (or the same tuple, read again by a later port), and how long that earlier sum is kept.
    Adding the remaining terms to the kept sum is the same additions in the same order as
    adding all terms, so the values are bit for bit those of the plain sums; the ops of one
    layer read the residual stream up to them, so each layer adds only its own terms.
    """
    base: dict[tuple[Term, ...], tuple[Term, ...] | None] = {}  # first read, in order
    keep: dict[tuple[Term, ...], int] = {}
    for b, batch in enumerate(plan.batches or [[k] for k in range(len(plan.ops))]):
        for _, terms in plan.ops[batch[0]].ports:
            if len(terms) < 2:
                continue
            if terms in base:  # read again: keep the whole sum until then
                keep[terms] = b
                continue
            base[terms] = next((terms[:k] for k in range(len(terms) - 1, 1, -1)
                                if terms[:k] in base), None)
            if base[terms] is not None:
                keep[base[terms]] = b  # type: ignore[index]
    shared = {t: SharedSum(base[t], keep.get(t, -1)) for t in base}
    return replace(plan, shared_sums=shared)


# ---- running a plan -----------------------------------------------------------------------------

Needs = tuple[set[str], set[tuple[str, str]]]
"""What a clean pass must keep: node outputs, and (node, port) input sums."""


@dataclass
class Slots:
    """The distinct drawn rows of a plan's lanes (lanes whose rows are identical share a
    slot), and what each slot's clean pass must keep."""

    rows: list[Tensor]  # slot -> [n] row indices into the table
    slot_of: dict[Lane, int]
    needs: dict[int, Needs]
    keys: list[bytes] = field(default_factory=list)  # slot -> its rows as bytes (a `CleanCache` key)
    same_as: list[int] = field(default_factory=list)  # op -> the first op that computes the same

    def passes(self) -> dict[tuple[frozenset, frozenset], list[int]]:
        """Slots that need the same activations, which one batched clean pass computes."""
        passes: dict[tuple[frozenset, frozenset], list[int]] = {}
        for i, (outs, ports) in self.needs.items():
            passes.setdefault((frozenset(outs), frozenset(ports)), []).append(i)
        return passes


def lane_needs(plan: Plan) -> dict[Lane, Needs]:
    """For each lane: the node outputs and port inputs the plan reads from its clean pass."""
    needs: dict[Lane, Needs] = {lane: (set(), set()) for lane in plan.lanes}
    for t in plan.reads():
        if isinstance(t, CleanOutput):
            needs[t.lane][0].add(t.node)
        elif isinstance(t, CleanPortSum):
            needs[t.lane][1].add((t.node, t.port))
    return needs


def slots(plan: Plan, sample: Sample) -> Slots:
    """Deduplicate the plan's lanes by their drawn rows and gather each slot's needs."""
    rows: list[Tensor] = []
    seen: dict[bytes, int] = {}
    slot_of: dict[Lane, int] = {}
    for lane in plan.lanes:
        r = sample.lane(lane)
        sig = r.numpy().tobytes()
        if sig not in seen:
            seen[sig] = len(rows)
            rows.append(r)
        slot_of[lane] = seen[sig]
    needs: dict[int, Needs] = {i: (set(), set()) for i in range(len(rows))}
    for lane, (outs, ports) in lane_needs(plan).items():
        needs[slot_of[lane]][0].update(outs)
        needs[slot_of[lane]][1].update(ports)
    return Slots(rows, slot_of, needs, list(seen), same_ops(plan, slot_of))


def same_ops(plan: Plan, slot_of: dict[Lane, int]) -> list[int]:
    """For each op, the first op that computes the same value on this draw: the same node
    from the same terms, once lanes drawn with identical rows are one slot and ops found the
    same are one op. The plan's lanes are distinct, but a draw often gives many of them the
    same rows (every lane below an `Exact` claim reads its parent's rows), and then the ops of
    the routes through them repeat one computation (a search's feature candidates: 423 ops
    of one tree on 3 distinct lanes)."""
    same: list[int] = []
    first: dict[tuple, int] = {}

    def canonical(t: Term) -> tuple:
        if isinstance(t, OpResult):
            return ("op", same[t.index])
        if isinstance(t, CleanOutput):
            return ("out", t.node, slot_of[t.lane])
        return ("port", t.node, t.port, slot_of[t.lane])

    for k, op in enumerate(plan.ops):
        key = (op.node, tuple((p, tuple(canonical(t) for t in terms)) for p, terms in op.ports))
        same.append(first.setdefault(key, k))
    return same


class CleanCache:
    """Clean activations kept from one evaluation to the next, for callers that score many
    hypotheses on the same rows (`search`): a lane whose rows an earlier evaluation already ran
    reads its node outputs and port sums from here instead of running the model again, so
    only the mixing ops are recomputed.

    Values are kept per *cell* of reference rows, keyed by the lane's drawn rows, so a cache
    serves one graph and one table (checked). The cells are the chunks of the first
    evaluation (its probe chunk, then chunks of its size); later evaluations run chunks that do not cross
    cells, as large as their own memory budget allows, and read the part of a cell they need
    (a hypothesis with many lanes runs smaller chunks than the one that filled the cache). It
    holds at most `max_mb` (values beyond that are computed, used and not kept; each value is
    kept as its own copy, so that is what it holds); `hits` and `misses` count the lane values
    read from it and computed.

    Example:
        >>> import torch, causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: 2 * i, i="x"),
        ...               cs.Node("out", lambda l, r: l + r, l="a", r="x")], output="out")
        >>> ds = cs.Dataset({"x": torch.arange(8.0)})
        >>> corr = cs.check(g, cs.InterpNode("out", children=[
        ...     cs.InterpNode("a", cs.Exact(), paths=cs.through("a"))]))
        >>> s = cs.draw(corr, ds, torch.arange(8), torch.Generator().manual_seed(0))
        >>> cache = cs.engine.CleanCache()
        >>> first = cs.engine.evaluate(corr, ds, s, cache=cache)
        >>> again = cs.engine.evaluate(corr, ds, s, cache=cache)  # no clean pass this time
        >>> torch.equal(first, again), cache.hits > 0
        (True, True)
    """

    def __init__(self, max_mb: float = 1024.0):
        self.max_bytes = int(max_mb * 2**20)
        # (lane's rows, first row of the cell) -> rows held -> value name -> [rows held, ...]
        self.values: dict[tuple[bytes, int], tuple[int, dict[tuple[str, ...], Tensor]]] = {}
        self.nbytes = 0
        self.cell: int | None = None  # rows of a cell after the first
        self.origin = 0  # rows of the first cell (the probe chunk)
        self.hits = self.misses = 0
        self._bound: tuple[int, int] | None = None

    def bind(self, graph: Graph, table: Dataset) -> None:
        """Check that the cache serves `graph` and `table` (binding it at the first use)."""
        ids = (id(graph), id(table))
        if self._bound is None:
            self._bound = ids
        elif self._bound != ids:
            raise ScrubError("This CleanCache holds activations of another graph or table; use "
                             "one cache per (graph, table) pair.")

    def cell_start(self, row: int) -> int:
        if self.cell is None or row < self.origin:
            return 0
        return self.origin + (row - self.origin) // self.cell * self.cell

    def chunk_end(self, start: int, stop: int) -> int:
        """`stop`, or the end of `start`'s cell if that comes first."""
        if self.cell is None:
            return stop
        return min(stop, self.origin if start < self.origin else self.cell_start(start) + self.cell)

    def lookup(self, key: bytes, start: int, stop: int) -> dict[tuple[str, ...], Tensor]:
        """The values kept for rows [start, stop) (within one cell) of the lane `key`."""
        base = self.cell_start(start)
        held, values = self.values.get((key, base), (0, {}))
        if stop - base > held:
            return {}
        return {k: v[start - base:stop - base] for k, v in values.items()}

    def keep(self, key: bytes, start: int, stop: int, new: dict[tuple[str, ...], Tensor]) -> None:
        """Keep the values of rows [start, stop) of the lane `key`: a cell's first rows, the
        rows that follow those kept of its cell (the values kept for both go on), or more
        values of the rows kept."""
        base = self.cell_start(start)
        held, values = self.values.get((key, base), (0, {}))
        if start == base and stop - base == held:  # more values of the same rows
            add = {k: v for k, v in new.items() if k not in values}
            joined = {**values, **{k: v.clone() for k, v in add.items()}}
        elif start == base + held:  # the rows after those kept (a new cell when held == 0)
            joined = {k: torch.cat([values[k], v]) if held else v.clone()
                      for k, v in new.items() if not held or k in values}
        else:
            return
        # (copies: a value is a slice of a pass over many lanes, which it would keep alive)
        size = sum(v.nbytes for v in joined.values()) - sum(v.nbytes for v in values.values())
        if self.nbytes + size <= self.max_bytes:
            self.values[(key, base)] = (stop - base, joined)
            self.nbytes += size


def evaluate(corr: Correspondence, table: Dataset, sample: Sample, *, chunk_size: int | None = None,
             memory_mb: float | None = None, memory_budget_mb: float | None = None,
             plan: Plan | None = None, reduce: Callable[[Tensor, int, int], Tensor] | None = None,
             progress: bool = False, cache: CleanCache | None = None) -> Tensor:
    """The scrubbed model output [n, ...] for `sample`, in chunks of reference rows
    (`progress`: a progress bar over the rows).

    Lanes with identical rows are computed once. Lanes that need the same clean activations
    are concatenated into one forward pass, which computes only those activations (and what
    they depend on). `chunk_size` defaults to what fits in `memory_mb` (default
    `default_memory_mb`: 512 MB on CPU, a quarter of the free GPU memory), measured on a small
    probe chunk (the first 8 rows; the estimate is logged), and never below the probe's
    size (smaller chunks spend their time on small matrix products, and the probe has just
    run in memory at that size). `table` must already be on the
    device the graph runs on. With `reduce`, each chunk's output is replaced by
    `reduce(output, start, stop)` (e.g. its per-example loss on reference rows [start, stop))
    before the chunks are joined, so a large output (an LM's logits) never exists for all
    rows at once.

    `memory_budget_mb` bounds the whole process instead: the chunk budget becomes at most half
    of what the budget leaves above the memory already in use, and on CPU the resident set
    is kept under the budget by handing freed memory back to the system whenever it is
    crossed (`memory.ResidentGuard`). Without it, the CPU limit for that is the memory in
    use at the start (`memory.settled_mb`) plus twice the chunk budget (at least 1 GB). The estimate is logged
    before the chunks run and the measured peak after.

    With `cache` (a `CleanCache`), clean activations are read from it where an earlier
    evaluation computed them for the same rows, and kept in it for later ones.
    """
    reduce = reduce or (lambda out, start, stop: out)
    memory_mb, limit_mb = memory_limits(table.device, memory_mb, memory_budget_mb)
    guard = ResidentGuard(limit_mb) if table.device.type == "cpu" else None
    plan = plan or compile_plan(corr)
    graph = corr.graph
    slot = slots(plan, sample)
    passes = slot.passes()
    n = len(sample)
    outputs = []
    if cache is not None:
        cache.bind(graph, table)
    with torch.inference_mode():
        # A small first chunk measures what a row holds; the chunk size follows from it.
        probe = min(n, 8)
        out, nbytes = _run_chunk(graph, table, plan, slot, passes, 0, probe, True, cache)
        outputs.append(reduce(out, 0, probe))
        per_row = HIDDEN_TRANSIENTS * nbytes / probe
        if chunk_size is None:  # never below the probe's size, which has just run in memory
            chunk_size = max(probe, int(memory_mb * 2**20 / max(1.0, per_row)))
        if cache is not None and cache.cell is None:
            cache.cell, cache.origin = chunk_size, probe
        log.info("engine: %d lanes (%d distinct), %d mixing ops; chunks of %d rows, estimated "
                 "peak %.0f MB", len(plan.lanes), len(slot.rows), len(plan.ops), min(chunk_size, n),
                 per_row * min(chunk_size, n) / 2**20)
        start = probe
        with tqdm(total=n, initial=probe, unit="row", desc="evaluating", leave=False,
                  disable=not progress or n <= probe) as bar:
            while start < n:
                stop = min(n, start + chunk_size)
                if cache is not None:
                    stop = cache.chunk_end(start, stop)
                out = _run_chunk(graph, table, plan, slot, passes, start, stop, cache=cache)[0]
                outputs.append(reduce(out, start, stop))
                del out
                if guard is not None:
                    guard.check()
                bar.update(stop - start)
                start = stop
    if guard is not None:
        log.info("engine: peak resident %.0f MB at a chunk's end (limit %.0f MB; freed memory "
                 "handed back %d times)", guard.peak_mb, guard.limit_mb, guard.trims)
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def memory_limits(device: torch.device, memory_mb: float | None,
                  memory_budget_mb: float | None) -> tuple[float, float]:
    """(chunk budget, limit of the process's memory) in MB, from the chunk budget and the
    process budget the caller gave (either may be None; see `evaluate`)."""
    if memory_budget_mb is not None and memory_budget_mb <= 0:
        raise ScrubError(f"memory_budget_mb = {memory_budget_mb}: give a positive number of MB.")
    if device.type == "cuda":
        in_use = torch.cuda.memory_allocated(device) / 2**20
    else:  # what is live, not what an earlier evaluation left in the allocator's free lists
        in_use = settled_mb()
    chunk = memory_mb if memory_mb is not None else default_memory_mb(device)
    if memory_budget_mb is None:
        return chunk, in_use + max(1024.0, 2 * chunk)
    headroom = memory_budget_mb - in_use
    if headroom < 64:
        raise ScrubError(f"The memory budget of {memory_budget_mb:.0f} MB leaves "
                         f"{max(0.0, headroom):.0f} MB: the process already holds {in_use:.0f} MB "
                         "(model, dataset, draws). Raise the budget (--memory-budget) to at least "
                         f"{in_use + 256:.0f} MB.")
    return (min(chunk, headroom / 2) if memory_mb is None else memory_mb), memory_budget_mb


def default_memory_mb(device: torch.device) -> float:
    """The memory budget of a chunk when none is given: 512 MB on CPU (on paren, 1 GB chunks
    were no faster and peaked 1.2 GB higher: the C allocator keeps freed blocks), a quarter of
    what is free on a CUDA device (a GPU runs small chunks far below its speed)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1024.0, free / 4 / 2**20)
    return 512.0


def _run_chunk(graph: Graph, table: Dataset, plan: Plan, slot: Slots,
               passes: dict[tuple[frozenset, frozenset], list[int]], start: int, stop: int,
               measure_memory: bool = False, cache: CleanCache | None = None
               ) -> tuple[Tensor, int]:
    """Run the plan on reference rows [start, stop); with `measure_memory`, also return the
    most bytes its activations held at once (0 otherwise)."""
    m = stop - start
    clean: dict[int, dict[tuple[str, ...], Tensor]] = {}  # slot -> ("out", n) | ("port", n, p) -> [m, ...]
    peak = kept = 0
    for (outs, ports), members in passes.items():
        wanted = [("out", u) for u in outs] + [("port", *np) for np in ports]
        for i in members:
            clean[i] = dict(cache.lookup(slot.keys[i], start, stop)) if cache is not None else {}
        todo = [i for i in members if any(k not in clean[i] for k in wanted)]
        if cache is not None:
            cache.hits += sum(len(wanted) for i in members if i not in todo)
        if not todo:
            continue
        missing = {k for i in todo for k in wanted if k not in clean[i]}
        rows = torch.cat([slot.rows[i][start:stop] for i in todo])  # [len(todo) * m]
        act = graph.run(table.rows(rows), outputs={k[1] for k in missing if k[0] == "out"},
                        ports={(k[1], k[2]) for k in missing if k[0] == "port"},
                        measure_memory=measure_memory)
        if measure_memory:  # earlier passes' kept activations stay alive during this one
            peak = max(peak, kept + act.peak_bytes)
            kept += tensor_bytes([*act.outputs.values(), *act.port_inputs.values()])
        for j, i in enumerate(todo):
            new = {k: (act.outputs[k[1]] if k[0] == "out" else act.port_inputs[(k[1], k[2])]
                       )[j * m:(j + 1) * m] for k in missing}
            clean[i].update(new)
            if cache is not None:
                cache.misses += len(new)
                cache.keep(slot.keys[i], start, stop, new)

    def value(t: Term) -> Tensor | Selected:
        if isinstance(t, OpResult):
            return results[t.index]
        i = slot.slot_of[t.lane]
        return clean[i][("out", t.node) if isinstance(t, CleanOutput) else ("port", t.node, t.port)]

    sums = PortSummer(graph, plan.shared_sums, value)
    results: list[Tensor | Selected] = [torch.empty(0)] * len(plan.ops)
    for b, batch in enumerate(plan.batches):
        if all(slot.same_as[k] != k for k in batch):  # computed already on this draw
            for k in batch:
                results[k] = results[slot.same_as[k]]
            continue
        first = plan.ops[batch[0]]
        selects = graph.nodes[first.node].selects  # type: ignore[union-attr]
        if len(batch) == 1 and selects is not None:  # taken by index where it is summed
            results[batch[0]] = Selected(first.node, selects, sums.total(first.ports[0][1], b))
            continue
        port_values = {p: sums.total(terms, b) for p, terms in first.ports}
        if len(batch) == 1:
            results[batch[0]] = graph.apply(first.node, port_values)
        else:  # group members reading the same inputs: one batched call
            group_outs = graph.apply_group(graph.group_of[first.node], port_values)
            for k in batch:
                results[k] = group_outs[plan.ops[k].node]
    out = sums.materialize(value(plan.result))
    if measure_memory:
        peak = max(peak, kept + tensor_bytes([r.value if isinstance(r, Selected) else r
                                              for r in results]))
    return out, peak


@dataclass(frozen=True)
class Selected:
    """An op result left unevaluated: position-selecting node `node` (`Selection`) applied to
    `value`. Summed with the other parts of a partition it is taken by index (the same
    numbers as adding the masked copies); anywhere else it is computed by the node."""

    node: str
    selection: Selection
    value: Tensor


class PortSummer:
    """The port sums of one chunk's ops, each a left-to-right sum of its terms.

    A sum whose leading terms are a sum computed earlier in the chunk (`Plan.prefixes`: the
    residual stream read by the next layer's ops) starts from it, the same additions in the
    same order; a sum of position selections that partition their axis is assembled by index.
    """

    def __init__(self, graph: Graph, shared: dict[tuple[Term, ...], SharedSum],
                 value: Callable[[Term], Tensor | Selected]):
        self.graph, self.shared, self.value = graph, shared, value
        self.kept: dict[tuple[Term, ...], Tensor] = {}
        self.batch = 0

    def total(self, terms: tuple[Term, ...], batch: int) -> Tensor:
        """The sum of `terms`, read by the op batch `batch` (batches come in order)."""
        if batch != self.batch:  # drop the sums no later batch starts from
            self.batch = batch
            self.kept = {k: v for k, v in self.kept.items() if self.shared[k].keep_until >= batch}
        if terms in self.kept:
            return self.kept[terms]
        info = self.shared.get(terms)
        if info is not None and info.base in self.kept:
            start, total = len(info.base), self.kept[info.base]
        else:
            values = [self.value(t) for t in terms]
            if any(isinstance(v, Selected) for v in values):
                return self.selections(values)
            start, total = 1, values[0]  # type: ignore[assignment]
        for t in terms[start:]:
            total = total + self.materialize(self.value(t))
        if info is not None and info.keep_until >= batch:
            self.kept[terms] = total
        return total

    def selections(self, values: list[Tensor | Selected]) -> Tensor:
        """The sum of `values`, some of them unevaluated selections."""
        parts = [v for v in values if isinstance(v, Selected)]
        if len(parts) == len(values) and _partitions(parts):
            whole = parts[0].value
            if all(p.value is whole for p in parts):
                return whole  # every part selects from one tensor: the sum is that tensor
            out = torch.empty_like(whole)
            for p in parts:
                for start, length in p.selection.runs():
                    axis = p.selection.axis
                    out.narrow(axis, start, length).copy_(p.value.narrow(axis, start, length))
            return out
        return sum_values([self.materialize(v) for v in values])

    def materialize(self, v: Tensor | Selected) -> Tensor:
        if isinstance(v, Selected):
            return self.graph.apply(v.node, {v.selection.port: v.value})
        return v


def _partitions(parts: list[Selected]) -> bool:
    """Whether `parts` select every position of one axis once, from tensors of one shape."""
    first = parts[0]
    axis, size, shape = first.selection.axis, first.selection.size, first.value.shape
    if any(p.selection.axis != axis or p.value.shape != shape for p in parts) or shape[axis] != size:
        return False
    return sorted(i for p in parts for i in p.selection.positions) == list(range(size))
