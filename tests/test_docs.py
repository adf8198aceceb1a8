"""The README and docs/concepts.md run as written and print exactly what they show, and the
numbers every document quotes agree with the files and commands that produce them.

The documents mark what they print, so that a stale number fails here:

- every ```python block runs, in order, in one namespace per document;
- inside a python block, `#>` lines are the exact output of the code above them (since the
  previous `#>` lines): `#> text` is one printed line, a bare `#>` an empty one;
- a fenced block right after a line `<!-- output of: COMMAND -->` is the exact output of
  COMMAND, which is `causal-scrub ...` (run in a fresh directory) or `the python block above`
  (everything that block printed); after `<!-- rows of: COMMAND -->` it is an excerpt of the
  output of a command too slow to run here, checked by its own test below.

Outputs are compared line by line after removing trailing spaces and replacing the temporary
directory's path by `.`; nothing else is normalised (the marked outputs print no timings).
README's `causal-scrub run paren` table (`rows of:`) takes minutes in full, so
`test_readme_paren_table_rows` recomputes two of its rows and the baseline (and checks the rest
cheaply).

Numbers quoted in prose, in README.md and every docs/*.md, carry a marker right after them:

    86.8%<!-- check: paren-1000 .experiments[name="Ex1b"].loss_recovered -->

that is, `<!-- check: SOURCE EXPRESSION -->` (invisible once rendered), where

- SOURCE is a JSON file of the repository (`docs/bench/cpu.json`,
  `src/causal_scrubbing/checkpoints/ioi_train_log.json`) or the name of a source in `SOURCES`
  below: a command or a few calls whose JSON (a `results.json`, a `search.json`) is computed
  when the test runs (once per session; the slow ones in the slow tier);
- EXPRESSION is arithmetic (`+ - * /`, parentheses, numbers, `len(...)`) over paths into that
  JSON: `.key`, `["key with spaces"]`, `[0]` / `[-1]` (a list's items), `[name="Ex4"]` (the one
  item of a list whose `name` is "Ex4"); e.g. `.workloads[0].engine_s / .workloads[0].limit_s`;
- the quoted number is the last number before the marker on its line (between the two only a
  `%`, a unit word and markdown emphasis), compared at its printed precision: `86.8%` passes
  for any value in [0.8675, 0.8685] (a number printed with `%` is 100 times the value),
  `1,284` for exactly 1284, `1.8e-5` for [1.75e-5, 1.85e-5];
- a trailing `~Nx` (e.g. `~10x`) checks only that the number is within a factor N of the value,
  for timings, which are never asserted tightly (these machines are noisy). A named source's
  JSON holds `cpu_seconds`, the CPU time this process spent computing it on one torch thread,
  which other jobs on a shared machine inflate far less than wall time (or CPU time on several
  threads, which spin while they wait): a quoted timing is checked against it to an order of
  magnitude (`~10x`).

A marker whose source, path or number is missing fails as a stale number does. A number with
nothing recorded behind it carries no marker.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import io
import json
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/concepts.md"]
#: the documents whose prose numbers are checked (`<!-- check: ... -->`)
PROSE = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"(?:<!-- (?P<kind>output|rows) of: (?P<cmd>.+?) -->\n)?"
                    r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", flags=re.S | re.M)


@dataclasses.dataclass
class Block:
    lang: str
    body: str
    line: int  # line of the block's first line of content in the document
    output_of: str | None  # the COMMAND of a preceding `<!-- output of: COMMAND -->`
    rows_of: str | None  # the COMMAND of `<!-- rows of: COMMAND -->` (an excerpt of its output)


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [Block(m["lang"], m["body"], text.count("\n", 0, m.start("body")) + 1,
                  m["cmd"] if m["kind"] == "output" else None,
                  m["cmd"] if m["kind"] == "rows" else None)
            for m in _FENCE.finditer(text)]


def python_blocks(path: Path) -> list[str]:
    return [b.body for b in blocks(path) if b.lang == "python"]


def segments(body: str) -> list[tuple[int, str, list[str] | None]]:
    """Split a python block at its `#>` lines: (first line, code, expected output or None)."""
    out: list[tuple[int, str, list[str] | None]] = []
    code: list[str] = []
    expected: list[str] = []
    start = 0
    for i, line in enumerate(body.splitlines()):
        if line.startswith("#>"):
            expected.append(line[3:] if line.startswith("#> ") else line[2:])
            continue
        if expected:
            out.append((start, "\n".join(code), expected))
            code, expected, start = [], [], i
        code.append(line)
    out.append((start, "\n".join(code), expected or None))
    return out


def normalise(text: str, tmp: Path) -> list[str]:
    lines = [line.rstrip() for line in text.replace(str(tmp), ".").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def compare(expected: list[str], actual: str, tmp: Path, where: str) -> None:
    got = normalise(actual, tmp)
    want = normalise("\n".join(expected), tmp)
    if got != want:
        diff = "\n".join(difflib.unified_diff(want, got, "as the document shows", "as printed now",
                                              lineterm=""))
        raise AssertionError(f"{where}: the document shows stale output; update it to what "
                             f"the code prints now:\n{diff}")


def run_command(command: str, tmp: Path) -> str:
    from causal_scrubbing.cli import app

    args = shlex.split(command)
    if not args or Path(args[0]).name != "causal-scrub":
        raise AssertionError(f"`<!-- output of: {command} -->`: only causal-scrub commands and "
                             "`the python block above` can be checked.")
    result = CliRunner().invoke(app, args[1:])
    assert result.exit_code == 0, f"`{command}` failed:\n{result.output}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_docs_run_and_print_what_they_show(doc, tmp_path, monkeypatch):
    path = ROOT / doc
    found = blocks(path)
    assert any(b.lang == "python" for b in found), f"{doc} has no python snippets"
    monkeypatch.chdir(tmp_path)  # snippets and commands write under runs/
    namespace: dict = {"__name__": "__docs__"}
    last_python: str | None = None
    for b in found:
        if b.output_of is not None:
            where = f"{doc}, line {b.line} (output of {b.output_of})"
            if b.output_of == "the python block above":
                assert last_python is not None, f"{where}: no python block precedes it"
                compare(b.body.splitlines(), last_python, tmp_path, where)
            else:
                compare(b.body.splitlines(), run_command(b.output_of, tmp_path), tmp_path, where)
        if b.lang != "python":
            continue
        printed = io.StringIO()
        for start, code, expected in segments(b.body):
            line = b.line + start
            chunk = io.StringIO()
            try:
                with contextlib.redirect_stdout(chunk):
                    exec(compile("\n" * start + code, f"{doc}[python block at line {b.line}]",
                                 "exec"), namespace)
            except Exception as err:  # pragma: no cover - the message is the point
                raise AssertionError(f"{doc}: the python block at line {b.line} failed "
                                     f"(from its line {start + 1}):\n{b.body}") from err
            printed.write(chunk.getvalue())
            if expected is not None:
                compare(expected, chunk.getvalue(), tmp_path,
                        f"{doc}, line {line}: the #> output of the python block at line {b.line}")
        last_python = printed.getvalue()


def test_stale_output_is_caught(tmp_path):
    """The checker itself: a wrong `#>` line fails, with a diff naming the place."""
    (start, code, expected), = segments("print(1 + 1)\n#> 3")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code)
    with pytest.raises(AssertionError, match=r"stale output(.|\n)*-3\n\+2"):
        compare(expected, buf.getvalue(), tmp_path, "here")
    assert segments("a = 1\n#>\nprint(a)\n#> 1\nb = 2") == [
        (0, "a = 1", [""]), (2, "print(a)", ["1"]), (4, "b = 2", None)]


def _table_rows(lines: list[str]) -> dict[str, list[str]]:
    """Rows of the results table (the first table) by hypothesis id, each as its
    whitespace-separated cells."""
    rows: dict[str, list[str]] = {}
    for line in lines:
        if re.match(r"Ex\d", line):
            rows.setdefault(line.split()[0], line.split())
    return rows


@functools.cache
def paren_experiment() -> Any:
    from causal_scrubbing.experiments import load

    return load("paren")


@functools.cache
def paren_run(n: int) -> Any:
    """Ex1b and Ex4 of `causal-scrub run paren --n N` (seed 0), with the model and baseline
    losses that every run computes: each hypothesis' draws do not depend on which others run
    beside it, so these rows are exactly those of the full run."""
    from causal_scrubbing.experiments import run_experiment

    exp = paren_experiment()
    sub = dataclasses.replace(exp, hypotheses={k: exp.hypotheses[k] for k in ("Ex1b", "Ex4")})
    return run_experiment(sub, n=n, seed=0)


@pytest.mark.slow
def test_readme_paren_table_rows():
    """README's `causal-scrub run paren` table, on the rows it is cheap to recompute.

    All nine hypotheses take minutes on a 2-core CPU; each hypothesis' draws do not depend on
    which others run beside it, so recomputing Ex1b and Ex4 alone (with the model and the Ex0b
    baseline that every run computes) checks their rows exactly. Every row's published number
    and the order of the rows are checked against the experiment itself.
    """
    from causal_scrubbing.report import format_table

    (table,) = [b for b in blocks(ROOT / "README.md")
                if b.rows_of is not None and b.rows_of.startswith("causal-scrub run paren")]
    shown = _table_rows(table.body.splitlines())
    exp = paren_experiment()
    assert list(shown) == list(exp.hypotheses), "README's paren table lists other hypotheses"
    for key, cells in shown.items():
        assert cells[-1] == f"{exp.published[key]:.1%}", f"README: published number of {key}"
    run = paren_run(exp.default_n)
    now = _table_rows(format_table(run).splitlines())
    for key in ("Ex1b", "Ex4"):
        assert shown[key] == now[key], (
            f"README's paren table is stale: {key} shows {shown[key]}, the code gives {now[key]}")
    # Ex0a scrubs nothing and Ex0b is the baseline itself: their losses are the run's own
    assert shown["Ex0a"][-6] == f"{run.model_loss:.4f}", "README: Ex0a's loss is stale"
    assert shown["Ex0b"][-6] == f"{run.baseline_loss:.4f}", "README: Ex0b's loss is stale"
    assert all(cells[-2] == str(exp.default_n) for cells in shown.values())


# ---- numbers quoted in prose (`<!-- check: SOURCE EXPRESSION -->`, the module docstring) ---------


@dataclasses.dataclass(frozen=True)
class Source:
    """A JSON value computed when a test needs it: `make(tmp)` (tmp: an empty directory),
    after `setup()` (shared work its CPU time does not count, e.g. building an experiment)."""

    make: Callable[[Path], Any]
    what: str  # how it is made, in words
    slow: bool = False
    setup: Callable[[], Any] | None = None
    timed: bool = True  # computed on one torch thread, so that its `cpu_seconds` can be quoted

    def value(self, tmp: Path) -> Any:
        """The JSON value, with `cpu_seconds`: the CPU time `make` took (module docstring)."""
        import torch

        if self.setup is not None:
            self.setup()
        threads = torch.get_num_threads()
        if self.timed:
            torch.set_num_threads(1)
        try:
            start = time.process_time()
            data = self.make(tmp)
            data["cpu_seconds"] = time.process_time() - start
        finally:
            torch.set_num_threads(threads)
        return data


def cli_json(command: str, output: str) -> Callable[[Path], Any]:
    """`command` (a `causal-scrub` command line) run in this process with `--out tmp/out`;
    its JSON file `output`."""
    def make(tmp: Path) -> Any:
        from causal_scrubbing.cli import app

        result = CliRunner().invoke(app, [*shlex.split(command)[1:], "--out", str(tmp / "out")])
        assert result.exit_code == 0, f"`{command}` failed:\n{result.output}"
        return json.loads((tmp / "out" / output).read_text())
    return make


def paren_results(n: int) -> Callable[[Path], Any]:
    def make(tmp: Path) -> Any:
        from causal_scrubbing.core.results import jsonable
        from causal_scrubbing.report import results_dict

        return jsonable(results_dict(paren_run(n)))
    return make


def paren_search(features: bool, **kwargs: Any) -> Callable[[Path], Any]:
    """`cs.search` on paren's search graph, as `causal-scrub search paren` calls it (with the
    experiment's features if `features`), in this process (the experiment is built once)."""
    def make(tmp: Path) -> Any:
        import causal_scrubbing as cs

        exp = paren_experiment()
        found = cs.search(exp.search_graph, exp.dataset, exp.loss_fn, baseline=exp.baseline,
                          features=exp.features if features else None, **kwargs)
        return found.to_dict()
    return make


