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

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import engine
from .data import Dataset
from .draws import check_samplers, draw_hypothesis, reference_rows, sampling_context
from .errors import NaNLossError, ScrubError
from .graph import Graph
from .hypothesis import InterpNode, check
from .results import ScrubResult, SeedSpread, versions
from .samplers import Uniform
from .statistics import summarize

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Dataset], Tensor]
"""(model output [n, ...], reference rows) -> per-example loss [n]."""


def random_baseline() -> InterpNode:
    """The everything-scrubbed hypothesis: the output on random inputs, scored on the reference."""
    return InterpNode("random baseline", Uniform())


def per_example_loss(loss_fn: LossFn, output: Tensor, ref_rows: Dataset, what: str,
                     start: int = 0) -> Tensor:
    """Apply `loss_fn` and check it returns one finite loss per reference row.

    `ref_rows` are reference rows `start, start + 1, ...` (for the error message).
    """
    losses = loss_fn(output, ref_rows)
    if not isinstance(losses, Tensor) or losses.shape != (len(ref_rows),):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ScrubError(f"The loss function returned {shape} for {what}; it must return one "
                         f"loss per reference row, shape [{len(ref_rows)}] (no reduction).")
    bad = ~torch.isfinite(losses)
    if bad.any():
        rows = (torch.nonzero(bad).flatten()[:5] + start).tolist()
        raise NaNLossError(f"The loss is NaN or infinite for {what} on {int(bad.sum())} of "
                           f"reference rows {start}..{start + len(ref_rows) - 1} (first: {rows});"
                           " evaluation stopped there. Check the model output and the loss "
                           "function on those rows.")
    return losses.detach().float().cpu()


def scrub(graph: Graph, hypothesis: InterpNode, dataset: Dataset, loss_fn: LossFn, *,
          name: str | None = None, **kwargs: Any) -> ScrubResult:
    """Scrub `hypothesis` on `graph` and measure how much of the loss it explains.

    Args:
        graph: the model graph.
        hypothesis: the root `InterpNode` (it claims the output).
        dataset: the examples samplers draw from (inputs, labels, features).
        loss_fn: `(output, reference_rows) -> [n]` per-example loss, scored on the reference.
        name: the result's name (default: the root's name).
        **kwargs: as for `scrub_many` (`n`, `seed`, `baseline`, `ref`, `subsets`,
            `chunk_size`, `device`, `n_bootstrap`, `progress`).
    """
    key = name or hypothesis.name
    return scrub_many(graph, {key: hypothesis}, dataset, loss_fn, **kwargs)[key]


def scrub_many(graph: Graph, hypotheses: Mapping[str, InterpNode], dataset: Dataset,
               loss_fn: LossFn, *, n: int | None = None, seed: int = 0,
               baseline: InterpNode | None = None, ref: Dataset | None = None,
               subsets: Mapping[str, Callable[[Dataset], Tensor]] | None = None,
               chunk_size: int | None = None, memory_mb: float | None = None,
               device: str | torch.device | None = None, n_bootstrap: int = 1000,
               progress: bool = False) -> dict[str, ScrubResult]:
    """Scrub several hypotheses on the same reference rows, sharing the model and baseline runs.

    Args:
        n: number of reference rows, drawn uniformly with replacement; `None` uses every row
            of the dataset once (or every row of `ref`).
        seed: seeds every draw (reference rows, each hypothesis' datasets, bootstrap). Each
            hypothesis gets the same generator stream, so its result does not depend on which
            other hypotheses run beside it.
        baseline: the 0% point, as a hypothesis; default `random_baseline()`.
        ref: optional separate reference examples (same fields as `dataset`).
        subsets: name -> function of the reference rows giving a bool mask; each subset's
            losses and recovery are reported too.
        chunk_size: reference rows evaluated at once; default: as many as fit in `memory_mb`
            (measured on a small probe chunk; default budget 512 MB on CPU, a quarter of the
            free memory of a GPU).
        device: where to run (`"cpu"`, `"cuda"`); the graph's module is moved there.
        progress: show progress bars over hypotheses and over each one's reference rows.
    """
    from tqdm.auto import tqdm

    base_root = baseline if baseline is not None else random_baseline()
    corrs = {k: check(graph, h) for k, h in hypotheses.items()}  # every check before compute
    base_corr = check(graph, base_root)
    device = torch.device(device) if device is not None else _graph_device(graph)
    graph.to(device)

    table = dataset if ref is None else Dataset.cat([ref, dataset])
    source = (0, len(table)) if ref is None else (len(ref), len(table))
    table = table.to(device)
    n_pool = len(dataset) if ref is None else len(ref)
    ref_idx = reference_rows(n_pool, n, seed)
    ctx = sampling_context(table, seed, source)
    for corr in (*corrs.values(), base_corr):  # features, before any compute
        check_samplers(corr, ctx)
    ref_rows = table.rows(ref_idx)

    def chunk_loss(what: str):
        def reduce(out: Tensor, start: int, stop: int) -> Tensor:
            return per_example_loss(loss_fn, out, table.rows(ref_idx[start:stop]), what, start)
        return reduce

    def run(corr, what: str) -> Tensor:
        sample = draw_hypothesis(corr, table, ref_idx, seed, ctx=ctx)
        return engine.evaluate(corr, table, sample, chunk_size=chunk_size, memory_mb=memory_mb,
                               reduce=chunk_loss(what), progress=progress)

    # The baseline draws from the same stream as every hypothesis, so a hypothesis identical
    # to the baseline (e.g. the "everything scrubbed" one) recovers exactly 0%.
    base_losses = run(base_corr, f"baseline {base_root.name!r}")
    step = chunk_size or 1024
    model_loss = chunk_loss("the unscrubbed model")
    with torch.inference_mode():
        model_losses = torch.cat([
            model_loss(graph.forward(table.rows(ref_idx[i:i + step])), i, i + step)
            for i in range(0, len(ref_idx), step)])
    subset_masks = {k: f(ref_rows) for k, f in (subsets or {}).items()}
    results = {}
    for key in tqdm(hypotheses, desc="scrubbing", disable=not progress, leave=False):
        log.info("scrubbing %r on %d reference rows", key, len(ref_idx))
        per_example = {"scrubbed": run(corrs[key], f"hypothesis {key!r}"),
                       "model": model_losses, "baseline": base_losses, "ref_index": ref_idx}
        results[key] = summarize(
            key, per_example, seed=seed, n_bootstrap=n_bootstrap, subsets=subset_masks,
            settings={"hypothesis": str(hypotheses[key]), "tree": hypotheses[key].to_dict(),
                      "baseline": str(base_root),
                      "n": len(ref_idx), "n_requested": n, "seed": seed,
                      "chunk_size": chunk_size, "memory_mb": memory_mb, "device": str(device),
                      "dataset_size": len(dataset), "separate_ref": ref is not None,
                      "versions": versions()},
        )
    return results


def scrub_seeds(*args: Any, seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> SeedSpread:
    """`scrub` once per seed (same arguments otherwise)."""
    return SeedSpread([scrub(*args, seed=s, **kwargs) for s in seeds])


def _graph_device(graph: Graph) -> torch.device:
    if graph.module is not None:
        for p in graph.module.parameters():
            return p.device
    return torch.device("cpu")
