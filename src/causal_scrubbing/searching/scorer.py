"""The search's scorer: candidate hypotheses evaluated by the scrub pipeline on the search rows.

A search scores hundreds of candidates on the same rows. The scorer holds what does not change
between them -- the rows, the sampling context (feature classes), the model and baseline
losses, (shared draws, compact form) the one drawn sample, and the clean activations of every
lane whose rows an earlier candidate already ran (`engine.CleanCache`) -- and evaluates each
candidate with `pipeline.evaluate_unit`, the function every executor of a run uses.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.options import RunOptions
    >>> from causal_scrubbing.core.draws import sampling_context
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.randn(50)})
    >>> s = Scorer(g, ds, torch.arange(50), lambda o, r: (o - r["x"]) ** 2, RunOptions(),
    ...            sampling_context(ds, 0))
    >>> s.set_ends(cs.InterpNode("model"), cs.random_baseline())
    >>> s.recovered(s.losses(cs.InterpNode("model")))
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..core import engine
from ..core.data import Dataset
from ..core.draws import Sample, draw_hypothesis, generator, reference_rows
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import Correspondence, InterpNode, check
from ..core.samplers import SamplingContext
from ..core.statistics import recovery_defined
from ..options import RunOptions
from ..pipeline import LossFn, evaluate_unit
from .edges import Triple, compact_hypothesis

__all__ = ["Scorer", "default_cache_mb", "split_rows"]


def split_rows(n_rows: int, n: int, n_heldout: int, seed: int) -> tuple[Tensor, Tensor]:
    """(held-out rows [n_heldout], search rows [n]) of a dataset of `n_rows`: the held-out rows
    are exactly the reference rows `scrub` (and `causal-scrub run`) draws for `seed` and
    `n_heldout`; the search rows are drawn from the others.

    >>> heldout, rows = split_rows(100, 20, 10, seed=0)
    >>> len(heldout), len(rows), bool(set(heldout.tolist()) & set(rows.tolist()))
    (10, 20, False)
    """
    heldout = reference_rows(n_rows, n_heldout, seed)
    free = torch.ones(n_rows, dtype=torch.bool)
    free[heldout] = False
    pool = torch.nonzero(free).flatten()
    if len(pool) == 0:
        raise ScrubError(f"The {n_heldout} held-out rows use every one of the dataset's "
                         f"{n_rows} rows, leaving none to search on; use a smaller n.")
    return heldout, pool[torch.randint(len(pool), (n,), generator=generator(seed, "search"))]


def default_cache_mb(cache_mb: float | None, memory_budget_mb: float | None) -> float:
    """The clean-activation cache's size: `cache_mb`, else 1 GB or a quarter of the budget."""
    if cache_mb is not None:
        return float(cache_mb)
    return 1024.0 if memory_budget_mb is None else min(1024.0, memory_budget_mb / 4)


class Scorer:
    """Scores candidate hypotheses on the search rows `ref` (indices into `table`)."""

    def __init__(self, graph: Graph, table: Dataset, ref: Tensor, loss_fn: LossFn,
                 options: RunOptions, ctx: SamplingContext, cache_mb: float = 0.0):
        self.graph, self.table, self.ref, self.loss_fn = graph, table, ref, loss_fn
        self.options, self.ctx, self.seed = options, ctx, options.seed
        self.cache = engine.CleanCache(cache_mb) if cache_mb > 0 else None
        self.model_losses = Tensor()
        self.base_losses = Tensor()
        self.compact_sample: Sample | None = None

    def set_ends(self, model: InterpNode, baseline: InterpNode) -> None:
        """Score the 100% and 0% ends; a clear error when they coincide within noise."""
        self.model_losses = self.losses(model, what="the unscrubbed model")
        self.base_losses = self.losses(baseline, what=f"baseline {baseline.name!r}")
        if not recovery_defined(self.base_losses, self.model_losses):
            raise ScrubError(
                f"On the {len(self.ref)} search rows the baseline's loss "
                f"({float(self.base_losses.mean()):.4g}) and the model's "
                f"({float(self.model_losses.mean()):.4g}) coincide within noise, so loss recovered "
                "is undefined and nothing can be searched; use a baseline that does clearly worse "
                "than the model, or more rows (n).")

    def losses(self, root: InterpNode, sample: Sample | None = None, what: str = "a candidate"
               ) -> Tensor:
        return self.losses_of(check(self.graph, root), None, sample, what)

    def losses_of(self, corr: Correspondence, plan: engine.Plan | None = None,
                  sample: Sample | None = None, what: str = "a candidate") -> Tensor:
        if sample is None:
            sample = draw_hypothesis(corr, self.table, self.ref, self.seed, ctx=self.ctx)
        return evaluate_unit(corr, self.table, sample, self.loss_fn, what, self.options,
                             plan=plan, cache=self.cache)

    def recovered(self, losses: Tensor) -> float:
        b, m = float(self.base_losses.double().mean()), float(self.model_losses.double().mean())
        return (b - float(losses.double().mean())) / (b - m)

    def compact(self, kept: Iterable[Triple]) -> float:
        """Loss recovered by a kept set in the compact (two-node, shared draw) form."""
        root = compact_hypothesis(self.graph, kept)
        if self.compact_sample is None:  # every compact candidate reads the same two lanes
            full = compact_hypothesis(self.graph, set())
            self.compact_sample = draw_hypothesis(check(self.graph, full), self.table, self.ref,
                                                  self.seed, ctx=self.ctx)
        return self.recovered(self.losses(root, self.compact_sample))
