"""Scrubbing a hypothesis end to end, and the numbers that judge it.

`scrub` validates the hypothesis, draws the reference rows and every node's dataset, runs the
engine, and scores the output against the *reference* rows' labels with a per-example loss.
It does the same for the model itself (nothing scrubbed) and for a baseline (by default the
model's output on random inputs, i.e. everything scrubbed), and reports

    loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_model)

with a bootstrap 95% interval and standard error over reference rows (the three per-example
losses are resampled together, since they share rows). Per-example losses are kept, so
subsets and cancellation (better on some inputs, worse on others) can be inspected.

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

import html
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import Tensor

from . import engine
from .data import Dataset
from .errors import NaNLossError, ScrubError
from .graph import Graph
from .hypothesis import InterpNode, check
from .samplers import SamplingContext, Uniform
from .sampling import check_samplers, draw

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Dataset], Tensor]
"""(model output [n, ...], reference rows) -> per-example loss [n]."""

RESULT_JSON = "result.json"
RESULT_TENSORS = "per_example.safetensors"


def random_baseline() -> InterpNode:
    """The everything-scrubbed hypothesis: the output on random inputs, scored on the reference."""
    return InterpNode("random baseline", Uniform())


@dataclass
class ScrubResult:
    """The outcome of scrubbing one hypothesis (see `scrub`). Losses are means over rows."""

    name: str
    loss: float
    model_loss: float
    baseline_loss: float
    loss_recovered: float
    ci: tuple[float, float]
    recovered_se: float
    loss_se: float
    n: int
    seed: int
    per_example: dict[str, Tensor] = field(repr=False)
    subsets: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-example tensors, as JSON-ready values."""
        return {
            "name": self.name, "scrubbed_loss": self.loss, "model_loss": self.model_loss,
            "baseline_loss": self.baseline_loss, "loss_recovered": self.loss_recovered,
            "ci_low": self.ci[0], "ci_high": self.ci[1], "recovered_se": self.recovered_se,
            "loss_se": self.loss_se, "n": self.n, "seed": self.seed, "subsets": self.subsets,
            "settings": self.settings,
        }

    def save(self, path: str | os.PathLike) -> FsPath:
        """Write `path/result.json` and `path/per_example.safetensors` atomically."""
        from safetensors.torch import save_file

        target = FsPath(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = FsPath(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            (tmp / RESULT_JSON).write_text(json.dumps(_jsonable(self.summary()), indent=2))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.per_example.items()},
                      str(tmp / RESULT_TENSORS))
            _replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScrubResult:
        """Read a result written by `save` (JSON and safetensors only; no code is executed)."""
        from safetensors.torch import load_file

        root = FsPath(path)
        for f in (RESULT_JSON, RESULT_TENSORS):
            if not (root / f).is_file():
                raise ScrubError(f"{root} is not a saved ScrubResult: {f} is missing.")
        try:
            meta = json.loads((root / RESULT_JSON).read_text())
            tensors = load_file(str(root / RESULT_TENSORS))
        except FileNotFoundError as err:
            raise ScrubError(f"{root} is not a saved ScrubResult (missing {err.filename}).") from err
        except (json.JSONDecodeError, Exception) as err:
            raise ScrubError(f"Could not read the ScrubResult in {root}: {err}") from err
        return cls(
            name=meta["name"], loss=meta["scrubbed_loss"], model_loss=meta["model_loss"],
            baseline_loss=meta["baseline_loss"], loss_recovered=meta["loss_recovered"],
            ci=(meta["ci_low"], meta["ci_high"]), recovered_se=meta["recovered_se"],
            loss_se=meta["loss_se"], n=meta["n"], seed=meta["seed"], per_example=tensors,
            subsets=meta.get("subsets", {}), settings=meta.get("settings", {}),
        )

    def __repr__(self) -> str:
        return (
            f"ScrubResult({self.name!r}): loss {self.loss:.4g} ± {self.loss_se:.2g} "
            f"(model {self.model_loss:.4g}, baseline {self.baseline_loss:.4g})\n"
            f"  loss recovered {_pct(self.loss_recovered)} "
            f"[95% CI {_pct(self.ci[0])}, {_pct(self.ci[1])}], n={self.n}, seed={self.seed}"
        )

    def _repr_html_(self) -> str:
        rows = [("hypothesis", self.name), ("scrubbed loss", f"{self.loss:.4g} ± {self.loss_se:.2g}"),
                ("model loss", f"{self.model_loss:.4g}"), ("baseline loss", f"{self.baseline_loss:.4g}"),
                ("loss recovered", f"{_pct(self.loss_recovered)} [{_pct(self.ci[0])}, "
                                   f"{_pct(self.ci[1])}]"), ("n, seed", f"{self.n}, {self.seed}")]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _replace_dir(new: FsPath, target: FsPath) -> None:
    """Move directory `new` to `target`, replacing any old one without a half-written state."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generator(seed: int, role: str) -> torch.Generator:
    """An independent, reproducible generator for one role (`"ref"`, `"hypothesis"`, ...)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(role.encode())) % 2**63)


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


def recovered(baseline: Tensor, scrubbed: Tensor, model: Tensor) -> Tensor:
    """(L_baseline - L_scrubbed) / (L_baseline - L_model), elementwise over leading axes."""
    return (baseline - scrubbed) / (baseline - model)


