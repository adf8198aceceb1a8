"""Samplers: how an interpretation node draws its dataset, row by row, from a reference.

Given reference rows (a vector of row indices into the table of examples), a sampler returns
one row index per reference row:

- `SameFeature(f)`: a uniformly random example (with replacement) whose feature `f` equals the
  reference row's: the heart of causal scrubbing. `f` is a dataset field name or a function of
  the `Dataset` returning one value (or one vector) per example.
- `Exact()`: the reference row itself (nothing resampled).
- `Uniform()`: any example, ignoring the reference.
- `SharedUniform()`: like `Uniform`, but every node holding the same instance gets the same draw.
- `Pooled(sampler, size)`: reuse at most `size` datasets drawn by `sampler` (per class of
  reference values), which caps the number of distinct inputs a hypothesis needs.

Every draw uses the `torch.Generator` in the `SamplingContext`; nothing touches global RNG state.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> ds = cs.Dataset({"parity": torch.tensor([0, 1, 0, 1, 0, 1])})
    >>> ctx = cs.SamplingContext(ds, torch.Generator().manual_seed(0))
    >>> ref = torch.tensor([0, 1, 2])
    >>> drawn = cs.SameFeature("parity")(ref, ctx)
    >>> (ds["parity"][drawn] == ds["parity"][ref]).all().item()
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .data import Dataset
from .errors import EmptyClassError, FeatureError

Feature = str | Callable[[Dataset], Tensor]


class SmallClassWarning(UserWarning):
    """More reference rows are drawn from a feature class than the class has examples."""


@dataclass
class SamplingContext:
    """What samplers draw from: the table of examples, the source rows, and the generator.

    `table` holds every example a dataset index can point to. Samplers draw from the source
    rows `source_start <= i < source_stop` (by default all of them); rows before `source_start`
    can then hold separately given reference examples.
    """

    table: Dataset
    generator: torch.Generator
    source_start: int = 0
    source_stop: int | None = None
    shared: dict[Any, Any] = field(default_factory=dict)  # per draw: shared and pooled datasets
    cache: dict[Any, Any] = field(default_factory=dict)  # per table: feature classes

    def __post_init__(self) -> None:
        if self.source_stop is None:
            self.source_stop = len(self.table)
        if not 0 <= self.source_start < self.source_stop <= len(self.table):
            raise ValueError(f"Bad source rows [{self.source_start}, {self.source_stop}) "
                             f"for a table of {len(self.table)} examples.")

    @property
    def n_source(self) -> int:
        return self.source_stop - self.source_start  # type: ignore[operator]

    def uniform(self, n: int) -> Tensor:
        return torch.randint(self.source_start, self.source_stop, (n,),  # type: ignore[arg-type]
                             generator=self.generator)


class Sampler:
    """Base class: `sampler(ref, ctx)` maps reference row indices [n] to drawn indices [n]."""

    def __call__(self, ref: Tensor, ctx: SamplingContext) -> Tensor:
        raise NotImplementedError

    def check(self, ctx: SamplingContext) -> None:
        """Validate against the table before any compute (features, shapes). Default: nothing."""

    def pool_key(self, ref: Tensor, ctx: SamplingContext) -> Any:
        """Reference batches with equal keys may share a pooled draw (see `Pooled`)."""
        return ref.numpy().tobytes()

    def describe(self) -> str:
        return type(self).__name__ + "()"

    def __repr__(self) -> str:
        return self.describe()


class Exact(Sampler):
    """The reference rows themselves: this node's inputs are not resampled."""

    def __call__(self, ref: Tensor, ctx: SamplingContext) -> Tensor:
        return ref


class Uniform(Sampler):
    """Uniformly random source rows, independent of the reference (the default for unclaimed
    inputs)."""

    def __call__(self, ref: Tensor, ctx: SamplingContext) -> Tensor:
        return ctx.uniform(len(ref))

    def pool_key(self, ref: Tensor, ctx: SamplingContext) -> Any:
        return None


class SharedUniform(Sampler):
    """Uniformly random rows, one draw shared by every node that holds this same instance."""

    def __call__(self, ref: Tensor, ctx: SamplingContext) -> Tensor:
        key = ("shared", id(self))
        if key not in ctx.shared:
            ctx.shared[key] = ctx.uniform(len(ref))
        return ctx.shared[key]

    def pool_key(self, ref: Tensor, ctx: SamplingContext) -> Any:
        return None


def feature_name(feature: Feature) -> str:
    return feature if isinstance(feature, str) else getattr(feature, "__name__", repr(feature))


def feature_values(feature: Feature, table: Dataset, name: str | None = None) -> Tensor:
    """Evaluate `feature` on the whole table and check it gives one value per example."""
    name = name or feature_name(feature)
    values = table[feature] if isinstance(feature, str) else feature(table)
    if not isinstance(values, Tensor):
        raise FeatureError(
            f"Feature {name!r} returned a {type(values).__name__}; it must return a torch.Tensor "
            f"with one value (or one row of values) per example, shape [{len(table)}, ...]."
        )
    if values.dim() == 0 or values.shape[0] != len(table):
        raise FeatureError(
            f"Feature {name!r} returned shape {tuple(values.shape)}, but the dataset has "
            f"{len(table)} examples: it must return shape [{len(table)}] or [{len(table)}, ...]."
        )
    if values.is_complex() or values.dtype not in (torch.bool, torch.uint8, torch.int8,
                                                   torch.int16, torch.int32, torch.int64,
                                                   torch.float16, torch.bfloat16, torch.float32,
                                                   torch.float64):
        raise FeatureError(f"Feature {name!r} has dtype {values.dtype}; use a bool, integer or "
                           "float tensor (classes are formed by exact equality).")
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise FeatureError(f"Feature {name!r} has NaN or infinite values, which equal nothing; "
                           "replace them with a finite class label.")
    return values.reshape(len(table), -1).cpu()


