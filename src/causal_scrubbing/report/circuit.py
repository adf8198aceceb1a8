"""Circuits, drawn: the model graph laid out by layer, with what a search kept or a hypothesis claims.

The model graph is drawn as rows of boxes, one row per depth: the inputs at the bottom, the
output at the top, and every other node in the row of its longest path up from an input, so a
transformer's embeddings, each layer's heads, its MLP and the unembedding get rows of their
own (a row too wide for the page wraps onto several lines). An edge (sender, receiver, port)
is a curve from the top of the sender's box to its port on the bottom of the receiver's box;
ports are spread along the bottom of the box in their order and named there (q, k, v).

Two views share the drawing. `search_svg` draws what a search found (`SearchResult.draw()`
and the search's `report.html`, from `search.json`): the kept edges in their port's colour,
each as wide as the loss recovered that resampling it alone would have cost when the search
tried it (from the search's trace), the removed edges faint, and on each kept node the feature
the search found it to compute. `hypothesis_svg` draws a hypothesis over its graph (a run's
`report.html`, from the `claims_dict` data `results.json` keeps): each edge in the colour of
the interpretation node that claims the paths through it, each claim named with its sampler
at the node where it begins, and faint the edges whose paths no node claims (they read the
other inputs). `result_svg` (`ScrubResult.plot()`) is the report's chart of one scrub.

The SVG is written here (no plotting library) with its styles inline, so it looks the same in
a report page and in a notebook; every label is escaped. `Figure` wraps it so that a notebook
shows it inline.

Example:
    >>> edges = [("x", "A", "in"), ("x", "B", "in"), ("A", "out", "resid"),
    ...          ("B", "out", "resid"), ("x", "out", "resid")]
    >>> node_depths(edges)
    {'x': 0, 'A': 1, 'B': 1, 'out': 2}
    >>> fig = search_figure(edges, kept=edges[:4], features={"A": "a"})
    >>> fig.svg.count('class="edge kept"'), fig.svg.count('class="edge removed"'), "= a" in fig.svg
    (4, 1, True)
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.graph import Graph
from ..core.hypothesis import InterpNode, Site, check
from ..core.names import parse_head
from ..searching.edges import graph_edges

if TYPE_CHECKING:
    from ..core.results import ScrubResult

Triple = tuple[str, str, str]
"""(sender, receiver, port)."""

#: Colours of the ports of an attention head; every other port (`in`, `resid`, ...) is `OTHER_PORT`.
PORT_COLOURS = {"q": "#d53f8c", "k": "#dd6b20", "v": "#2b6cb0", "mask": "#718096"}
OTHER_PORT = "#6b46c1"
#: Colours for interpretation nodes, in order.
PALETTE = ("#2f855a", "#6b46c1", "#c53030", "#2c7a7b", "#b7791f", "#2b6cb0", "#b83280",
           "#4c51bf", "#dd6b20", "#285e61", "#744210", "#97266d")
FAINT = "#cbd5e0"
FONT = "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace"
LABEL_PX, NOTE_PX, SMALL_PX = 11.0, 10.0, 8.5
CHAR = 0.61  # width of a monospace character, in ems
MAX_NOTE_CHARS = 26


def _esc(s: object) -> str:
    return html.escape(str(s))


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key that puts `a0.h2` before `a0.h10`."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


class Figure:
    """An SVG drawing that a notebook shows inline (`_repr_svg_`); `save` writes it to a file.

    >>> Figure('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    Figure(svg, 10 x 10 px)
    """

    def __init__(self, svg: str):
        self.svg = svg

    def _repr_svg_(self) -> str:
        return self.svg

    def save(self, path: str | Path) -> Path:
        """Write the SVG text to `path` (e.g. `circuit.svg`)."""
        p = Path(path)
        p.write_text(self.svg, encoding="utf-8")
        return p

    def __str__(self) -> str:
        return self.svg

    def __repr__(self) -> str:
        m = re.search(r'width="([\d.]+)" height="([\d.]+)"', self.svg)
        size = f", {m.group(1)} x {m.group(2)} px" if m else ""
        return f"Figure(svg{size})"


# ---- layout -----------------------------------------------------------------------------------

def node_depths(edges: Iterable[Triple]) -> dict[str, int]:
    """Each node's row: the length of the longest path up to it from a node nothing feeds
    (an input), so every edge goes up at least one row. Nodes come in their first appearance."""
    ups: dict[str, set[str]] = {}
    for s, r, _ in edges:
        ups.setdefault(s, set())
        ups.setdefault(r, set()).add(s)
    depth: dict[str, int] = {}

    def visit(v: str) -> int:
        if v not in depth:
            depth[v] = -1  # (a cycle would read -1 here; graphs are DAGs)
            depth[v] = max((visit(u) + 1 for u in ups[v]), default=0)
        return depth[v]

    for v in ups:
        visit(v)
    return {v: depth[v] for v in ups}


@dataclass
class Box:
    """A node's box: top-left corner, size, and its ports' x along the bottom edge."""

    x: float
    y: float
    w: float
    h: float
    ports: dict[str, float] = field(default_factory=dict)

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass
class Layout:
    """Where each node's box lies, and the size of the drawing."""

    boxes: dict[str, Box]
    width: float
    height: float


def layout(edges: Sequence[Triple], notes: Mapping[str, str] | None = None, *,
           max_width: float = 1100, min_width: float = 760, top: float = 0.0) -> Layout:
    """Rows of boxes by `node_depths`, the deepest (the output) at the top; each box as wide as
    its name (or its note, a second line) and spread evenly across the drawing (at least
    `min_width` wide); a row wider than `max_width` wraps onto more lines.

    >>> lay = layout([("x", "A", "in"), ("A", "out", "resid")])
    >>> [round(lay.boxes[v].y) for v in ("out", "A", "x")]  # the output at the top
    [10, 88, 166]
    """
    notes = notes or {}
    depth = node_depths(edges)
    ports: dict[str, list[str]] = {}
    for _, r, p in edges:
        if p not in ports.setdefault(r, []):
            ports[r].append(p)
    rows: dict[int, list[str]] = {}
    for v in sorted(depth, key=_natural):
        rows.setdefault(depth[v], []).append(v)
    gap_x, margin, row_gap, line_gap = 24.0, 10.0, 56.0, 34.0
    sizes: dict[str, tuple[float, float]] = {}
    for v in depth:
        note = notes.get(v, "")
        w = max(len(v) * LABEL_PX * CHAR, len(note) * NOTE_PX * CHAR) + 12
        w = max(w, sum(max(len(p) * SMALL_PX * CHAR + 10, 20.0) for p in ports.get(v, [])) + 8)
        sizes[v] = (w, 34.0 if note else 22.0)
    # each row as lines that fit max_width
    lines_of: dict[int, list[list[str]]] = {}
    for d, members in rows.items():
        lines: list[list[str]] = [[]]
        used = 0.0
        for v in members:
            w = sizes[v][0]
            if lines[-1] and used + gap_x + w > max_width - 2 * margin:
                lines.append([])
                used = 0.0
            used += (gap_x if lines[-1] else 0.0) + w
            lines[-1].append(v)
        lines_of[d] = lines
    line_widths = [sum(sizes[v][0] for v in line) + gap_x * (len(line) - 1)
                   for lines in lines_of.values() for line in lines]
    width = max([*line_widths, min_width - 2 * margin]) + 2 * margin
    boxes: dict[str, Box] = {}
    y = top + margin
    for d in sorted(lines_of, reverse=True):
        for i, line in enumerate(lines_of[d]):
            if i:
                y += line_gap
            line_h = max(sizes[v][1] for v in line)
            free = width - 2 * margin - sum(sizes[v][0] for v in line)  # spread evenly
            x = margin + free / len(line) / 2
            for v in line:
                w, h = sizes[v]
                box = Box(x, y + (line_h - h) / 2, w, h)
                ps = ports.get(v, [])
                box.ports = {p: x + w * (j + 1) / (len(ps) + 1) for j, p in enumerate(ps)}
                boxes[v] = box
                x += w + free / len(line)
            y += line_h
        y += row_gap
    return Layout(boxes, width, y - row_gap + margin)


# ---- the drawing shared by both views ------------------------------------------------------------

@dataclass
class EdgeMark:
    """How one edge is drawn: its colour, width and tooltip; `kept` edges are drawn strong
    (with an arrowhead at the receiver), the others faint."""

    colour: str
    width: float
    title: str
    kept: bool


@dataclass
class NodeMark:
    """How one node is drawn: `note` is a second line (a feature, a claim), `colour` its
    border (None: faint, the node is out of the circuit), `title` its tooltip."""

    note: str = ""
    colour: str | None = "#4a5568"
    title: str = ""
    fill: str = "#ffffff"


def draw_svg(edges: Sequence[Triple], edge_marks: Mapping[Triple, EdgeMark],
             node_marks: Mapping[str, NodeMark], legend: Sequence[tuple[str, str, str]],
             title: str, *, show_faint: bool = True, max_width: float = 1100) -> str:
    """The graph of `edges` as SVG text: boxes laid out by `layout`, each edge drawn as its mark
    says (an edge without a mark is faint), and a legend of (kind, colour, text) entries above,
    kind "line" (a stroke sample), "box" (a node sample) or "text"."""
    notes = {v: m.note for v, m in node_marks.items() if m.note}
    lay = layout(edges, notes, max_width=max_width)
    width = lay.width
    placed: list[tuple[float, float, tuple[str, str, str]]] = []  # the legend, in lines
    x, y = 10.0, 14.0
    for item in legend:
        w = len(item[2]) * NOTE_PX * CHAR + (30 if item[0] != "text" else 0) + 22
        if x > 10 and x + w > width - 10:
            x, y = 10.0, y + 18
        placed.append((x, y, item))
        x += w
    legend_h = y + 8 if legend else 0.0
    height = lay.height + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="circuit" viewBox="0 0 {_f(width)} '
           f'{_f(height)}" width="{_f(width)}" height="{_f(height)}" role="img" '
           f'aria-label="{_esc(title)}">', f"<title>{_esc(title)}</title>",
           # (a page's own `svg text` rule would win over a font-family attribute; this wins)
           f"<style>svg.circuit text {{ font-family: {FONT}; }}</style>",
           f'<rect width="{_f(width)}" height="{_f(height)}" fill="#ffffff"/>']
    for x, y, (kind, colour, text) in placed:
        if kind == "line":
            out.append(f'<line x1="{_f(x)}" x2="{_f(x + 24)}" y1="{_f(y - 4)}" y2="{_f(y - 4)}" '
                       f'stroke="{colour}" stroke-width="2.5"/>')
        elif kind == "box":
            out.append(f'<rect x="{_f(x + 4)}" y="{_f(y - 10)}" width="16" height="11" rx="2" '
                       f'fill="#ffffff" stroke="{colour}" stroke-width="1.6"/>')
        out.append(f'<text class="legend" x="{_f(x + (30 if kind != "text" else 0))}" y="{_f(y)}" '
                   f'font-size="{NOTE_PX}" style="fill:#4a5568">{_esc(text)}</text>')
    out.append(f'<g transform="translate(0,{_f(legend_h)})">')
    faint: list[Triple] = []
    strong: list[Triple] = []
    for e in edges:
        mark = edge_marks.get(e)
        (strong if mark is not None and mark.kept else faint).append(e)
    strong.sort(key=lambda e: edge_marks[e].width)
    tags: dict[tuple[str, str], str] = {}  # (receiver, port) -> colour of a kept edge into it
    for group, kept in ((faint if show_faint else [], False), (strong, True)):
        for e in group:
            s, r, p = e
            a, b = lay.boxes[s], lay.boxes[r]
            x1, y1, x2, y2 = a.cx, a.y, b.ports.get(p, b.cx), b.y + b.h
            c = max(18.0, (y1 - y2) * 0.45)
            end = y2 + 5 if kept else y2  # (a kept edge ends in an arrowhead)
            d = f"M{_f(x1)},{_f(y1)} C{_f(x1)},{_f(y1 - c)} {_f(x2)},{_f(y2 + c)} {_f(x2)},{_f(end)}"
            mark = edge_marks.get(e)
            tip = mark.title if mark is not None else f"{s} -> {r}.{p}"
            if kept:
                assert mark is not None
                out.append(f'<path class="edge kept" d="{d}" fill="none" stroke="{mark.colour}" '
                           f'stroke-width="{_f(mark.width)}" stroke-opacity="0.85">'
                           f"<title>{_esc(tip)}</title></path>")
                out.append(f'<polygon points="{_f(x2)},{_f(y2)} {_f(x2 - 3.5)},{_f(y2 + 6)} '
                           f'{_f(x2 + 3.5)},{_f(y2 + 6)}" fill="{mark.colour}"/>')
                tags.setdefault((r, p), mark.colour)
            else:
                colour = mark.colour if mark is not None else FAINT
                out.append(f'<path class="edge removed" d="{d}" fill="none" stroke="{colour}" '
                           f'stroke-width="0.8" stroke-opacity="0.55"><title>{_esc(tip)}</title></path>')
    for v, box in lay.boxes.items():
        node = node_marks.get(v, NodeMark(colour=None))
        on = node.colour is not None
        stroke = node.colour or "#e2e8f0"
        text_fill = "#1a202c" if on else "#a0aec0"
        tip = node.title or v
        out.append(f'<g class="circuit-node{" on" if on else ""}"><title>{_esc(tip)}</title>'
                   f'<rect x="{_f(box.x)}" y="{_f(box.y)}" width="{_f(box.w)}" height="{_f(box.h)}" '
                   f'rx="4" fill="{node.fill if on else "#f7fafc"}" stroke="{stroke}" '
                   f'stroke-width="{1.6 if on else 1}"/>'
                   f'<text class="label" x="{_f(box.cx)}" y="{_f(box.y + 15)}" text-anchor="middle" '
                   f'font-size="{LABEL_PX}" font-weight="{"bold" if on else "normal"}" '
                   f'style="fill:{text_fill}">{_esc(v)}</text>')
        if node.note:
            out.append(f'<text class="note" x="{_f(box.cx)}" y="{_f(box.y + 28)}" text-anchor="middle" '
                       f'font-size="{NOTE_PX}" style="fill:{stroke}">{_esc(node.note)}</text>')
        out.append("</g>")
        if len(box.ports) > 1:
            for p, px in box.ports.items():
                tag = tags.get((v, p))
                if tag is not None:
                    out.append(f'<text class="port" x="{_f(px + 4)}" y="{_f(box.y + box.h + 9)}" '
                               f'font-size="{SMALL_PX}" style="fill:{tag}">{_esc(p)}</text>')
    out.append("</g></svg>")
    return "\n".join(out)