#: The named sources a marker can quote (a JSON file of the repository needs no entry).
SOURCES: dict[str, Source] = {
    "run-ioi": Source(cli_json("causal-scrub run ioi --quiet --no-audit", "results.json"),
                      "causal-scrub run ioi --no-audit (results.json)"),
    "search-toy": Source(cli_json("causal-scrub search toy --threshold 0.95 --n 1000 --quiet",
                                  "search.json"),
                         "causal-scrub search toy --threshold 0.95 --n 1000 (search.json)"),
    "search-toy-nodes": Source(
        cli_json("causal-scrub search toy --threshold 0.95 --n 1000 --granularity nodes --quiet",
                 "search.json"),
        "the same with --granularity nodes"),
    "paren-1000": Source(paren_results(1000), "Ex1b and Ex4 of causal-scrub run paren --n 1000 "
                         "(results.json's keys)", slow=True, setup=paren_experiment,
                         timed=False),
    "paren-4000": Source(paren_results(4000), "Ex1b and Ex4 of causal-scrub run paren (4,000 "
                         "rows; results.json's keys)", slow=True, setup=paren_experiment,
                         timed=False),
    "paren-search-nodes-200": Source(
        paren_search(True, threshold=0.9, granularity="nodes", n=200, n_heldout=200),
        "causal-scrub search paren --threshold 0.9 --granularity nodes --n 200 (search.json; "
        "the feature step is skipped: its tree is too large)", slow=True,
        setup=paren_experiment),
    # the greedy schedule, named: the docs quote it as the one-pass greedy search (the default
    # edge search is the ranked one, the next source)
    "paren-search-300": Source(
        paren_search(False, threshold=0.9, n=300, n_heldout=300, n_bootstrap=200,
                     schedule="greedy"),
        "cs.search(paren's search_graph, threshold=0.9, n=300, n_bootstrap=200, "
        "schedule='greedy'): edges, no features (search.json)", slow=True,
        setup=paren_experiment),
    "paren-search-300-ranked": Source(
        paren_search(False, threshold=0.9, n=300, n_heldout=300, n_bootstrap=200),
        "cs.search(paren's search_graph, threshold=0.9, n=300, n_bootstrap=200): edges, no "
        "features, the default (ranked) schedule (search.json)", slow=True,
        setup=paren_experiment),
}


