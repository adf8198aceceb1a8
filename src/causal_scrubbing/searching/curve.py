"""Faithfulness curves: loss recovered against circuit size, and the two areas MIB reports.

A method that ranks edges (EAP, EAP-IG) or returns circuits (the search, ACDC) is scored at a range
of circuit sizes: the top ``ceil(s * E)`` edges of its ranking for each fraction ``s`` of the
graph's E edges (by default MIB's 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100%). Each kept set
is scored by causal scrubbing on held-out rows (the rows `scrub` draws for the seed), with a
bootstrap 95% interval: f(s) = loss recovered = (L_empty - L_kept) / (L_empty - L_model),
where "empty" resamples every edge. That is MIB's faithfulness with the metric m = -loss.

The areas, exactly:

- **CPR** = (1 / (x_last - x_first)) * trapezoid integral of f over x, from the first size to
  the last; higher is better (1 for a circuit that recovers everything at every size).
- **CMD** = the same integral of |1 - f|; lower is better (0 is perfect).

With ``axis="linear"`` (the default) x is the fraction of edges (0.001 ... 1), so the points
at 20, 50 and 100% carry most of the area; with ``axis="log"`` x is log10 of the fraction and
each decade weighs the same. Both areas are normalised by the x-range, so they are averages of
f (and of |1 - f|) over the axis. (MIB's published CPR values, some above 1, come from its
own evaluation code's integration, not from this rule: compare only numbers computed the same
way.)

Two ablations: ``"shared"`` (causal scrubbing's, the search's default: every resampled path
reads one shared random row per reference row) and ``"counterfactual"`` (MIB's: each row's
paired counterfactual row, from `pairs`, as `PairedRows`).

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="eap", n=200,
    ...                           sizes=(0.5, 1.0), n_bootstrap=50)
    >>> c.edges, c.loss_recovered[-1]
    ([3, 6], 1.0)
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from ..core.data import Dataset
from ..core.draws import check_n, generator
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import InterpNode
from ..core.results import atomic_write, jsonable, versions
from ..core.samplers import Sampler, SamplingContext
from ..scrubbing import LossFn, scrub_many
from . import search
from .attribution import attribute, check_method, search_rows
from .edges import Triple, compact_hypothesis, graph_edges
from .result import SearchResult

if TYPE_CHECKING:
    from ..report.circuit import Figure

#: MIB's circuit sizes, as fractions of the graph's edges.
SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
CURVE_JSON = "curve.json"
CURVE_HTML = "curve.html"
CURVE_METHODS = ("search", "ranked", "greedy", "eap", "eap-ig", "acdc")
Axis = Literal["linear", "log"]
Ablation = Literal["shared", "counterfactual"]


class PairedRows(Sampler):
    """Each reference row's paired row: `pairs[i]` is the row (index into the table) paired
    with row i, e.g. its counterfactual prompt (MIB's ablation).

    >>> import torch
    >>> s = PairedRows(torch.tensor([1, 0, 3, 2]))
    >>> s(torch.tensor([0, 2]), None).tolist()
    [1, 3]
    """

    def __init__(self, pairs: Tensor):
        self.pairs = torch.as_tensor(pairs, dtype=torch.long).cpu()

    def __call__(self, ref: Tensor, ctx: SamplingContext | None) -> Tensor:
        return self.pairs[ref.cpu()]

    def check(self, ctx: SamplingContext) -> None:
        n = len(ctx.table)
        if self.pairs.shape != (n,) or int(self.pairs.min()) < 0 or int(self.pairs.max()) >= n:
            raise ScrubError(f"PairedRows needs one row index in [0, {n}) per row of the table "
                             f"(shape [{n}]), got shape {tuple(self.pairs.shape)}.")

    def pool_key(self, ref: Tensor, ctx: SamplingContext) -> Any:
        return ref.numpy().tobytes()

    def describe(self) -> str:
        return "PairedRows()"


def pairs_by_feature(dataset: Dataset, feature: str, seed: int = 0) -> Tensor:
    """A paired row [len(dataset)] for every row: another row (drawn at random, seeded) with the
    same value of the dataset field `feature`, or the row itself when its class has no other.
    For IOI, `feature="template"` pairs each prompt with one of the same template and other
    names, the usual counterfactual of IOI circuit discovery.

    >>> ds = Dataset({"t": torch.tensor([0, 0, 1, 1, 1, 2])})
    >>> p = pairs_by_feature(ds, "t")
    >>> bool((ds["t"][p] == ds["t"]).all()), bool((p[:5] != torch.arange(5)).all()), int(p[5])
    (True, True, 5)
    """
    if feature not in dataset:
        raise ScrubError(f"The dataset has no field {feature!r} to pair rows by (fields: "
                         f"{sorted(dataset.keys())}).")
    values = dataset[feature].cpu()
    if values.ndim != 1:
        raise ScrubError(f"Field {feature!r} has shape {tuple(values.shape)}; pairing needs one "
                         "value per row.")
    gen = generator(seed, "pairs")
    out = torch.arange(len(values))
    for v in torch.unique(values):
        members = torch.nonzero(values == v).flatten()  # [k]
        k = len(members)
        if k < 2:
            continue
        shift = torch.randint(1, k, (k,), generator=gen)  # another member, never the row itself
        out[members] = members[(torch.arange(k) + shift) % k]
    return out


def edge_counts(n_edges: int, sizes: Sequence[float]) -> list[int]:
    """Edges kept at each size: ceil(size * n_edges) (so every size above 0 keeps at least one).

    >>> edge_counts(131, SIZES)
    [1, 1, 1, 2, 3, 7, 14, 27, 66, 131]
    """
    return [min(n_edges, math.ceil(s * n_edges - 1e-9)) for s in sizes]


def check_sizes(sizes: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in sizes)
    except (TypeError, ValueError):
        raise ScrubError(f"sizes must be fractions of edges such as 0.01, 0.1, 1, got {sizes!r}.") from None
    if len(out) < 2 or list(out) != sorted(set(out)) or not all(0 < s <= 1 for s in out):
        raise ScrubError(f"sizes must be at least two increasing fractions in (0, 1] (e.g. "
                         f"0.01, 0.1, 1), got {list(out)}.")
    return out


def areas(sizes: Sequence[float], f: Sequence[float], axis: Axis = "linear") -> tuple[float, float]:
    """(CPR, CMD): the trapezoid integrals of f and of |1 - f| over x, divided by the x-range
    (module docstring); x is the size (`axis="linear"`) or log10 of it (`"log"`).

    >>> areas([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])  # (0.25 + 0.5) and (0.25 + 0)
    (0.75, 0.25)
    """
    if axis not in ("linear", "log"):
        raise ScrubError(f"axis must be 'linear' or 'log', got {axis!r}.")
    if len(sizes) != len(f) or len(sizes) < 2:
        raise ScrubError(f"areas needs one value per size and at least two sizes, got "
                         f"{len(sizes)} sizes and {len(f)} values.")
    x = [math.log10(s) for s in sizes] if axis == "log" else [float(s) for s in sizes]
    width = x[-1] - x[0]
    cpr = cmd = 0.0
    for i in range(len(x) - 1):
        dx = x[i + 1] - x[i]
        cpr += dx * (f[i] + f[i + 1]) / 2
        cmd += dx * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2
    return cpr / width, cmd / width


@dataclass
class CurveResult:
    """A faithfulness curve (`curve.json`): loss recovered with its interval at each size."""

    method: str
    sizes: list[float]
    edges: list[int]
    loss_recovered: list[float]
    ci_low: list[float]
    ci_high: list[float]
    cpr: float
    cmd: float
    ablation: str
    seconds: float  # everything: ranking the edges and scoring every size
    method_seconds: float  # ranking the edges (the method itself)
    n_edges: int
    n: int  # held-out rows every size is scored on
    seed: int
    axis: str = "linear"
    cpr_ci: tuple[float, float] = (math.nan, math.nan)
    cmd_ci: tuple[float, float] = (math.nan, math.nan)
    ranking: list[Triple] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "method": self.method, "sizes": self.sizes, "edges": self.edges,
            "loss_recovered": self.loss_recovered, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "cpr": self.cpr, "cmd": self.cmd, "cpr_ci": list(self.cpr_ci),
            "cmd_ci": list(self.cmd_ci), "ablation": self.ablation, "seconds": self.seconds,
            "method_seconds": self.method_seconds, "n_edges": self.n_edges, "n": self.n,
            "seed": self.seed, "axis": self.axis,
            "area": f"trapezoid over the fraction of edges ({self.axis} axis) from the first size "
                    "to the last, divided by that range",
            "ranking": [{"sender": u, "receiver": v, "port": p} for u, v, p in self.ranking],
            "settings": self.settings, "versions": versions(),
        })

    def __repr__(self) -> str:
        pts = ", ".join(f"{100 * s:g}%: {100 * f:.1f}" for s, f in zip(self.sizes, self.loss_recovered))
        return (f"CurveResult({self.method}, {self.ablation} ablation; CPR {self.cpr:.3f}, CMD "
                f"{self.cmd:.3f}; {pts}; {self.seconds:.1f} s)")

    def plot(self) -> Figure:
        """The curve as `curve.html` draws it (loss recovered with its 95% band against the
        fraction of edges kept, log x-axis), as a `report.circuit.Figure`: an SVG a notebook
        shows inline (`.save("curve.svg")`).

        >>> import causal_scrubbing as cs
        >>> from causal_scrubbing.experiments import toy
        >>> exp = toy.build()
        >>> c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="eap", n=200,
        ...                           sizes=(0.5, 1.0), n_bootstrap=50)
        >>> fig = c.plot()
        >>> fig.svg.count("<polyline"), "CPR" in fig.svg
        (1, True)
        """
        from ..report.circuit import Figure  # (a layer above: presentation)

        data = self.to_dict()
        return Figure(curve_svg([curve_series(data)],
                                x_ticks=[(s, f"{100 * s:g}%") for s in self.sizes]))

    def save(self, out: str | os.PathLike, extra: Mapping[str, Any] | None = None
             ) -> tuple[FsPath, FsPath]:
        """Write `out/curve.json` (with `extra` entries added) and `out/curve.html`."""
        target = FsPath(out)
        data = {**self.to_dict(), **(extra or {})}
        json_path, html_path = target / CURVE_JSON, target / CURVE_HTML
        atomic_write(json_path, json.dumps(data, indent=2) + "\n")
        curves = [data] + [c for c in (extra or {}).values()
                           if isinstance(c, dict) and "loss_recovered" in c]
        atomic_write(html_path, curve_html(curves, title=f"Faithfulness curve: {self.method}"))
        return json_path, html_path


def search_ranking(found: SearchResult, graph: Graph) -> list[Triple]:
    """A ranking of every edge from a search's trace: the kept edges first (by the loss
    recovered their removal cost when tried, largest first), then the removed edges from the
    last removed to the first, then the edges never tried: in the order of the attribution
    ranking a `ranked_search` trace holds (its top-k left them out), else in graph order."""
    edges = graph_edges(graph)
    by_name = {f"{u} -> {v}.{p}": (u, v, p) for u, v, p in edges}
    kept = {(e.sender, e.receiver, str(e.port)) for e in found.kept}
    cost: dict[Triple, float] = {}
    removed: list[Triple] = []
    current = math.nan
    for t in found.trace:
        if t["step"] == "start":
            current = t["loss_recovered"]
        if t["step"] != "resample":
            continue
        e = by_name.get(t["what"])
        if e is None:
            raise ScrubError(f"search_ranking needs an edge search (granularity 'edges'); the "
                             f"trace names {t['what']!r}.")
        cost[e] = current - t["loss_recovered"]
        if t["accepted"]:
            current = t["loss_recovered"]
            removed.append(e)
    order = {e: i for i, e in enumerate(edges)}
    first = sorted(kept, key=lambda e: (-cost.get(e, math.inf), order[e]))
    seen = set(first)
    rest = [e for e in reversed(removed) if e not in seen]
    seen.update(rest)
    fallback = next((t["ranking"] for t in found.trace if t["step"] == "rank"), None)
    tail = [by_name[name] for name in fallback] if fallback else edges
    return first + rest + [e for e in tail if e not in seen]


#: ACDC's default sweep (`method="acdc"`): tau as a fraction of the loss gap on the search rows
#: (baseline's mean loss minus the model's), i.e. the most one removal may lower loss recovered.
ACDC_TAUS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)


def check_taus(taus: Sequence[float]) -> tuple[float, ...]:
    """ACDC's sweep: at least one finite tau >= 0, in increasing order.

    >>> check_taus([0.01, 0.001])
    (0.001, 0.01)
    """
    try:
        out = tuple(sorted(float(t) for t in taus))
    except (TypeError, ValueError):
        raise ScrubError(f"taus must be numbers such as 0.001, 0.01, got {taus!r}.") from None
    if not out or not all(math.isfinite(t) and t >= 0 for t in out):
        raise ScrubError(f"taus must be at least one finite number >= 0, got {list(taus)!r}.")
    return out


def acdc_ranking(circuits: Sequence[tuple[float, SearchResult]], graph: Graph) -> list[Triple]:
    """Every edge ranked from ACDC's circuits at a sweep of tau: first the edges kept at the
    largest tau, then those kept up to the next smaller one, and so on; within one level, the
    edges kept at more taus first, then by the loss rise their removal cost when tried in the
    run of that level's tau (largest first), then in ACDC's visiting order (from the output
    backwards); the edges no circuit keeps last, in that order. When the circuits are nested (a
    larger tau keeps a subset), the top k edges at each circuit's size are exactly that circuit.

    >>> from types import SimpleNamespace as NS
    >>> from causal_scrubbing.searching.edges import Edge
    >>> import causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda x: x, x="x"),
    ...               cs.Node("out", lambda r: r, r=["a", "x"])], output="out")
    >>> small, large = NS(kept=[Edge("a", "out", "r")]), NS(kept=[Edge("a", "out", "r"),
    ...                                                             Edge("x", "a", "x")])
    >>> acdc_ranking([(0.01, large), (0.1, small)], g)
    [('a', 'out', 'r'), ('x', 'a', 'x'), ('x', 'out', 'r')]
    """
    from .steps import removal_units

    visit = {unit[0]: i for i, (_, unit) in enumerate(removal_units(graph, "edges"))}
    edges = sorted(graph_edges(graph), key=lambda e: visit[e])
    ordered = sorted(circuits, key=lambda c: c[0])
    top: dict[Triple, int] = {}
    count: dict[Triple, int] = {}
    rises: list[dict[str, float]] = []
    for level, (_, found) in enumerate(ordered):
        rises.append({t["what"]: t["loss_rise"] for t in getattr(found, "trace", [])
                      if t.get("step") == "resample" and "loss_rise" in t})
        for e in found.kept:
            t = (e.sender, e.receiver, str(e.port))
            top[t] = level
            count[t] = count.get(t, 0) + 1

    def rise(e: Triple) -> float:
        r = rises[top[e]].get(f"{e[0]} -> {e[1]}.{e[2]}", -math.inf) if e in top else -math.inf
        return r if math.isfinite(r) else -math.inf

    return sorted(edges, key=lambda e: (-top.get(e, -1), -count.get(e, 0), -rise(e), visit[e]))


def acdc_row(tau_fraction: float, found: SearchResult) -> dict[str, Any]:
    """One circuit of ACDC's sweep as `curve.json` records it."""
    tau = next((t["tau"] for t in found.trace if t["step"] == "note" and "tau" in t), math.nan)
    return {"tau_fraction": tau_fraction, "tau": tau, "kept": len(found.kept),
            "search_rows_recovered": found.loss_recovered,
            "heldout": found.heldout.loss_recovered, "ci": list(found.heldout.ci),
            "candidates": found.candidates, "seconds": found.seconds}