def _short(s: str, n: int = MAX_NOTE_CHARS) -> str:
    return s if len(s) <= n else s[:n - 3] + "..."


def port_colours(ports: Iterable[str]) -> dict[str, str]:
    """A colour per port name: q, k, v and mask their own, every other port `OTHER_PORT`."""
    return {p: PORT_COLOURS.get(p, OTHER_PORT) for p in ports}


# ---- a search's circuit ---------------------------------------------------------------------------

def resample_costs(trace: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """For each candidate the search kept (a trace `what`: an edge's text, or a node's name),
    (the loss recovered that resampling it would have cost, the loss recovered it would have
    left), from its last rejected step in `trace`.

    >>> resample_costs([{"step": "start", "loss_recovered": 1.0, "accepted": True},
    ...                 {"step": "resample", "what": "A", "loss_recovered": 0.97, "accepted": True},
    ...                 {"step": "resample", "what": "B", "loss_recovered": 0.4, "accepted": False}])
    {'B': (0.57, 0.4)}
    """
    current: float | None = None
    out: dict[str, tuple[float, float]] = {}
    for t in trace:
        rec = t.get("loss_recovered")
        if not isinstance(rec, int | float) or isinstance(rec, bool) or not math.isfinite(rec):
            continue
        if t.get("step") == "start" or (t.get("step") == "resample" and t.get("accepted")):
            current = float(rec)
        elif t.get("step") == "resample" and current is not None:
            out[str(t.get("what"))] = (round(current - float(rec), 12), float(rec))
    return out


def search_svg(edges: Sequence[Triple] | None, kept: Iterable[Triple | tuple[str, str, str | None]],
               features: Mapping[str, str] | None = None,
               trace: Sequence[Mapping[str, Any]] = (), *, title: str = "the circuit the search kept",
               show_removed: bool = True, max_width: float = 1100) -> str:
    """The circuit a search kept, over the whole graph (`edges`: every (sender, receiver, port)
    of the graph the search walked; None: draw the kept edges alone).

    `kept` holds (sender, receiver, port) triples; a port None (a node search) stands for every
    port of the receiver that reads the sender. Kept edges are drawn in their port's colour,
    as wide as what resampling them cost when the search tried it (`resample_costs` of `trace`),
    removed ones faint (or not at all with `show_removed=False`); `features` (node -> feature
    name) label the kept nodes.
    """
    features = dict(features or {})
    kept = list(kept)
    all_edges = list(edges) if edges is not None else [
        (s, r, p if p is not None else "in") for s, r, p in kept]
    by_pair: dict[tuple[str, str], list[Triple]] = {}
    for e in all_edges:
        by_pair.setdefault((e[0], e[1]), []).append(e)
    kept_set: set[Triple] = set()
    node_level = False
    for s, r, p in kept:
        if p is None:
            node_level = True
            kept_set.update(by_pair.get((s, r), []))
        else:
            kept_set.add((s, r, p))
    all_edges += sorted(kept_set - set(all_edges))  # kept edges the edge list lacks
    costs = resample_costs(trace)
    colours = port_colours(p for _, _, p in all_edges)

    def cost_of(e: Triple) -> tuple[float, float] | None:
        return costs.get(e[0]) if node_level else costs.get(f"{e[0]} -> {e[1]}.{e[2]}")

    known = [c[0] for e in kept_set if (c := cost_of(e)) is not None]
    top = max([c for c in known if c > 0], default=0.0)
    marks: dict[Triple, EdgeMark] = {}
    for e in kept_set:
        c = cost_of(e)
        what = e[0] if node_level else f"{e[0]} -> {e[1]}.{e[2]}"
        if c is None:
            width, tip = 1.8, f"{e[0]} -> {e[1]}.{e[2]}: kept"
        else:
            width = 1.2 + 5.3 * math.sqrt(max(c[0], 0.0) / top) if top > 0 else 1.8
            tip = (f"{e[0]} -> {e[1]}.{e[2]}: kept; resampling {what} would have cost "
                   f"{100 * c[0]:.1f} points of loss recovered (to {100 * c[1]:.1f}%)")
        marks[e] = EdgeMark(colours[e[2]], width, tip, True)
    on = {v for e in kept_set for v in e[:2]}
    nodes: dict[str, NodeMark] = {}
    chosen = {str(t.get("what")): t.get("loss_recovered") for t in trace
              if t.get("step") == "feature" and t.get("accepted")}
    for v in on:
        feat = features.get(v)
        title_ = v + (f": computes {feat} (SameFeature)" if feat else ": kept")
        rec = chosen.get(f"{v}: {feat}")
        if feat and isinstance(rec, int | float) and not isinstance(rec, bool):
            title_ += f", loss recovered {100 * rec:.1f}% with this claim"
        if node_level and v in costs:
            title_ += f"; resampling it would cost {100 * costs[v][0]:.1f} points"
        nodes[v] = NodeMark(note=_short(f"= {feat}") if feat else "",
                            colour="#2f855a" if feat else "#2b6cb0",
                            fill="#f0fff4" if feat else "#ebf4ff", title=title_)
    used_ports = {p for _, _, p in kept_set}
    legend: list[tuple[str, str, str]] = [
        ("line", c, f"kept, into port {p}") for p, c in PORT_COLOURS.items() if p in used_ports]
    if used_ports - set(PORT_COLOURS):
        others = ", ".join(sorted(used_ports - set(PORT_COLOURS)))
        legend.append(("line", OTHER_PORT, _short(f"kept, into port {others}", 60)))
    legend.append(("line", FAINT, f"removed (resampled): {len(set(all_edges) - kept_set)} of "
                                  f"{len(set(all_edges))} edges" + ("" if show_removed else ", not drawn")))
    if top > 0:
        legend.append(("text", "", f"width: loss recovered lost by resampling the "
                                   f"{'node' if node_level else 'edge'} alone (widest "
                                   f"{100 * top:.1f} points)"))
    if features:
        legend.append(("box", "#2f855a", "= f: the feature the node was found to compute"))
    return draw_svg(all_edges, marks, nodes, legend, title, show_faint=show_removed,
                    max_width=max_width)


def search_figure(edges: Sequence[Triple] | None, kept: Iterable[Triple | tuple[str, str, str | None]],
                  features: Mapping[str, str] | None = None, trace: Sequence[Mapping[str, Any]] = (),
                  **kwargs: Any) -> Figure:
    """`search_svg` as a `Figure`."""
    return Figure(search_svg(edges, kept, features, trace, **kwargs))


def search_json_svg(data: Mapping[str, Any], **kwargs: Any) -> str | None:
    """`search_svg` for a `search.json` dictionary (its `graph_edges`, `kept`, `features` and
    `trace`); None when it keeps nothing to draw and lists no graph edges."""
    raw_edges = data.get("graph_edges")
    edges = ([(str(e[0]), str(e[1]), str(e[2])) for e in raw_edges
              if isinstance(e, list | tuple) and len(e) == 3] if isinstance(raw_edges, list) else None)
    kept: list[tuple[str, str, str | None]] = []
    for e in data.get("kept") or []:
        if isinstance(e, Mapping) and "sender" in e and "receiver" in e:
            port = e.get("port")
            kept.append((str(e["sender"]), str(e["receiver"]), None if port is None else str(port)))
    if not kept and not edges:
        return None
    raw_features = data.get("features")
    features = {str(k): str(v) for k, v in raw_features.items()} if isinstance(raw_features, Mapping) else {}
    trace = [t for t in data.get("trace") or [] if isinstance(t, Mapping)]
    return search_svg(edges, kept, features, trace, **kwargs)


# ---- a hypothesis over its graph ------------------------------------------------------------------

@dataclass
class Claims:
    """What a hypothesis claims on each edge of its graph.

    `edges[e]`: the interpretation nodes (by index in `names`) whose draw the paths through
    edge e read from e down, with "ds" (a claim: the node's own draw, or a claim its children
    refine further down) or "other" (unclaimed: the node's other-inputs draw). `starts[v]`:
    the nodes whose claim begins at graph node v (on reaching it or one of its ports).
    """

    names: list[str]
    samplers: list[str]
    others: list[str]
    depths: list[int]  # each node's depth in the interpretation tree (the root's is 0)
    edges: dict[Triple, set[tuple[int, str]]]
    starts: dict[str, set[int]]


def hypothesis_claims(graph: Graph, root: InterpNode) -> Claims:
    """Walk the treeified graph that `root` induces on `graph` (`hypothesis.check`) and say, for
    each edge, which interpretation node's draw the paths through it read.

    >>> import causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i, i="x"),
    ...               cs.Node("out", lambda l, r: l + r, l="a", r="x")], output="out")
    >>> c = hypothesis_claims(g, cs.InterpNode("out", children=[
    ...     cs.InterpNode("A", cs.SameFeature("x"), paths=cs.through("a"))]))
    >>> for e, lanes in sorted(c.edges.items()):
    ...     print(e, [(c.names[i], kind) for i, kind in sorted(lanes)])
    ('a', 'out', 'l') [('A', 'ds')]
    ('x', 'a', 'i') [('A', 'ds')]
    ('x', 'out', 'r') [('out', 'other')]
    >>> c.starts
    {'out': {0}, 'a': {1}}
    """

    corr = check(graph, root)
    tree = corr.tree
    edges: dict[Triple, set[tuple[int, str]]] = {}
    starts: dict[str, set[int]] = {}
    below_done: set[tuple[str, int, str]] = set()

    def mark_below(v: str, lane: tuple[int, str]) -> None:
        if (v, *lane) in below_done:
            return
        below_done.add((v, *lane))
        for p, ups in graph.ports(v).items():
            for u in ups:
                edges.setdefault((u, v, p), set()).add(lane)
                mark_below(u, lane)

    seen: set[Site] = set()

    def visit(site: Site) -> None:
        if site in seen:
            return
        seen.add(site)
        here = tree.owner(site.states)
        for port in tree.ports(site):
            at_port = tree.owner(port.states)
            if at_port != here:
                starts.setdefault(site.node, set()).add(at_port)
            for up in port.inputs:
                owner = tree.owner(up.states)
                if owner != at_port:
                    starts.setdefault(up.node, set()).add(owner)
                lane = tree.lane(up)
                mark = (lane.index, "other") if lane is not None and lane.kind == "other" else (owner, "ds")
                edges.setdefault((up.node, site.node, port.port), set()).add(mark)
                if lane is None:
                    visit(up)
                else:
                    mark_below(up.node, (lane.index, lane.kind))

    root_owner = tree.owner(tree.root.states)
    starts.setdefault(graph.output, set()).add(root_owner)
    root_lane = tree.lane(tree.root)
    if root_lane is None:
        visit(tree.root)
    else:
        mark_below(graph.output, (root_lane.index, root_lane.kind))
    return Claims([n.name for n in corr.nodes], [n.sampler.describe() for n in corr.nodes],
                  [n.other.describe() for n in corr.nodes], list(corr.depth), edges, starts)


#: Above this many edges a hypothesis' drawing data keeps only the claimed edges (the
#: unclaimed ones would be most of a large model's graph, drawn faint).
MAX_FAINT_EDGES = 3000


def components(graph: Graph) -> dict[str, str]:
    """Each node's component: the node itself, or for a node a rewrite added beside one
    (`a2.h1.q@3`, `a0.h1.est`: a name that extends another node's name after a dot, and is no
    head) that node, so a split component is drawn as one box.

    >>> import causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("a0.h1.est", lambda i: i, i="x"),
    ...               cs.Node("a0.h1", lambda parts: parts, parts=["a0.h1.est", "x"]),
    ...               cs.Node("out", lambda i: i, i="a0.h1")], output="out")
    >>> components(g)
    {'x': 'x', 'a0.h1.est': 'a0.h1', 'a0.h1': 'a0.h1', 'out': 'out'}
    """

    out: dict[str, str] = {}
    for v in graph.nodes:
        out[v] = v
        if parse_head(v, strict=False) is not None:
            continue
        parts = v.split(".")
        for k in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:k]) in graph.nodes:
                out[v] = ".".join(parts[:k])
                break
    return out


