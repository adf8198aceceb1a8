"""Running a bundled experiment and sharing its results: a table, `results.json`, `report.html`.

`run_experiment` scrubs every hypothesis of an `Experiment` on the same reference rows.
`format_table` prints ours beside the published numbers; `write_results` writes the JSON
(top level `model_loss`, `baseline_loss`, `experiments`: one object per hypothesis with
`name`, `scrubbed_loss`, `loss_recovered`, `ci_low`, `ci_high`, `n`, `seed`, per-subset
numbers and a histogram of per-example losses; recovered values are fractions, 1.0 = 100%)
and a self-contained HTML report, both atomically. All text in the report is escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .experiments import Experiment
from .metrics import ScrubResult, _jsonable, _pct, scrub_many, versions


@dataclass
class Run:
    """The results of one `causal-scrub run`: an experiment, its settings and its results."""

    experiment: Experiment
    results: dict[str, ScrubResult]
    n: int | None
    seed: int

    @property
    def model_loss(self) -> float:
        return next(iter(self.results.values())).model_loss

    @property
    def baseline_loss(self) -> float:
        return next(iter(self.results.values())).baseline_loss


def run_experiment(exp: Experiment, n: int | None = None, seed: int = 0, progress: bool = False,
                   device: str | None = None) -> Run:
    """Scrub every hypothesis of `exp` on `n` reference rows (default: the experiment's)."""
    n = n if n is not None else exp.default_n
    results = scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=n, seed=seed,
                         baseline=exp.baseline, subsets=exp.subsets, progress=progress,
                         device=device)
    return Run(exp, results, n, seed)


def loss_histogram(losses: torch.Tensor, bins: int = 20) -> dict[str, list[float]]:
    """Counts of per-example losses in `bins` log-spaced bins from 1e-4 (so cancellation shows)."""
    x = losses.double().clamp_min(1e-4)
    hi = max(float(x.max()), 1e-3)
    edges = torch.logspace(-4, math.log10(hi) + 1e-9, bins + 1, dtype=torch.float64)
    counts = torch.histc(x.log10(), bins=bins, min=-4, max=math.log10(hi) + 1e-9)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def results_dict(run: Run) -> dict[str, Any]:
    exp = run.experiment
    return {
        "experiment": exp.name,
        "description": exp.description,
        "model_loss": run.model_loss,
        "baseline_loss": run.baseline_loss,
        "n": next(iter(run.results.values())).n,
        "seed": run.seed,
        "versions": versions(),
        "published_label": exp.published_label,
        "experiments": [
            {
                "name": key,
                "description": exp.descriptions.get(key, ""),
                "scrubbed_loss": r.loss,
                "loss_recovered": r.loss_recovered,
                "ci_low": r.ci[0],
                "ci_high": r.ci[1],
                "recovered_se": r.recovered_se,
                "loss_se": r.loss_se,
                "n": r.n,
                "seed": r.seed,
                "published": exp.published.get(key),
                "subsets": r.subsets,
                "loss_histogram": loss_histogram(r.per_example["scrubbed"]),
                "hypothesis": r.settings.get("hypothesis", ""),
            }
            for key, r in run.results.items()
        ],
    }


