"""Which SAE latents matter: per-latent attribution, and a search that bisects latent groups.

An SAE written into a graph (`models.sae.sae_rewrite`) turns a site x into latent groups, the
decoder bias and the error. A hypothesis that claims a set S of latents at some readers of the
site (e.g. the induction heads' keys) gives those readers, on each reference row r and its
other row o,

    x(S) = sum_{i in S} f_i(x_r) W_dec[i] + sum_{i not in S} f_i(x_o) W_dec[i] + b_dec + e(x_o)

(the error resampled with the unclaimed latents; `error="kept"` reads `e(x_r)` instead), and
everything else as the rest of the hypothesis says. Two tools find S by measurement:

- `latent_attribution`: every latent's effect on the loss at once, by gradients. With a mask
  m in [0, 1]^d_sae, the readers read `x_o + (m * (f(x_r) - f(x_o))) @ W_dec` (plus the same
  error), so m = 0 claims no latent and m = 1 claims them all. EAP-IG (the default) averages
  dL/dm_i over `steps + 1` points of the line from m = 0 to m = 1 (the trapezoid rule), so the
  scores add up to about L(every latent claimed) - L(none claimed) (completeness); EAP takes
  the gradient at m = 1 (every latent claimed, as `cs.attribute`'s EAP takes it at the
  reference). A latent's score is the estimated change of the mean loss when it alone is
  claimed; negative scores lower the loss, and `ranking` puts them first.
- `search_latents`: a causal-scrubbing search over latent groups that ends at single latents.
  It starts from `n_groups` groups, resamples each in turn and keeps it resampled if loss
  recovered stays >= the threshold (the search's greedy removal, with the shared "other"
  draw), splits every kept group into halves, rewrites the graph with the new groups, and
  searches again, until every kept group has at most `floor` latents. The kept latents are
  re-scored on held-out rows (the rows `scrub` draws for the seed and `n_heldout`) with a
  95% bootstrap interval. Everything but the latents is kept (the rest of the graph reads the
  reference), unless the readers are restricted (`readers=`), in which case only the
  latents' paths into those ports are candidates.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.models import sae as S
    >>> sae = S.SAE(2, 4, "standard", apply_b_dec_to_input=False)
    >>> with torch.no_grad():  # latents relu(+-x0), relu(+-x1): exact, error zero
    ...     _ = sae.W_enc.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]))
    ...     _ = sae.W_dec.copy_(sae.W_enc.T)
    >>> g = cs.Graph([cs.Input("x"), cs.Node("h", lambda i: i, i="x"),
    ...               cs.Node("out", lambda r: r[:, 0], r="h")], output="out")
    >>> x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    >>> ds = cs.Dataset({"x": x, "y": x[:, 0]})
    >>> loss = lambda out, ref: (out - ref["y"]) ** 2
    >>> att = latent_attribution(S.sae_rewrite(g, "h", sae, check_on=ds), "h", sae, ds, loss, n=100)
    >>> sorted(att.ranking()[:2])  # the two latents that write x0
    [0, 1]
    >>> found = search_latents(g, "h", sae, ds, loss, threshold=0.95, n=100, n_heldout=100)
    >>> found.latents
    [0, 1]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.data import Dataset
from ..core.draws import check_n, generator, sampling_context
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import InterpNode
from ..core.paths import Matcher, through, union
from ..core.results import ScrubResult
from ..core.samplers import Exact, Uniform
from ..models.sae import SAE, hook_site, sae_rewrite
from ..options import RunOptions
from ..pipeline import LossFn, check_inputs, random_baseline
from ..scrubbing import scrub_many
from .attribution import check_method, checked_losses, integration_points
from .scorer import Scorer, split_rows

__all__ = ["LatentAttribution", "LatentSearchResult", "latent_attribution", "search_latents"]

log = logging.getLogger(__name__)

ErrorMode = Literal["resampled", "kept"]
Port = tuple[str, str]


def _readers(graph: Graph, site: str, readers: Sequence[Port] | None) -> list[Port]:
    """The (node, port) pairs that read `site`: all of them, or the given ones, checked."""
    graph.check_node(site, " (the SAE site)")
    reading = [(v, p) for v in graph.order for p, ups in graph.ports(v).items() if site in ups]
    if readers is None:
        if not reading:
            raise ScrubError(f"No port of the graph reads the site {site!r}; nothing reads its "
                             "latents.")
        return reading
    out = []
    for r in readers:
        if not (isinstance(r, tuple) and len(r) == 2):
            raise ScrubError(f"A reader is a (node, port) pair such as ('a1.h0', 'k'); got {r!r}.")
        v, p = r
        graph.check_node(v, " (a reader of the SAE site)")
        if p not in graph.ports(v):
            raise ScrubError(f"Node {v!r} has no port {p!r}; its ports are {sorted(graph.ports(v))}.")
        if site not in graph.ports(v)[p]:
            raise ScrubError(f"Port {v}.{p} does not read the site {site!r} (it reads "
                             f"{list(graph.ports(v)[p])}); readers of the site: "
                             f"{[f'{a}.{b}' for a, b in reading]}.")
        out.append((v, p))
    if not out:
        raise ScrubError("readers is empty; give at least one (node, port) that reads the site, "
                         "or None for all of them.")
    return out


def _check_error(error: str) -> ErrorMode:
    if error not in ("resampled", "kept"):
        raise ScrubError(f"error must be 'resampled' (the error term read from the other row, "
                         f"with the unclaimed latents) or 'kept'; got {error!r}.")
    return "resampled" if error == "resampled" else "kept"


@dataclass
class LatentAttribution:
    """Per-latent attribution scores (module docstring).

    Attributes:
        scores: [d_sae] the estimated change of the mean loss when each latent alone is
            claimed at the readers (negative: claiming it lowers the loss).
        none_loss, all_loss: the mean loss with no latent claimed (m = 0) and with every
            latent claimed (m = 1); for EAP-IG `scores.sum()` is about `all_loss - none_loss`.
    """

    method: str
    scores: Tensor
    readers: list[Port]
    error: str
    n: int
    steps: int
    seconds: float
    none_loss: float
    all_loss: float
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = float(self.scores.sum())

    def ranking(self) -> list[int]:
        """Latents from the one whose claim lowers the loss most to the one that raises it most."""
        return self.scores.argsort(stable=True).tolist()

    def top(self, k: int) -> list[int]:
        """The `k` first latents of `ranking`."""
        return self.ranking()[:k]

    def __repr__(self) -> str:
        top = ", ".join(f"{i}: {float(self.scores[i]):.3g}" for i in self.ranking()[:3])
        return (f"LatentAttribution({self.method}, {len(self.scores)} latents, n = {self.n}; "
                f"top: {top}; {self.seconds:.1f} s)")


def latent_attribution(graph: Graph, site: str, sae: SAE, dataset: Dataset, loss_fn: LossFn, *,
                       readers: Sequence[Port] | None = None, error: str = "resampled",
                       method: str = "eap-ig", steps: int = 5, n: int | None = 256,
                       n_heldout: int | None = None, seed: int = 0, ref: Tensor | None = None,
                       other: Tensor | None = None, chunk_size: int = 32) -> LatentAttribution:
    """Score every latent of `sae` at `site` by its effect on the loss (module docstring).

    Args:
        graph: a graph with a node `site` whose output the SAE reads (the graph `sae_rewrite`
            returns, or the model graph where the site is a node).
        readers: the (node, port) pairs where latents are claimed (default: every port that
            reads the site); every other input of the model reads the reference row.
        error: "resampled" (default: the error term read from the other row, as the latents
            not claimed) or "kept" (read from the reference row).
        method: "eap-ig" (default; `steps + 1` points, trapezoid rule) or "eap" (the gradient
            with every latent claimed).
        n, n_heldout, seed: the reference rows: `n` rows drawn from those the held-out scoring
            of `seed` and `n_heldout` (default `n`) does not use (`scorer.split_rows`), each
            with a uniformly drawn other row; or `ref` and `other` [n] (row indices) given.
        chunk_size: rows per forward and backward pass.
    """
    began = time.perf_counter()
    meth = check_method(method)
    mode = _check_error(error)
    if not (isinstance(steps, int) and steps >= 1):
        raise ScrubError(f"steps must be a whole number of intervals, 1 or more (e.g. 5), got {steps!r}.")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ScrubError(f"chunk_size must be a positive whole number of rows, got {chunk_size!r}.")
    check_inputs(graph, dataset)
    ports = _readers(graph, site, readers)
    if ref is None:
        rows = check_n(n) or 256
        ref = split_rows(len(dataset), rows, check_n(n_heldout) or rows, seed)[1]
    ref = torch.as_tensor(ref, dtype=torch.long)
    if other is None:
        other = torch.randint(len(dataset), ref.shape, generator=generator(seed, "latent-other"))
    other = torch.as_tensor(other, dtype=torch.long)
    if ref.ndim != 1 or other.shape != ref.shape or len(ref) == 0:
        raise ScrubError(f"ref and other must be two row-index vectors of one length, got shapes "
                         f"{tuple(ref.shape)} and {tuple(other.shape)}.")
    points = integration_points(meth, steps, "trapezoid")
    if meth == "eap":
        points = [(1.0, 1.0)]  # m = 1: every latent claimed
    else:
        points = [(1.0 - alpha, w) for alpha, w in points]  # alpha resampled -> m = 1 - alpha claimed
    device = sae.W_dec.device
    scores = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    none_sum = all_sum = 0.0
    for start in range(0, len(ref), chunk_size):
        r, o = ref[start:start + chunk_size], other[start:start + chunk_size]
        clean, alt = dataset.rows(r), dataset.rows(o)
        with torch.no_grad():
            ran = graph.run(clean, outputs={site}, ports=set(ports))
            x_r, port_r = ran.outputs[site], ran.port_inputs  # [b, ..., d_in]
            x_o = graph.run(alt, outputs={site}, ports=set()).outputs[site]
            f_r, f_o = sae.encode(x_r), sae.encode(x_o)  # [b, ..., d_sae]
            delta_f = f_r - f_o  # [b, ..., d_sae]
            # x(m) - x_r = x_o - x_r + (m * delta_f) @ W_dec (+ e_r - e_o if the error is kept)
            shift = x_o - x_r  # [b, ..., d_in]
            if mode == "kept":
                shift = shift + (x_r - sae.decode(f_r)) - (x_o - sae.decode(f_o))
        # the gradient points, then m = 0 and m = 1 for the two end losses where not among them
        runs = [*points, *[(end, 0.0) for end in (0.0, 1.0) if end not in {p for p, _ in points}]]
        for m_value, weight in runs:
            m = torch.full((sae.d_sae,), m_value, device=device, requires_grad=weight > 0)
            with torch.enable_grad():
                move = shift + (delta_f * m) @ sae.W_dec  # [b, ..., d_in]
                patch = {p: port_r[p] + move for p in ports}
                out = graph.run(clean, outputs={graph.output}, ports=set(), patch=patch)
                losses = checked_losses(loss_fn, out.outputs[graph.output], clean,
                                 f"the model with {m_value:g} of every latent claimed")  # [b]
                if weight > 0:
                    (grad,) = torch.autograd.grad(losses.sum(), [m])  # [d_sae]
                    scores += weight * grad.double()
            if m_value == 0.0:
                none_sum += float(losses.detach().double().sum())
            elif m_value == 1.0:
                all_sum += float(losses.detach().double().sum())
    n_rows = len(ref)
    return LatentAttribution(method=meth, scores=(scores / n_rows).float().cpu(), readers=ports,
                             error=mode, n=n_rows, steps=1 if meth == "eap" else steps,
                             seconds=time.perf_counter() - began, none_loss=none_sum / n_rows,
                             all_loss=all_sum / n_rows)


# ---- search_latents ------------------------------------------------------------------------------

#: The name of the group of latents already resampled, in each round's rewrite.
OFF = "off"


@dataclass
class LatentSearchResult:
    """What `search_latents` found (module docstring).

    Attributes:
        latents: the kept latents, sorted.
        groups: the kept groups of the last round (each at most `floor` latents).
        loss_recovered: the kept latents' loss recovered on the search rows.
        heldout: the kept latents re-scored on the held-out rows (a `ScrubResult`: `.ci`).
        rounds: per round, the groups tried, how many were kept, the latents kept and the
            loss recovered after the round (search rows).
        candidates: hypotheses scored on the search rows.
    """

    latents: list[int]
    groups: list[list[int]]
    threshold: float
    loss_recovered: float
    heldout: ScrubResult
    rounds: list[dict[str, Any]]
    candidates: int
    seconds: float
    n: int
    seed: int
    site: str
    d_sae: int
    readers: list[Port] | None
    error: str
    floor: int

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (no tensors)."""
        h = self.heldout
        return {"latents": self.latents, "n_latents": len(self.latents), "d_sae": self.d_sae,
                "site": self.site, "threshold": self.threshold,
                "readers": None if self.readers is None else [f"{v}.{p}" for v, p in self.readers],
                "error": self.error, "floor": self.floor, "groups": self.groups,
                "loss_recovered": self.loss_recovered, "n": self.n, "seed": self.seed,
                "heldout": {"loss_recovered": h.loss_recovered, "ci": list(h.ci), "n": h.n},
                "rounds": self.rounds, "candidates": self.candidates, "seconds": self.seconds}

    def __repr__(self) -> str:
        h = self.heldout
        shown = ", ".join(map(str, self.latents[:12])) + (", ..." if len(self.latents) > 12 else "")
        return (f"LatentSearchResult({len(self.latents)} of {self.d_sae} latents kept [{shown}]; "
                f"{100 * self.loss_recovered:.1f}% on {self.n} search rows, "
                f"{100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}%, {100 * h.ci[1]:.1f}%] on "
                f"{h.n} held-out rows; {self.candidates} candidates, {self.seconds:.1f} s)")


