"""Rigour audits: the hypotheses that pass for the wrong reasons.

A high loss recovered says that the claimed structure is *sufficient on average*. It can be
high for reasons that have nothing to do with the hypothesis being right: rows that get better
under scrubbing can offset rows that get worse (cancellation); resampling a part can *improve*
the loss (negative parts, recovery above 100%); a claim can be so weak that the data never test
it (weakening it to "anything" costs nothing); and the average can hide a feature-defined
subset of the inputs on which the hypothesis fails. `audit` checks a scrub's results for each
of these and returns `Finding`s with their evidence; `compare` tests whether one hypothesis
recovers more than another on the same draws, with a paired interval.

The checks (the statistics and thresholds, also in docs/audit.md). Throughout, for one
hypothesis on n reference rows, s_i, m_i, b_i are row i's scrubbed, model and baseline losses,
L_s, L_m, L_b their means and gap = L_b - L_m (the denominator of loss recovered).

- **cancellation** (from the per-row losses alone). d_i = s_i - m_i; the degradation mass
  P = mean(max(d_i, 0)) and improvement mass N = mean(max(-d_i, 0)), so L_s - L_m = P - N.
  *hidden* = min(P, N) / gap is the loss recovered, in points, that rows better than the model
  and rows worse than it cancel. Flagged when hidden >= `CANCEL_HIDDEN` (0.10) and at least
  `CANCEL_SHARE` (5%) of rows are better than the model (s_i < m_i). Reported beside it: the
  shares of rows better and worse, and the 10/50/90% quantiles of per-row recovery
  (b_i - s_i) / (b_i - m_i) over rows with |b_i - m_i| >= 0.1 |gap|.
- **over_recovery**: loss recovered above 100% with its 95% bootstrap interval entirely above
  100% (the result's own interval).
- **vacuous_claim** (specificity; one or two scrubs per claim). For each `SameFeature` claim,
  the same hypothesis with that node's sampler replaced by `Uniform()` (weakened) and by
  `Exact()` (strengthened), on the same reference rows and seed. cost = R(h) - R(weakened),
  gain = R(strengthened) - R(h), each with a paired interval (below). Flagged when the upper end
  of the cost's interval is below `VACUOUS_COST` (1 point): the data show that dropping the
  claim costs (almost) nothing, so the claim is untested. The intervals are Bonferroni-
  corrected over the claims tested (two-sided level 1 - 0.05 / k for k claims).
- **negative_part**: a weakened claim whose cost is significantly *negative* (upper end of the
  corrected interval below 0 and the point estimate below -`NEGATIVE_GAIN`): resampling that
  claimed part improves the loss. With `negative_parts=True` the same is tried for every other
  claimed node (`Exact` ones) and for every resampled part, the inputs into a node's claim that
  no child claims (`other` set to `Exact()`: flagged when resampling them helps). One scrub
  each; the audit says how many were tried.
- **adversarial_subset** (from the per-row losses and the reference rows' feature values).
  Subsets are defined by the declared features (an `Experiment`'s `features` and `subsets`):
  every value of one feature and every pair of values of two features holding at least
  `min_subset` rows (default max(30, 1% of n)); a float feature with more than `MAX_VALUES`
  distinct values is cut into `QUANTILE_BINS` quantile bins, and an integer or vector one with
  that many is skipped (its values are labels, such as token ids, with no order to bin by). Loss recovered is
  computed on each (subsets whose recovery is undefined are skipped); for the
  `CANDIDATES` lowest, a normal interval from the bootstrap standard error
  (`statistics.bootstrap`) at the Bonferroni-corrected level 1 - 0.05 / m, m the number of
  subsets tried. The subset with the lowest loss recovered whose corrected upper end is below
  the overall loss recovered minus `SUBSET_MARGIN` (10 points) is flagged; when none is, the
  lowest subset is still recorded in `checks`.

Paired intervals (`compare`, specificity): two results on the same reference rows share the
model and baseline rows, so R(a) - R(b) = (L_s(b) - L_s(a)) / gap; rows are resampled jointly
(`statistics.bootstrap`, 1000 resamples) and the interval is the percentile one, or for
corrected levels the normal one from the bootstrap standard error.

Severity: "high" when the evidence is far past the threshold (hidden >= 0.25; interval above
110%; a subset whose corrected upper end is below 50% of the overall; a negative part worth more
than 5 points), else "warning". `findings` holds only flags; every statistic computed, flagged
or not, is in `checks`.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> r = cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, n=400,
    ...              name="correct")
    >>> a = cs.audit(r, exp)
    >>> a.findings, a.checks["correct"]["cancellation"]["share_better"], a.scrubs
    ([], 0.0, 4)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .core.data import Dataset
from .core.draws import generator
from .core.errors import ScrubError
from .core.graph import Graph
from .core.hypothesis import InterpNode
from .core.results import Run, ScrubResult, atomic_write, jsonable, pct
from .core.samplers import Exact, Feature, SameFeature, SharedUniform, Uniform, feature_values
from .core.statistics import bootstrap, recovery_defined, summarize
from .pipeline import LossFn
from .scrubbing import scrub_many

if TYPE_CHECKING:
    from .experiment import Experiment

KINDS = ("cancellation", "over_recovery", "negative_part", "vacuous_claim", "adversarial_subset")
AUDIT_JSON = "audit.json"
LOSSES_FILE = "audit_losses.safetensors"

#: cancellation: min(P, N) / gap at least this ...
CANCEL_HIDDEN = 0.10
#: ... with at least this share of rows better than the model.
CANCEL_SHARE = 0.05
#: vacuous claim: the corrected upper end of the weakening's cost below this (1 point).
VACUOUS_COST = 0.01
#: negative part: resampling improves loss recovered by more than this (and significantly).
NEGATIVE_GAIN = 0.01
#: adversarial subset: corrected upper end below the overall loss recovered minus this.
SUBSET_MARGIN = 0.10
#: family-wise error rate of the corrected intervals.
ALPHA = 0.05
#: features with more distinct values among the reference rows are binned (numeric) or skipped.
MAX_VALUES = 32
QUANTILE_BINS = 8
#: subsets (lowest loss recovered first) given a corrected interval.
CANDIDATES = 10
N_BOOTSTRAP = 1000


@dataclass
class Finding:
    """One flag raised by `audit`: which hypothesis, what kind (one of `KINDS`), how severe
    ("warning" or "high") and the numbers behind it."""

    hypothesis: str
    kind: str
    severity: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"hypothesis": self.hypothesis, "kind": self.kind, "severity": self.severity,
                "evidence": self.evidence}

    def __str__(self) -> str:
        return f"{self.hypothesis}: {self.kind} ({self.severity}): {self.evidence.get('summary', '')}"


@dataclass
class Comparison:
    """R(a) - R(b), the difference in loss recovered of two results on the same draws, with
    its paired 95% interval (`compare`)."""

    a: str
    b: str
    difference: float
    ci: tuple[float, float]
    se: float
    n: int

    @property
    def significant(self) -> bool:
        """Whether the paired 95% interval excludes 0."""
        return self.ci[0] > 0 or self.ci[1] < 0

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "difference": self.difference, "ci_low": self.ci[0],
                "ci_high": self.ci[1], "se": self.se, "n": self.n, "significant": self.significant}

    def __repr__(self) -> str:
        verdict = (f"{self.a if self.difference > 0 else self.b} recovers more" if self.significant
                   else "no significant difference")
        return (f"Comparison: R({self.a}) - R({self.b}) = {_pts(self.difference)} "
                f"[95% CI {_pts(self.ci[0])}, {_pts(self.ci[1])}] (paired, n={self.n}): {verdict}")


@dataclass
class Audit:
    """What `audit` found: `findings` (flags only), `checks` (every statistic computed, per
    hypothesis), `settings` (thresholds and what ran), the number of extra scrubs and seconds."""

    findings: list[Finding]
    checks: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    scrubs: int
    seconds: float

    def flagged(self, kind: str | None = None, hypothesis: str | None = None) -> list[Finding]:
        """The findings of this `kind` and/or `hypothesis` (None: any)."""
        if kind is not None and kind not in KINDS:
            raise ScrubError(f"Unknown finding kind {kind!r}; the kinds are {', '.join(KINDS)}.")
        return [f for f in self.findings if (kind is None or f.kind == kind)
                and (hypothesis is None or f.hypothesis == hypothesis)]

    def to_dict(self, timing: bool = False) -> dict[str, Any]:
        """As JSON-ready data; with `timing`, also the seconds the audit took (`save` keeps
        them; a run's `results.json` does not, so that the same run gives the same file)."""
        data = {"findings": [f.to_dict() for f in self.findings], "checks": self.checks,
                "settings": self.settings, "scrubs": self.scrubs}
        return jsonable({**data, "seconds": self.seconds} if timing else data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the audit as JSON to `path` (a file, or a directory: then `path/audit.json`)."""
        target = Path(path)
        if target.is_dir():
            target = target / AUDIT_JSON
        atomic_write(target, json.dumps(self.to_dict(timing=True), indent=2))
        return target

    def __str__(self) -> str:
        head = (f"audit: {len(self.findings)} finding{'s' * (len(self.findings) != 1)} on "
                f"{len(self.checks)} hypothes{'es' if len(self.checks) != 1 else 'is'} "
                f"({self.scrubs} extra scrub{'s' * (self.scrubs != 1)})")
        return "\n".join([head] + [f"  - {f}" for f in self.findings])

    __repr__ = __str__


# ---- statistics ---------------------------------------------------------------------------------

def _pts(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f} pts"


def _z(level_alpha: float) -> float:
    """The two-sided normal quantile for family-wise error `level_alpha`."""
    return NormalDist().inv_cdf(1 - level_alpha / 2)


def _losses(r: ScrubResult) -> tuple[Tensor, Tensor, Tensor]:
    pe = r.per_example
    for k in ("scrubbed", "model", "baseline"):
        if k not in pe:
            raise ScrubError(f"Result {r.name!r} has no per-example {k!r} losses, which the audit "
                             "needs; scrub it again with this version (results keep them).")
    return pe["scrubbed"].double(), pe["model"].double(), pe["baseline"].double()


def paired_difference(a: ScrubResult, b: ScrubResult, seed: int = 0,
                      n_resamples: int = N_BOOTSTRAP) -> tuple[float, float, float, float]:
    """(R(a) - R(b), ci_low, ci_high, se): the 95% percentile interval resamples rows jointly.

    Since a and b share the model and baseline rows, R(a) - R(b) = (L_s(b) - L_s(a)) / gap,
    which is loss recovered with baseline s(b), scrubbed s(a) and model s(b) - (b - m): the
    interval is `statistics.bootstrap` of those rows.
    """
    _check_paired(a, b)
    sa, m, base = _losses(a)
    sb = b.per_example["scrubbed"].double()
    diff = float((sb.mean() - sa.mean()) / (base.mean() - m.mean()))
    if torch.equal(sa, sb):
        return diff, 0.0, 0.0, 0.0
    rows = {"baseline": sb, "scrubbed": sa, "model": sb - (base - m)}
    lo, hi, se = bootstrap(rows, generator(a.seed, f"compare:{a.name}:{b.name}"), n_resamples)
    return diff, lo, hi, se


def _check_paired(a: ScrubResult, b: ScrubResult) -> None:
    ia, ib = a.per_example.get("ref_index"), b.per_example.get("ref_index")
    same_rows = (ia is not None and ib is not None and ia.shape == ib.shape and torch.equal(ia, ib))
    if not same_rows:
        raise ScrubError(
            f"Results {a.name!r} and {b.name!r} are not on the same reference rows, so they "
            "cannot be compared row by row. Scrub both in one `cs.scrub_many` call (or with the "
            "same n, seed and dataset).")
    for k in ("model", "baseline"):
        if not torch.allclose(a.per_example[k].double(), b.per_example[k].double(), rtol=1e-5,
                              atol=1e-7):
            raise ScrubError(f"Results {a.name!r} and {b.name!r} have different per-example {k} "
                             "losses: they come from different models, baselines or loss "
                             "functions. Scrub both in one `cs.scrub_many` call.")


def compare(a: ScrubResult, b: ScrubResult, *, seed: int | None = None,
            n_resamples: int = N_BOOTSTRAP) -> Comparison:
    """Whether hypothesis `a` recovers more of the loss than `b`, tested on the same draws.

    The difference R(a) - R(b) in loss recovered, with a paired bootstrap 95% interval over
    reference rows (both results must be on the same reference rows, with the same model and
    baseline losses: scrub them together with `scrub_many`). Two overlapping intervals say
    little; this one says whether the difference is real.

    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> rs = cs.scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=400)
    >>> c = cs.compare(rs["correct"], rs["only_a"])
    >>> c.significant, round(c.difference, 1)
    (True, 0.5)
    """
    diff, lo, hi, se = paired_difference(a, b, a.seed if seed is None else seed, n_resamples)
    return Comparison(a.name, b.name, diff, (lo, hi), se, len(a.per_example["scrubbed"]))


def cancellation_stats(r: ScrubResult) -> dict[str, Any]:
    """The cancellation statistics of one result (defined in the module docstring)."""
    s, m, b = _losses(r)
    d = s - m  # [n]
    gap = float(b.mean() - m.mean())
    scale = max(abs(float(m.mean())), abs(float(b.mean())), 1e-12)
    tol = 1e-6 * scale
    better, worse = float((d < -tol).double().mean()), float((d > tol).double().mean())
    p, n_mass = float(d.clamp_min(0).mean()), float((-d).clamp_min(0).mean())
    hidden = min(p, n_mass) / gap if gap > 0 else math.nan
    row_gap = b - m  # [n]
    keep = row_gap.abs() >= 0.1 * abs(gap)
    q: list[float] = [math.nan] * 3
    if keep.any() and gap > 0:
        per_row = (b[keep] - s[keep]) / row_gap[keep]
        q = torch.quantile(per_row, torch.tensor([0.1, 0.5, 0.9], dtype=per_row.dtype)).tolist()
    return {"share_better": better, "share_worse": worse, "degradation_mass": p,
            "improvement_mass": n_mass, "hidden": hidden,
            "recovered_without_improving_rows": r.loss_recovered - n_mass / gap if gap > 0 else math.nan,
            "per_row_recovery_q10": q[0], "per_row_recovery_q50": q[1], "per_row_recovery_q90": q[2],
            "flagged": bool(math.isfinite(hidden) and hidden >= CANCEL_HIDDEN and better >= CANCEL_SHARE)}


# ---- subsets ------------------------------------------------------------------------------------

@dataclass
class _Factor:
    """One feature on the reference rows, as classes: `ids` [n] and a label per class."""

    name: str
    ids: Tensor
    labels: list[str]


def _factor(name: str, values: Tensor) -> _Factor | None:
    """Classes of a feature's values on the reference rows ([n, d]); None when it has too many
    values to split on and is not a 1-D float to cut into quantile bins."""
    uniq, ids = torch.unique(values, dim=0, return_inverse=True)
    if len(uniq) <= MAX_VALUES:
        labels = [_value_text(u) for u in uniq]
        return _Factor(name, ids, [f"{name} = {v}" for v in labels])
    if values.shape[1] != 1 or not values.is_floating_point():
        return None  # a vector, or integer labels (token ids): no order to bin by
    x = values[:, 0].double()
    edges = torch.quantile(x, torch.linspace(0, 1, QUANTILE_BINS + 1, dtype=torch.float64))
    edges = torch.unique(edges)
    ids = torch.bucketize(x, edges[1:-1], right=True)  # [n]: bin index
    labels = [f"{name} in [{_num(edges[i])}, {_num(edges[i + 1])}{']' if i == len(edges) - 2 else ')'}"
              for i in range(len(edges) - 1)]
    return _Factor(name, ids, labels)


def _num(x: Tensor) -> str:
    v = float(x)
    return str(int(v)) if v == int(v) else f"{v:.4g}"


def _value_text(v: Tensor) -> str:
    vals = [int(x) if float(x) == int(x) else round(float(x), 4) for x in v.tolist()]
    return str(vals[0]) if len(vals) == 1 else str(vals)


def _factors(features: Mapping[str, Feature], masks: Mapping[str, Any], ref_rows: Dataset,
             skipped: list[str]) -> list[_Factor]:
    out = []
    for name, feat in features.items():
        values = feature_values(feat, ref_rows, name)
        fac = _factor(name, values.double() if values.is_floating_point() else values)
        if fac is None:
            skipped.append(f"feature {name!r}: more than {MAX_VALUES} distinct values, and not "
                           "a number to bin")
        else:
            out.append(fac)
    for name, fn in masks.items():
        mask = torch.as_tensor(fn(ref_rows), dtype=torch.bool).reshape(-1).cpu()
        out.append(_Factor(name, mask.long(), [f"not {name}", name]))
    return out


def subset_stats(r: ScrubResult, factors: Sequence[_Factor], min_size: int,
                 alpha: float = ALPHA) -> dict[str, Any]:
    """The adversarial-subset search of one result over `factors` (module docstring)."""
    s, m, b = _losses(r)
    cands = []  # (recovered, text, definition, mask)
    tried = 0

    def scan(ids: Tensor, labels: list[str], definition: list[tuple[str, list[str]]]) -> None:
        nonlocal tried
        k = len(labels)
        count = torch.bincount(ids, minlength=k)  # [k]
        sums = [torch.bincount(ids, weights=x, minlength=k) for x in (s, m, b)]  # 3 x [k]
        for c in torch.nonzero(count >= min_size).flatten().tolist():
            tried += 1
            ls, lm, lb = (float(t[c]) / int(count[c]) for t in sums)
            if lb - lm <= 0:
                continue
            rec = (lb - ls) / (lb - lm)
            cands.append((rec, labels[c], {name: vals[c] for name, vals in definition}, ids == c))

    for f in factors:
        scan(f.ids, f.labels, [(f.name, f.labels)])
    for i, f in enumerate(factors):
        for g in factors[i + 1:]:
            k = len(g.labels)
            ids = f.ids * k + g.ids  # [n]: one id per pair of values
            labels = [f"{lf} & {lg}" for lf in f.labels for lg in g.labels]
            scan(ids, labels, [(f.name, [lf for lf in f.labels for _ in g.labels]),
                               (g.name, [lg for _ in f.labels for lg in g.labels])])
    out: dict[str, Any] = {"subsets_tried": tried, "min_size": min_size, "lowest": None,
                           "flagged": False}
    if not cands:
        return out
    cands.sort(key=lambda c: c[0])
    z = _z(alpha / max(tried, 1))
    examined: list[dict[str, Any]] = []
    for rec, text, definition, mask in cands:
        if len(examined) >= CANDIDATES:
            break
        if not recovery_defined(b[mask], m[mask]):
            continue
        pe = {k: r.per_example[k][mask] for k in ("scrubbed", "model", "baseline")}
        _, _, se = bootstrap(pe, generator(r.seed, f"audit-subset:{text}"), N_BOOTSTRAP)
        se = 0.0 if not math.isfinite(se) else se
        size = int(mask.sum())
        examined.append({
            "definition": definition, "text": text, "size": size, "share": size / len(s),
            "loss_recovered": rec, "ci_low": rec - z * se, "ci_high": rec + z * se, "se": se,
            "scrubbed_loss": float(s[mask].mean()), "model_loss": float(m[mask].mean()),
            "baseline_loss": float(b[mask].mean()),
        })
    if not examined:
        return out
    out["lowest"] = examined[0]
    bar = r.loss_recovered - SUBSET_MARGIN
    bad = [e for e in examined if e["ci_high"] < bar]
    if bad:
        out["flagged"] = True
        out["worst"] = min(bad, key=lambda e: e["loss_recovered"])
    out["correction"] = (f"Bonferroni over the {tried} subsets tried: normal interval at two-sided "
                         f"level 1 - {alpha}/{tried}, z = {z:.2f}, from the bootstrap SE")
    return out


# ---- variants of a hypothesis -------------------------------------------------------------------

def _variant(root: InterpNode, target: InterpNode, *, sampler: Any = None, other: Any = None) -> InterpNode:
    """A copy of the tree `root` in which `target`'s sampler (or other-inputs sampler) is
    replaced; every other node keeps its samplers (shared instances stay shared)."""
    def copy(n: InterpNode) -> InterpNode:
        hit = n is target
        return InterpNode(n.name, sampler if hit and sampler is not None else n.sampler,
                          paths=n.paths, other=other if hit and other is not None else n.other,
                          children=[copy(c) for c in n.children])
    return copy(root)


Plan = dict[str, tuple[str, str, str, InterpNode]]
"""variant key -> (hypothesis, kind: weaken / strengthen / restore, interpretation node, tree)"""


def _plan(hypotheses: Mapping[str, InterpNode], keys: Sequence[str], specificity: bool,
          negative_parts: bool, budget: int | None) -> tuple[Plan, int]:
    """The variant scrubs, round-robin over hypotheses, within the budget: variant key ->
    (hypothesis, kind, node name, tree); and how many were left out for the budget."""
    queues: dict[str, list[tuple[str, str, InterpNode]]] = {}
    for k in keys:
        root = hypotheses[k]
        q: list[tuple[str, str, InterpNode]] = []
        nodes = root.walk()
        if specificity:
            for n in nodes[1:]:
                if isinstance(n.sampler, SameFeature):
                    q.append(("weaken", n.name, _variant(root, n, sampler=Uniform())))
                    q.append(("strengthen", n.name, _variant(root, n, sampler=Exact())))
        if negative_parts:
            for n in nodes[1:]:
                if not isinstance(n.sampler, SameFeature | Uniform | SharedUniform):
                    q.append(("weaken", n.name, _variant(root, n, sampler=Uniform())))
            for n in nodes:
                if n.children and not isinstance(n.other, Exact):
                    q.append(("restore", n.name, _variant(root, n, other=Exact())))
        queues[k] = q
    plan: Plan = {}
    left = sum(len(q) for q in queues.values())
    limit = left if budget is None else budget
    while left and len(plan) < limit:
        for k in keys:
            if queues[k] and len(plan) < limit:
                kind, node, tree = queues[k].pop(0)
                plan[f"{k} | {kind} {node}"] = (k, kind, node, tree)
                left -= 1
    return plan, left


# ---- the audit ----------------------------------------------------------------------------------

def _results_of(results: ScrubResult | Mapping[str, ScrubResult] | Run) -> dict[str, ScrubResult]:
    if isinstance(results, ScrubResult):
        return {results.name: results}
    if isinstance(results, Run):
        return dict(results.results)
    if isinstance(results, Mapping) and results and all(isinstance(v, ScrubResult) for v in results.values()):
        return dict(results)
    raise ScrubError(f"audit takes a ScrubResult, a dict of them (from cs.scrub_many) or a Run; "
                     f"got {type(results).__name__}.")


def audit(results: ScrubResult | Mapping[str, ScrubResult] | Run, experiment: Experiment | None = None,
          *, graph: Graph | None = None, hypotheses: Mapping[str, InterpNode] | None = None,
          dataset: Dataset | None = None, loss_fn: LossFn | None = None,
          baseline: InterpNode | None = None, features: Mapping[str, Feature] | None = None,
          specificity: bool = True, negative_parts: bool = False, subsets: bool = True,
          max_scrubs: int | None = None, min_subset: int | None = None, alpha: float = ALPHA,
          progress: bool = False) -> Audit:
    """Audit scrub results for the hypotheses that pass for the wrong reasons.

    Args:
        results: a `ScrubResult`, a dict of them (`scrub_many`), or a `Run`.
        experiment: where the rest comes from (graph, hypotheses, dataset, loss, baseline,
            features and subsets); each may instead be given by the keyword of that name.
        specificity: weaken and strengthen every `SameFeature` claim (two scrubs per claim,
            within `max_scrubs`).
        negative_parts: also weaken every other claimed node and restore every resampled part
            (one scrub each, within `max_scrubs`).
        subsets: search feature-defined subsets (needs `dataset` and features or subsets).
        max_scrubs: the most extra scrubs, given round-robin over the hypotheses; default
            max(8, number of hypotheses), which keeps the audit of a run within about twice
            the run, and no limit with `negative_parts`; 0 runs only the checks that need no
            scrub.
        min_subset: the fewest rows a subset may have (default max(30, 1% of n)).
        alpha: the family-wise error rate of every corrected interval.

    Checks without what they need (specificity without the graph, loss and hypothesis trees;
    subsets without the dataset and features) are skipped and listed in `settings["skipped"]`.
    Statistics and thresholds are in the module docstring.
    """
    start = time.perf_counter()
    res = _results_of(results)
    if not 0 < alpha < 1:
        raise ScrubError(f"alpha must be between 0 and 1 (a family-wise error rate), got {alpha}.")
    if max_scrubs is not None and max_scrubs < 0:
        raise ScrubError(f"max_scrubs must be 0 or more, got {max_scrubs}.")
    if experiment is not None:
        graph = graph if graph is not None else experiment.graph
        hypotheses = hypotheses if hypotheses is not None else experiment.hypotheses
        dataset = dataset if dataset is not None else experiment.dataset
        loss_fn = loss_fn if loss_fn is not None else experiment.loss_fn
        baseline = baseline if baseline is not None else experiment.baseline
    feats: dict[str, Feature] = dict(features if features is not None
                                     else (experiment.features if experiment is not None else {}))
    masks = dict(experiment.subsets) if experiment is not None and features is None else {}
    skipped: list[str] = []
    checks: dict[str, dict[str, Any]] = {k: {} for k in res}
    findings: list[Finding] = []

    # ---- checks from the per-example losses alone ----
    for k, r in res.items():
        c = cancellation_stats(r)
        checks[k]["cancellation"] = c
        if c["flagged"]:
            findings.append(Finding(k, "cancellation", "high" if c["hidden"] >= 0.25 else "warning", {
                **c, "summary": f"{c['share_better']:.0%} of rows do better than the model and "
                f"{c['share_worse']:.0%} worse; {100 * c['hidden']:.1f} points of loss recovered "
                "cancel between them"}))
        over = {"loss_recovered": r.loss_recovered, "ci_low": r.ci[0], "ci_high": r.ci[1],
                "flagged": bool(r.recovery_defined and r.ci[0] > 1)}
        checks[k]["over_recovery"] = over
        if over["flagged"]:
            findings.append(Finding(k, "over_recovery", "high" if r.ci[0] > 1.1 else "warning", {
                **over, "summary": f"loss recovered {r.recovered_text()}: scrubbing improves on "
                "the model, so some resampled part hurts it (look for negative parts)"}))

    # ---- adversarial subsets ----
    if subsets:
        if dataset is None or not (feats or masks):
            skipped.append("adversarial subsets: no dataset or no declared features (give an "
                           "experiment with features/subsets, or dataset= and features=)")
        else:
            for k, r in res.items():
                ref_idx = r.per_example.get("ref_index")
                if ref_idx is None or r.settings.get("separate_ref"):
                    skipped.append(f"adversarial subsets of {k!r}: the result does not record its "
                                   "reference rows in the dataset")
                    continue
                n = len(ref_idx)
                factors = _factors(feats, masks, dataset.rows(ref_idx.long()), skipped)
                size = min_subset if min_subset is not None else max(30, math.ceil(0.01 * n))
                st = subset_stats(r, factors, size, alpha)
                checks[k]["adversarial_subset"] = st
                if st["flagged"]:
                    w = st["worst"]
                    high = w["ci_high"] < 0.5 * r.loss_recovered
                    findings.append(Finding(k, "adversarial_subset", "high" if high else "warning", {
                        **w, "subsets_tried": st["subsets_tried"], "min_size": size,
                        "overall_loss_recovered": r.loss_recovered, "correction": st["correction"],
                        "summary": f"on {w['text']} ({w['size']} rows, {w['share']:.1%}) loss "
                        f"recovered is {pct(w['loss_recovered'])} [corrected {pct(w['ci_low'])}, "
                        f"{pct(w['ci_high'])}] against {pct(r.loss_recovered)} overall "
                        f"({st['subsets_tried']} subsets tried)"}))
            skipped[:] = list(dict.fromkeys(skipped))

    # ---- specificity and negative parts: re-scrubs ----
    scrubs = 0
    tried = {"weaken": 0, "strengthen": 0, "restore": 0}  # variant scrubs run, by kind
    if specificity or negative_parts:
        missing = [w for w, v in (("graph", graph), ("hypotheses", hypotheses), ("dataset", dataset),
                                  ("loss_fn", loss_fn)) if v is None]
        hypotheses = _match(res, hypotheses) if hypotheses is not None else None
        keys = [k for k in res if hypotheses is not None and k in hypotheses]
        if missing:
            skipped.append(f"specificity and negative parts: no {', '.join(missing)} (give the "
                           "experiment)")
        else:
            assert hypotheses is not None
            for k in res:
                if k not in hypotheses:
                    skipped.append(f"specificity of {k!r}: no hypothesis of that name given")
            budget = (max_scrubs if max_scrubs is not None
                      else None if negative_parts else max(8, len(res)))
            plan, left = _plan(hypotheses, keys, specificity, negative_parts, budget)
            if left:
                skipped.append(f"{left} variant scrub(s) left out for the budget (max_scrubs="
                               f"{budget}; {len(plan)} run); raise max_scrubs to run them")
            if plan:
                assert graph is not None and dataset is not None and loss_fn is not None
                scrubs = len(plan)
                for _, kind, _, _ in plan.values():
                    tried[kind] += 1
                claims = {(k, n.name) for k in keys for n in hypotheses[k].walk()[1:]
                          if isinstance(n.sampler, SameFeature)}
                _rescrub(res, plan, claims, graph, dataset, loss_fn, baseline, alpha, checks,
                         findings, progress)
    for k in res:
        checks[k].setdefault("variants_tried", 0)
    settings = {"cancel_hidden": CANCEL_HIDDEN, "cancel_share": CANCEL_SHARE,
                "vacuous_cost": VACUOUS_COST, "negative_gain": NEGATIVE_GAIN,
                "subset_margin": SUBSET_MARGIN, "alpha": alpha, "max_values": MAX_VALUES,
                "specificity": specificity, "negative_parts": negative_parts, "subsets": subsets,
                "max_scrubs": max_scrubs, "min_subset": min_subset, "variants_tried": tried,
                "skipped": skipped}
    return Audit(findings, checks, settings, scrubs, time.perf_counter() - start)


def _match(res: Mapping[str, ScrubResult], hypotheses: Mapping[str, InterpNode]) -> dict[str, InterpNode]:
    """Each result's hypothesis tree: the one of the same name, else the one whose tree the
    result recorded (`cs.scrub` names a result after its root unless given `name=`)."""
    out = {}
    for k, r in res.items():
        if k in hypotheses:
            out[k] = hypotheses[k]
            continue
        tree = r.settings.get("tree")
        same = [h for h in hypotheses.values() if tree is not None and h.to_dict() == tree]
        if same:
            out[k] = same[0]
    return out


def _rescrub(res: dict[str, ScrubResult], plan: Plan, claims: set[tuple[str, str]], graph: Graph,
             dataset: Dataset, loss_fn: LossFn, baseline: InterpNode | None,
             alpha: float, checks: dict[str, dict[str, Any]], findings: list[Finding],
             progress: bool) -> None:
    """Scrub every planned variant on each result's reference rows, and judge them."""
    by_run: dict[tuple[Any, int], dict[str, InterpNode]] = {}
    for key, (k, _, _, tree) in plan.items():
        r = res[k]
        by_run.setdefault((r.settings.get("n_requested", r.n), r.seed), {})[key] = tree
    scored: dict[str, ScrubResult] = {}
    for (n, seed), trees in by_run.items():
        scored.update(scrub_many(graph, trees, dataset, loss_fn, n=n, seed=seed, baseline=baseline,
                                 n_bootstrap=10, progress=progress))
    # corrections: over the claims weakened, and over the parts tried for negative parts
    n_weak = max(1, sum(1 for _, kind, _, _ in plan.values() if kind == "weaken"))
    n_restore = max(1, sum(1 for _, kind, _, _ in plan.values() if kind == "restore"))
    for key, (k, kind, node, _) in plan.items():
        r, v = res[k], scored[key]
        _check_paired(r, v)
        z = _z(alpha / (n_restore if kind == "restore" else n_weak))
        diff, _, _, se = paired_difference(r, v)  # R(h) - R(variant)
        se = 0.0 if not math.isfinite(se) else se
        lo, hi = diff - z * se, diff + z * se
        entry = {"node": node, "variant_loss_recovered": v.loss_recovered,
                 "difference": diff, "ci_low": lo, "ci_high": hi, "se": se}
        # SameFeature claims under "specificity"; other claimed nodes (negative parts) apart
        group = "specificity" if (k, node) in claims else "claimed_parts"
        spec = checks[k].setdefault(group, {}).setdefault(node, {}) if kind != "restore" else {}
        if kind == "strengthen":
            spec["strengthened"] = {**entry, "gain": -diff}
            continue
        if kind == "weaken":
            spec["weakened"] = {**entry, "cost": diff}
            if hi < 0 and diff < -NEGATIVE_GAIN:
                findings.append(Finding(k, "negative_part", "high" if diff < -0.05 else "warning", {
                    **entry, "part": f"claimed node {node!r}", "parts_tried": n_weak,
                    "summary": f"resampling claimed node {node!r} uniformly raises loss recovered "
                    f"by {_pts(-diff)} [corrected {_pts(-hi)}, {_pts(-lo)}]"}))
            elif hi < VACUOUS_COST and (k, node) in claims:
                findings.append(Finding(k, "vacuous_claim", "warning", {
                    **entry, "claims_tested": n_weak,
                    "summary": f"weakening claim {node!r} to Uniform() costs {_pts(diff)} "
                    f"[corrected {_pts(lo)}, {_pts(hi)}]: the data do not test it"}))
        else:  # restore: R(h) - R(other=Exact); resampling helps when this is significantly > 0
            checks[k].setdefault("resampled_parts", {})[node] = entry
            if lo > 0 and diff > NEGATIVE_GAIN:
                findings.append(Finding(k, "negative_part", "high" if diff > 0.05 else "warning", {
                    **entry, "part": f"inputs into {node!r} that no child claims", "parts_tried": n_restore,
                    "summary": f"keeping the unclaimed inputs into {node!r} unresampled lowers loss "
                    f"recovered by {_pts(diff)} [corrected {_pts(lo)}, {_pts(hi)}]: resampling "
                    "them helps"}))
    for k in res:
        checks[k]["variants_tried"] = sum(1 for (kk, _, _, _) in plan.values() if kk == k)



# ---- runs on disk: `causal-scrub run` and `causal-scrub audit DIR` --------------------------------

def save_losses(results: Mapping[str, ScrubResult] | Run, directory: str | os.PathLike) -> Path:
    """Write the per-example losses of a run to `directory/audit_losses.safetensors`, so that
    `experiments.auditing.audit_directory` can audit it later without scrubbing again."""
    from safetensors.torch import save_file

    res = _results_of(results)
    first = next(iter(res.values()))
    tensors = {"model": first.per_example["model"], "baseline": first.per_example["baseline"],
               "ref_index": first.per_example["ref_index"]}
    for i, r in enumerate(res.values()):
        tensors[f"scrubbed.{i}"] = r.per_example["scrubbed"]
    path = Path(directory) / LOSSES_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"hypotheses": json.dumps(list(res))})
    os.replace(tmp, path)
    return path


def load_losses(path: Path, seed: int) -> dict[str, ScrubResult] | None:
    """The per-example losses `save_losses` wrote, as results (None when the file holds none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = json.loads((f.metadata() or {}).get("hypotheses", "[]"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for i, name in enumerate(names):
        pe = {"scrubbed": tensors[f"scrubbed.{i}"], "model": tensors["model"],
              "baseline": tensors["baseline"], "ref_index": tensors["ref_index"]}
        out[name] = summarize(name, pe, seed=seed)
    return out or None
