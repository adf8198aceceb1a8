"""Edge attribution (EAP and EAP-IG): every edge's importance from a few forward and backward passes.

An edge (sender u, receiver v, port p) is one term of a sum: v's port p reads the sum of its
senders' outputs. Resampling the edge, in the search's semantics, replaces that one term by
u's output on the *other* input (the search's shared draw), so v.p's input changes by
``o_u - x_u`` and, to first order, the mean loss changes by

    score(u -> v.p) = mean over rows of  (o_u - x_u) . dL / d(v.p's input)

(**EAP**, edge attribution patching: one clean forward pass, one backward pass and one pass on
the other input score every edge at once). Where the loss is linear in v.p's input the
estimate is exact.

**EAP-IG** averages that product along a straight line from the other input to the
reference, in edge space: at a point ``alpha`` (the fraction resampled) every floating-point
port reads ``(1 - alpha) * (its sum in this run) + alpha * (its sum on the other input)``, so
``alpha = 1`` is the model on the other input and ``alpha = 0`` the model on the reference;
the score of an edge is the average over ``steps + 1`` points of ``(o_u - x_u(alpha)) .
dL/d(v.p's input)(alpha)``, with ``x_u(alpha)`` the sender's output in that run. This is the
integrated gradient of the loss with respect to a mask on every edge at once (as
auto-circuit's `mask_gradient_prune_scores` with `integrated_grad_samples`), so with the
trapezoid rule the scores of all edges add up to about L(everything resampled) - L(model)
(completeness). The inputs here are token ids, which cannot be interpolated, so the line runs
through the edges rather than through input embeddings.

A port whose input is not floating point (token ids read by an embedding) has no gradient; its
edges are scored exactly instead, by one patched forward pass each (`Attribution.exact`).

Scores are in loss units: the estimated increase of the mean loss when that edge alone is
resampled. `Attribution.ranking` orders edges by |score| (as MIB and auto-circuit do).

Gradients come from `Graph.run` on a copy of the graph whose node functions add a zero tensor
that requires a gradient to each port input (so dL/d(port input) is that tensor's gradient even
where two ports read the same sum); the engine is not involved, because one batched pass of the
ordinary graph on the reference rows and one on the other rows is all EAP needs.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> att = cs.attribute(exp.graph, exp.dataset, exp.loss_fn, n=200)
    >>> len(att.scores) == len(cs.searching.graph_edges(exp.graph))
    True
    >>> sorted(att.ranking()[:2])  # A's edges first; C's score nothing
    [('A', 'out', 'resid'), ('x', 'A', 'x')]
    >>> att.scores[("C", "out", "resid")]
    0.0
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..core.data import Dataset
from ..core.draws import check_n, draw_hypothesis, sampling_context
from ..core.errors import ScrubError
from ..core.graph import Graph, Input, Node, sum_values, tensor_bytes
from ..core.hypothesis import check
from ..options import resolve_device
from ..pipeline import LossFn, check_inputs, graph_device
from .edges import RESAMPLED, Triple, compact_hypothesis, graph_edges
from .scorer import split_rows

log = logging.getLogger(__name__)

Method = Literal["eap", "eap-ig"]
Rule = Literal["trapezoid", "uniform"]
METHODS = ("eap", "eap-ig")


@dataclass
class Attribution:
    """Every edge's attribution score (see the module docstring).

    Attributes:
        scores: (sender, receiver, port) -> the estimated increase of the mean loss when that
            edge alone is resampled.
        exact: the edges scored by an exact patched pass (their port input is not floating
            point), not by a gradient.
        total: the sum of all scores; for EAP-IG with the trapezoid rule, about
            L(everything resampled) - L(model).
    """

    method: str
    scores: dict[Triple, float]
    exact: frozenset[Triple]
    n: int
    seed: int
    steps: int
    rule: str
    seconds: float
    model_loss: float
    resampled_loss: float  # mean loss with every edge resampled (the model on the other rows)
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = float(sum(self.scores.values()))

    def ranking(self, absolute: bool = True) -> list[Triple]:
        """Edges from the most to the least important: by |score| (default) or by score; ties
        in the graph's edge order."""
        order = {e: i for i, e in enumerate(self.scores)}
        key = (lambda e: (-abs(self.scores[e]), order[e])) if absolute else (
            lambda e: (-self.scores[e], order[e]))
        return sorted(self.scores, key=key)

    def top(self, k: int, absolute: bool = True) -> set[Triple]:
        """The `k` highest-ranked edges."""
        return set(self.ranking(absolute)[:k])

    def __repr__(self) -> str:
        top = ", ".join(f"{u} -> {v}.{p}: {self.scores[(u, v, p)]:.3g}"
                        for u, v, p in self.ranking()[:3])
        return (f"Attribution({self.method}, {len(self.scores)} edges, n = {self.n}; top: {top}; "
                f"{self.seconds:.1f} s)")