def _bootstrap_areas(per_size: list[Tensor], model: Tensor, base: Tensor, sizes: Sequence[float],
                     axis: Axis, seed: int, n_resamples: int) -> tuple[tuple[float, float], ...]:
    """95% intervals of CPR and CMD, resampling the held-out rows (shared by every size)."""
    if n_resamples < 2:
        return (math.nan, math.nan), (math.nan, math.nan)
    n = len(model)
    idx = torch.randint(n, (n_resamples, n), generator=generator(seed, "curve bootstrap"))  # [B, n]
    b, m = base.double()[idx].mean(1), model.double()[idx].mean(1)  # [B]
    f = torch.stack([(b - s.double()[idx].mean(1)) / (b - m) for s in per_size], 1)  # [B, sizes]
    pairs = [areas(sizes, row.tolist(), axis) for row in f if bool(torch.isfinite(row).all())]
    if len(pairs) < 2:
        return (math.nan, math.nan), (math.nan, math.nan)
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    cpr = torch.quantile(torch.tensor([p[0] for p in pairs], dtype=torch.float64), q).tolist()
    cmd = torch.quantile(torch.tensor([p[1] for p in pairs], dtype=torch.float64), q).tolist()
    return (cpr[0], cpr[1]), (cmd[0], cmd[1])


