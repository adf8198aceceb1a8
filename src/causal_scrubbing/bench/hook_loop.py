"""The hook-based path-patching loop: how causal scrubbing is done by hand today, as a baseline.

Without a dedicated engine, a researcher runs a hypothesis with forward hooks (TransformerLens
`run_with_hooks`, say): cache each needed dataset's activations with a forward pass, then do
*path patching* for each group of claimed paths: run the model again with hooks that replace
the receivers' inputs by the patched sums (the senders' cached or already-patched outputs, with
everything else frozen at its cached value) and capture the receivers' outputs; the last such
pass, at the model's output, gives the scrubbed output. A hook cannot skip the layers below it,
so every patched pass computes the model up to its deepest receiver.

`evaluate` follows that recipe as efficiently as it allows: the caches keep only the
activations the hypothesis reads (a `names_filter`), and each claimed group's receivers share
one pass per level of dependency (split only when one node would need two different patches
in one pass). Identical recomputations are done once (the engine's plan already merged
them). It computes the same values as the engine, in the same order of additions, so the two
agree to float rounding; `causal-scrub bench` times them side by side.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.bench import hook_loop
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: 2 * i, i="x"),
    ...               cs.Node("out", lambda l, r: l + r, l="a", r="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.arange(8.0)})
    >>> corr = cs.check(g, cs.InterpNode("out", children=[
    ...     cs.InterpNode("a", cs.Exact(), paths=cs.through("a"))]))
    >>> s = cs.draw(corr, ds, torch.arange(8), torch.Generator().manual_seed(0))
    >>> torch.allclose(hook_loop.evaluate(corr, ds, s), cs.engine.evaluate(corr, ds, s))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from ..core.data import Dataset
from ..core.draws import Sample
from ..core.engine import CleanOutput, OpResult, Plan, Slots, Term, compile_plan, slots
from ..core.graph import Activations, sum_values
from ..core.hypothesis import Correspondence


def patch_passes(plan: Plan) -> list[list[int]]:
    """The plan's ops grouped into patched forward passes, one per claimed group of paths
    (the interpretation node whose claim an op computes) and dependency level (an op runs
    after every op it reads), split so that no node is patched twice in one pass."""
    level: list[int] = []
    for op in plan.ops:
        reads = [t.index for t in op.reads() if isinstance(t, OpResult)]
        level.append(1 + max((level[k] for k in reads), default=-1))
    by_pass: dict[tuple[int, str], list[int]] = {}
    for k, op in enumerate(plan.ops):
        by_pass.setdefault((level[k], op.serves), []).append(k)
    passes: list[list[int]] = []
    for key in sorted(by_pass):
        remaining = by_pass[key]
        while remaining:
            seen: set[str] = set()
            this: list[int] = []
            rest: list[int] = []
            for k in remaining:
                (rest if plan.ops[k].node in seen else this).append(k)
                seen.add(plan.ops[k].node)
            passes.append(this)
            remaining = rest
    return passes


def evaluate(corr: Correspondence, table: Dataset, sample: Sample, *, chunk_size: int = 1024,
             plan: Plan | None = None, reduce: Callable[[Tensor, int, int], Tensor] | None = None
             ) -> Tensor:
    """The scrubbed output [n, ...], computed by cached clean passes and patched passes
    (`chunk_size` reference rows at a time; `reduce` as in `engine.evaluate`)."""
    reduce = reduce or (lambda out, start, stop: out)
    graph = corr.graph
    plan = plan or compile_plan(corr)
    slot = slots(plan, sample)
    passes = patch_passes(plan)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(sample), chunk_size):
            stop = min(len(sample), start + chunk_size)
            # 1. one cached clean pass per distinct dataset (only what the hypothesis reads)
            cache = [graph.run(table.rows(rows[start:stop]), outputs=slot.needs[i][0],
                               ports=slot.needs[i][1])
                     for i, rows in enumerate(slot.rows)]
            base = table.rows(sample.ref[start:stop])  # the run the hooks attach to
            results: dict[int, Tensor] = {}
            value = partial(_lookup, cache=cache, slot=slot, results=results)
            # 2. path patching: each pass patches its receivers' inputs and captures them
            for ops in passes:
                patch = {(plan.ops[k].node, p): sum_values([value(t) for t in terms])
                         for k in ops for p, terms in plan.ops[k].ports}
                captured = graph.run(base, outputs={plan.ops[k].node for k in ops}, ports=set(),
                                     patch=patch).outputs
                results.update({k: captured[plan.ops[k].node] for k in ops})
            outputs.append(reduce(value(plan.result), start, stop))
    return torch.cat(outputs)


def _lookup(t: Term, cache: list[Activations], slot: Slots, results: dict[int, Tensor]) -> Tensor:
    """A plan value: a cached clean activation or an already captured receiver output."""
    if isinstance(t, OpResult):
        return results[t.index]
    act = cache[slot.slot_of[t.lane]]
    return act.outputs[t.node] if isinstance(t, CleanOutput) else act.port_inputs[(t.node, t.port)]
