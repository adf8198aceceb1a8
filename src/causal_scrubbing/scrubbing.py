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

import torch
from torch import Tensor

from .core import engine
from .core.data import Dataset
from .core.draws import check_n, check_samplers, draw_hypothesis, reference_rows, sampling_context
from .core.errors import (
    NaNLossError,
    ScrubError,
    UndefinedRecoveryWarning,
    UnknownNameError,
    context,
    unknown_name,
    warn,
)
from .core.graph import Graph, Input
from .core.hypothesis import InterpNode, check
from .core.results import UNDEFINED_RECOVERY, ScrubResult, SeedSpread, versions
from .core.samplers import Uniform
from .core.statistics import RECOVERY_CLOSE, RECOVERY_Z, summarize

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Dataset], Tensor]
"""(model output [n, ...], reference rows) -> per-example loss [n]."""


def random_baseline() -> InterpNode:
    """The everything-scrubbed hypothesis: the output on random inputs, scored on the reference."""
    return InterpNode("random baseline", Uniform())


def per_example_loss(loss_fn: LossFn, output: Tensor, ref_rows: Dataset, what: str,
                     start: int = 0, n: int | None = None) -> Tensor:
    """Apply `loss_fn` and check it returns one finite loss per reference row.

    `ref_rows` are reference rows `start, start + 1, ...` of the run's `n` (default: just
    these rows); both are for the error message, since the loss is computed chunk by chunk.
    """
    losses = loss_fn(output, ref_rows)
    rows = len(ref_rows)
    if not isinstance(losses, Tensor) or losses.shape != (rows,):
        got = (f"shape {tuple(losses.shape)}" if isinstance(losses, Tensor)
               else f"a {type(losses).__name__}")
        n = rows if n is None else n
        chunk = (f"on reference rows {start}..{start + rows - 1}, a chunk of {rows} of the run's "
                 f"{n} reference rows (losses are computed chunk by chunk)" if rows != n
                 else f"on all {n} reference rows")
        raise ScrubError(
            f"The loss function returned {got} for {what} {chunk}. It must return one loss per "
            f"reference row, with no reduction: shape [{n}] for the run's {n} reference rows, "
            f"so shape [{rows}] for these {rows}. E.g. F.cross_entropy(..., reduction='none').")
    bad = ~torch.isfinite(losses)
    if bad.any():
        first = (torch.nonzero(bad).flatten()[:5] + start).tolist()
        raise NaNLossError(f"The loss is NaN or infinite for {what} on {int(bad.sum())} of "
                           f"reference rows {start}..{start + len(ref_rows) - 1} (first: {first});"
                           " evaluation stopped there. Check the model output and the loss "
                           "function on those rows.")
    return losses.detach().float().cpu()


def scrub(graph: Graph, hypothesis: InterpNode, dataset: Dataset, loss_fn: LossFn, *,
          name: str | None = None, n: int | None = None, seed: int = 0,
          baseline: InterpNode | None = None, ref: Dataset | None = None,
          subsets: Mapping[str, Callable[[Dataset], Tensor]] | None = None,
          chunk_size: int | None = None, memory_mb: float | None = None,
          memory_budget_mb: float | None = None,
          device: str | torch.device | None = None, n_bootstrap: int = 1000,
          progress: bool = False) -> ScrubResult:
    """Scrub `hypothesis` on `graph` and measure how much of the loss it explains.

    Args:
        graph: the model graph.
        hypothesis: the root `InterpNode` (it claims the output).
        dataset: the examples samplers draw from (inputs, labels, features).
        loss_fn: `(output, reference_rows) -> [n]` per-example loss, scored on the reference.
        name: the result's name (default: the root's name).
        n, seed, baseline, ref, subsets, chunk_size, memory_mb, memory_budget_mb, device,
            n_bootstrap, progress: as for `scrub_many`.
    """
    key = name or hypothesis.name
    return scrub_many(graph, {key: hypothesis}, dataset, loss_fn, n=n, seed=seed, baseline=baseline,
                      ref=ref, subsets=subsets, chunk_size=chunk_size, memory_mb=memory_mb,
                      memory_budget_mb=memory_budget_mb, device=device, n_bootstrap=n_bootstrap,
                      progress=progress)[key]