def claims_dict(graph: Graph, root: InterpNode, *, collapse: bool = True,
                max_faint_edges: int = MAX_FAINT_EDGES) -> dict[str, Any]:
    """`hypothesis_claims` as plain data (what a run's `results.json` keeps to draw each
    hypothesis): `names`, `samplers`, `others` (per interpretation node), `edges` (a list of
    [sender, receiver, port, [[node index, "ds" or "other"], ...]]) and `starts` (graph node ->
    the indices of the claims that begin there). With `collapse`, nodes a rewrite split off are
    drawn inside their component (`components`), an edge into a split-off port part taking the
    component's port. A graph of more than `max_faint_edges` edges keeps only the claimed ones.

    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> data = claims_dict(exp.graph, exp.hypotheses["only_a"])
    >>> data["names"], [e for e in data["edges"] if e[1] == "out"][0]
    (['out', 'A'], ['A', 'out', 'resid', [[1, 'ds']]])
    """

    claims = hypothesis_claims(graph, root)
    comp = components(graph) if collapse else {v: v for v in graph.nodes}
    entry: dict[str, str] = {}  # a split-off node -> the port of its component it reaches
    for v in reversed(graph.order):
        for p, ups in graph.ports(v).items():
            for u in ups:
                if comp[u] != u and comp[u] == comp[v] and u not in entry:
                    entry[u] = entry.get(v, p) if v != comp[v] else p
    merged: dict[Triple, set[tuple[int, str]]] = {}
    for s, r, p in graph_edges(graph):
        cs_, cr = comp[s], comp[r]
        if cs_ == cr:
            continue
        port = p if r == cr or p in PORT_COLOURS else entry.get(r, p)
        merged.setdefault((cs_, cr, port), set()).update(claims.edges.get((s, r, p), set()))
    if len(merged) > max_faint_edges:
        merged = {e: lanes for e, lanes in merged.items() if any(k == "ds" for _, k in lanes)}
    starts: dict[str, set[int]] = {}
    for v, begun in claims.starts.items():
        starts.setdefault(comp[v], set()).update(begun)
    return {"names": claims.names, "samplers": claims.samplers, "others": claims.others,
            "depths": claims.depths,
            "edges": [[s, r, p, sorted([i, k] for i, k in lanes)] for (s, r, p), lanes in merged.items()],
            "starts": {v: sorted(begun) for v, begun in starts.items()}}