def format_table(run: Run) -> str:
    """The results as a plain-text table, published numbers beside ours."""
    exp = run.experiment
    head = ["experiment", "scrubbed loss", "recovered", "95% CI", "n", exp.published_label]
    rows = []
    for key, r in run.results.items():
        pub = exp.published.get(key)
        label = key + (f"  {exp.descriptions[key]}" if key in exp.descriptions else "")
        rows.append([label, f"{r.loss:.4f}", _pct(r.loss_recovered),
                     f"[{_pct(r.ci[0])}, {_pct(r.ci[1])}]", str(r.n),
                     "-" if pub is None else _pct(pub)])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [f"{exp.name}: {exp.description}",
             f"model loss {run.model_loss:.4f}, baseline loss {run.baseline_loss:.4f}, "
             f"seed {run.seed}", fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    subset_names = list(next(iter(run.results.values())).subsets)
    if subset_names:
        first = max(len(k) for k in run.results)
        cols = [max(len(s), 7) for s in subset_names]
        lines += ["", "loss recovered by subset (n: " + ", ".join(
            f"{s} {st['n']}" for s, st in next(iter(run.results.values())).subsets.items()) + ")",
            "  ".join([" " * first] + [s.rjust(w) for s, w in zip(subset_names, cols)])]
        for key, r in run.results.items():
            cells = [_pct(r.subsets[s]["loss_recovered"]).rjust(w) for s, w in zip(subset_names, cols)]
            lines.append("  ".join([key.ljust(first)] + cells))
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def render_html(data: dict[str, Any]) -> str:
    """A self-contained HTML page for a `results.json` dictionary (all text escaped)."""
    e = lambda x: html.escape(str(x))  # noqa: E731
    pct = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else _pct(x)  # noqa: E731
    rows = []
    for x in data["experiments"]:
        lo, hi = x["ci_low"], x["ci_high"]
        width = 0 if x["loss_recovered"] is None else max(0.0, min(1.0, x["loss_recovered"]))
        rows.append(
            f"<tr><td><b>{e(x['name'])}</b><br><small>{e(x['description'])}</small></td>"
            f"<td>{x['scrubbed_loss']:.4f}</td><td>{pct(x['loss_recovered'])}</td>"
            f"<td>[{pct(lo)}, {pct(hi)}]</td><td>{x['n']}</td><td>{pct(x['published'])}</td>"
            f"<td><div class='bar'><div style='width:{100 * width:.1f}%'></div></div></td></tr>"
        )
    subset_rows = []
    for x in data["experiments"]:
        for sname, st in x["subsets"].items():
            subset_rows.append(
                f"<tr><td>{e(x['name'])}</td><td>{e(sname)}</td><td>{st['n']}</td>"
                f"<td>{_num(st['scrubbed_loss'])}</td><td>{_num(st['model_loss'])}</td>"
                f"<td>{pct(st['loss_recovered'])}</td></tr>")
    trees = "".join(f"<h3>{e(x['name'])}</h3><pre>{e(x['hypothesis'])}</pre>"
                    for x in data["experiments"])
    subsets = ("<h2>Subsets</h2><table><tr><th>experiment</th><th>subset</th><th>n</th>"
               "<th>scrubbed loss</th><th>model loss</th><th>recovered</th></tr>"
               + "".join(subset_rows) + "</table>") if subset_rows else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>causal scrubbing: {e(data['experiment'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.bar {{ width: 10em; height: 0.8em; background: #eee; }}
.bar div {{ height: 100%; background: #4a7; }}
pre {{ background: #f6f6f6; padding: 0.6em; }}
</style></head><body>
<h1>{e(data['experiment'])}</h1>
<p>{e(data['description'])}</p>
<p>model loss {data['model_loss']:.4f}; baseline loss {data['baseline_loss']:.4f};
n = {data['n']}; seed {data['seed']}; versions {e(json.dumps(data['versions']))}</p>
<h2>Results</h2>
<table><tr><th>experiment</th><th>scrubbed loss</th><th>recovered</th><th>95% CI</th><th>n</th>
<th>{e(data['published_label'])}</th><th></th></tr>{''.join(rows)}</table>
{subsets}
<h2>Hypotheses</h2>{trees}
</body></html>
"""


def _num(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def write_results(run: Run, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write `out/results.json` and `out/report.html`; return their paths."""
    out = Path(out)
    data = _jsonable(results_dict(run))
    json_path, html_path = out / "results.json", out / "report.html"
    _atomic_write(json_path, json.dumps(data, indent=2))
    _atomic_write(html_path, render_html(data))
    return json_path, html_path