def faithfulness_curve(graph: Graph, dataset: Dataset, loss_fn: LossFn, *,
                       method: str = "eap-ig", ranking: Sequence[Triple] | None = None,
                       scores: Mapping[Triple, float] | None = None,
                       sizes: Sequence[float] = SIZES, n: int | None = 1000,
                       n_heldout: int | None = None, seed: int = 0, ablation: Ablation = "shared",
                       pairs: Tensor | str | None = None, threshold: float = 0.9,
                       tolerances: Sequence[float] = (), steps: int = 5, axis: Axis = "linear",
                       taus: Sequence[float] | None = None,
                       device: str | torch.device | None = None, chunk_size: int | None = None,
                       n_bootstrap: int = 1000, progress: bool = False) -> CurveResult:
    """Loss recovered at each circuit size of `method`'s ranking, and CPR and CMD.

    Args:
        method: "eap" or "eap-ig" (`attribute` on the search rows, ranked by |score|),
            "search" (`search` at `threshold`, its default schedule (ranked, for edges) and
            tolerances unless `tolerances` are given; ranked by `search_ranking`), "greedy"
            (`search(schedule="greedy")` at `threshold` with `tolerances`, default one pass),
            or "ranked" (`ranked_search` at `threshold`, its default tolerances unless
            `tolerances` are given; ranked by `search_ranking`).
            "acdc" (`steps.AcdcRemoval`: ACDC in causal-scrubbing semantics, one run per
            tau of `taus`; ranked by `acdc_ranking`; each run's circuit, held-out number and
            seconds are in `settings["acdc"]`).
        ranking: edges from most to least important, instead of running a method (`method`
            then only names it); edges it leaves out come last, in graph order.
        scores: edge -> score, ranked by |score|, instead of running a method.
        sizes: fractions of the graph's edges (default MIB's, `SIZES`).
        n: rows the method ranks on (the search rows of `seed`); n_heldout: rows every size is
            scored on (default n), exactly those `scrub` draws for `seed`.
        ablation: "shared" (the search's shared random draw) or "counterfactual" (`pairs`:
            each row's paired row, as a [len(dataset)] tensor or the name of a dataset field).
        axis: "linear" or "log": the x-axis of the areas (module docstring).
        steps: EAP-IG's intervals.
        taus: ACDC's sweep, as fractions of the loss gap on the search rows (default
            `ACDC_TAUS`).
    """
    t0 = time.perf_counter()
    sizes = check_sizes(sizes)
    if method not in CURVE_METHODS and ranking is None and scores is None:
        raise ScrubError(f"Unknown method {method!r}; use one of {', '.join(CURVE_METHODS)}, or "
                         "pass ranking= or scores=.")
    if ablation not in ("shared", "counterfactual"):
        raise ScrubError(f"ablation must be 'shared' or 'counterfactual', got {ablation!r}.")
    if axis not in ("linear", "log"):
        raise ScrubError(f"axis must be 'linear' or 'log', got {axis!r}.")
    rows = check_n(n) or 1000
    n_heldout = check_n(n_heldout) or rows
    other: Sampler | None = None
    ablation_text = "shared random draw (the search's other input)"
    if ablation == "counterfactual":
        if pairs is None:
            raise ScrubError("ablation='counterfactual' needs pairs: each row's paired row, as a "
                             "tensor [len(dataset)] or the name of a dataset field.")
        if isinstance(pairs, str):
            if pairs not in dataset:
                raise ScrubError(f"The dataset has no field {pairs!r} of paired rows (fields: "
                                 f"{sorted(dataset.keys())}).")
            ablation_text = f"paired counterfactual (dataset field {pairs!r})"
            pairs = dataset[pairs]
        else:
            ablation_text = "paired counterfactual"
        other = PairedRows(torch.as_tensor(pairs))
    edges = graph_edges(graph)

    # ---- the ranking -------------------------------------------------------------------------
    m0 = time.perf_counter()
    settings: dict[str, Any] = {"n_method_rows": rows, "threshold": None, "steps": None}
    if ranking is not None:
        order = list(ranking)
    elif scores is not None:
        pos = {e: i for i, e in enumerate(edges)}
        order = sorted(scores, key=lambda e: (-abs(scores[e]), pos.get(e, len(pos))))
    elif method in ("search", "greedy"):
        found = search(graph, dataset, loss_fn, threshold=threshold, n=rows, n_heldout=n_heldout,
                       seed=seed, schedule="greedy" if method == "greedy" else None,
                       tolerances=tuple(tolerances) or None, device=device,
                       chunk_size=chunk_size, n_bootstrap=n_bootstrap, progress=progress)
        order = search_ranking(found, graph)
        settings.update(threshold=threshold, tolerances=list(found.tolerances),
                        search_kept=len(found.kept), schedule=found.schedule)
    elif method == "ranked":
        from .ranked import DEFAULT_TOLERANCES, ranked_search

        found = ranked_search(graph, dataset, loss_fn, threshold=threshold, n=rows,
                              n_heldout=n_heldout, seed=seed, steps=steps,
                              tolerances=tuple(tolerances) or DEFAULT_TOLERANCES, device=device,
                              chunk_size=chunk_size, n_bootstrap=n_bootstrap, progress=progress)
        order = search_ranking(found, graph)
        settings.update(threshold=threshold, tolerances=list(found.tolerances),
                        search_kept=len(found.kept), steps=steps)
    elif method == "acdc":
        from .steps import AcdcRemoval

        fractions = ACDC_TAUS if taus is None else check_taus(taus)
        circuits: list[tuple[float, SearchResult]] = []
        for frac in fractions:
            found = search(graph, dataset, loss_fn, threshold=0.0, n=rows, n_heldout=n_heldout,
                           seed=seed, schedule=AcdcRemoval(tau_fraction=frac), device=device,
                           chunk_size=chunk_size, n_bootstrap=n_bootstrap, progress=progress)
            circuits.append((frac, found))
        order = acdc_ranking(circuits, graph)
        settings.update(taus=list(fractions), tau_unit="fraction of the loss gap on the search rows",
                        acdc=[acdc_row(frac, found) for frac, found in circuits])
    else:
        meth = check_method(method)
        ref = None
        pair_rows = None
        if other is not None:
            ref = search_rows(len(dataset), rows, n_heldout, seed)
            assert isinstance(other, PairedRows)
            pair_rows = other.pairs[ref]
        att = attribute(graph, dataset, loss_fn, method=meth, steps=steps, n=rows,
                        n_heldout=n_heldout, seed=seed, ref=ref, other=pair_rows, device=device)
        order = att.ranking()
        settings.update(steps=att.steps if meth == "eap-ig" else None, rule=att.rule)
    method_seconds = time.perf_counter() - m0
    known = set(edges)
    bad = [e for e in order if tuple(e) not in known]
    if bad:
        raise ScrubError(f"The ranking names {len(bad)} edges the graph does not have, e.g. "
                         f"{bad[0]!r}; give (sender, receiver, port) triples of graph_edges(graph).")
    seen: set[Triple] = set()
    full: list[Triple] = []
    for e in [*map(tuple, order), *edges]:
        if e not in seen:
            seen.add(e)  # type: ignore[arg-type]
            full.append(e)  # type: ignore[arg-type]

    # ---- every size, scored on the held-out rows -----------------------------------------------
    counts = edge_counts(len(edges), sizes)
    hyps: dict[str, InterpNode] = {f"top {k}": compact_hypothesis(graph, set(full[:k]), other)
                                   for k in dict.fromkeys(counts)}
    baseline = compact_hypothesis(graph, set(), other)
    results = scrub_many(graph, hyps, dataset, loss_fn, n=n_heldout, seed=seed, baseline=baseline,
                         device=device, chunk_size=chunk_size, n_bootstrap=n_bootstrap,
                         progress=progress)
    per = [results[f"top {k}"] for k in counts]
    f = [r.loss_recovered for r in per]
    cpr, cmd = areas(sizes, f, axis)
    r0 = per[0]
    cpr_ci, cmd_ci = _bootstrap_areas([r.per_example["scrubbed"] for r in per],
                                      r0.per_example["model"], r0.per_example["baseline"], sizes,
                                      axis, seed, n_bootstrap)
    return CurveResult(
        method=method, sizes=list(sizes), edges=counts, loss_recovered=f,
        ci_low=[r.ci[0] for r in per], ci_high=[r.ci[1] for r in per], cpr=cpr, cmd=cmd,
        ablation=ablation_text, seconds=time.perf_counter() - t0, method_seconds=method_seconds,
        n_edges=len(edges), n=n_heldout, seed=seed, axis=axis, cpr_ci=cpr_ci, cmd_ci=cmd_ci,
        ranking=full, settings=settings)