def claims_svg(data: Mapping[str, Any], *, title: str = "the hypothesis over the graph",
               show_unclaimed: bool = True, max_width: float = 1100) -> str | None:
    """A hypothesis drawn over its graph from `claims_dict`'s data: each edge in the colour of
    the interpretation node whose claim the paths through it belong to, faint where they read
    an other-inputs draw (an edge on the paths of several claims: the deepest in the tree);
    each node where a claim begins labelled with it and its sampler (the last of several;
    hover for all). None when the data holds no edges."""
    names = [str(x) for x in data.get("names") or []]
    samplers = [str(x) for x in data.get("samplers") or []]
    others = [str(x) for x in data.get("others") or []]
    if not names or len(samplers) != len(names) or len(others) != len(names):
        return None
    edges: list[Triple] = []
    lanes_of: dict[Triple, list[tuple[int, str]]] = {}
    for item in data.get("edges") or []:
        if not (isinstance(item, list | tuple) and len(item) == 4):
            continue
        e = (str(item[0]), str(item[1]), str(item[2]))
        lanes = [(int(i), str(k)) for i, k in item[3] if 0 <= int(i) < len(names)]
        edges.append(e)
        lanes_of[e] = lanes
    if not edges:
        return None
    raw_depths = data.get("depths")
    depths = ([int(d) for d in raw_depths] if isinstance(raw_depths, list) and len(raw_depths) == len(names)
              else [0] * len(names))
    colours = {i: PALETTE[(i - 1) % len(PALETTE)] if i else "#4a5568" for i in range(len(names))}
    marks: dict[Triple, EdgeMark] = {}
    for e, lanes in lanes_of.items():
        # an edge on the paths of several claims takes the colour of the most specific (deepest)
        ds = sorted((i for i, kind in lanes if kind == "ds"), key=lambda i: (depths[i], i))
        described = "; ".join(
            (f"claimed by {names[i]} ({samplers[i]})" if kind == "ds" else
             f"unclaimed: reads {names[i]}'s other inputs ({others[i]})") for i, kind in sorted(lanes))
        tip = f"{e[0]} -> {e[1]}.{e[2]}: {described}"
        # (deeper claims a little wider, so they are drawn over the shallower ones they refine)
        marks[e] = (EdgeMark(colours[ds[-1]], 1.6 + 0.5 * min(depths[ds[-1]], 4), tip, True) if ds
                    else EdgeMark(FAINT, 0.8, tip, False))
    raw_starts = data.get("starts")
    starts = {str(v): [int(i) for i in begun if 0 <= int(i) < len(names)]
              for v, begun in (raw_starts.items() if isinstance(raw_starts, Mapping) else [])}
    nodes: dict[str, NodeMark] = {}
    on = {v for e, m in marks.items() if m.kept for v in e[:2]}
    for v in sorted(on | {v for v, b in starts.items() if b}):
        begun = sorted(starts.get(v, []))
        if begun:
            i = begun[-1]
            more = f" +{len(begun) - 1}" if len(begun) > 1 else ""
            note = _short(f"{names[i]}: {samplers[i]}", MAX_NOTE_CHARS - len(more)) + more
            tip = v + ": " + "; ".join(f"claim {names[j]} begins here, sampler {samplers[j]}"
                                       for j in begun)
            nodes[v] = NodeMark(note=note, colour=colours[i], title=tip)
        else:
            nodes[v] = NodeMark(colour="#4a5568", title=f"{v}: inside a claim")
    used = sorted({i for lanes in lanes_of.values() for i, kind in lanes if kind == "ds"}
                  | {i for b in starts.values() for i in b})
    legend: list[tuple[str, str, str]] = [
        ("line", colours[i], _short(f"{names[i]}: {samplers[i]}", 60)) for i in used[:24]]
    if len(used) > 24:
        legend.append(("text", "", f"and {len(used) - 24} more claims (hover the nodes)"))
    legend.append(("line", FAINT, "unclaimed: reads an other-inputs draw (hover for whose)"))
    nodes_in = {v for e in edges for v in e[:2]}
    return draw_svg(edges, marks, {v: m for v, m in nodes.items() if v in nodes_in}, legend, title,
                    show_faint=show_unclaimed, max_width=max_width)