@dataclass
class _Classes:
    """The feature classes of a table, ready for vectorised sampling."""

    values: Tensor  # [n_classes, d]: the distinct feature values
    class_of: Tensor  # [n_table]: class id of every row
    sorted_rows: Tensor  # [n_source]: source rows sorted by class
    counts: Tensor  # [n_classes]: source rows per class
    offsets: Tensor  # [n_classes]: start of each class in sorted_rows


class SameFeature(Sampler):
    """Rows drawn uniformly, with replacement, among source rows whose `feature` equals the
    reference row's (equality over all of the feature's columns)."""

    def __init__(self, feature: Feature, name: str | None = None):
        if not (isinstance(feature, str) or callable(feature)):
            raise FeatureError(f"A feature must be a dataset field name or a function of the "
                               f"Dataset, got {type(feature).__name__}.")
        self.feature = feature
        self.name = name or feature_name(feature)

    def classes(self, ctx: SamplingContext) -> _Classes:
        key = ("classes", id(self.feature), ctx.source_start, ctx.source_stop)
        if key not in ctx.cache:
            values = feature_values(self.feature, ctx.table, self.name)
            if values.shape[1] == 1:  # 1-D unique is much faster than unique over rows
                uniq, class_of = torch.unique(values[:, 0], return_inverse=True)
                uniq = uniq[:, None]
            else:
                uniq, class_of = torch.unique(values, dim=0, return_inverse=True)
            src = class_of[ctx.source_start:ctx.source_stop]
            order = torch.argsort(src, stable=True)
            counts = torch.bincount(src, minlength=len(uniq))
            ctx.cache[key] = _Classes(uniq, class_of, order + ctx.source_start, counts,
                                      torch.cumsum(counts, 0) - counts)
        return ctx.cache[key]

    def check(self, ctx: SamplingContext) -> None:
        self.classes(ctx)

    def every_row_differs(self, ctx: SamplingContext) -> bool:
        """Whether the feature has a different value on every source row (of at least two), so
        each reference row can only draw itself: then this sampler behaves like `Exact`."""
        return ctx.n_source > 1 and bool((self.classes(ctx).counts <= 1).all())

    def __call__(self, ref: Tensor, ctx: SamplingContext) -> Tensor:
        cls = self.classes(ctx)
        group = cls.class_of[ref]  # [n]
        size = cls.counts[group]  # [n]
        if (size == 0).any():
            bad = int(group[size == 0][0])
            sizes = {_value_str(cls.values[g]): int(c) for g, c in enumerate(cls.counts[:8])}
            raise EmptyClassError(
                f"Sampler {self.describe()}: no source example has {self.name} = "
                f"{_value_str(cls.values[bad])}, the value of table row {int(ref[size == 0][0])} "
                f"(with ref=, the reference examples are the first rows of the table)"
                f". Source class sizes: {sizes}{' ...' if len(cls.counts) > 8 else ''}. Fix: use a "
                "larger source dataset that covers this value, or a generative sampler for it."
            )
        drawn_per_class = torch.bincount(group, minlength=len(cls.counts))
        small = (drawn_per_class > cls.counts) & (drawn_per_class > 0)
        if small.any():
            g = int(torch.nonzero(small)[0])
            warnings.warn(
                f"Sampler {self.describe()}: {int(small.sum())} feature class(es) have fewer "
                f"examples than rows drawn from them (e.g. {self.name} = "
                f"{_value_str(cls.values[g])}: {int(cls.counts[g])} examples, "
                f"{int(drawn_per_class[g])} rows), so draws repeat examples.",
                SmallClassWarning, stacklevel=2,
            )
        u = torch.rand(len(ref), generator=ctx.generator, dtype=torch.float64)
        pick = torch.minimum((u * size).long(), size - 1)
        return cls.sorted_rows[cls.offsets[group] + pick]

    def pool_key(self, ref: Tensor, ctx: SamplingContext) -> Any:
        return self.classes(ctx).class_of[ref].numpy().tobytes()

    def describe(self) -> str:
        return f"SameFeature({self.name!r})"


class Pooled(Sampler):
    """Reuse at most `size` datasets drawn by `sampler` for each class of reference batches.

    Nodes that share this instance share its pool. Pooling caps the number of distinct inputs
    (and forward passes) at the cost of no longer scrubbing correlations between the nodes
    that reuse a draw.
    """

    def __init__(self, sampler: Sampler, size: int = 4):
        if size < 1:
            raise ValueError(f"Pooled size must be at least 1, got {size}.")
        self.sampler = sampler
        self.size = size

    def __call__(self, ref: Tensor, ctx: SamplingContext) -> Tensor:
        pool = ctx.shared.setdefault(("pool", id(self), self.sampler.pool_key(ref, ctx)), [])
        if len(pool) < self.size:
            pool.append(self.sampler(ref, ctx))
            return pool[-1]
        return pool[int(torch.randint(self.size, (1,), generator=ctx.generator))]

    def check(self, ctx: SamplingContext) -> None:
        self.sampler.check(ctx)

    def describe(self) -> str:
        return f"Pooled({self.sampler.describe()}, size={self.size})"


def _value_str(v: Tensor) -> str:
    vals = v.tolist()
    return str(vals[0]) if len(vals) == 1 else str(vals)