def _ticks(lo: float, hi: float, log: bool, max_ticks: int = 8) -> list[float]:
    """Round tick values between `lo` and `hi`: 1, 2, 5 times a power of ten (on a log axis,
    those within the range, thinned to `max_ticks`), or multiples of such a step (linear)."""
    if log:
        out = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
               for m in (1, 2, 5) if lo * (1 - 1e-9) <= m * 10.0 ** e <= hi * (1 + 1e-9)]
        return out[::max(1, math.ceil(len(out) / max_ticks))] or [lo, hi]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max_ticks
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


#: Colours of the series of a curve figure, in order.
CURVE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def curve_svg(series: Sequence[Mapping[str, Any]], *, log_x: bool = True,
              x_label: str = "fraction of edges kept (log scale)",
              x_ticks: Sequence[tuple[float, str]] | None = None,
              hlines: Sequence[tuple[float, str]] = (), title: str = "") -> str:
    """Loss recovered (y) against circuit size (x) as one SVG: the drawing of `curve.html`,
    `CurveResult.plot()` and `SearchResult.plot_curve()`.

    Each series is a mapping with `x`, `y` (lists of numbers; non-finite points are left out)
    and `label`; with `low` and `high` (the 95% interval at each point) a line gets a shaded
    band and dots get error bars; `dots=True` draws points instead of a line, `faint=True` draws
    them light, `colour` overrides the palette (`CURVE_COLOURS`, in order). `x_ticks` are
    (value, label) pairs (default: round values); `hlines` are (y, label) reference lines drawn
    dashed. The y-axis always shows 0% and 100% (solid and dashed grey lines).

    >>> svg = curve_svg([{"x": [1, 2, 3], "y": [0.2, 0.9, 1.0], "label": "a"}], log_x=False,
    ...                 x_label="kept edges", hlines=[(0.9, "threshold")])
    >>> svg.startswith("<svg") and svg.count("<polyline") == 1 and "threshold 90%" in svg
    True
    """
    labels = [str(c["label"]) for c in series if c.get("label")]
    w, plot_h, pad = 640, 360, 50  # the plot's frame; the legend goes below it
    h = plot_h + 16 * len(labels) + (2 if labels else 0)
    top = pad + (14 if title else 0)

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    xs = [x for c in series for x in c["x"] if finite(x) and (x > 0 or not log_x)]
    if not xs:
        xs = [1.0]
    lo_x, hi_x = min(xs), max(xs)
    vals = [v for c in series for k in ("y", "low", "high") for v in c.get(k) or () if finite(v)]
    vals += [y for y, _ in hlines]
    lo_y, hi_y = min(0.0, *vals), max(1.0, *vals)
    tx = (lambda x: math.log10(x)) if log_x else (lambda x: float(x))
    span_x = tx(hi_x) - tx(lo_x)

    def px(x: float) -> float:
        if span_x <= 0:
            return w / 2
        return pad + (w - 2 * pad) * (tx(x) - tx(lo_x)) / span_x

    def py(v: float) -> float:
        return plot_h - pad - (plot_h - pad - top) * (v - lo_y) / max(hi_y - lo_y, 1e-12)

    def ok(x: Any, y: Any) -> bool:
        return finite(x) and finite(y) and (x > 0 or not log_x)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
             f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
             f'<line x1="{pad}" y1="{py(0):.1f}" x2="{w - pad}" y2="{py(0):.1f}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{py(1):.1f}" x2="{w - pad}" y2="{py(1):.1f}" stroke="#999" '
             'stroke-dasharray="4"/>']
    if title:
        parts.append(f'<text x="{w / 2}" y="{pad - 4}" font-size="13" text-anchor="middle">'
                     f'{html.escape(title)}</text>')
    ticks = list(x_ticks) if x_ticks is not None else [
        (t, f"{t:g}") for t in _ticks(lo_x, hi_x, log_x)]
    for x, label in ticks:
        parts.append(f'<text x="{px(x):.1f}" y="{plot_h - pad + 16}" font-size="10" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    for v in sorted({lo_y, 0.0, 0.5, 1.0, hi_y}):
        parts.append(f'<text x="{pad - 6}" y="{py(v) + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{100 * v:.0f}%</text>')
    for y, label in hlines:
        parts.append(f'<line x1="{pad}" y1="{py(y):.1f}" x2="{w - pad}" y2="{py(y):.1f}" '
                     'stroke="#b7791f" stroke-dasharray="2 3"/>'
                     f'<text x="{pad + 4}" y="{py(y) - 3:.1f}" font-size="10" fill="#b7791f">'
                     f'{html.escape(label)} {100 * y:g}%</text>')
    legend = 0
    legend_y = plot_h - 4
    for i, c in enumerate(series):
        col = c.get("colour") or CURVE_COLOURS[i % len(CURVE_COLOURS)]
        xy = [(x, y) for x, y in zip(c["x"], c["y"])]
        pts = [(px(x), py(y)) for x, y in xy if ok(x, y)]
        low, high = c.get("low"), c.get("high")
        opacity = "0.35" if c.get("faint") else "1"
        if c.get("dots"):
            for j, (x, y) in enumerate(xy):
                if not ok(x, y):
                    continue
                if low is not None and high is not None and finite(low[j]) and finite(high[j]):
                    parts.append(f'<line x1="{px(x):.1f}" y1="{py(low[j]):.1f}" x2="{px(x):.1f}" '
                                 f'y2="{py(high[j]):.1f}" stroke="{col}" stroke-width="2"/>')
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{col}" '
                             f'fill-opacity="{opacity}"/>')
        else:
            if low is not None and high is not None:
                band = [(px(x), py(v)) for x, v in zip(c["x"], high) if ok(x, v)]
                band += [(px(x), py(v)) for x, v in reversed(list(zip(c["x"], low))) if ok(x, v)]
                if band:
                    parts.append(f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in band)}" '
                                 f'fill="{col}" fill-opacity="0.15"/>')
            parts.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" '
                         f'fill="none" stroke="{col}" stroke-width="2" stroke-opacity="{opacity}"/>')
        if c.get("label"):
            legend += 1
            mark = (f'<circle cx="{pad + 4}" cy="{legend_y + 16 * legend - 4}" r="3" fill="{col}" '
                    f'fill-opacity="{opacity}"/>' if c.get("dots") else
                    f'<line x1="{pad - 4}" y1="{legend_y + 16 * legend - 4}" x2="{pad + 12}" '
                    f'y2="{legend_y + 16 * legend - 4}" stroke="{col}" stroke-width="2"/>')
            parts.append(f'{mark}<text x="{pad + 18}" y="{legend_y + 16 * legend}" font-size="12" '
                         f'fill="{col}">{html.escape(str(c["label"]))}</text>')
    parts.append(f'<text x="{w / 2}" y="{plot_h - 14}" font-size="11" text-anchor="middle">'
                 f'{html.escape(x_label)}</text></svg>')
    return "".join(parts)


