"""The README and docs/concepts.md run as written, and print exactly what they show.

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
README's `causal-scrub run paren` table (`rows of:`) takes about 85 s in full, so
`test_readme_paren_table_rows` recomputes one of its rows and the baseline (and checks the rest
cheaply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/concepts.md"]

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


def test_readme_paren_table_rows():
    """README's `causal-scrub run paren` table, on the rows it is cheap to recompute.

    All nine hypotheses take about 85 s on a 2-core CPU; each hypothesis' draws do not depend
    on which others run beside it, so recomputing Ex1b alone (with the model and the Ex0b
    baseline that every run computes) checks its row exactly. Every row's published number
    and the order of the rows are checked against the experiment itself.
    """
    from causal_scrubbing.experiments import load, run_experiment
    from causal_scrubbing.report import format_table

    (table,) = [b for b in blocks(ROOT / "README.md")
                if b.rows_of is not None and b.rows_of.startswith("causal-scrub run paren")]
    shown = _table_rows(table.body.splitlines())
    exp = load("paren")
    assert list(shown) == list(exp.hypotheses), "README's paren table lists other hypotheses"
    for key, cells in shown.items():
        assert cells[-1] == f"{exp.published[key]:.1%}", f"README: published number of {key}"
    sub = dataclasses.replace(exp, hypotheses={"Ex1b": exp.hypotheses["Ex1b"]})
    run = run_experiment(sub, seed=0)
    now = _table_rows(format_table(run).splitlines())
    assert shown["Ex1b"] == now["Ex1b"], (
        f"README's paren table is stale: Ex1b shows {shown['Ex1b']}, the code gives {now['Ex1b']}")
    # Ex0a scrubs nothing and Ex0b is the baseline itself: their losses are the run's own
    assert shown["Ex0a"][-6] == f"{run.model_loss:.4f}", "README: Ex0a's loss is stale"
    assert shown["Ex0b"][-6] == f"{run.baseline_loss:.4f}", "README: Ex0b's loss is stale"
    assert all(cells[-2] == str(exp.default_n) for cells in shown.values())
