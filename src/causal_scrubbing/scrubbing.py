"""Scrubbing a hypothesis end to end: the entry point, `scrub`.

`scrub` validates the hypothesis, draws the reference rows and every node's dataset, runs the
engine, and scores the output against the *reference* rows' labels with a per-example loss.
It does the same for the model itself (nothing scrubbed) and for a baseline (by default the
model's output on random inputs, i.e. everything scrubbed), and reports

    loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_model)

with a bootstrap 95% interval and standard error over reference rows (`statistics`), in a
`ScrubResult` (`results`) that keeps every per-example loss, so subsets and cancellation
(better on some inputs, worse on others) can be inspected.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.randn(200), "y": torch.randn(200)})
    >>> mse = lambda out, ref: (out - ref["x"]) ** 2
    >>> r = cs.scrub(g, cs.InterpNode("identity"), ds, mse, seed=0)
    >>> r.loss, r.loss_recovered
    (0.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .core.data import Dataset
from .core.graph import Graph
from .core.hypothesis import InterpNode
from .core.results import ScrubResult, SeedSpread
from .options import RunOptions, resolve_device
from .pipeline import (
    LossFn,
    check_inputs,
    execute,
    per_example_loss,
    prepare,
    random_baseline,
)

__all__ = ["LossFn", "check_inputs", "per_example_loss", "random_baseline", "resolve_device",
           "scrub", "scrub_many", "scrub_seeds"]

Subsets = Mapping[str, Callable[[Dataset], Tensor]]


def scrub(graph: Graph, hypothesis: InterpNode, dataset: Dataset, loss_fn: LossFn, *,
          name: str | None = None, options: RunOptions | None = None,
          baseline: InterpNode | None = None, ref: Dataset | None = None,
          subsets: Subsets | None = None, n: int | None = None, seed: int | None = None,
          chunk_size: int | None = None, memory_mb: float | None = None,
          memory_budget_mb: float | None = None, device: str | torch.device | None = None,
          n_bootstrap: int | None = None, progress: bool | None = None) -> ScrubResult:
    """Scrub `hypothesis` on `graph` and measure how much of the loss it explains.

    Args:
        graph: the model graph.
        hypothesis: the root `InterpNode` (it claims the output).
        dataset: the examples samplers draw from (inputs, labels, features).
        loss_fn: `(output, reference_rows) -> [n]` per-example loss, scored on the reference.
        name: the result's name (default: the root's name).
        options, baseline, ref, subsets and the keyword options: as for `scrub_many`.
    """
    key = name or hypothesis.name
    return scrub_many(graph, {key: hypothesis}, dataset, loss_fn, options=options,
                      baseline=baseline, ref=ref, subsets=subsets, n=n, seed=seed,
                      chunk_size=chunk_size, memory_mb=memory_mb,
                      memory_budget_mb=memory_budget_mb, device=device, n_bootstrap=n_bootstrap,
                      progress=progress)[key]


def scrub_many(graph: Graph, hypotheses: Mapping[str, InterpNode], dataset: Dataset,
               loss_fn: LossFn, *, options: RunOptions | None = None,
               baseline: InterpNode | None = None, ref: Dataset | None = None,
               subsets: Subsets | None = None, n: int | None = None, seed: int | None = None,
               chunk_size: int | None = None, memory_mb: float | None = None,
               memory_budget_mb: float | None = None, device: str | torch.device | None = None,
               n_bootstrap: int | None = None, progress: bool | None = None
               ) -> dict[str, ScrubResult]:
    """Scrub several hypotheses on the same reference rows, sharing the model and baseline runs.

    Args:
        options: a `RunOptions` (reference rows, seed, chunking, memory, device, bootstrap,
            progress); each keyword option given (not None) replaces its field. The keywords:
        n: number of reference rows (a positive whole number), drawn uniformly with
            replacement; `None` uses every row of the dataset once (or every row of `ref`).
        seed: seeds every draw (reference rows, each hypothesis' datasets, bootstrap). Each
            hypothesis gets the same generator stream, so its result does not depend on which
            other hypotheses run beside it.
        chunk_size: reference rows evaluated at once; default: as many as fit in `memory_mb`
            (measured on a small probe chunk; default budget 512 MB on CPU, a quarter of the
            free memory of a GPU).
        memory_budget_mb: the most memory the whole process may hold, in MB (resident memory
            on CPU, allocated on CUDA); chunks are sized to fit it and, on CPU, freed memory
            is handed back to the system whenever it is crossed (see `engine.evaluate`).
        device: where to run (`"cpu"`, `"cuda"`); the graph's module is moved there. A
            device this machine does not have is a `ScrubError` (see `resolve_device`).
        progress: show progress bars over hypotheses and over each one's reference rows.
        baseline: the 0% point, as a hypothesis; default `random_baseline()`.
        ref: optional separate reference examples (same fields as `dataset`).
        subsets: name -> function of the reference rows giving a bool mask; each subset's
            losses and recovery are reported too.

    This is `pipeline.prepare` (every check, before any compute: the hypotheses and the
    baseline, `n`, the device, the fields every graph `Input` reads, every sampler's features,
    and every draw) then `pipeline.execute` in this process.

    Warns with `UndefinedRecoveryWarning` (and marks each result `recovery_defined=False`)
    when baseline and model losses coincide (`statistics.recovery_defined`), and with
    `FeatureWarning` when a `SameFeature` feature has a different value on every row.
    """
    opts = RunOptions.of(options, n=n, seed=seed, chunk_size=chunk_size, memory_mb=memory_mb,
                         memory_budget_mb=memory_budget_mb,
                         device=None if device is None else str(device), n_bootstrap=n_bootstrap,
                         progress=progress)
    run = prepare(graph, hypotheses, dataset, loss_fn, opts, baseline=baseline, ref=ref,
                  subsets=subsets)
    return execute([run])[0]


def scrub_seeds(graph: Graph, hypothesis: InterpNode, dataset: Dataset, loss_fn: LossFn, *,
                seeds: Sequence[int] = (0, 1, 2), name: str | None = None,
                options: RunOptions | None = None, baseline: InterpNode | None = None,
                ref: Dataset | None = None, subsets: Subsets | None = None, n: int | None = None,
                chunk_size: int | None = None, memory_mb: float | None = None,
                memory_budget_mb: float | None = None, device: str | torch.device | None = None,
                n_bootstrap: int | None = None, progress: bool | None = None) -> SeedSpread:
    """`scrub` once per seed in `seeds` (the other arguments as for `scrub`), and the spread
    of loss recovered over them."""
    opts = RunOptions.of(options, n=n, chunk_size=chunk_size, memory_mb=memory_mb,
                         memory_budget_mb=memory_budget_mb,
                         device=None if device is None else str(device), n_bootstrap=n_bootstrap,
                         progress=progress)
    return SeedSpread([scrub(graph, hypothesis, dataset, loss_fn, name=name,
                             options=opts.replace(seed=s), baseline=baseline, ref=ref,
                             subsets=subsets) for s in seeds])
