"""What a search found, saved to share: `SearchResult`, `search.json` and `hypothesis.py`.

Example:
    >>> from causal_scrubbing.searching.result import SEARCH_JSON, HYPOTHESIS_PY
    >>> SEARCH_JSON, HYPOTHESIS_PY
    ('search.json', 'hypothesis.py')
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, Literal

from ..core.hypothesis import InterpNode
from ..core.results import ScrubResult, atomic_write, jsonable, versions
from ..options import Draws, Granularity
from .edges import Edge, Triple

if TYPE_CHECKING:
    from ..report.circuit import Figure

__all__ = ["HYPOTHESIS_PY", "REPRODUCED", "SEARCH_JSON", "SearchResult", "hypothesis_file"]

SEARCH_JSON = "search.json"
HYPOTHESIS_PY = "hypothesis.py"
#: Where the reproduce line of a found hypothesis writes its run (beside search.json).
REPRODUCED = "heldout"


@dataclass
class SearchResult:
    """What `search` found: the kept edges, the features, and the numbers on both row sets."""

    threshold: float
    granularity: Granularity
    draws: Draws
    tolerances: tuple[float, ...]  # per-step limits of the passes before the last
    kept: list[Edge]
    features: dict[str, str]  # graph node -> feature name
    loss_recovered: float  # on the search rows
    heldout: ScrubResult
    hypothesis: InterpNode
    candidates: int
    seconds: float
    n: int  # search rows
    seed: int
    model_loss: float  # on the search rows
    baseline_loss: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    encoding: Literal["tree", "compact"] = "tree"
    n_edges: int = 0  # edges of the graph (node outputs, with granularity "nodes")
    graph_edges: list[Triple] = field(default_factory=list)  # every edge of the graph searched
    schedule: str = "greedy"  # the removal step: "greedy" or "ranked"

    @property
    def candidates_per_second(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The `search.json` dictionary."""
        h = self.heldout
        return jsonable({
            "threshold": self.threshold, "granularity": self.granularity,
            "schedule": self.schedule, "tolerances": list(self.tolerances),
            "kept": [e.to_dict() for e in self.kept],
            "features": dict(self.features),
            "loss_recovered": self.loss_recovered,
            "heldout": {"loss_recovered": h.loss_recovered, "ci_low": h.ci[0], "ci_high": h.ci[1],
                        "n": h.n, "scrubbed_loss": h.loss, "model_loss": h.model_loss,
                        "baseline_loss": h.baseline_loss, "recovery_defined": h.recovery_defined},
            "candidates": self.candidates, "seconds": self.seconds,
            "candidates_per_second": self.candidates_per_second,
            "draws": self.draws, "encoding": self.encoding, "n": self.n, "seed": self.seed,
            "n_edges": self.n_edges, "graph_edges": [list(e) for e in self.graph_edges],
            "model_loss": self.model_loss, "baseline_loss": self.baseline_loss,
            "tree": self.hypothesis.to_dict(), "trace": self.trace, "versions": versions(),
        })

    def __repr__(self) -> str:
        h = self.heldout
        feats = ", ".join(f"{k}: {v}" for k, v in self.features.items()) or "none"
        unit = "edges" if self.granularity == "edges" else "node outputs"
        return (f"SearchResult({len(self.kept)} kept {unit}"
                f", features {feats}; loss recovered {100 * self.loss_recovered:.1f}% on {self.n} search "
                f"rows, {100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}%, {100 * h.ci[1]:.1f}%] on "
                f"{h.n} held-out rows; {self.candidates} candidates in {self.seconds:.1f} s)")

    def draw(self, **kwargs: Any) -> Figure:
        """The kept circuit over the graph searched, as a `report.circuit.Figure` (shown inline
        in a notebook; `.save("circuit.svg")`); `kwargs` go to `report.circuit.search_svg`.

        >>> from causal_scrubbing import search
        >>> from causal_scrubbing.experiments import toy
        >>> exp = toy.build()
        >>> fig = search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=200).draw()
        >>> fig.svg.count('class="edge kept"'), fig.svg.count('class="edge removed"')
        (4, 2)
        """
        from ..report.circuit import Figure, search_json_svg  # (a layer above: presentation)

        return Figure(search_json_svg(self.to_dict(), **kwargs) or "")

    def curve_points(self) -> dict[str, list[tuple[int, float]]]:
        """The search's trace as points (kept edges, loss recovered on the search rows):
        `"path"`, the start and every accepted step in order (each accepted removal, and each
        accepted feature claim at the final count), and `"rejected"`, every candidate the
        search scored and did not take (where it would have left the kept count). A node
        search counts node outputs. Steps without a score (the ranked search's ranking, notes)
        are left out, and so is a step that starts where the last accepted one ended."""
        path: list[tuple[int, float]] = []
        rejected: list[tuple[int, float]] = []
        for t in self.trace:
            rec, kept = t.get("loss_recovered"), t.get("kept")
            if t.get("step") not in ("start", "resample", "feature", "top-k") or kept is None \
                    or not isinstance(rec, (int, float)) or not math.isfinite(rec):
                continue
            point = (int(kept), float(rec))
            if t.get("accepted"):
                if not path or path[-1] != point:  # (a step that starts where the last ended)
                    path.append(point)
            else:
                rejected.append(point)
        return {"path": path, "rejected": rejected}

    def plot_curve(self, curve: Any = None) -> Figure:
        """Loss recovered against the number of kept edges along the search, as a
        `report.circuit.Figure` (an SVG a notebook shows inline; `.save("curve.svg")`), drawn
        by the faithfulness curve's drawing (`searching.curve.curve_svg`).

        The line is the search's path on its search rows (`curve_points()["path"]`): from
        everything kept, each accepted removal, to the kept set (and the feature claims it
        accepted there); the faint dots are the candidates it rejected, at the kept count they
        would have left; the dashed line is the threshold; the point with a bar is the
        held-out number with its 95% interval. `curve`, a `CurveResult` or its `curve.json`
        dictionary (`cs.faithfulness_curve(..., method="search")`), is drawn on the same
        axes at its sizes' edge counts, with its band.

        >>> from causal_scrubbing import search
        >>> from causal_scrubbing.experiments import toy
        >>> exp = toy.build()
        >>> found = search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=200)
        >>> found.curve_points()["path"]  # 6 edges kept at 100%, then the top 4 (C's two go)
        [(6, 1.0), (4, 1.0)]
        >>> fig = found.plot_curve()
        >>> fig.svg.count("<polyline"), "threshold 95%" in fig.svg
        (1, True)
        """
        from ..report.circuit import Figure  # (a layer above: presentation)
        from .curve import curve_series, curve_svg  # (curve imports this module)

        unit = "edges" if self.granularity == "edges" else "node outputs"
        pts = self.curve_points()
        h = self.heldout
        series: list[dict[str, Any]] = [
            {"x": [k for k, _ in pts["path"]], "y": [r for _, r in pts["path"]],
             "label": f"search rows (n = {self.n}): {len(self.kept)} kept, "
                      f"{100 * self.loss_recovered:.1f}%"},
            {"x": [k for k, _ in pts["rejected"]], "y": [r for _, r in pts["rejected"]],
             "dots": True, "faint": True, "label": "rejected candidates"},
            {"x": [len(self.kept)], "y": [h.loss_recovered], "low": [h.ci[0]], "high": [h.ci[1]],
             "dots": True, "label": f"held out (n = {h.n}): {100 * h.loss_recovered:.1f}% "
                                    f"[{100 * h.ci[0]:.1f}, {100 * h.ci[1]:.1f}]"}]
        if curve is not None:
            data = curve.to_dict() if hasattr(curve, "to_dict") else dict(curve)
            series.append({**curve_series(data, x="edges"),
                           "label": f"faithfulness curve ({data['method']}, held out): "
                                    f"CPR {data['cpr']:.3f}"})
        return Figure(curve_svg(series, log_x=False, x_label=f"kept {unit}",
                                hlines=[(self.threshold, "threshold")],
                                title=f"the search's path: loss recovered by kept {unit}"))

    def save(self, out: str | os.PathLike, experiment: str) -> tuple[FsPath, FsPath]:
        """Write `out/search.json` and `out/hypothesis.py` (an experiment file rebuilding the
        found hypothesis of `experiment`, a bundled name or a path), each atomically."""
        target = FsPath(out)
        data = self.to_dict()
        data["experiment"] = experiment
        data["reproduce"] = (f"causal-scrub run {target / HYPOTHESIS_PY} --seed {self.seed} "
                             f"--out {target / REPRODUCED}")
        json_path, py_path = target / SEARCH_JSON, target / HYPOTHESIS_PY
        atomic_write(json_path, json.dumps(data, indent=2) + "\n")
        atomic_write(py_path, hypothesis_file(experiment, self, str(py_path)))
        return json_path, py_path


