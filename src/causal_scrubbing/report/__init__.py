"""Sharing a run's results: a table, `results.json`, `report.html` (rendering only; nothing is run here).

A report is what a run leaves behind for someone else to judge its hypotheses by: the numbers
(loss recovered with its bootstrap interval, beside the published one), where they come from
(per-subset tables, and the per-example loss distributions that show a cancellation the mean
hides: a hypothesis that is much worse on some inputs and better on others), and what exactly
was tested (each interpretation tree drawn as a diagram, the settings, seed and versions).

A `Run` (several `ScrubResult`s on the same reference rows; `experiments.run_experiment` makes
one for an experiment) is what is rendered. `format_table` prints ours beside the published
numbers. `write_results` writes, atomically, `results.json` (top level `experiment`,
`description`, `model_loss`, `baseline_loss`, `n`, `seed`, `versions`, `settings`,
`published_label` and `experiments`: one object per hypothesis with `name`, `scrubbed_loss`,
`loss_recovered`, `ci_low`, `ci_high`, `recovery_defined` (false when baseline and model losses
coincide, so the percentage is undefined and shown as such), `n`, `seed`, `published`,
per-subset numbers, histograms of the scrubbed, model and baseline per-example losses on shared
log-spaced bins, the hypothesis as text and as a `tree` of `{name, sampler, paths, other,
children}`; recovered values are fractions, 1.0 = 100%; `audit` when the run was
audited, see `audit`; and, when the experiment gives them, `extra` numbers such as an SAE's
reconstruction) and `report.html`. `render_html` draws
the page from that JSON dictionary alone, so `causal-scrub report DIR` (`rebuild_report`) can
redraw it from `DIR/results.json`. The page is one self-contained file: inline CSS and SVG
drawn here, no script, nothing fetched, and every piece of text in it escaped.

Example:
    >>> from causal_scrubbing import experiments
    >>> data = results_dict(experiments.run_experiment(experiments.load("toy"), n=200))
    >>> tree = data["experiments"][0]["tree"]
    >>> [(node["name"], node["sampler"], node["paths"]) for node in tree["children"]]
    [('A', "SameFeature('a')", "through('A')"), ('B', "SameFeature('b')", "through('B')")]
    >>> page = render_html(data)
    >>> page.count("<svg")  # the recovered chart, then per hypothesis a histogram, its claims
    16
    >>> # drawn over the model graph (`report.circuit.claims_svg`) and its tree
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ScrubError
from ..core.results import UNDEFINED_RECOVERY, Run, ScrubResult, atomic_write, jsonable, pct, versions
from ..core.statistics import small_gap
from .audit import audit_html
from .circuit import claims_svg
from .svg import (
    count_nodes,
    esc,
    fmt_loss,
    fmt_pct,
    fmt_recovered,
    histogram_svg,
    histograms_of,
    recovered_chart_svg,
    tree_svg,
    undefined,
)

RESULTS_JSON = "results.json"
REPORT_HTML = "report.html"
LOSS_KINDS = ("scrubbed", "model", "baseline")  # the per-example losses every result keeps


def loss_histogram(losses: torch.Tensor, bins: int = 20, top: float | None = None) -> dict[str, list[float]]:
    """Counts of per-example losses in `bins` log-spaced bins from 1e-4 (so cancellation shows).

    The bins end at `top` (default: the largest loss); losses below 1e-4 count in the first.

    >>> h = loss_histogram(torch.tensor([1e-6, 0.02, 0.5]), bins=4, top=1.0)
    >>> h["counts"], [round(e, 4) for e in h["edges"]]
    ([1.0, 0.0, 1.0, 1.0], [0.0001, 0.001, 0.01, 0.1, 1.0])
    """
    x = losses.double().clamp_min(1e-4)
    hi = max(float(x.max()) if top is None else top, 1e-3)
    edges = torch.logspace(-4, math.log10(hi) + 1e-9, bins + 1, dtype=torch.float64)
    counts = torch.histc(x.log10(), bins=bins, min=-4, max=math.log10(hi) + 1e-9)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def results_dict(run: Run) -> dict[str, Any]:
    """Everything `results.json` holds about a run (the keys are listed in the module docstring)."""
    exp = run
    first = run.first
    top = max(float(r.per_example[kind].max()) for r in run.results.values() for kind in LOSS_KINDS)
    return {
        "experiment": exp.name,
        "description": exp.description,
        "model_loss": run.model_loss,
        "baseline_loss": run.baseline_loss,
        "n": first.n,
        "seed": run.seed,
        "versions": versions(),
        "settings": {k: v for k, v in first.settings.items()
                     if k not in ("hypothesis", "tree", "versions")},
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
                "recovery_defined": r.recovery_defined,
                "loss_se": r.loss_se,
                "n": r.n,
                "seed": r.seed,
                "published": exp.published.get(key),
                "subsets": r.subsets,
                "loss_histogram": loss_histogram(r.per_example["scrubbed"], top=top),
                "model_loss_histogram": loss_histogram(r.per_example["model"], top=top),
                "baseline_loss_histogram": loss_histogram(r.per_example["baseline"], top=top),
                "hypothesis": r.settings.get("hypothesis", ""),
                "tree": r.settings.get("tree") or {"name": key, "sampler": "", "paths": "",
                                                   "other": "", "children": []},
                **({"circuit": run.circuits[key]} if key in run.circuits else {}),
            }
            for key, r in run.results.items()
        ],
        **({"audit": run.audit} if run.audit is not None else {}),
        **({"extra": run.extra} if run.extra else {}),
    }


def format_table(run: Run) -> str:
    """The results as a plain-text table, published numbers beside ours."""
    exp = run
    head = ["experiment", "scrubbed loss", "recovered", "95% CI", "n", exp.published_label]
    rows = []
    notes = []
    for key, r in run.results.items():
        pub = exp.published.get(key)
        label = key + (f"  {exp.descriptions[key]}" if key in exp.descriptions else "")
        recovered, ci = ((pct(r.loss_recovered), f"[{pct(r.ci[0])}, {pct(r.ci[1])}]")
                         if r.recovery_defined else ("undefined", "-"))
        rows.append([label, f"{r.loss:.4f}", recovered, ci, str(r.n),
                     "-" if pub is None else pct(pub)])
    if any(not r.recovery_defined for r in run.results.values()):
        notes.append(f"undefined: {UNDEFINED_RECOVERY} (baseline {run.baseline_loss:.4f}, "
                     f"model {run.model_loss:.4f}); use a baseline clearly worse than the model.")
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    gap = run.baseline_loss - run.model_loss
    lines = [f"{exp.name}: {exp.description}",
             f"model loss {run.model_loss:.4f}, baseline loss {run.baseline_loss:.4f}, "
             f"explained gap {gap:.4f} (one point of loss recovered = {gap / 100:.2g}), "
             f"seed {run.seed}", fmt(head), fmt(["-" * w for w in widths])]
    if small_gap(run.baseline_loss, run.model_loss) and run.first.recovery_defined:
        notes.append(f"small gap: the model does only {gap:.4g} better than the baseline "
                     f"({abs(gap) / max(abs(run.baseline_loss), 1e-12):.0%} of the baseline "
                     "loss), so each percentage point is a small amount of loss; read the "
                     "percentages with that in mind.")
    lines += [fmt(r) for r in rows]
    lines += notes
    subset_names = list(next(iter(run.results.values())).subsets)
    if subset_names:
        first = max(len(k) for k in run.results)
        cols = [max(len(s), 7) for s in subset_names]
        lines += ["", "loss recovered by subset (n: " + ", ".join(
            f"{s} {st['n']}" for s, st in next(iter(run.results.values())).subsets.items()) + ")",
            "  ".join([" " * first] + [s.rjust(w) for s, w in zip(subset_names, cols)])]
        for key, r in run.results.items():
            cells = [_subset_pct(r.subsets[s]).rjust(w) for s, w in zip(subset_names, cols)]
            lines.append("  ".join([key.ljust(first)] + cells))
        if any(_subset_pct(st) == "undefined" for r in run.results.values()
               for st in r.subsets.values()):
            lines.append(f"undefined: in that subset, {UNDEFINED_RECOVERY}.")
    return "\n".join(lines)


def _subset_pct(stats: Mapping[str, Any]) -> str:
    """A subset's loss recovered, or "undefined" where its baseline and model losses coincide."""
    if stats.get("recovery_defined") is False and stats.get("n"):
        return "undefined"
    return pct(stats["loss_recovered"])