def scrub_many(graph: Graph, hypotheses: Mapping[str, InterpNode], dataset: Dataset,
               loss_fn: LossFn, *, n: int | None = None, seed: int = 0,
               baseline: InterpNode | None = None, ref: Dataset | None = None,
               subsets: Mapping[str, Callable[[Dataset], Tensor]] | None = None,
               chunk_size: int | None = None, memory_mb: float | None = None,
               memory_budget_mb: float | None = None,
               device: str | torch.device | None = None, n_bootstrap: int = 1000,
               progress: bool = False) -> dict[str, ScrubResult]:
    """Scrub several hypotheses on the same reference rows, sharing the model and baseline runs.

    Args:
        n: number of reference rows (a positive whole number), drawn uniformly with
            replacement; `None` uses every row of the dataset once (or every row of `ref`).
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
        memory_budget_mb: the most memory the whole process may hold, in MB (resident memory
            on CPU, allocated on CUDA); chunks are sized to fit it and, on CPU, freed memory
            is handed back to the system whenever it is crossed (see `engine.evaluate`).
        device: where to run (`"cpu"`, `"cuda"`); the graph's module is moved there. A
            device this machine does not have is a `ScrubError` (see `resolve_device`).
        progress: show progress bars over hypotheses and over each one's reference rows.

    Every check runs before any compute: the hypotheses and the baseline (`check`), `n`, the
    device, the fields every graph `Input` reads, every sampler's features, and every draw
    (an empty feature class shows only when drawing). A sampler's error names the hypothesis
    id and the interpretation node at fault.

    Warns with `UndefinedRecoveryWarning` (and marks each result `recovery_defined=False`)
    when baseline and model losses coincide (`statistics.recovery_defined`), and with
    `FeatureWarning` when a `SameFeature` feature has a different value on every row.
    """
    from tqdm.auto import tqdm

    # ---- every check, before any compute -------------------------------------------------
    n = check_n(n)
    base_root = baseline if baseline is not None else random_baseline()
    corrs = {}
    for k, h in hypotheses.items():
        with context(f"hypothesis {k!r}" if len(hypotheses) > 1 else ""):
            corrs[k] = check(graph, h)
    with context(f"baseline {base_root.name!r}"):
        base_corr = check(graph, base_root)
    device = resolve_device(device) if device is not None else _graph_device(graph)

    table = dataset if ref is None else Dataset.cat([ref, dataset])
    check_inputs(graph, table, "dataset" if ref is None else "dataset and ref")
    source = (0, len(table)) if ref is None else (len(ref), len(table))
    n_pool = len(dataset) if ref is None else len(ref)
    ref_idx = reference_rows(n_pool, n, seed)
    graph.to(device)
    table = table.to(device)
    ctx = sampling_context(table, seed, source)
    where = {k: f"hypothesis {k!r}" for k in hypotheses}
    base_where = f"baseline {base_root.name!r}"
    for key, corr in corrs.items():  # features, before any compute
        check_samplers(corr, ctx, where[key])
    check_samplers(base_corr, ctx, base_where)
    # Every draw, before any compute: a draw is a few index tensors, and an empty feature
    # class shows only when drawing. Each draw restarts the "hypothesis" stream, so drawing
    # them all first gives exactly the draws made one at a time.
    with context(base_where):
        base_sample = draw_hypothesis(base_corr, table, ref_idx, seed, ctx=ctx)
    samples = {}
    for key, corr in corrs.items():
        with context(where[key]):
            samples[key] = draw_hypothesis(corr, table, ref_idx, seed, ctx=ctx)
    ref_rows = table.rows(ref_idx)
    n_ref = len(ref_idx)

    # ---- compute ---------------------------------------------------------------------------
    def chunk_loss(what: str):
        def reduce(out: Tensor, start: int, stop: int) -> Tensor:
            return per_example_loss(loss_fn, out, table.rows(ref_idx[start:stop]), what, start,
                                    n_ref)
        return reduce

    def run(corr, sample, what: str) -> Tensor:
        return engine.evaluate(corr, table, sample, chunk_size=chunk_size, memory_mb=memory_mb,
                               memory_budget_mb=memory_budget_mb, reduce=chunk_loss(what),
                               progress=progress)

    # The baseline draws from the same stream as every hypothesis, so a hypothesis identical
    # to the baseline (e.g. the "everything scrubbed" one) recovers exactly 0%.
    base_losses = run(base_corr, base_sample, base_where)
    # the unscrubbed model through the engine too (one lane, no mixing ops), so that its
    # chunks are sized to the memory budget like every hypothesis'
    unscrubbed = check(graph, InterpNode(graph.output))
    model_losses = run(unscrubbed, draw_hypothesis(unscrubbed, table, ref_idx, seed, ctx=ctx),
                       "the unscrubbed model")
    subset_masks = {k: f(ref_rows) for k, f in (subsets or {}).items()}
    results = {}
    for key in tqdm(hypotheses, desc="scrubbing", disable=not progress, leave=False):
        log.info("scrubbing %r on %d reference rows", key, len(ref_idx))
        per_example = {"scrubbed": run(corrs[key], samples[key], where[key]),
                       "model": model_losses, "baseline": base_losses, "ref_index": ref_idx}
        results[key] = summarize(
            key, per_example, seed=seed, n_bootstrap=n_bootstrap, subsets=subset_masks,
            settings={"hypothesis": str(hypotheses[key]), "tree": hypotheses[key].to_dict(),
                      "baseline": str(base_root),
                      "n": len(ref_idx), "n_requested": n, "seed": seed,
                      "chunk_size": chunk_size, "memory_mb": memory_mb,
                      "memory_budget_mb": memory_budget_mb, "device": str(device),
                      "dataset_size": len(dataset), "separate_ref": ref is not None,
                      "versions": versions()},
        )
    if results and not next(iter(results.values())).recovery_defined:
        r = next(iter(results.values()))
        warn(
            f"Loss recovered is undefined: {UNDEFINED_RECOVERY} (baseline {base_root.name!r} "
            f"loss {r.baseline_loss:.4g}, model loss {r.model_loss:.4g}, on {r.n} reference "
            f"rows; they differ by less than {RECOVERY_CLOSE:.0%} of the larger and less than "
            f"{RECOVERY_Z} standard errors). Every hypothesis' percentage here is meaningless; "
            "use a baseline that does clearly worse than the model (e.g. the default "
            "random_baseline()), or more reference rows (n).",
            UndefinedRecoveryWarning,
        )
    return results