def bootstrap(per_example: Mapping[str, Tensor], gen: torch.Generator, n_resamples: int = 1000,
              block: int = 100) -> tuple[float, float, float]:
    """(ci_low, ci_high, se) of loss recovered, resampling reference rows with replacement."""
    s, m, b = per_example["scrubbed"], per_example["model"], per_example["baseline"]
    n = len(s)
    stats = []
    for start in range(0, n_resamples, block):
        k = min(block, n_resamples - start)
        idx = torch.randint(n, (k, n), generator=gen)  # [k, n]
        stats.append(recovered(b[idx].mean(1), s[idx].mean(1), m[idx].mean(1)))
    r = torch.cat(stats).double()
    r = r[torch.isfinite(r)]
    if len(r) < 2:
        return (math.nan, math.nan, math.nan)
    lo, hi = torch.quantile(r, torch.tensor([0.025, 0.975], dtype=r.dtype)).tolist()
    return (lo, hi, float(r.std()))


def versions() -> dict[str, str]:
    from . import __version__

    return {"causal_scrubbing": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


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
    if n is None:
        ref_idx = torch.arange(n_pool)
    else:
        ref_idx = torch.randint(n_pool, (int(n),), generator=generator(seed, "ref"))
    ctx = SamplingContext(table, generator(seed, "hypothesis"), *source)
    for corr in (*corrs.values(), base_corr):  # features, before any compute
        check_samplers(corr, ctx)
    ref_rows = table.rows(ref_idx)

    def chunk_loss(what: str):
        def reduce(out: Tensor, start: int, stop: int) -> Tensor:
            return per_example_loss(loss_fn, out, table.rows(ref_idx[start:stop]), what, start)
        return reduce

    def run(corr, role: str, what: str) -> Tensor:
        sample = draw(corr, table, ref_idx, generator(seed, role), ctx=ctx)
        return engine.evaluate(corr, table, sample, chunk_size=chunk_size, memory_mb=memory_mb,
                               reduce=chunk_loss(what), progress=progress)

    # The baseline draws from the same stream as every hypothesis, so a hypothesis identical
    # to the baseline (e.g. the "everything scrubbed" one) recovers exactly 0%.
    base_losses = run(base_corr, "hypothesis", f"baseline {base_root.name!r}")
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
        per_example = {"scrubbed": run(corrs[key], "hypothesis", f"hypothesis {key!r}"),
                       "model": model_losses, "baseline": base_losses, "ref_index": ref_idx}
        results[key] = summarize(
            key, per_example, seed=seed, n_bootstrap=n_bootstrap, subsets=subset_masks,
            settings={"hypothesis": str(hypotheses[key]), "baseline": str(base_root),
                      "n": len(ref_idx), "n_requested": n, "seed": seed,
                      "chunk_size": chunk_size, "memory_mb": memory_mb, "device": str(device),
                      "dataset_size": len(dataset), "separate_ref": ref is not None,
                      "versions": versions()},
        )
    return results


def summarize(name: str, per_example: dict[str, Tensor], *, seed: int, n_bootstrap: int = 1000,
              subsets: Mapping[str, Tensor] | None = None,
              settings: dict[str, Any] | None = None) -> ScrubResult:
    """Build a `ScrubResult` from per-example losses (`scrubbed`, `model`, `baseline`)."""
    s, m, b = (per_example[k].double() for k in ("scrubbed", "model", "baseline"))
    rec = float(recovered(b.mean(), s.mean(), m.mean()))
    lo, hi, se = bootstrap(per_example, generator(seed, "bootstrap"), n_bootstrap)
    subset_stats = {}
    for key, mask in (subsets or {}).items():
        mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
        k = int(mask.sum())
        subset_stats[key] = {
            "n": k,
            "scrubbed_loss": float(s[mask].mean()) if k else math.nan,
            "model_loss": float(m[mask].mean()) if k else math.nan,
            "baseline_loss": float(b[mask].mean()) if k else math.nan,
            "loss_recovered": float(recovered(b[mask].mean(), s[mask].mean(), m[mask].mean()))
            if k else math.nan,
        }
    n = len(s)
    return ScrubResult(
        name=name, loss=float(s.mean()), model_loss=float(m.mean()), baseline_loss=float(b.mean()),
        loss_recovered=rec, ci=(lo, hi), recovered_se=se,
        loss_se=float(s.std() / math.sqrt(n)) if n > 1 else math.nan, n=n, seed=seed,
        per_example=per_example, subsets=subset_stats, settings=settings or {},
    )


@dataclass
class SeedSpread:
    """The same scrub over several seeds: each result, and the spread of loss recovered."""

    results: list[ScrubResult]

    @property
    def loss_recovered(self) -> Tensor:
        return torch.tensor([r.loss_recovered for r in self.results], dtype=torch.float64)

    @property
    def mean(self) -> float:
        return float(self.loss_recovered.mean())

    @property
    def std(self) -> float:
        return float(self.loss_recovered.std()) if len(self.results) > 1 else math.nan

    def __repr__(self) -> str:
        return (f"SeedSpread({self.results[0].name!r}, {len(self.results)} seeds): loss recovered "
                f"{_pct(self.mean)} ± {_pct(self.std)} (std over seeds)")


def scrub_seeds(*args: Any, seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> SeedSpread:
    """`scrub` once per seed (same arguments otherwise)."""
    return SeedSpread([scrub(*args, seed=s, **kwargs) for s in seeds])


def _graph_device(graph: Graph) -> torch.device:
    if graph.module is not None:
        for p in graph.module.parameters():
            return p.device
    return torch.device("cpu")