_HYPOTHESIS_FILE = '''"""The hypothesis that `causal-scrub search` found in {experiment}.

Granularity {granularity}, threshold {threshold}.

{n_kept} kept {unit}; features: {features}. Loss recovered {search_pct} on the search rows,
{heldout_pct} [{ci_low}, {ci_high}] on {n} held-out rows. Reproduce the held-out number with

    causal-scrub run {this_file} --seed {seed} --out {out}

The kept edges and features are read from search.json beside this file.
"""

from __future__ import annotations

import json
from pathlib import Path

from causal_scrubbing import experiments
from causal_scrubbing.searching import hypothesis_from_json

EXPERIMENT = {experiment_repr}


def build() -> experiments.Experiment:
    found = json.loads((Path(__file__).parent / "search.json").read_text(encoding="utf-8"))
    exp = experiments.load(EXPERIMENT)
    exp.graph = exp.search_graph or exp.graph  # the graph the search walked
    exp.hypotheses = {{"found": hypothesis_from_json(exp.graph, found, exp.features)}}
    exp.published = {{"found": found["heldout"]["loss_recovered"]}}
    exp.published_label = "search (held-out)"
    exp.descriptions = {{"found": f"{{len(found['kept'])}} kept, threshold {{found['threshold']}}"}}
    exp.default_n = found["heldout"]["n"]
    return exp
'''


def hypothesis_file(experiment: str, result: SearchResult, this_file: str = HYPOTHESIS_PY) -> str:
    """The text of `hypothesis.py` for `result` (see `SearchResult.save`)."""
    h = result.heldout

    def p(x: float) -> str:
        return f"{100 * x:.1f}%"

    return _HYPOTHESIS_FILE.format(
        experiment=experiment, experiment_repr=repr(experiment), threshold=result.threshold,
        granularity=result.granularity, n_kept=len(result.kept),
        unit="edges" if result.granularity == "edges" else "node outputs",
        features=", ".join(f"{k} = {v}" for k, v in result.features.items()) or "none",
        search_pct=p(result.loss_recovered), heldout_pct=p(h.loss_recovered), ci_low=p(h.ci[0]),
        ci_high=p(h.ci[1]), n=h.n, this_file=this_file, seed=result.seed,
        out=FsPath(this_file).parent / REPRODUCED)