def search_rows(n_dataset: int, n: int, n_heldout: int, seed: int) -> Tensor:
    """The rows [n] `search` scores candidates on for this seed (`scorer.split_rows`)."""
    return split_rows(n_dataset, n, n_heldout, seed)[1]


def shared_other_rows(graph: Graph, table: Dataset, ref: Tensor, seed: int) -> Tensor:
    """The search's shared "other" draw [n] for reference rows `ref`: the rows every resampled
    path reads in `search` (and `compact_hypothesis`) with this seed."""
    corr = check(graph, compact_hypothesis(graph, set()))
    sample = draw_hypothesis(corr, table, ref, seed, ctx=sampling_context(table, seed))
    return sample.ds[RESAMPLED]


class _Probe:
    """The state the wrapped node functions read: the interpolation point, the other input's
    port sums, and the zero tensors whose gradients are dL/d(port input)."""

    def __init__(self) -> None:
        self.alpha = 0.0
        self.other_ports: dict[tuple[str, str], Tensor] = {}
        self.deltas: dict[tuple[str, str], Tensor] = {}


def _probed_graph(graph: Graph, probe: _Probe) -> Graph:
    """`graph` with every node's floating-point port inputs interpolated towards the other
    input by `probe.alpha` and offset by a zero tensor that records dL/d(port input). Node
    groups are dropped: each member needs its own offsets."""

    def wrap(name: str, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapped(**ports: Tensor) -> Tensor:
            values = {}
            for p, x in ports.items():
                if x.is_floating_point():
                    if probe.alpha:
                        x = x + probe.alpha * (probe.other_ports[(name, p)] - x)
                    delta = torch.zeros_like(x, requires_grad=True)
                    probe.deltas[(name, p)] = delta
                    x = x + delta
                values[p] = x
            return fn(**values)
        return wrapped

    nodes: list[Input | Node] = []
    for node in graph.nodes.values():
        if isinstance(node, Input):
            nodes.append(node)
        else:
            nodes.append(Node(node.name, wrap(node.name, node.fn), **node.ports))
    return Graph(nodes, graph.output, graph.module)


def checked_losses(loss_fn: LossFn, out: Tensor, rows: Dataset, what: str) -> Tensor:
    """`loss_fn(out, rows)`, checked: one finite loss per row, shape [len(rows)] (else a clear error)."""
    losses = loss_fn(out, rows)
    if not isinstance(losses, Tensor) or losses.shape != (len(rows),):
        got = f"shape {tuple(losses.shape)}" if isinstance(losses, Tensor) else type(losses).__name__
        raise ScrubError(f"The loss function returned {got} for {what}; it must return one loss "
                         f"per reference row, shape [{len(rows)}], with no reduction.")
    if not bool(torch.isfinite(losses).all()):
        raise ScrubError(f"The loss is NaN or infinite for {what}; check the model output and "
                         "the loss function on those rows.")
    return losses


def _swapped(graph: Graph, v: str, p: str, u: str, clean: dict[str, Tensor],
             other: dict[str, Tensor]) -> Tensor:
    """v.p's input with u's term taken from the other rows (the rest from the clean ones)."""
    return sum_values([other[w] if w == u else clean[w] for w in graph.ports(v)[p]])


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise ScrubError(f"Unknown attribution method {method!r}; use one of {', '.join(METHODS)}.")
    return "eap" if method == "eap" else "eap-ig"


def integration_points(method: Method, steps: int, rule: Rule) -> list[tuple[float, float]]:
    """(alpha, weight) of the integration points; weights add up to 1."""
    if method == "eap":
        return [(0.0, 1.0)]
    if rule == "uniform":
        return [(s / steps, 1.0 / (steps + 1)) for s in range(steps + 1)]
    return [(s / steps, (0.5 if s in (0, steps) else 1.0) / steps) for s in range(steps + 1)]


def attribute(graph: Graph, dataset: Dataset, loss_fn: LossFn, *, method: str = "eap",
              steps: int = 5, rule: Rule = "trapezoid", n: int | None = 1000,
              n_heldout: int | None = None, seed: int = 0, ref: Tensor | None = None,
              other: Tensor | None = None, chunk_size: int | None = None,
              memory_mb: float = 512.0, device: str | torch.device | None = None) -> Attribution:
    """Score every edge of `graph` by EAP or EAP-IG (module docstring).

    Args:
        method: "eap" (gradients at the reference) or "eap-ig" (integrated gradients from the
            other input to the reference, `steps + 1` points).
        steps: intervals of the EAP-IG line (default 5: 6 points); ignored by EAP.
        rule: how EAP-IG weights its points: "trapezoid" (default; halves the two ends, so the
            scores add up to about L(all resampled) - L(model)) or "uniform" (every point
            alike, auto-circuit's rule; the scores are then its scores over steps + 1).
        n, n_heldout, seed: the rows: by default the rows `search` scores candidates on for
            this seed (disjoint from the held-out rows `scrub` draws), and as other input the
            search's shared draw for them.
        ref, other: explicit reference rows [n] and their other rows [n] (indices into
            `dataset`) instead, e.g. each row's paired counterfactual.
        chunk_size: rows per forward and backward pass; default: as many as fit in
            `memory_mb` (default 512 MB), estimated from the node outputs and port sums of a
            two-row probe (times 8, for the two runs kept side by side and autograd's own
            tensors), at most 256.
    """
    start_time = time.perf_counter()
    meth = check_method(method)
    if not (isinstance(steps, int) and steps >= 1):
        raise ScrubError(f"steps must be a whole number of intervals, 1 or more (e.g. 5), got {steps!r}.")
    if rule not in ("trapezoid", "uniform"):
        raise ScrubError(f"rule must be 'trapezoid' or 'uniform', got {rule!r}.")
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ScrubError(f"chunk_size must be a positive whole number of rows, got {chunk_size!r}.")
    if not memory_mb > 0:
        raise ScrubError(f"memory_mb must be a positive number of MB, got {memory_mb!r}.")
    check_inputs(graph, dataset)
    dev = resolve_device(device) if device is not None else graph_device(graph)
    graph.to(dev)
    table = dataset.to(dev)
    if ref is None:
        rows = check_n(n) or 1000
        ref = search_rows(len(dataset), rows, check_n(n_heldout) or rows, seed)
    ref = torch.as_tensor(ref, dtype=torch.long).cpu()
    if other is None:
        other = shared_other_rows(graph, table, ref, seed)
    other = torch.as_tensor(other, dtype=torch.long).cpu()
    if ref.ndim != 1 or other.shape != ref.shape or len(ref) == 0:
        raise ScrubError(f"ref and other must be two row-index vectors of one length, got shapes "
                         f"{tuple(ref.shape)} and {tuple(other.shape)}.")
    for what, idx in (("ref", ref), ("other", other)):
        if int(idx.min()) < 0 or int(idx.max()) >= len(dataset):
            raise ScrubError(f"{what} holds row indices outside the dataset's {len(dataset)} rows.")

    edges = graph_edges(graph)
    senders = sorted({u for u, _, _ in edges})
    all_ports = {(v, p) for _, v, p in edges}
    # a two-row probe: which ports are not floating point (scored exactly), and the memory a
    # row takes (node outputs and port sums), which sizes the chunks
    with torch.no_grad():
        probe_run = graph.run(table.rows(other[:2]), outputs=set(senders) | {graph.output},
                              ports=all_ports)
    exact_ports = {k for k, t in probe_run.port_inputs.items() if not t.is_floating_point()}
    float_ports = all_ports - exact_ports
    if chunk_size is None:
        per_row = tensor_bytes([*probe_run.outputs.values(), *probe_run.port_inputs.values()])
        per_row = max(1, per_row // min(2, len(other)))
        chunk_size = int(max(1, min(256, memory_mb * 2**20 // (8 * per_row))))
    del probe_run
    needs_other_ports = any(alpha for alpha, _ in integration_points(meth, steps, rule))
    probe = _Probe()
    probed = _probed_graph(graph, probe)
    points = integration_points(meth, steps, rule)
    scores = dict.fromkeys(edges, 0.0)
    exact: set[Triple] = set()
    n_rows = len(ref)
    model_sum = resampled_sum = 0.0
    for start in range(0, n_rows, chunk_size):
        r, o = ref[start:start + chunk_size], other[start:start + chunk_size]
        clean, alt = table.rows(r), table.rows(o)
        with torch.no_grad():
            ran = graph.run(alt, outputs=set(senders) | {graph.output},
                            ports=float_ports if needs_other_ports else set())
            o_out = ran.outputs  # sender -> its output on the other rows
            probe.other_ports = ran.port_inputs  # (node, port) -> its sum on the other rows
            clean_ran = graph.run(clean, outputs=set(senders) | {graph.output}, ports=exact_ports)
            resampled_sum += float(checked_losses(loss_fn, o_out[graph.output], clean,
                                           "the model on the other rows").double().sum())
            base = checked_losses(loss_fn, clean_ran.outputs[graph.output], clean, "the model")
            model_sum += float(base.double().sum())
            # ports whose input is not floating point: exact, one patched pass per edge
            for u, v, p in edges:
                if (v, p) not in exact_ports:
                    continue
                exact.add((u, v, p))
                patched = _swapped(graph, v, p, u, clean_ran.outputs, o_out)
                out = graph.run(clean, outputs={graph.output}, ports=set(),
                                patch={(v, p): patched}).outputs[graph.output]
                changed = checked_losses(loss_fn, out, clean, f"the model with {u} -> {v}.{p} resampled")
                scores[(u, v, p)] += float((changed.double() - base.double()).sum())
        for alpha, weight in points:  # alpha: the fraction resampled at this point of the line
            probe.alpha = alpha
            probe.deltas = {}
            with torch.enable_grad():
                run = probed.run(clean, outputs=set(senders) | {graph.output}, ports=set())
                losses = checked_losses(loss_fn, run.outputs[graph.output], clean, "the model")
                grads = torch.autograd.grad(losses.sum(), list(probe.deltas.values()),
                                            allow_unused=True)
            grad = dict(zip(probe.deltas, grads))
            with torch.no_grad():
                for u, v, p in edges:
                    if (v, p) in exact_ports:
                        continue
                    g = grad.get((v, p))  # [rows, *port shape]: dL/d(v.p's input), summed over rows
                    if g is None:
                        continue  # the loss does not depend on this port
                    x_u = run.outputs[u].detach()  # [rows, *u's shape]: u's output in this run
                    diff = o_out[u].to(g.dtype) - x_u.to(g.dtype)  # broadcasts to the port's shape
                    scores[(u, v, p)] += weight * float((diff * g).sum(dtype=torch.float64))
    scores = {e: s / n_rows for e, s in scores.items()}
    return Attribution(method=meth, scores=scores, exact=frozenset(exact), n=n_rows, seed=seed,
                       steps=1 if meth == "eap" else steps, rule=rule,
                       seconds=time.perf_counter() - start_time, model_loss=model_sum / n_rows,
                       resampled_loss=resampled_sum / n_rows)


def finite_differences(graph: Graph, dataset: Dataset, loss_fn: LossFn, ref: Tensor, other: Tensor,
                       edges: list[Triple] | None = None) -> dict[Triple, float]:
    """The exact change of the mean loss when each edge alone is resampled (sender's output on
    the `other` rows in that one term), by one patched forward pass per edge: what EAP
    estimates to first order.

    Example:
        >>> import torch, causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i ** 2, i="x")], output="out")
        >>> ds = cs.Dataset({"x": torch.tensor([1.0, 2.0])})
        >>> finite_differences(g, ds, lambda out, rows: out, torch.tensor([0]), torch.tensor([1]))
        {('x', 'out', 'i'): 3.0}
    """
    ref, other = torch.as_tensor(ref), torch.as_tensor(other)
    clean, alt = dataset.rows(ref), dataset.rows(other)
    out: dict[Triple, float] = {}
    with torch.no_grad():
        o_out = graph.run(alt, keep_ports=False).outputs
        ran = graph.run(clean)
        base = checked_losses(loss_fn, ran.outputs[graph.output], clean, "the model").double()
        for u, v, p in edges if edges is not None else graph_edges(graph):
            patched = _swapped(graph, v, p, u, ran.outputs, o_out)
            y = graph.run(clean, outputs={graph.output}, ports=set(),
                          patch={(v, p): patched}).outputs[graph.output]
            changed = checked_losses(loss_fn, y, clean, f"the model with {u} -> {v}.{p} resampled")
            out[(u, v, p)] = float((changed.double() - base).mean())
    return out


__all__ = ["Attribution", "METHODS", "attribute", "finite_differences", "graph_edges",
           "search_rows", "shared_other_rows"]