def hypothesis_svg(graph: Graph, root: InterpNode, *, title: str | None = None,
                   collapse: bool = True, show_unclaimed: bool = True, max_width: float = 1100) -> str:
    """`root` drawn over `graph` (`claims_dict`, then `claims_svg`)."""
    data = claims_dict(graph, root, collapse=collapse)
    return claims_svg(data, title=title or f"hypothesis {root.name} over the graph",
                      show_unclaimed=show_unclaimed, max_width=max_width) or ""


def hypothesis_figure(graph: Graph, root: InterpNode, **kwargs: Any) -> Figure:
    """`hypothesis_svg` as a `Figure`.

    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> fig = hypothesis_figure(exp.graph, exp.hypotheses["correct"])
    >>> fig.svg.count('class="edge kept"') >= 4
    True
    """
    return Figure(hypothesis_svg(graph, root, **kwargs))


# ---- a scrub's result -----------------------------------------------------------------------------

_CHART_STYLE = """<style>
svg.cs-result text { font-family: system-ui, sans-serif; fill: #2d3748; }
svg.cs-result .label { font-size: 13px; font-weight: 600; } svg.cs-result .value { font-size: 12.5px; }
svg.cs-result .legend, svg.cs-result .tick { font-size: 11.5px; fill: #4a5568; }
svg.cs-result .grid { stroke: #e2e8f0; stroke-width: 1; }
svg.cs-result .grid.strong { stroke: #a0aec0; stroke-dasharray: 4 3; }
svg.cs-result .stripe { fill: #f7fafc; } svg.cs-result .axis { stroke: #a0aec0; }
svg.cs-result .bar { fill: #2b6cb0; fill-opacity: 0.55; }
svg.cs-result .outline { fill: none; stroke-width: 1.6; }
svg.cs-result .model { stroke: #2f855a; }
svg.cs-result .baseline { stroke: #718096; stroke-dasharray: 3 2; }
</style>"""  # (scoped: a notebook puts every figure's SVG into one page)