# ---- the page -----------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
  margin: 0; color: #1a202c; background: #f7f8fa; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5em 2em 3em; background: white;
  box-shadow: 0 0 0 1px #e2e8f0; min-height: 100vh; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.2em; margin: 1.8em 0 0.6em; padding-bottom: 0.2em; border-bottom: 2px solid #e2e8f0; }
h3 { font-size: 1em; margin: 1em 0 0.4em; }
.lead { color: #4a5568; margin: 0 0 1em; }
nav a { margin-right: 1.2em; color: #2b6cb0; text-decoration: none; font-size: 0.92em; }
.stats { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.stat { border: 1px solid #e2e8f0; border-radius: 6px; padding: 0.4em 0.9em; min-width: 7em; }
.stat b { display: block; font-size: 1.15em; font-variant-numeric: tabular-nums; }
.stat span { color: #718096; font-size: 0.82em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-variant-numeric: tabular-nums; }
td, th { border-bottom: 1px solid #e2e8f0; padding: 0.3em 0.8em; text-align: right; vertical-align: top; }
th { font-weight: 600; color: #4a5568; font-size: 0.88em; background: #f7fafc; }
td:first-child, th:first-child { text-align: left; }
td small { color: #718096; }
td.reference { font-style: italic; color: #4a5568; }
.scroll { overflow-x: auto; }
.note { color: #718096; font-size: 0.88em; margin: 0.3em 0; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: #2d3748; }
.chart .label { font-size: 13px; font-weight: 600; }
.chart .value { font-size: 12.5px; font-variant-numeric: tabular-nums; }
.chart .legend, .tick { font-size: 11.5px; fill: #4a5568; }
.grid { stroke: #e2e8f0; stroke-width: 1; }
.grid.strong { stroke: #a0aec0; stroke-dasharray: 4 3; }
.stripe { fill: #f7fafc; }
.axis { stroke: #a0aec0; }
.hists { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 0.8em 1.2em; }
.hists figure { margin: 0; }
.hists figcaption { font-size: 0.9em; }
.hist .bar { fill: #2b6cb0; fill-opacity: 0.55; }
.hist .outline { fill: none; stroke-width: 1.6; }
.hist .model { stroke: #2f855a; }
.hist .baseline { stroke: #718096; stroke-dasharray: 3 2; }
.key { display: inline-block; width: 1.6em; height: 0.7em; margin: 0 0.3em 0 1em; vertical-align: middle; }
.key.scrubbed { background: rgba(43, 108, 176, 0.55); }
.key.model { border-top: 2px solid #2f855a; height: 0; }
.key.baseline { border-top: 2px dashed #718096; height: 0; }
.tree text { font: 12px ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre; }
.tree .node rect { fill: #f7fafc; stroke: #a0aec0; }
.tree .root rect { fill: #ebf4ff; stroke: #7f9cf5; }
.tree .leaf rect { fill: #f0fff4; stroke: #9ae6b4; }
.tree .name { font-weight: bold; fill: #1a202c; }
.tree .sampler { fill: #2b6cb0; }
.tree .paths { fill: #4a5568; }
.tree .other { fill: #718096; font-style: italic; }
.tree .edge { fill: none; stroke: #718096; stroke-width: 1.3; }
.tree .arrow { fill: #718096; }
details { margin: 0.5em 0; }
summary { cursor: pointer; padding: 0.25em 0; }
pre { background: #f7fafc; padding: 0.6em; overflow-x: auto; }
.settings td { text-align: left; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
  font-size: 0.88em; }
footer { margin-top: 3em; color: #a0aec0; font-size: 0.85em; }
"""


def page_head(title: str) -> list[str]:
    """The opening lines of a self-contained report page, up to `<main>`: the style inline,
    a content policy that allows no script and no fetch, and `title` (escaped)."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
    ]


def render_html(data: dict[str, Any]) -> str:
    """A self-contained HTML page for a `results.json` dictionary (all text escaped, no script).

    Sections: results (table and loss-recovered chart), subsets, per-example loss histograms,
    the hypotheses drawn as trees, and the run's settings. Keys a dictionary lacks are skipped
    or shown as n/a, so results written by older versions still render.

    >>> page = render_html({"experiment": "<demo>", "experiments": [{"name": "h", "loss_recovered": 0.5}]})
    >>> "&lt;demo&gt;" in page, "<demo>" in page, page.count("<svg")
    (True, False, 1)
    """
    experiments = data["experiments"]
    label = str(data.get("published_label", "published"))
    raw_settings = data.get("settings")
    settings: dict[str, Any] = raw_settings if isinstance(raw_settings, dict) else {}
    stats = [("model loss", fmt_loss(data.get("model_loss"))),
             ("baseline loss", fmt_loss(data.get("baseline_loss"))),
             ("reference rows", str(data.get("n", "n/a"))), ("seed", str(data.get("seed", "n/a"))),
             ("device", str(settings.get("device", "n/a"))), ("hypotheses", str(len(experiments)))]
    sections = [
        ("results", "Results", _results_section(experiments, label)),
        ("subsets", "Subsets", _subsets_section(experiments)),
        ("distributions", "Per-example losses", _distributions_section(experiments)),
        ("audit", "Audit", _audit_section(data.get("audit"))),
        ("hypotheses", "Hypotheses", _hypotheses_section(experiments)),
        ("settings", "Settings", _settings_section(data, settings)),
    ]
    sections = [s for s in sections if s[2]]
    version = (data.get("versions") or {}).get("causal_scrubbing", "") if isinstance(
        data.get("versions"), dict) else ""
    return "\n".join([
        *page_head(f"causal scrubbing: {data.get('experiment', '')}"),
        f"<h1>{esc(str(data.get('experiment', '')))}</h1>",
        f"<p class=\"lead\">{esc(str(data.get('description', '') or ''))}</p>",
        "<nav>" + "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections) + "</nav>",
        '<div class="stats">' + "".join(f'<div class="stat"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                         for k, v in stats) + "</div>",
        *(f'<section id="{key}"><h2>{esc(title)}</h2>\n{body}</section>' for key, title, body in sections),
        f"<footer>written by causal-scrubbing {esc(str(version))}</footer>",
        "</main></body></html>", ""])


def _audit_section(audit: Any) -> str:
    return audit_html(audit)


def _results_section(experiments: list[dict[str, Any]], label: str) -> str:
    rows = []
    for x in experiments:
        name, desc = str(x.get("name", "")), str(x.get("description", "") or "")
        rows.append(
            f"<tr><td><b>{esc(name)}</b><br><small>{esc(desc)}</small></td>"
            f"<td>{fmt_loss(x.get('scrubbed_loss'))}</td><td>{fmt_recovered(x)}</td><td>"
            + ("&ndash;" if undefined(x) else f"[{fmt_pct(x.get('ci_low'))}, {fmt_pct(x.get('ci_high'))}]")
            + "</td>"
            f"<td>{esc(str(x.get('n', 'n/a')))}</td><td>{fmt_pct(x.get('published'))}</td></tr>")
    return (
        '<p class="note">loss recovered = (baseline loss &minus; scrubbed loss) / (baseline loss &minus; '
        "model loss): 100% means the hypothesis explains all of the model&#x27;s performance, 0% none."
        "</p>\n" + (f'<p class="note"><b>undefined</b>: {esc(UNDEFINED_RECOVERY)}; the percentage '
                     "and its interval mean nothing. Use a baseline clearly worse than the model.</p>\n"
                     if any(undefined(x) for x in experiments) else "")
        + f'<div class="scroll">{recovered_chart_svg(experiments, label)}</div>\n'
        '<table><tr><th>hypothesis</th><th>scrubbed loss</th><th>recovered</th><th>95% CI</th>'
        f"<th>n</th><th>{esc(label)}</th></tr>" + "".join(rows) + "</table>")


def _subsets_section(experiments: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(s for x in experiments for s in (x.get("subsets") or {})))
    if not names:
        return ""
    first: dict[str, Any] = next((x["subsets"] for x in experiments if x.get("subsets")), {})
    head = "".join(f"<th>{esc(s)}<br><small>n = {esc(str(first.get(s, {}).get('n', 'n/a')))}</small></th>"
                   for s in names)
    get = lambda x, s, key: (x.get("subsets") or {}).get(s, {}).get(key)  # noqa: E731

    def row(first_cell: str, x: dict[str, Any], key: str, fmt: Any) -> str:
        return f"<tr>{first_cell}" + "".join(f"<td>{fmt(get(x, s, key))}</td>" for s in names) + "</tr>"

    name_cell = lambda x: f"<td><b>{esc(str(x.get('name', '')))}</b></td>"  # noqa: E731
    recovered = "".join(
        f"<tr>{name_cell(x)}" + "".join(
            f"<td>{fmt_recovered((x.get('subsets') or {}).get(s, {}))}</td>" for s in names) + "</tr>"
        for x in experiments)
    losses = "".join([row('<td class="reference">model</td>', experiments[0], "model_loss", fmt_loss),
                      row('<td class="reference">baseline</td>', experiments[0], "baseline_loss", fmt_loss)]
                     + [row(name_cell(x), x, "scrubbed_loss", fmt_loss) for x in experiments])
    return ('<p class="note">The reference rows split into subsets; each is scored on its own. A '
            "hypothesis that recovers well overall but poorly on one subset fails there.</p>\n"
            f'<h3>Loss recovered by subset</h3><div class="scroll"><table><tr><th>hypothesis</th>{head}</tr>'
            f"{recovered}</table></div>\n"
            f'<h3>Mean loss by subset</h3><div class="scroll"><table><tr><th></th>{head}</tr>'
            f"{losses}</table></div>")


def _distributions_section(experiments: list[dict[str, Any]]) -> str:
    figures = []
    for x in experiments:
        hists = histograms_of(x)
        if not hists:
            continue
        name = str(x.get("name", ""))
        caption = f"<b>{esc(name)}</b> &middot; recovered {fmt_recovered(x)}"
        figures.append(f"<figure><figcaption>{caption}</figcaption>{histogram_svg(hists, name)}</figure>")
    if not figures:
        return ""
    return ('<p class="note">How each hypothesis&#x27; per-example losses spread, as fractions of the '
            "reference rows: a mean close to the model&#x27;s can hide a split into much better and "
            "much worse rows (cancellation).</p>\n"
            '<p class="note"><span class="key scrubbed"></span>scrubbed<span class="key model"></span>'
            'model (nothing scrubbed)<span class="key baseline"></span>baseline</p>\n'
            f'<div class="hists">{"".join(figures)}</div>')


def _hypotheses_section(experiments: list[dict[str, Any]]) -> str:
    parts = ['<p class="note">Each box is an interpretation node: its name and sampler, the paths it '
             "claims and, if it has children, how the inputs that no child claims are drawn.</p>"]
    for x in experiments:
        name, desc = str(x.get("name", "")), str(x.get("description", "") or "")
        tree = x.get("tree")
        if isinstance(tree, dict):
            count = count_nodes(tree)
            body, what = f'<div class="scroll">{tree_svg(tree)}</div>', f"{count} node{'s' * (count != 1)}"
            is_open = " open" if count <= 12 else ""
        else:
            body, what, is_open = f"<pre>{esc(str(x.get('hypothesis', '')))}</pre>", "as text", " open"
        circuit = claims_svg(x["circuit"], title=f"{name} over the graph") if isinstance(
            x.get("circuit"), dict) else None
        if circuit is not None:  # the claims over the model graph, then the tree
            body = (f'<p class="note">Over the model graph: each edge in the colour of the node '
                    "that claims the paths through it, faint where they read an other-inputs "
                    f'draw.</p><div class="scroll">{circuit}</div>{body}')
        parts.append(f"<details{is_open}><summary><b>{esc(name)}</b> {esc(desc)} "
                     f"<small>({esc(what)})</small></summary>{body}</details>")
    return "\n".join(parts)


def _settings_section(data: dict[str, Any], settings: dict[str, Any]) -> str:
    rows = [("experiment", data.get("experiment")), ("seed", data.get("seed")),
            ("reference rows (n)", data.get("n"))]
    rows += [(str(k), v) for k, v in settings.items() if k not in ("n", "seed")]
    versions_ = data.get("versions")
    if isinstance(versions_, dict):
        rows += [(f"version of {k}", v) for k, v in versions_.items()]
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_setting_text(v))}</td></tr>" for k, v in rows)
    return f'<table class="settings">{cells}</table>'


def _setting_text(v: Any) -> str:
    if v is None:
        return "default"
    return v if isinstance(v, str) else json.dumps(v)


# ---- files -------------------------------------------------------------------------------------

def write_results(run: Run | Mapping[str, ScrubResult] | ScrubResult, out: str | os.PathLike,
                  name: str = "results") -> tuple[Path, Path]:
    """Write `out/results.json` and `out/report.html`; return their paths.

    `run` is a `Run`, or results straight from `cs.scrub` / `cs.scrub_many` (then `name`
    titles the report).

    >>> import tempfile, torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.randn(50)})
    >>> r = cs.scrub(g, cs.InterpNode("all"), ds, lambda out, ref: (out - ref["x"]) ** 2)
    >>> json_path, html_path = write_results(r, tempfile.mkdtemp(), name="my check")
    >>> html_path.name, "my check" in html_path.read_text()
    ('report.html', True)
    """
    if isinstance(run, ScrubResult):
        run = Run(name, {run.name: run}, run.seed)
    elif not isinstance(run, Run):
        run = Run(name, dict(run), next(iter(run.values())).seed if run else 0)
    out = Path(out)
    data = jsonable(results_dict(run))
    json_path, html_path = out / RESULTS_JSON, out / REPORT_HTML
    atomic_write(json_path, json.dumps(data, indent=2))
    atomic_write(html_path, render_html(data))
    return json_path, html_path


def rebuild_report(directory: str | os.PathLike) -> Path:
    """Redraw `directory/report.html` from `directory/results.json` (nothing is recomputed).

    Raises `ScrubError` when the file is missing, is not JSON, or is not a run's results.

    >>> rebuild_report("no/such/run")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    causal_scrubbing.core.errors.ScrubError: no/such/run/results.json does not exist. ...
    """
    path = Path(directory) / RESULTS_JSON
    hint = "`causal-scrub run NAME --out DIR` writes it"
    if not path.is_file():
        raise ScrubError(f"{path} does not exist. `causal-scrub report DIR` redraws the report of a "
                         f"finished run from its results.json; {hint}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScrubError(f"{path} is not valid JSON ({err}); {hint} again.") from None
    experiments = data.get("experiments") if isinstance(data, dict) else None
    if (not isinstance(experiments, list) or not experiments
            or not all(isinstance(x, dict) and "name" in x for x in experiments)):
        raise ScrubError(f"{path} is JSON but not the results of a run: it needs a non-empty list "
                         f"'experiments' of objects with a 'name'; {hint}.")
    html_path = path.with_name(REPORT_HTML)
    atomic_write(html_path, render_html(data))
    return html_path