def curve_series(curve: Mapping[str, Any], x: Literal["sizes", "edges"] = "sizes") -> dict[str, Any]:
    """A `curve.json` dictionary as a `curve_svg` series: loss recovered at each size (`x`:
    the fraction of edges, or the number of edges kept), with its interval, labelled with the
    method, the ablation and the areas."""
    return {"x": list(curve[x]), "y": list(curve["loss_recovered"]), "low": list(curve["ci_low"]),
            "high": list(curve["ci_high"]),
            "label": f'{curve["method"]}, {curve["ablation"]}: CPR {curve["cpr"]:.3f}, '
                     f'CMD {curve["cmd"]:.3f}'}


def curve_html(curves: Sequence[Mapping[str, Any]], title: str = "Faithfulness curve") -> str:
    """A self-contained page drawing each curve (a `curve.json` dictionary) as an SVG
    (`curve_svg`): loss recovered against the fraction of edges (log x-axis for reading; the
    areas use the axis named in each curve), with its 95% interval as a band, and a table of
    the numbers."""
    sizes = sorted({s for c in curves for s in c["sizes"]})
    svg = curve_svg([curve_series(c) for c in curves],
                    x_ticks=[(s, f"{100 * s:g}%") for s in sizes])
    rows = []
    for c in curves:
        for s, k, v, a, b in zip(c["sizes"], c["edges"], c["loss_recovered"], c["ci_low"],
                                 c["ci_high"]):
            rows.append(f"<tr><td>{html.escape(str(c['method']))}</td><td>"
                        f"{html.escape(str(c['ablation']))}</td><td>{100 * s:g}%</td><td>{k}</td>"
                        f"<td>{100 * v:.1f}% [{100 * a:.1f}, {100 * b:.1f}]</td></tr>")
    notes = "".join(f"<p>{html.escape(str(c['method']))} ({html.escape(str(c['ablation']))}): CPR "
                    f"{c['cpr']:.3f}, CMD {c['cmd']:.3f}; {html.escape(str(c.get('area', '')))}; "
                    f"{c['n']} held-out rows; {c['seconds']:.1f} s.</p>" for c in curves)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "</head><body style='font-family: sans-serif'>"
            f"<h1>{html.escape(title)}</h1>{svg}{notes}"
            "<table border='1' cellpadding='4'><tr><th>method</th><th>ablation</th><th>size</th>"
            f"<th>edges</th><th>loss recovered [95% CI]</th></tr>{''.join(rows)}</table>"
            "</body></html>\n")