def result_svg(result: ScrubResult, published: float | None = None) -> str:
    """One scrub's numbers as the report draws them: loss recovered with its 95% interval
    (`report.recovered_chart_svg`) above the per-example loss histograms (`report.histogram_svg`),
    in one SVG with the report's styles inside it."""
    from . import LOSS_KINDS, loss_histogram  # (the report's package imports this module)
    from .svg import histogram_svg, recovered_chart_svg

    entry = {"name": result.name, "loss_recovered": result.loss_recovered, "ci_low": result.ci[0],
             "ci_high": result.ci[1], "published": published,
             "recovery_defined": result.recovery_defined}
    chart = recovered_chart_svg([entry])
    kinds = [k for k in LOSS_KINDS if k in result.per_example]
    top = max(float(result.per_example[k].max()) for k in kinds)
    hist = histogram_svg({k: loss_histogram(result.per_example[k], top=top) for k in kinds},
                         result.name)
    w1, h1 = _svg_size(chart)
    w2, h2 = _svg_size(hist)
    width, height = max(w1, w2), h1 + h2 + 10
    nested_hist = hist.replace("<svg ", f'<svg x="0" y="{h1 + 10}" ', 1)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="cs-result" viewBox="0 0 {width} {height}" '
            f'width="{width}" '
            f'height="{height}" role="img" aria-label="{_esc(result.name)}: loss recovered and '
            f'per-example losses">{_CHART_STYLE}<rect width="{width}" height="{height}" fill="#ffffff"/>'
            f"{chart}{nested_hist}</svg>")


def _svg_size(svg: str) -> tuple[int, int]:
    m = re.search(r'width="(\d+)" height="(\d+)"', svg)
    if m is None:
        raise ValueError("an SVG without a width and height")
    return int(m.group(1)), int(m.group(2))
