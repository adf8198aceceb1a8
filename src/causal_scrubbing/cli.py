"""The `causal-scrub` command: a thin layer over the library.

    causal-scrub experiments                 list the bundled experiments
    causal-scrub run NAME [--n N] [--seed S] [--out DIR]
                                             scrub every hypothesis of NAME, print the table,
                                             write DIR/results.json and DIR/report.html
    causal-scrub show NAME [--hypothesis ID] [--row I] [--seed S] [--n N]
                                             print each hypothesis tree and, for reference
                                             row I, the row every node and lane drew
    causal-scrub report DIR                  redraw DIR/report.html from DIR/results.json
    causal-scrub bench [--out FILE] [--only NAME] [--device D]
                                             time the engine against its limit, the literal
                                             reference and the hook-based loop (ratios)

NAME is a bundled experiment or the path to an experiment file (`my_experiment.py`, see
docs/experiment_files.md).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from . import experiments as registry
from .errors import ScrubError
from .experiments import run_experiment
from .report import format_table, write_results


@contextmanager
def _user_errors() -> Iterator[None]:
    """A `ScrubError` becomes one red line on stderr and exit status 2 (no traceback)."""
    try:
        yield
    except ScrubError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@contextmanager
def _notes() -> Iterator[list]:
    """Record warnings instead of printing them as they come (`_print_notes` lists them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _print_notes(caught: list) -> None:
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if notes:
        typer.echo("\nnotes:\n" + "\n".join(f"  - {m}" for m in notes))


def _load(name: str, n: int | None):
    """The experiment `name` (bundled or a file), after checking `--n`."""
    if n is not None and n < 1:
        raise ScrubError(f"--n must be a positive number of reference rows, got {n}.")
    return registry.load(name)


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Causal scrubbing: test interpretability hypotheses by resampling.")


@app.command("experiments")
def list_experiments() -> None:
    """List the bundled experiments."""
    for name, (_, description) in registry.REGISTRY.items():
        typer.echo(f"{name:12s} {description}")


@app.command()
def run(
    name: str = typer.Argument(..., help="experiment name (see `causal-scrub experiments`) or "
                                         "path to an experiment file ending in .py"),
    n: int = typer.Option(None, "--n", help="reference rows (default: the experiment's)"),
    seed: int = typer.Option(0, "--seed", help="random seed for every draw"),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="output directory"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: cpu)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Scrub every hypothesis of an experiment and write results.json and report.html."""
    logging.basicConfig(level=logging.WARNING)
    with _user_errors(), _notes() as caught:
        exp = _load(name, n)
        result = run_experiment(exp, n=n, seed=seed, progress=not quiet, device=device)
    typer.echo(format_table(result))
    _print_notes(caught)
    json_path, html_path = write_results(result, out)
    typer.echo(f"\nwrote {json_path} and {html_path}")


@app.command()
def show(
    name: str = typer.Argument(..., help="experiment name or path to an experiment file (.py)"),
    hypothesis: str = typer.Option(None, "--hypothesis", help="only this hypothesis (default: all)"),
    row: int = typer.Option(0, "--row", help="which reference row to explain (0-based)"),
    seed: int = typer.Option(0, "--seed", help="random seed, as for `run`"),
    n: int = typer.Option(None, "--n", help="reference rows, as for `run` (default: the experiment's)"),
) -> None:
    """Print each hypothesis tree and what one reference row's scrubbed run reads.

    With the same --seed and --n as `run`, the rows shown are the ones that run used.
    """
    from .show import explain_experiment

    logging.basicConfig(level=logging.WARNING)
    with _user_errors(), _notes() as caught:
        exp = _load(name, n)
        explanations = explain_experiment(exp, hypothesis, row=row, n=n, seed=seed)
    typer.echo(f"{exp.name}: {exp.description}")
    for e in explanations:
        typer.echo("\n" + str(e))
    _print_notes(caught)


@app.command("report")
def rebuild_report(
    directory: Path = typer.Argument(..., help="a run's output directory, holding results.json"),
) -> None:
    """Redraw DIR/report.html from DIR/results.json (nothing is recomputed)."""
    from .report import rebuild_report as rebuild

    with _user_errors():
        html_path = rebuild(directory)
    typer.echo(f"wrote {html_path}")


@app.command()
def bench(
    out: Path = typer.Option(None, "--out", help="write the measurements as JSON to this file"),
    only: list[str] = typer.Option(None, "--only", help="workloads whose name contains this (repeatable)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, ..."),
    repeats: int = typer.Option(3, "--repeats", help="timed runs per evaluator (the median is kept)"),
    quick: bool = typer.Option(False, "--quick", help="tiny workloads (seconds; for smoke tests)"),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="also time the literal reference (minutes on paren)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars or log lines"),
) -> None:
    """Time the engine against k clean forward passes, the literal reference and hook patching."""
    from . import bench as benchmark

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    with _user_errors():
        if repeats < 1:
            raise ScrubError("--repeats must be at least 1.")
        data = benchmark.run(quick=quick, repeats=repeats, device=device, only=only or None,
                             out=out, progress=not quiet, with_reference=reference)
    typer.echo(f"machine: {data['machine']}\n")
    typer.echo(data["table"])
    if out is not None:
        typer.echo(f"\nwrote {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