@dataclasses.dataclass(frozen=True)
class Quote:
    """One quoted number and the marker after it."""

    doc: str
    line: int
    printed: str  # the number as printed, e.g. "86.8", "1,284", "1.8e-5"
    percent: bool  # printed with a % sign: it is 100 times the value
    source: str
    expression: str
    within: float | None = None  # `~Nx`: within a factor N (timings)

    @property
    def where(self) -> str:
        return f"{self.doc}, line {self.line}"

    def __str__(self) -> str:
        return (f"{self.where}: {self.printed}{'%' if self.percent else ''} "
                f"<!-- check: {self.source} {self.expression}"
                f"{f' ~{self.within:g}x' if self.within else ''} -->")


_MARKER = re.compile(r"<!--\s*check\b(?P<body>.*?)-->")
_NUMBER = re.compile(r"(?<![\w.])(?:[-−](?=\d))?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-−+]?\d+)?")
#: what may stand between a number and its marker: a % sign, a unit word, emphasis, brackets
_TAIL = re.compile(r"\s?(?P<pct>%)?[^\S\n]?[A-Za-z]{0,8}[\s*_)\]]*")
_CODE_SPAN = re.compile(r"`[^`]*`")
_WITHIN = re.compile(r"\s+~(?P<factor>\d+(?:\.\d+)?)x$")


