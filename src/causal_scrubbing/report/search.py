"""The page a search leaves behind: `report.html` drawn from `search.json` alone.

Four parts: the circuit drawn over the model graph (`report.circuit.search_json_svg`: the kept
edges in colour, as wide as resampling each alone cost, the removed ones faint, each kept node
with its feature), loss recovered against the number of kept edges along the search (every
candidate tried, the accepted ones joined, the threshold dashed), the found hypothesis drawn as
a tree (`report.tree_svg`) with the kept list, and a table of the candidates. One
self-contained file: inline CSS and SVG, no script, every piece of text escaped (the style of
`report`).

Example:
    >>> page = render_search_html({"experiment": "<toy>", "threshold": 0.9, "kept": [],
    ...     "trace": [{"step": "start", "what": "everything kept", "loss_recovered": 1.0,
    ...                "accepted": True, "kept": 6}]})
    >>> "&lt;toy&gt;" in page, "<toy>" in page, page.count("<svg")
    (True, False, 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.results import atomic_write
from ..searching import SEARCH_JSON
from . import page_head
from .circuit import search_json_svg
from .svg import OURS, esc, finite, fmt_pct, nice_step, num, text, tree_svg

SEARCH_HTML = "report.html"


def trajectory_svg(trace: Sequence[dict[str, Any]], threshold: float | None,
                   unit: str = "kept edges") -> str:
    """Loss recovered (y) against kept edges (x) for every candidate of the edge search: filled
    dots joined by a line for the accepted steps, hollow grey dots for rejected ones."""
    points: list[tuple[dict[str, Any], float, float]] = []
    for t in trace:
        x, y = finite(t.get("kept")), finite(t.get("loss_recovered"))
        if t.get("step") in ("start", "resample") and x is not None and y is not None:
            points.append((t, x, y))
    width, height, left, right, top, bottom = 760, 320, 60, 20, 20, 44
    xs = [x for _, x, _ in points] or [0.0, 1.0]
    ys = [y for _, _, y in points] + ([threshold] if threshold is not None else []) + [0.0, 1.0]
    x_lo, x_hi = 0.0, max(max(xs), 1.0)
    y_lo, y_hi = min(ys), max(ys)
    y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 1.0)

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           'role="img" aria-label="loss recovered against kept edges along the search">',
           "<title>Loss recovered against the number of kept edges along the search</title>"]
    step = nice_step(y_hi - y_lo)
    k = int(y_lo / step) - 1
    while k * step <= y_hi + 1e-9:
        v = k * step
        if v >= y_lo - 1e-9:
            out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{num(sy(v))}" '
                       f'y2="{num(sy(v))}"/>')
            out.append(text(left - 6, sy(v) + 4, f"{100 * v:.0f}%", "tick", "end"))
        k += 1
    x_step = max(1, int(nice_step(x_hi - x_lo)))
    for v in range(0, int(x_hi) + 1, x_step):
        out.append(text(sx(v), height - bottom + 16, str(v), "tick", "middle"))
    out.append(text((left + width - right) / 2, height - 6, unit, "tick", "middle"))
    if threshold is not None:
        out.append(f'<line class="grid strong" x1="{left}" x2="{width - right}" '
                   f'y1="{num(sy(threshold))}" y2="{num(sy(threshold))}"/>')
        out.append(text(width - right, sy(threshold) - 4, f"threshold {100 * threshold:.0f}%",
                     "tick", "end"))
    accepted = [(x, y) for t, x, y in points if t.get("accepted")]
    if len(accepted) > 1:
        line = " ".join(f"{num(sx(x))},{num(sy(y))}" for x, y in accepted)
        out.append(f'<polyline points="{line}" fill="none" stroke="{OURS}" stroke-width="1.5"/>')
    for t, x, y in points:
        tip = f'<title>{esc(str(t.get("what", "")))}: {esc(fmt_pct(y))}</title>'
        if t.get("accepted"):
            out.append(f'<circle cx="{num(sx(x))}" cy="{num(sy(y))}" r="3.5" fill="{OURS}">{tip}</circle>')
        else:
            out.append(f'<circle cx="{num(sx(x))}" cy="{num(sy(y))}" r="3" fill="none" '
                       f'stroke="#a0aec0">{tip}</circle>')
    out.append("</svg>")
    return "\n".join(out)


def _candidates_table(trace: Sequence[dict[str, Any]], unit: str = "kept edges") -> str:
    rows = []
    for i, t in enumerate(trace):
        verdict = ("accepted" if t.get("accepted") else
                   ("passes" if t.get("passes") else "rejected"))
        rows.append(f"<tr><td>{i}</td><td>{esc(str(t.get('step', '')))}</td>"
                    f"<td>{esc(str(t.get('what', '')))}</td>"
                    f"<td>{esc(fmt_pct(t.get('loss_recovered')))}</td>"
                    f"<td>{esc(str(t.get('kept', '')))}</td><td>{esc(verdict)}</td></tr>")
    return ('<div class="scroll"><table><tr><th>#</th><th>step</th><th>candidate</th>'
            f"<th>loss recovered</th><th>{esc(unit)}</th><th>verdict</th></tr>"
            + "".join(rows) + "</table></div>")


def render_search_html(data: dict[str, Any]) -> str:
    """The page for a `search.json` dictionary (missing keys are shown as n/a)."""
    raw_held = data.get("heldout")
    held: dict[str, Any] = raw_held if isinstance(raw_held, dict) else {}
    threshold = finite(data.get("threshold"))
    trace = [t for t in data.get("trace") or [] if isinstance(t, dict)]
    raw_features = data.get("features")
    features: dict[str, Any] = raw_features if isinstance(raw_features, dict) else {}
    cps = finite(data.get("candidates_per_second"))
    secs = finite(data.get("seconds"))
    unit = "kept node outputs" if data.get("granularity") == "nodes" else "kept edges"
    stats = [
        ("threshold", fmt_pct(threshold)), ("granularity", str(data.get("granularity", "n/a"))),
        ("schedule", str(data.get("schedule") or (  # (older files: a ranked trace starts so)
            "ranked" if any(isinstance(t, dict) and t.get("step") == "rank"
                            for t in data.get("trace") or []) else "greedy"))),
        ("kept", f"{len(data.get('kept') or [])} of {data.get('n_edges', 'n/a')}"),
        ("search rows", f"{fmt_pct(data.get('loss_recovered'))} (n = {data.get('n', 'n/a')})"),
        ("held-out", f"{fmt_pct(held.get('loss_recovered'))} [{fmt_pct(held.get('ci_low'))}, "
                     f"{fmt_pct(held.get('ci_high'))}] (n = {held.get('n', 'n/a')})"),
        ("candidates", str(data.get("candidates", "n/a"))),
        ("seconds", "n/a" if secs is None else f"{secs:.1f}"),
        ("per second", "n/a" if cps is None else f"{cps:.1f}"),
        ("other draws", str(data.get("draws", "n/a"))),
    ]
    feats = ", ".join(f"{k} = {v}" for k, v in features.items()) or "none"
    kept_list = ", ".join(
        f"{e.get('sender')} -> {e.get('receiver')}" + (f".{e['port']}" if e.get("port") else "")
        for e in data.get("kept") or [] if isinstance(e, dict))
    sections = []
    circuit = search_json_svg(data)
    if circuit is not None:
        sections.append(("circuit", "The circuit",
                         '<p class="note">The model graph, inputs at the bottom and the output at '
                         "the top. Kept edges are coloured by the port they enter, and as wide as "
                         "the loss recovered that resampling each "
                         + ("sender node" if data.get("granularity") == "nodes" else "edge")
                         + " alone cost when the search tried it; removed edges are faint. "
                         + ("A green box names the feature the node was found to compute. "
                            if features else "")
                         + "Hover an edge or a node for its numbers.</p>\n"
                         f'<div class="scroll">{circuit}</div>'))
    sections.append(("trajectory", "Loss recovered along the search",
                     f'<p class="note">Every candidate of the {esc(str(data.get("granularity", "edge")))} '
                     "search: filled dots are accepted steps (joined), hollow ones were rejected.</p>\n"
                     + trajectory_svg(trace, threshold, unit)))
    if isinstance(data.get("tree"), dict):
        n_kept = len(data.get("kept") or [])
        sections.append(("hypothesis", "The found hypothesis",
                         f'<p class="note">Features: {esc(feats)}.</p>\n'
                         f"<details><summary>{esc(unit)} ({n_kept})</summary>"
                         f'<p class="note">{esc(kept_list or "none")}</p></details>\n'
                         f"<details><summary>as an interpretation tree</summary>"
                         f'<div class="scroll">{tree_svg(data["tree"])}</div></details>'))
    sections.append(("candidates", "Candidates tried", _candidates_table(trace, unit)))
    reproduce = data.get("reproduce")
    title = f"search: {data.get('experiment', '')}"
    return "\n".join([
        *page_head(f"causal scrubbing {title}"),
        f"<h1>{esc(title)}</h1>",
        ('<p class="lead">Reproduce the held-out number: <code>' + esc(str(reproduce))
         + "</code></p>") if reproduce else "",
        '<div class="stats">' + "".join(f'<div class="stat"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                         for k, v in stats) + "</div>",
        *(f'<section id="{key}"><h2>{esc(head)}</h2>\n{body}</section>' for key, head, body in sections),
        "</main></body></html>", ""])


def write_search_report(path: str | os.PathLike) -> Path:
    """Draw `report.html` beside `path` (a `search.json`, or the directory holding it)."""
    p = Path(path)
    json_path = p / SEARCH_JSON if p.is_dir() else p
    data = json.loads(json_path.read_text(encoding="utf-8"))
    out = json_path.parent / SEARCH_HTML
    atomic_write(out, render_search_html(data))
    return out
