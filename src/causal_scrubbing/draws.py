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

import zlib
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


# ---- the seeding protocol ---------------------------------------------------------------------
#
# One seed drives a whole run. Each *role* draws from its own stream, so changing how many
# numbers one role consumes (more hypotheses, more bootstrap resamples) never shifts another:
#
#   "ref"         the reference rows (`reference_rows`);
#   "hypothesis"  every node's dataset (`draw_hypothesis`); each hypothesis, and the baseline,
#                 starts this stream afresh, so a hypothesis' draws do not depend on which
#                 others run beside it, and one identical to the baseline recovers exactly 0%;
#   "bootstrap"   the resampled rows of the confidence interval (`statistics.summarize`).
#
# `scrub`, `show` and `bench` all go through these functions, so reference row i of one is
# reference row i of the others for the same seed and n.


def generator(seed: int, role: str) -> torch.Generator:
    """The reproducible generator of one role's stream under `seed`.

    Its seed is `seed * 1_000_003 + crc32(role)` modulo 2^63: the prime multiplier keeps the
    streams of nearby seeds (0, 1, 2, ...) apart from those of other roles, and crc32 turns
    the role's name into a fixed offset that does not depend on Python's hash seed.

    >>> a, b = generator(0, "ref"), generator(0, "ref")
    >>> torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    True
    """
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(role.encode())) % 2**63)


def reference_rows(n_pool: int, n: int | None, seed: int) -> Tensor:
    """The reference rows [n] a run with `seed` scores: `n` rows of `n_pool` drawn uniformly
    with replacement, or every row once when `n` is None.

    >>> reference_rows(5, None, 0).tolist()
    [0, 1, 2, 3, 4]
    >>> torch.equal(reference_rows(100, 8, 3), reference_rows(100, 8, 3))
    True
    """
    if n is None:
        return torch.arange(n_pool)
    return torch.randint(n_pool, (int(n),), generator=generator(seed, "ref"))


def draw_hypothesis(corr: Correspondence, table: Dataset, ref: Tensor, seed: int, *,
                    ctx: SamplingContext | None = None, source: tuple[int, int] | None = None
                    ) -> Sample:
    """The draw a run with `seed` makes for one hypothesis (or the baseline): `draw` on a fresh
    "hypothesis" stream. `ctx` (a `SamplingContext` on `table`) reuses feature classes."""
    return draw(corr, table, ref, generator(seed, "hypothesis"), source=source, ctx=ctx)


def sampling_context(table: Dataset, seed: int, source: tuple[int, int] | None = None
                     ) -> SamplingContext:
    """A `SamplingContext` on `table` for a run with `seed` (rows `source` to draw from)."""
    start, stop = source if source is not None else (0, len(table))
    return SamplingContext(table, generator(seed, "hypothesis"), start, stop)