def _site_node(before: Graph, after: Graph) -> str:
    """The SAE site's node in `after` (`before` with an SAE written in): the node whose error
    part is new."""
    sites = [v for v in after.order if f"{v}.error" in after.nodes and f"{v}.error" not in before.nodes]
    if len(sites) != 1:  # pragma: no cover - sae_rewrite adds exactly one
        raise ScrubError(f"Expected one new SAE site in the rewritten graph, found {sites}.")
    return sites[0]


def _halves(group: list[int]) -> list[list[int]]:
    mid = (len(group) + 1) // 2
    return [group[:mid], group[mid:]]


def _chunks(latents: list[int], n_groups: int) -> list[list[int]]:
    """`latents` in `n_groups` runs of (nearly) equal length, in their order."""
    n_groups = min(n_groups, len(latents))
    bounds = [round(i * len(latents) / n_groups) for i in range(n_groups + 1)]
    return [latents[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def search_latents(graph: Graph, site: str | Sequence[str], sae: SAE, dataset: Dataset,
                   loss_fn: LossFn, *, threshold: float, readers: Sequence[Port] | None = None,
                   error: str = "kept", n_groups: int = 16, floor: int = 1,
                   order: Tensor | Sequence[float] | None = None, baseline: InterpNode | None = None,
                   n: int | None = 200, n_heldout: int | None = None, seed: int = 0,
                   check_rows: int = 4, chunk_size: int | None = None,
                   memory_mb: float | None = None, cache_mb: float | None = None,
                   n_bootstrap: int = 1000, progress: bool = False) -> LatentSearchResult:
    """Find which single latents of `sae` at `site` matter, by bisecting latent groups.

    Each round writes the SAE into `graph` with the current groups (`sae_rewrite`: the kept
    groups, and the latents already resampled as one group), then tries each kept group in turn
    (the least important first when `order` is given): the group is resampled, with those
    already resampled, where the readers read it, and stays resampled if loss recovered on the
    search rows stays >= `threshold`. Every kept group larger than `floor` is then split into
    halves for the next round. Everything outside the resampled latents reads the reference;
    the resampled ones read one shared random row per reference row (as the search's shared
    draw). The kept latents are finally scored on held-out rows with a 95% interval.

    Args:
        graph: the graph without the SAE (the model's graph).
        site: where the SAE reads, as for `sae_rewrite` (a node, writers, or a hook name).
        threshold: the loss recovered (a fraction in [0, 1]) every accepted step keeps.
        readers: the (node, port) pairs where latents are resampled (default: everywhere they
            are read); elsewhere the whole site reads the reference.
        error: "kept" (default: the error term reads the reference, as the rest of the model)
            or "resampled" (resampled where the latents are, from the start; the search then
            asks how many latents a claim needs when the error is not kept).
        n_groups: the groups of the first round (consecutive runs of the latents, in `order`).
        floor: the largest group the search stops at (1: single latents).
        order: [d_sae] a score per latent, higher = more important (e.g. minus
            `latent_attribution`'s scores): the latents are sorted by it before they are
            grouped and halved, so that important latents share groups and unimportant groups
            go first; default: the latents' index order.
        baseline: the 0% point (default: the random baseline, `cs.random_baseline()`).
        n, n_heldout, seed: search rows (default 200) and held-out rows (default `n`): the
            held-out rows are those `scrub` draws for `seed` and `n_heldout`, the search rows
            are drawn from the others (`scorer.split_rows`).
        check_rows: rows each round's rewrite is checked on.
        chunk_size, memory_mb, cache_mb, n_bootstrap, progress: as for `search`.
    """
    began = time.perf_counter()
    mode = _check_error(error)
    opts = RunOptions(n=n, seed=seed, chunk_size=chunk_size, memory_mb=memory_mb,
                      n_bootstrap=n_bootstrap, progress=False)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ScrubError(f"threshold must be a number such as 0.9, got {threshold!r}.") from None
    if not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise ScrubError(f"threshold must be a fraction of the loss recovered between 0 and 1 "
                         f"(e.g. 0.9 for 90%), got {threshold!r}.")
    for what, value, least in (("n_groups", n_groups, 1), ("floor", floor, 1),
                               ("check_rows", check_rows, 1)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise ScrubError(f"{what} must be a whole number, {least} or more; got {value!r}.")
    check_inputs(graph, dataset)
    if isinstance(site, str) and site not in graph.nodes and site.startswith(("blocks.", "hook_")):
        hook_site(graph, site)  # a clear error for a bad hook name before any compute
    latents = list(range(sae.d_sae))
    if order is not None:
        score = torch.as_tensor(order, dtype=torch.float64).flatten()
        if score.shape != (sae.d_sae,) or not bool(torch.isfinite(score).all()):
            raise ScrubError(f"order must hold one finite score per latent, {sae.d_sae} numbers; "
                             f"got shape {tuple(torch.as_tensor(order).shape)}.")
        latents = score.argsort(descending=True, stable=True).tolist()
    rank = {lat: i for i, lat in enumerate(latents)}
    n_search = check_n(n) or 200
    n_held = check_n(n_heldout) or n_search
    heldout_idx, ref = split_rows(len(dataset), n_search, n_held, seed)
    check_on = dataset.rows(torch.arange(min(check_rows, len(dataset))))
    base_root = baseline if baseline is not None else random_baseline()
    ctx = sampling_context(dataset, seed)
    cache = 1024.0 if cache_mb is None else float(cache_mb)

    def rewrite(groups: dict[str, list[int]]) -> tuple[Graph, str]:
        """The graph with the SAE written in with `groups` (those given cover every latent)."""
        g = sae_rewrite(graph, site, sae, groups={k: v for k, v in groups.items() if v},
                        check_on=check_on)
        return g, _site_node(graph, g)

    def hypothesis(g: Graph, node: str, resampled: list[str]) -> InterpNode:
        parts = [f"{node}.{p}" for p in resampled]
        if mode == "resampled":
            parts.append(f"{node}.error")
        root = InterpNode(g.output, Exact(), other=Exact())
        if parts:
            if readers is None:
                paths: Matcher = union([through(p) for p in parts])
            else:
                paths = union([through(v, port=pt).then(p) for v, pt in ports for p in parts])
            root.add(InterpNode("resampled latents", Uniform(), paths=paths))
        return root

    kept: list[list[int]] = _chunks(latents, n_groups)
    off: list[int] = []
    rounds: list[dict[str, Any]] = []
    candidates = 0
    current = math.nan
    ports: list[Port] = []
    while True:
        g, node = rewrite({**{f"g{j}": grp for j, grp in enumerate(kept)}, OFF: off})
        if readers is not None:
            ports = _readers(g, node, readers)
        scorer = Scorer(g, dataset, ref, loss_fn, opts, ctx, cache)
        scorer.set_ends(InterpNode(g.output), base_root)
        current = scorer.recovered(scorer.losses(hypothesis(g, node, [OFF] if off else [])))
        candidates += 1
        start = current
        removed: list[str] = [OFF] if off else []
        tried = sorted(range(len(kept)), key=lambda j: -max(rank[i] for i in kept[j]))
        for j in tqdm(tried, desc=f"latent search, round {len(rounds) + 1}", leave=False,
                      disable=not progress):
            rec = scorer.recovered(scorer.losses(hypothesis(g, node, [*removed, f"g{j}"])))
            candidates += 1
            if rec >= threshold:
                removed.append(f"g{j}")
                current = rec
        survivors = [kept[j] for j in range(len(kept)) if f"g{j}" not in removed]
        off = sorted(off + [i for j in range(len(kept)) if f"g{j}" in removed for i in kept[j]])
        rounds.append({"round": len(rounds) + 1, "groups_tried": len(kept),
                       "sizes": sorted({len(k) for k in kept}), "groups_kept": len(survivors),
                       "latents_kept": sum(len(k) for k in survivors),
                       "loss_recovered_start": start, "loss_recovered": current})
        log.info("latent search: round %d: %d of %d groups kept (%d latents), %.1f%%",
                 len(rounds), len(survivors), len(kept), rounds[-1]["latents_kept"], 100 * current)
        if all(len(k) <= floor for k in survivors):
            kept = survivors
            break
        kept = [h for k in survivors for h in (_halves(k) if len(k) > floor else [k]) if h]
    final = sorted(i for k in kept for i in k)
    # the held-out score: the kept latents as one group, the others resampled
    g, node = rewrite({"kept": final, OFF: off})
    if readers is not None:
        ports = _readers(g, node, readers)
    resampled = [OFF] if off else []
    heldout = scrub_many(g, {"kept latents": hypothesis(g, node, resampled)}, dataset, loss_fn,
                         baseline=baseline, options=opts.replace(n=n_held))["kept latents"]
    assert heldout.n == len(heldout_idx)
    return LatentSearchResult(latents=final, groups=[sorted(k) for k in kept], threshold=threshold,
                              loss_recovered=current, heldout=heldout, rounds=rounds,
                              candidates=candidates, seconds=time.perf_counter() - began,
                              n=n_search, seed=seed, site=node, d_sae=sae.d_sae,
                              readers=None if readers is None else list(ports), error=mode,
                              floor=floor)
