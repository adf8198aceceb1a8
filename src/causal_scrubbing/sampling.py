"""Drawing every interpretation node's dataset, top down, from the reference rows.

For reference rows r: `ds[root] = root.sampler(r)`; then for every node n in depth-first order
`ds[n] = n.sampler(ds[parent(n)])`, and if n has children `other[n] = n.other(ds[n])`.
Conditioning is always on the *parent's* draw, which makes the resampling recursive.

A `Sample` holds the result as row indices into the table, row-aligned with the reference.
Sampling is separate from evaluation, so the fast engine and the literal reference evaluator
can be run on exactly the same draws.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.arange(10.0)})
    >>> corr = cs.check(g, cs.InterpNode("root", cs.Uniform()))
    >>> s = cs.draw(corr, ds, ref=torch.arange(4), generator=torch.Generator().manual_seed(0))
    >>> s.ref.tolist(), len(s.ds["root"])
    ([0, 1, 2, 3], 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data import Dataset
from .hypothesis import Correspondence
from .samplers import SamplingContext

LaneKey = tuple[str, int]  # ("ds", node index) or ("other", node index)


@dataclass
class Sample:
    """Row indices (into the table) for the reference and every node's datasets, all [n]."""

    ref: Tensor
    ds: dict[str, Tensor]
    other: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.ref)

    def lane(self, corr: Correspondence, key: LaneKey) -> Tensor:
        kind, i = key
        return (self.ds if kind == "ds" else self.other)[corr.nodes[i].name]

    def rows(self, start: int, stop: int) -> Sample:
        """The same draws restricted to reference rows [start, stop)."""
        return Sample(self.ref[start:stop], {k: v[start:stop] for k, v in self.ds.items()},
                      {k: v[start:stop] for k, v in self.other.items()})


def check_samplers(corr: Correspondence, ctx: SamplingContext) -> None:
    """Validate every sampler against the table (feature shapes and dtypes) before compute."""
    for n in corr.nodes:
        n.sampler.check(ctx)
        if n.children:
            n.other.check(ctx)


def draw(corr: Correspondence, table: Dataset, ref: Tensor, generator: torch.Generator,
         source: tuple[int, int] | None = None, ctx: SamplingContext | None = None) -> Sample:
    """Sample every node's dataset for reference rows `ref` (indices into `table`).

    `source` restricts the rows samplers may draw from (default: the whole table). Pass a
    `ctx` to reuse feature classes computed for an earlier draw on the same table.
    """
    if ctx is None:
        start, stop = source if source is not None else (0, len(table))
        ctx = SamplingContext(table, generator, start, stop)
    else:
        ctx.generator = generator
        ctx.shared = {}
    check_samplers(corr, ctx)
    ref = ref.to("cpu", torch.long)
    ds: dict[str, Tensor] = {}
    other: dict[str, Tensor] = {}
    for i, node in enumerate(corr.nodes):
        p = corr.parent[i]
        ds[node.name] = node.sampler(ref if p < 0 else ds[corr.nodes[p].name], ctx)
        if node.children:
            other[node.name] = node.other(ds[node.name], ctx)
    return Sample(ref, ds, other)
