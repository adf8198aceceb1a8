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

import operator
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import Dataset
from .errors import FeatureWarning, ScrubError, context, warn
from .hypothesis import Correspondence, InterpNode, Lane
from .samplers import Pooled, SameFeature, Sampler, SamplingContext


@dataclass
class Sample:
    """Row indices (into the table) for the reference and every node's datasets, all [n]."""

    ref: Tensor
    ds: dict[str, Tensor]
    other: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.ref)

    def lane(self, lane: Lane) -> Tensor:
        """The rows [n] that `lane` holds, row-aligned with the reference."""
        return (self.ds if lane.kind == "ds" else self.other)[lane.name]

    def rows(self, start: int, stop: int) -> Sample:
        """The same draws restricted to reference rows [start, stop)."""
        return Sample(self.ref[start:stop], {k: v[start:stop] for k, v in self.ds.items()},
                      {k: v[start:stop] for k, v in self.other.items()})


def node_context(node: InterpNode, role: str = "sampler") -> str:
    """How errors name the interpretation node whose sampler (or `other=` sampler) failed."""
    return (f"interpretation node {node.name!r}" if role == "sampler"
            else f"interpretation node {node.name!r} (its other= sampler)")


def check_samplers(corr: Correspondence, ctx: SamplingContext, where: str = "") -> None:
    """Validate every sampler against the table (feature shapes and dtypes) before compute.

    An error names the interpretation node holding the bad sampler, after `where` (e.g.
    "hypothesis 'Ex1b'") when given. A `SameFeature` whose feature has a different value on
    every source row (so it behaves like `Exact`) gets a `FeatureWarning`, once per feature
    and context.
    """
    prefix = f"{where}, " if where else ""
    for n in corr.nodes:
        for role, sampler in (("sampler", n.sampler), ("other", n.other)):
            if role == "other" and not n.children:
                continue
            with context(prefix + node_context(n, role)):
                sampler.check(ctx)
            for same in _same_features(sampler):
                _warn_if_every_row_differs(same, ctx, prefix + node_context(n, role))


def _same_features(sampler: Sampler) -> Iterator[SameFeature]:
    """The `SameFeature` samplers in `sampler` (itself, or inside `Pooled`)."""
    if isinstance(sampler, SameFeature):
        yield sampler
    elif isinstance(sampler, Pooled):
        yield from _same_features(sampler.sampler)


def _warn_if_every_row_differs(sampler: SameFeature, ctx: SamplingContext, where: str) -> None:
    feature = sampler.feature if isinstance(sampler.feature, str) else id(sampler.feature)
    key = ("warned every row differs", feature, ctx.source_start, ctx.source_stop)
    if key in ctx.cache or not sampler.every_row_differs(ctx):
        return
    ctx.cache[key] = True
    warn(
        f"{where}: feature {sampler.name!r} has a different value on every one of the "
        f"{ctx.n_source} source rows, so {sampler.describe()} has one row to draw per value and "
        "resamples nothing: it behaves like cs.Exact(). If that is what you mean, use cs.Exact(); "
        "otherwise make the feature a coarser class label (e.g. round or bucket a float feature).",
        FeatureWarning,
    )


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
        with context(node_context(node)):
            ds[node.name] = node.sampler(ref if p < 0 else ds[corr.nodes[p].name], ctx)
        if node.children:
            with context(node_context(node, "other")):
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
    n = check_n(n)
    if n_pool < 1:
        raise ScrubError("The dataset to draw reference rows from has no rows; give it at "
                         "least one example.")
    if n is None:
        return torch.arange(n_pool)
    return torch.randint(n_pool, (n,), generator=generator(seed, "ref"))


def check_n(n: object) -> int | None:
    """`n` as an int, after checking it is a positive number of reference rows (or None).

    >>> check_n(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    causal_scrubbing.core.errors.ScrubError: n must be a positive number of reference rows, got 0. ...
    """
    if n is None:
        return None
    try:
        value = operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        value = None
    if isinstance(n, bool) or value is None or value < 1:
        raise ScrubError(f"n must be a positive number of reference rows, got {n!r}. Give a "
                         "whole number such as n=1000 (rows are drawn with replacement), or "
                         "n=None to use every row of the dataset once.")
    return value


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