def quotes(text: str, doc: str) -> list[Quote]:
    """Every `<!-- check: ... -->` marker of a markdown text, with the number it follows; a
    marker that is malformed, follows no number or sits in a code block raises AssertionError."""
    lines = text.split("\n")
    fenced = False
    out = []
    for i, line in enumerate(lines, start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if _MARKER.search(line):
                raise AssertionError(f"{doc}, line {i}: a check marker inside a code block is shown "
                                     "as written and checks nothing; quote the number in prose")
            continue
        line = _CODE_SPAN.sub(lambda c: " " * len(c.group(0)), line)  # `code` is not prose
        end = 0
        for m in _MARKER.finditer(line):
            where = f"{doc}, line {i}"
            before, end = line[end:m.start()], m.end()
            body = m["body"].strip()
            if not body.startswith(":") or len(body[1:].split(None, 1)) < 2:
                raise AssertionError(f"{where}: a marker must read <!-- check: SOURCE EXPRESSION -->, "
                                     f"not {m.group(0)!r}")
            source, expression = body[1:].split(None, 1)
            within = None
            w = _WITHIN.search(" " + expression)
            if w:
                within = float(w["factor"])
                expression = expression[:len(expression) - len(w.group(0)) + 1].strip()
            numbers = list(_NUMBER.finditer(before))
            tail = _TAIL.fullmatch(before[numbers[-1].end():]) if numbers else None
            if tail is None:
                raise AssertionError(f"{where}: {m.group(0)!r} points at no number: put it right "
                                     f"after the number it checks (here it follows "
                                     f"{before[-40:]!r})")
            out.append(Quote(doc, i, numbers[-1].group(0), tail["pct"] is not None, source,
                             expression.strip(), within))
    return out


_STEP = re.compile(r'\.(?P<key>[A-Za-z_]\w*)|\[(?P<index>-?\d+)\]|\["(?P<quoted>[^"]*)"\]'
                   r'|\[(?P<field>[A-Za-z_]\w*)="(?P<value>[^"]*)"\]')
_PATH = re.compile(r'(?<![\w\])])\.(?:[A-Za-z_]\w*)?(?:\.[A-Za-z_]\w*|\[(?:-?\d+|"[^"]*"|'
                   r'[A-Za-z_]\w*="[^"]*")\])*')


def resolve(data: Any, path: str) -> Any:
    """The value at `path` (`.a["b c"][0][name="x"]`) in a JSON value; KeyError saying where
    it fails."""
    rest = path[1:] if path.startswith((".[", ".\"")) or path == "." else path
    at, pos = data, 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if m is None:
            raise KeyError(f"cannot read {rest[pos:]!r} in the path {path!r}")
        try:
            if m["key"] is not None or m["quoted"] is not None:
                at = at[m["key"] if m["key"] is not None else m["quoted"]]
            elif m["index"] is not None:
                at = at[int(m["index"])]
            else:
                found = [x for x in at if isinstance(x, dict) and str(x.get(m["field"])) == m["value"]]
                if len(found) != 1:
                    raise KeyError(f"{len(found)} items with {m['field']} = {m['value']!r}")
                at = found[0]
        except (KeyError, IndexError, TypeError) as err:
            raise KeyError(f"{path!r}: {m.group(0)!r} points at nothing ({err})") from None
        pos = m.end()
    return at


def evaluate(expression: str, data: Any) -> float:
    """An EXPRESSION (module docstring) over a source's JSON value."""
    values: list[Any] = []

    def name(m: re.Match) -> str:
        values.append(resolve(data, m.group(0)))
        return f"_p{len(values) - 1}"

    code = _PATH.sub(name, expression)
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        raise KeyError(f"{expression!r} is not an expression over paths") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id.startswith("_p"):
            return values[int(node.id[2:])]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            ops: dict[type, Callable[[Any, Any], Any]] = {
                ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y,
                ast.Mult: lambda x, y: x * y, ast.Div: lambda x, y: x / y}
            return ops[type(node.op)](a, b)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "len" and len(node.args) == 1):
            return len(ev(node.args[0]))
        raise KeyError(f"{expression!r}: only + - * /, numbers, len() and paths are allowed")

    value = ev(tree)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KeyError(f"{expression!r} is {value!r}, not a number")
    return float(value)