def experiment_curves(exp: Any, *, method: str, n: int, seed: int = 0, threshold: float = 0.9,
                      tolerances: Sequence[float] = (), pairs: str | None = None,
                      device: str | None = None, progress: bool = False,
                      taus: Sequence[float] | None = None) -> tuple[CurveResult, dict[str, Any]]:
    """`causal-scrub search EXP --curve`: `method`'s curve on the experiment's search graph with
    the shared draw, and (as the second value, for curve.json's "counterfactual" entry) the
    same ranking scored with MIB's ablation: each row's paired row, from the dataset field
    `counterfactual` (row indices) if the experiment has one, else rows paired by the field
    `pairs` (`pairs_by_feature`), else nothing (recorded as such). EAP and EAP-IG rank again
    with the paired rows as their other input; the search's ranking is reused."""
    graph = exp.search_graph or exp.graph
    main = faithfulness_curve(graph, exp.dataset, exp.loss_fn, method=method, n=n, seed=seed,
                              threshold=threshold, tolerances=tolerances, device=device,
                              progress=progress, taus=taus)
    if "counterfactual" in exp.dataset:
        paired, what = exp.dataset["counterfactual"], "dataset field 'counterfactual'"
    elif pairs is not None:
        paired, what = pairs_by_feature(exp.dataset, pairs, seed), f"rows paired by {pairs!r}"
    else:
        return main, {"counterfactual": {
            "ablation": "none: the dataset has no paired counterfactual (no 'counterfactual' field "
                        "and no --pairs); only the shared random draw was scored"}}
    # attribution methods rank again with the paired rows as their other input (as MIB runs
    # them); the search's ranking is its own (it draws its other input)
    ranking = main.ranking if method in ("search", "ranked", "greedy", "acdc") else None
    cf = faithfulness_curve(graph, exp.dataset, exp.loss_fn, method=method, ranking=ranking,
                            n=n, seed=seed, ablation="counterfactual", pairs=paired, device=device,
                            progress=progress)
    data = cf.to_dict()
    data["ablation"] = f"paired counterfactual ({what})"
    if ranking is not None:
        data["method_seconds"] = main.method_seconds
        data["note"] = "ranked by the search with the shared draw"
    data.pop("ranking")
    return main, {"counterfactual": data}


__all__ = ["ACDC_TAUS", "CURVE_COLOURS", "CURVE_METHODS", "CurveResult", "PairedRows", "SIZES",
           "acdc_ranking", "acdc_row", "areas", "check_taus",
           "curve_html", "curve_series", "curve_svg", "edge_counts", "experiment_curves",
           "faithfulness_curve", "pairs_by_feature", "search_ranking"]