def check_inputs(graph: Graph, dataset: Dataset, what: str = "dataset") -> None:
    """Check that every `Input` the graph's output reads names a field of `dataset`."""
    for name in graph.order:
        node = graph.nodes[name]
        if isinstance(node, Input) and node.field not in dataset:
            spec = f"cs.Input({name!r}" + (f", field={node.field!r})" if node.field != name else ")")
            err = unknown_name("dataset field", node.field, dataset.keys(),
                               f" (read by the graph's {spec})")
            raise UnknownNameError(f"{err} Fix: add the field to the {what}, or point the "
                                   "Input at an existing one with field=.")


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a `torch.device`, after checking this machine and PyTorch build have it.

    Raises `ScrubError` naming the device and the fix (e.g. for "gpu", or "cuda" without CUDA).

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    causal_scrubbing.core.errors.ScrubError: Unknown device 'gpu'. Did you mean 'cuda'? ...
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            hint = " Did you mean 'cuda'?" if str(device).strip().lower().startswith("gpu") else ""
            raise ScrubError(
                f"Unknown device {device!r}.{hint} Use 'cpu', 'cuda' (or 'cuda:0', 'cuda:1', "
                "...) or 'mps', as PyTorch names devices.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ScrubError(
                f"Device {str(device)!r} was asked for, but CUDA is not available here "
                f"(PyTorch {torch.__version__}, torch.cuda.is_available() is False). Run on "
                "device='cpu', or install a CUDA build of PyTorch on a machine with an NVIDIA GPU.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ScrubError(
                f"Device {str(device)!r} was asked for, but this machine has {count} CUDA "
                f"device(s): use 'cuda:0'{' to ' + repr(f'cuda:{count - 1}') if count > 1 else ''}.")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ScrubError(f"Device {str(device)!r} was asked for, but Apple's MPS is not "
                             "available here. Run on device='cpu'.")
    return dev


def scrub_seeds(graph: Graph, hypothesis: InterpNode, dataset: Dataset, loss_fn: LossFn, *,
                seeds: Sequence[int] = (0, 1, 2), name: str | None = None, n: int | None = None,
                baseline: InterpNode | None = None, ref: Dataset | None = None,
                subsets: Mapping[str, Callable[[Dataset], Tensor]] | None = None,
                chunk_size: int | None = None, memory_mb: float | None = None,
                device: str | torch.device | None = None, n_bootstrap: int = 1000,
                progress: bool = False) -> SeedSpread:
    """`scrub` once per seed in `seeds` (the other arguments as for `scrub`), and the spread
    of loss recovered over them."""
    return SeedSpread([scrub(graph, hypothesis, dataset, loss_fn, seed=s, name=name, n=n,
                             baseline=baseline, ref=ref, subsets=subsets, chunk_size=chunk_size,
                             memory_mb=memory_mb, device=device, n_bootstrap=n_bootstrap,
                             progress=progress) for s in seeds])


def _graph_device(graph: Graph) -> torch.device:
    if graph.module is not None:
        for p in graph.module.parameters():
            return p.device
    return torch.device("cpu")