def disagreement(q: Quote, value: float) -> str | None:
    """None if the quoted number agrees with `value`; else what the document should say."""
    printed = q.printed.replace(",", "").replace("−", "-")
    shown = float(printed)
    v = 100 * value if q.percent else value
    if q.within is not None:
        ok = shown > 0 and v > 0 and max(shown / v, v / shown) <= q.within
        return None if ok else f"{v:.3g} (not within a factor {q.within:g} of {q.printed})"
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    half = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
    if abs(v - shown) <= half * (1 + 1e-9) + 1e-12:
        return None
    if exponent:
        return f"{v:.{decimals}e}"
    return f"{v:,.{decimals}f}" if "," in q.printed else f"{v:.{decimals}f}"


def all_quotes() -> list[Quote]:
    return [q for doc in PROSE for q in quotes((ROOT / doc).read_text(), doc)]


def check_quotes(found: list[Quote], value_of: Callable[[Quote], float]) -> None:
    """Every quote against its value; one AssertionError listing every stale or broken one."""
    problems = []
    for q in found:
        try:
            now = disagreement(q, value_of(q))
        except (KeyError, OSError, ValueError) as err:
            problems.append(f"{q}\n    points at nothing: {err}")
            continue
        if now is not None:
            problems.append(f"{q}\n    the source says {now}{'%' if q.percent else ''}")
    assert not problems, ("numbers quoted in the docs disagree with their sources; update the "
                          "document (or the marker):\n" + "\n".join(problems))


def file_value(q: Quote) -> float:
    path = ROOT / q.source
    if not path.is_file():
        raise KeyError(f"no file {q.source} (and no source of that name in SOURCES)")
    return evaluate(q.expression, json.loads(path.read_text()))


def test_quoted_numbers_match_the_recorded_json_files():
    """The fast half: every marker is well formed and names a JSON file of the repository or a
    source in SOURCES; those that quote a file agree with it."""
    found = all_quotes()
    assert len({q.doc for q in found}) >= 5, "the docs quote hardly any checked numbers"
    unknown = [str(q) for q in found if q.source not in SOURCES and not q.source.endswith(".json")]
    assert not unknown, "markers naming no source (add it to SOURCES?):\n" + "\n".join(unknown)
    unused = set(SOURCES) - {q.source for q in found}
    assert not unused, f"SOURCES quoted by no document: {sorted(unused)}"
    check_quotes([q for q in found if q.source not in SOURCES], file_value)


@pytest.mark.parametrize("name", [pytest.param(k, marks=[pytest.mark.slow] if s.slow else [])
                                  for k, s in SOURCES.items()])
def test_quoted_numbers_match_the_commands_that_make_them(name, tmp_path, monkeypatch):
    """Each named source computed once, and every number quoted from it checked."""
    monkeypatch.chdir(tmp_path)
    data = SOURCES[name].value(tmp_path)
    check_quotes([q for q in all_quotes() if q.source == name],
                 lambda q: evaluate(q.expression, data))


def test_the_number_checker_catches_stale_and_dangling_quotes():
    data = {"experiments": [{"name": "Ex1b", "loss_recovered": 0.86774}], "n": 1284,
            "w": [{"engine_s": 5.577, "limit_s": 5.591}], "tiny": 1.83e-5, "t": 5.6}

    def check(line: str) -> None:
        check_quotes(quotes(line, "doc.md"), lambda q: evaluate(q.expression, data))

    check('Ex1b: 86.8%<!-- check: s .experiments[name="Ex1b"].loss_recovered --> here')
    check("**1,284**<!-- check: s .n --> edges; 1.00x<!-- check: s .w[0].engine_s / .w[-1].limit_s -->")
    check("1.8e-5<!-- check: s .tiny --> and (86.77 points<!-- check: s .experiments[0]"
          '["loss_recovered"] * 100 -->), 2 s<!-- check: s .t ~10x -->')
    assert quotes("write `<!-- check: SOURCE EXPRESSION -->` after it", "doc.md") == []  # code
    with pytest.raises(AssertionError, match="inside a code block"):
        check("```\n1<!-- check: s .n -->\n```")
    for line, why in [
            ('86.7%<!-- check: s .experiments[name="Ex1b"].loss_recovered -->', "says 86.8%"),
            ("1,285<!-- check: s .n -->", "says 1,284"),
            ("0.5 s<!-- check: s .t ~10x -->", "not within a factor 10"),
            ("86.8%<!-- check: s .experiments[name=\"Ex9\"].loss_recovered -->", "points at nothing"),
            ("12<!-- check: s .n.m -->", "points at nothing"),
            ("12<!-- check: s .experiments -->", "not a number"),
            ("12<!-- check: s .n ** 2 -->", "only"),
            ("the number<!-- check: s .n -->", "points at no number"),
            ("86.8% of the rows<!-- check: s .n -->", "points at no number"),
            ("12<!-- check s .n -->", "must read")]:
        with pytest.raises(AssertionError, match=why):
            check(line)
    with pytest.raises(AssertionError, match="no file"):
        check_quotes(quotes("1<!-- check: docs/missing.json .n -->", "doc.md"), file_value)


def test_experiment_files_lists_every_field_of_the_format():
    """docs/experiment_files.md's field table names every field of `Experiment`, in order."""
    from causal_scrubbing.experiments import Experiment

    doc = (ROOT / "docs" / "experiment_files.md").read_text()
    table = doc.split("`Experiment` has these fields:", 1)[1].split("\n\n", 2)[1]
    documented = [name for row in table.splitlines()[2:]
                  for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    fields = [f.name for f in dataclasses.fields(Experiment)]
    assert documented == fields, (
        f"docs/experiment_files.md's field table is not Experiment's fields: missing "
        f"{[f for f in fields if f not in documented]}, not fields "
        f"{[f for f in documented if f not in fields]}; in the dataclass's order: {fields}")
