"""The `causal-scrub` command: a thin layer over the library.

    causal-scrub experiments                 list the bundled experiments
    causal-scrub run NAME [--n N] [--seed S] [--out DIR] [--force] [--device D]
                                             scrub every hypothesis of NAME, print the table,
                                             write DIR/results.json and DIR/report.html
                                             (DIR is checked first; an existing run there is
                                             kept unless --force)
    causal-scrub run NAME ... --ray [--address ADDR] [--workers K] [--gpus-per-task G]
                                             the same, as tasks on a Ray cluster (a local one
                                             unless --address; docs/distributed.md)
    causal-scrub show NAME [--hypothesis ID] [--row I] [--seed S] [--n N]
                                             print each hypothesis tree and, for reference
                                             row I, the row every node and lane drew
    causal-scrub report DIR                  redraw DIR/report.html from DIR/results.json
    causal-scrub audit DIR [--negative-parts] [--max-scrubs K]
                                             audit a finished run for hypotheses that pass for
                                             the wrong reasons; write DIR/audit.json (docs/audit.md)
    causal-scrub search NAME --threshold T --out DIR [--granularity edges|nodes] [--n N]
                                             find which edges matter and what the kept nodes
                                             compute; write DIR/search.json, hypothesis.py
                                             and report.html (docs/search.md)
    causal-scrub train-sae NAME --site SITE --out DIR [--d-sae N] [--k K] [--steps S]
                                             train a top-k SAE at a site of NAME's model and
                                             save it in the SAELens format (docs/sae.md)
    causal-scrub bench [--out FILE] [--only NAME] [--device D]
                                             time the engine against its limit, the literal
                                             reference and the hook-based loop (ratios)

NAME is a bundled experiment or the path to an experiment file (`my_experiment.py`, see
docs/experiment_files.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import typer
from typer.core import TyperCommand

from . import experiments as registry
from .core.errors import ScrubError
from .experiments import run_experiment
from .options import RunOptions, SearchOptions
from .report import RESULTS_JSON, format_table, write_results

#: What `causal-scrub search NAME --latents` writes.
LATENTS_JSON = "latents.json"


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


class Command(TyperCommand):
    """A command whose help names its argument NAME (not {name}) and shows no type on flags."""

    def collect_usage_pieces(self, ctx):
        return [p.replace("{", "").replace("}", "") for p in super().collect_usage_pieces(ctx)]

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


def _options(cls: type[RunOptions], **values) -> RunOptions:
    """`cls(**values)`, its errors naming the command-line flag (`--n must be ...`)."""
    try:
        return cls(**values)
    except ScrubError as err:
        message = re.sub(r"^([a-z_]+) must", lambda m: f"--{m.group(1).replace('_', '-')} must",
                         str(err))
        message = message.replace("--memory-budget-mb", "--memory-budget")
        raise ScrubError(message) from None


def _load(name: str, n: int | None, quiet: bool = True, **options):
    """The experiment `name` (bundled or a file), after checking `--n`; `options` (those given)
    go to its `build()`. Unless `quiet`, a status line says what is loading (a model and its
    dataset can take tens of seconds)."""
    if n is not None:
        _options(RunOptions, n=n)
    if not quiet:
        typer.echo(f"loading {name} (model, dataset, hypotheses) ...", err=True)
    return registry.load(name, **{k: v for k, v in options.items() if v is not None})


@contextmanager
def _interruptible(out: Path, created: bool) -> Iterator[None]:
    """Ctrl-C becomes one line and exit status 130; nothing half-written is left in `out`."""
    try:
        yield
    except KeyboardInterrupt:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        typer.secho(f"interrupted; nothing written to {out}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


def default_out(name: str) -> Path:
    """Where `run NAME` writes without --out: runs/<experiment> (a file's stem for a path).

    >>> default_out("paren"), default_out("examples/my_experiment.py")
    (PosixPath('runs/paren'), PosixPath('runs/my_experiment'))
    """
    return Path("runs") / (Path(name).stem if name.endswith(".py") else name)


_DEVICE = re.compile(r"(cpu|mps|cuda)(?::(\d+))?")


def _check_device(device: str | None) -> None:
    """Refuse a `--device` that is not `cpu`, `cuda`, `cuda:N` or `mps`, or that this machine
    lacks, before anything is computed."""
    if device is None:
        return
    m = _DEVICE.fullmatch(device.strip())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ScrubError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N (N a GPU "
                         "index) or mps.")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ScrubError(f"--device {device}: CUDA is not available here (no GPU, or a "
                             f"CPU-only torch build: {torch.__version__}); use --device cpu.")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            ids = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
            raise ScrubError(f"--device {device}: this machine has {count} CUDA device"
                             f"{'s' if count != 1 else ''} ({ids}); pick one of them.")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None
                              and torch.backends.mps.is_available()):
        raise ScrubError(f"--device {device}: Apple's MPS backend is not available here; use "
                         "--device cpu.")


def _check_ray_options(use_ray: bool, address: str | None, workers: int | None,
                       gpus_per_task: float) -> None:
    """Refuse cluster options without --ray, and impossible values, before any compute."""
    given = [flag for flag, value in (("--address", address), ("--workers", workers),
                                      ("--gpus-per-task", gpus_per_task or None)) if value is not None]
    if given and not use_ray:
        raise ScrubError(f"{', '.join(given)} only apply to runs on Ray; add --ray.")
    if workers is not None and workers < 1:
        raise ScrubError(f"--workers must be at least 1, got {workers}.")
    if gpus_per_task < 0:
        raise ScrubError(f"--gpus-per-task must be 0 or more, got {gpus_per_task}.")


def _prepare_out(out: Path, force: bool, marker: str = RESULTS_JSON) -> bool:
    """Check, before anything is computed, that `out` is a directory we can write a run to and
    holds no earlier run (a `marker` file) unless `force`. Returns whether the directory was
    created here."""
    if out.exists() and not out.is_dir():
        raise ScrubError(f"--out {out} is a file, not a directory; give a directory for "
                         f"{marker} and report.html.")
    if (out / marker).exists() and not force:
        raise ScrubError(f"--out {out} already holds a run ({marker}); pass --force to "
                         "overwrite it, or choose another --out directory.")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ScrubError(f"Cannot write to --out {out}: {err.strerror or err}; choose a "
                         "directory you can write to.") from None
    return created


def _check_out_file(out: Path) -> None:
    """Check, before anything is computed, that the file `out` can be written."""
    if out.is_dir():
        raise ScrubError(f"--out {out} is a directory; give a file name for the JSON, e.g. "
                         f"{out / 'bench.json'}.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ScrubError(f"Cannot write to --out {out}: {err.strerror or err}; choose a "
                         "location you can write to.") from None


def _write_error(err: OSError, where: Path) -> ScrubError:
    return ScrubError(f"Cannot write to {where}: {err.strerror or err}; the results were not "
                      "saved (choose a location you can write to and run again).")


MEMORY_BUDGET_HELP = ("the most memory the process may hold, in MB (resident on CPU, allocated on "
                      "CUDA): chunks are sized to fit and freed memory is handed back when it "
                      "is crossed (default: what is in use at the start + 1 GB)")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Causal scrubbing: test interpretability hypotheses by resampling.")


@app.command("experiments", cls=Command)
def list_experiments() -> None:
    """List the bundled experiments."""
    width = max(map(len, [*registry.REGISTRY, *registry.SUITES]))
    for name, (_, description) in registry.REGISTRY.items():
        typer.echo(f"{name:{width}s}  {description}")
    for name, (parts, description) in registry.SUITES.items():
        typer.echo(f"{name:{width}s}  {description} ({', '.join(parts)})")


@app.command(cls=Command)
def run(
    name: str = typer.Argument(..., metavar="NAME",
                               help="experiment name (see `causal-scrub experiments`) or path to "
                                    "an experiment file ending in .py"),
    n: int = typer.Option(None, "--n", help="reference rows (default: the experiment's)"),
    seed: int = typer.Option(0, "--seed", help="random seed for every draw"),
    out: Path = typer.Option(None, "--out",
                             help="output directory, checked before anything is computed "
                                  "(default: runs/NAME)"),
    force: bool = typer.Option(False, "--force",
                               help="overwrite the run already in --out (default: refuse)"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: cpu)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    weights: Path = typer.Option(None, "--weights",
                                 help="model weights directory (ioi: a local Hugging Face gpt2)"),
    use_ray: bool = typer.Option(False, "--ray", help="run the work as Ray tasks (needs the ray extra; "
                                                      "see docs/distributed.md)"),
    address: str = typer.Option(None, "--address", help="with --ray: join this Ray cluster (e.g. "
                                                        "auto, HOST:6379); default: start a local one"),
    workers: int = typer.Option(None, "--workers", help="with --ray: worker processes (default: "
                                                        "one per CPU of the cluster)"),
    gpus_per_task: float = typer.Option(0.0, "--gpus-per-task",
                                        help="with --ray: GPUs each worker holds (e.g. 1, 0.5)"),
    memory_budget: float = typer.Option(None, "--memory-budget", help=MEMORY_BUDGET_HELP),
    audit: bool = typer.Option(True, "--audit/--no-audit",
                               help="audit the results for hypotheses that pass for the wrong "
                                    "reasons (docs/audit.md; about one more run's worth of scrubs)"),
) -> None:
    """Scrub every hypothesis of an experiment and write results.json and report.html.

    --out must be a directory that can be written; one that already holds a run
    (results.json) is refused unless --force is given. Both are checked before any compute.
    With --ray the same numbers are computed by Ray workers (docs/distributed.md). A suite
    (e.g. tracr) runs each of its experiments, each into its own directory under --out.
    """
    logging.basicConfig(level=logging.WARNING)
    out = out if out is not None else default_out(name)
    parts = registry.members(name)
    targets = [(name, out)] if parts is None else [(part, out / part) for part in parts]
    with _user_errors():
        _check_ray_options(use_ray, address, workers, gpus_per_task)
        if use_ray and memory_budget is not None:
            raise ScrubError("--memory-budget applies to a single-process run; with --ray each "
                             "worker sizes its chunks by the default budget. Drop one of them.")
        if gpus_per_task == 0:
            _check_device(device)
        options = _options(RunOptions, n=n, seed=seed, progress=not quiet,
                           device=device if gpus_per_task == 0 and not use_ray else None,
                           memory_budget_mb=memory_budget)
        created = [_prepare_out(target, force) for _, target in targets]
    for i, ((target_name, target), made) in enumerate(zip(targets, created)):
        if i:
            typer.echo("")
        with _interruptible(target, made):
            _run_one(target_name, target, made, options, device=device, quiet=quiet,
                     weights=weights, use_ray=use_ray, address=address, workers=workers,
                     gpus_per_task=gpus_per_task, audit=audit)


def _run_one(name: str, out: Path, created: bool, options: RunOptions, *, device: str | None,
             quiet: bool, weights: Path | None, use_ray: bool, address: str | None,
             workers: int | None, gpus_per_task: float, audit: bool = True) -> None:
    """`run` for one experiment, into the checked directory `out`: print the table, write the
    results (`created`: `out` was made for this run, so it is removed again if nothing ran)."""
    try:
        with _user_errors(), _notes() as caught:
            exp = _load(name, options.n, quiet, weights=weights)
            if use_ray:
                from . import distributed

                if not quiet:
                    logging.getLogger(distributed.__name__).setLevel(logging.INFO)
                build_options = {"weights": str(weights.expanduser().resolve())} if weights else {}
                result = distributed.run_experiment(
                    exp, recipe=name, options=build_options, run_options=options,
                    seed=options.seed, device=device, address=address, workers=workers,
                    gpus_per_task=gpus_per_task)
            else:
                result = run_experiment(exp, options)
            if audit:
                from .audit import audit as audit_run

                try:  # a failed audit must not lose the run's results
                    audited = audit_run(result, exp, progress=not quiet)
                    result.audit = audited.to_dict()
                except ScrubError as err:
                    warnings.warn(f"The audit did not run: {err}", stacklevel=1)
                    audit = False
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty directory behind for a run that never finished
        raise
    typer.echo(format_table(result))
    if audit:
        typer.echo("\n" + str(audited))
    _print_notes(caught)
    with _user_errors():
        try:
            json_path, html_path = write_results(result, out)
            if audit:
                from .audit import save_losses

                audited.save(out)
                save_losses(result, out)
        except OSError as err:
            raise _write_error(err, out) from None
    typer.echo(f"\nwrote {json_path} and {html_path}" + (" (and audit.json)" if audit else ""))


@app.command(cls=Command)
def show(
    name: str = typer.Argument(..., metavar="NAME",
                               help="experiment name or path to an experiment file (.py)"),
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


def _floats(text: str, option: str) -> list[float]:
    """A comma-separated list of numbers given to `option` ("" is none)."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ScrubError(f"{option} takes numbers separated by commas, e.g. 0.001,0.01; "
                         f"got {text!r}.") from None


@app.command("search", cls=Command)
def search_command(
    name: str = typer.Argument(..., metavar="NAME",
                               help="experiment name or path to an experiment file (.py)"),
    threshold: float = typer.Option(None, "--threshold",
                                    help="loss recovered (a fraction, e.g. 0.95) every step keeps "
                                         "(required, but with --curve: default 0.9)"),
    granularity: str = typer.Option("edges", "--granularity", help="edges or nodes"),
    n: int = typer.Option(None, "--n", help="search rows, and held-out rows (default: the "
                                            "experiment's n, at most 1000)"),
    seed: int = typer.Option(0, "--seed", help="random seed for every draw"),
    out: Path = typer.Option(..., "--out", help="output directory (checked before any compute)"),
    force: bool = typer.Option(False, "--force", help="overwrite a search already in --out"),
    draws: str = typer.Option("shared", "--draws",
                              help="shared (one other input, as ACDC) or independent (one per node)"),
    tolerances: str = typer.Option("", "--tolerances",
                                   help="per-step limits of passes before the last, e.g. "
                                        "0.001,0.01 (fractions of loss recovered; default: one "
                                        "pass)"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: cpu)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    memory_budget: float = typer.Option(None, "--memory-budget", help=MEMORY_BUDGET_HELP),
    curve: bool = typer.Option(False, "--curve", help="instead: the faithfulness curve of --method "
                                                      "(DIR/curve.json and curve.html; docs/search.md)"),
    method: str = typer.Option("search", "--method",
                               help="with --curve: search (the default search), ranked, greedy, "
                                    "acdc, eap or eap-ig"),
    taus: str = typer.Option("", "--taus", help="with --curve --method acdc: ACDC's sweep, as "
                                                "fractions of the loss gap, e.g. 0.001,0.01,0.1 "
                                                "(default: 1e-4 to 0.3)"),
    schedule: str = typer.Option(None, "--schedule",
                                 help="ranked (EAP-IG ranks, the smallest passing top-k, then "
                                      "pruning; default --tolerances 0.002,0.01) or greedy (every "
                                      "edge, from the output backwards, ACDC's order); default: "
                                      "ranked for edges, greedy for nodes; the feature step "
                                      "follows either"),
    pairs: str = typer.Option(None, "--pairs", help="with --curve: a dataset field; MIB's ablation "
                                                    "pairs each row with a row of equal value"),
    latents: bool = typer.Option(False, "--latents",
                                 help="instead: which single SAE latents matter (induction-sae, "
                                      "ioi-sae): latent groups searched and halved down to "
                                      "--floor latents (DIR/latents.json; docs/sae.md)"),
    floor: int = typer.Option(1, "--floor", help="with --latents: the group size to stop at"),
    groups: int = typer.Option(16, "--groups", help="with --latents: groups of the first round"),
) -> None:
    """Search which edges (or nodes) matter and what the kept nodes compute.

    Writes DIR/search.json, DIR/hypothesis.py (an experiment file: `causal-scrub run
    DIR/hypothesis.py --seed S` reproduces the held-out number) and DIR/report.html.
    With --curve, writes DIR/curve.json and DIR/curve.html instead.
    """
    from .report.search import write_search_report
    from .searching import SEARCH_JSON, search

    logging.basicConfig(level=logging.WARNING)
    if latents:
        return _latents_command(name, threshold, n, seed, out, force, floor, groups, quiet, curve)
    if curve:
        return _curve_command(name, method, threshold, n, seed, out, force, tolerances, device,
                              quiet, pairs, taus)
    with _user_errors():
        if threshold is None:
            raise ScrubError("--threshold is required (e.g. --threshold 0.9), except with --curve.")
        if schedule is not None and schedule not in ("greedy", "ranked"):
            raise ScrubError(f"--schedule must be greedy or ranked, got {schedule!r}.")
        if schedule == "ranked" and granularity != "edges":
            raise ScrubError("--schedule ranked searches edges; drop --granularity nodes.")
        _check_device(device)
        options = _options(SearchOptions, threshold=threshold, granularity=granularity, n=n,
                           seed=seed, draws=draws, device=device,
                           tolerances=tuple(_floats(tolerances, "--tolerances")),
                           progress=not quiet, memory_budget_mb=memory_budget)
        assert isinstance(options, SearchOptions)
        created = _prepare_out(out, force, SEARCH_JSON)
    try:
        with _interruptible(out, created), _user_errors(), _notes() as caught:
            exp = _load(name, n, quiet)
            rows = n if n is not None else min(exp.default_n or 1000, 1000)
            found = search(exp.search_graph or exp.graph, exp.dataset, exp.loss_fn,
                           options=options.replace(n=rows, n_heldout=rows),
                           features=exp.features, baseline=exp.baseline,
                           schedule=schedule)  # type: ignore[arg-type]  # (checked above)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    experiment = name if not name.endswith(".py") else str(Path(name).expanduser().resolve())
    h = found.heldout
    typer.echo(f"{exp.name}: {len(found.kept)} kept {'edges' if granularity == 'edges' else 'node outputs'}"
               f" of the graph's {found.n_edges}; features: "
               + (", ".join(f"{k} = {v}" for k, v in found.features.items()) or "none"))
    typer.echo(f"loss recovered: {100 * found.loss_recovered:.1f}% on {found.n} search rows, "
               f"{100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}%, {100 * h.ci[1]:.1f}%] on "
               f"{h.n} held-out rows")
    typer.echo(f"{found.candidates} candidates in {found.seconds:.1f} s "
               f"({found.candidates_per_second:.1f} per second)")
    for step in found.trace:
        if step["step"] == "feature" and str(step["what"]).startswith("skipped"):
            typer.echo(f"feature step skipped: {step.get('reason', step['what'])}")
    _print_notes(caught)
    with _user_errors():
        try:
            json_path, py_path = found.save(out, experiment)
            html_path = write_search_report(json_path)
        except OSError as err:
            raise _write_error(err, out) from None
    typer.echo(f"\nwrote {json_path}, {py_path} and {html_path}")


def _latents_command(name: str, threshold: float | None, n: int | None, seed: int, out: Path,
                     force: bool, floor: int, groups: int, quiet: bool, curve: bool) -> None:
    """`causal-scrub search NAME --latents`: `searching.latents.search_latents` on the
    experiment's SAE site (`experiments.sae.LATENT_SITES`)."""
    from .core.results import atomic_write
    from .experiments.sae import LATENT_SITES
    from .searching.latents import search_latents

    with _user_errors():
        if curve:
            raise ScrubError("--latents and --curve are two different searches; give one of them.")
        if threshold is None:
            raise ScrubError("--threshold is required with --latents (e.g. --threshold 0.9).")
        if name not in LATENT_SITES:
            raise ScrubError(f"--latents searches the SAE latents of {', '.join(LATENT_SITES)}; "
                             f"{name!r} has no SAE site.")
        created = _prepare_out(out, force, LATENTS_JSON)
    try:
        with _interruptible(out, created), _user_errors(), _notes() as caught:
            exp = _load(name, n, quiet)
            site = LATENT_SITES[name]()
            rows = n if n is not None else 200
            found = search_latents(site.graph, site.site, site.sae, exp.dataset, exp.loss_fn,
                                   threshold=threshold, readers=site.readers, error=site.error,
                                   n_groups=groups, floor=floor, order=site.order,
                                   baseline=site.baseline, n=rows, n_heldout=rows, seed=seed,
                                   progress=not quiet)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    h = found.heldout
    typer.echo(f"{name}: {site.what}: {len(found.latents)} of {found.d_sae} latents kept: "
               + (", ".join(map(str, found.latents)) or "none"))
    typer.echo(f"loss recovered: {100 * found.loss_recovered:.1f}% on {found.n} search rows, "
               f"{100 * h.loss_recovered:.1f}% [{100 * h.ci[0]:.1f}%, {100 * h.ci[1]:.1f}%] on "
               f"{h.n} held-out rows")
    typer.echo(f"{found.candidates} candidates in {len(found.rounds)} rounds, {found.seconds:.1f} s")
    _print_notes(caught)
    path = out / LATENTS_JSON
    with _user_errors():
        try:
            atomic_write(path, json.dumps({"experiment": name, "what": site.what,
                                           **found.to_json()}, indent=1) + "\n")
        except OSError as err:
            raise _write_error(err, out) from None
    typer.echo(f"\nwrote {path}")


def _curve_command(name: str, method: str, threshold: float | None, n: int | None, seed: int,
                   out: Path, force: bool, tolerances: str, device: str | None, quiet: bool,
                   pairs: str | None, taus: str = "") -> None:
    """`causal-scrub search NAME --curve`: see `curve.experiment_curves`."""
    from .options import check_tolerances
    from .searching.curve import CURVE_JSON, CURVE_METHODS, check_taus, experiment_curves

    with _user_errors():
        if method not in CURVE_METHODS:
            raise ScrubError(f"--method must be one of {', '.join(CURVE_METHODS)}, got {method!r}.")
        steps = check_tolerances(_floats(tolerances, "--tolerances"))
        sweep = check_taus(_floats(taus, "--taus")) if taus.strip() else None
        if sweep is not None and method != "acdc":
            raise ScrubError("--taus is ACDC's sweep; give it with --method acdc.")
        _check_device(device)
        created = _prepare_out(out, force, CURVE_JSON)
    try:
        with _interruptible(out, created), _user_errors(), _notes() as caught:
            exp = _load(name, n, quiet)
            rows = n if n is not None else min(exp.default_n or 1000, 1000)
            main, extra = experiment_curves(exp, method=method, n=rows, seed=seed,
                                            threshold=0.9 if threshold is None else threshold,
                                            tolerances=steps, pairs=pairs, device=device,
                                            progress=not quiet, taus=sweep)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    for c in (main.to_dict(), extra["counterfactual"]):
        if "loss_recovered" not in c:
            typer.echo(f"MIB's ablation: {c['ablation']}")
            continue
        typer.echo(f"{exp.name}: {method}, {c['ablation']}: CPR {c['cpr']:.3f}, CMD {c['cmd']:.3f} "
                   f"({c['n']} held-out rows, {c['seconds']:.1f} s)")
        for s, k, f, lo, hi in zip(c["sizes"], c["edges"], c["loss_recovered"], c["ci_low"],
                                   c["ci_high"]):
            typer.echo(f"  {100 * s:6g}% ({k:4d} edges): {100 * f:6.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    _print_notes(caught)
    with _user_errors():
        try:
            json_path, html_path = main.save(out, {**extra, "experiment": name})
        except OSError as err:
            raise _write_error(err, out) from None
    typer.echo(f"\nwrote {json_path} and {html_path}")


@app.command("report", cls=Command)
def rebuild_report(
    directory: Path = typer.Argument(..., metavar="DIR",
                                     help="a run's or a search's output directory (results.json "
                                          "or search.json)"),
) -> None:
    """Redraw DIR/report.html from DIR/results.json, or a search's from DIR/search.json
    (nothing is recomputed)."""
    from .report import RESULTS_JSON
    from .report import rebuild_report as rebuild
    from .report.search import write_search_report
    from .searching import SEARCH_JSON

    with _user_errors():
        if not (directory / RESULTS_JSON).exists() and (directory / SEARCH_JSON).is_file():
            html_path = write_search_report(directory / SEARCH_JSON)
        else:
            html_path = rebuild(directory)
    typer.echo(f"wrote {html_path}")


@app.command("audit", cls=Command)
def audit_command(
    directory: Path = typer.Argument(..., metavar="DIR",
                                     help="a run's output directory, holding results.json"),
    experiment: str = typer.Option(None, "--experiment",
                                   help="the experiment (name or .py path) that made the run "
                                        "(default: the name results.json records)"),
    weights: Path = typer.Option(None, "--weights", help="as for `run` (ioi: a local gpt2)"),
    max_scrubs: int = typer.Option(None, "--max-scrubs",
                                   help="most extra scrubs for specificity and negative parts "
                                        "(default: max(8, hypotheses); 0: none)"),
    negative_parts: bool = typer.Option(False, "--negative-parts",
                                        help="also try every claimed and resampled part (one scrub each)"),
    specificity: bool = typer.Option(True, "--specificity/--no-specificity",
                                     help="weaken and strengthen every SameFeature claim"),
) -> None:
    """Audit a finished run: write DIR/audit.json and add an audit section to its report."""
    from .experiments.auditing import audit_directory

    logging.basicConfig(level=logging.WARNING)
    with _user_errors(), _notes() as caught:
        options = {"weights": weights} if weights is not None else {}
        result, path = audit_directory(directory, experiment=experiment, options=options,
                                       max_scrubs=max_scrubs, negative_parts=negative_parts,
                                       specificity=specificity)
    typer.echo(str(result))
    _print_notes(caught)
    typer.echo(f"\nwrote {path}; updated {directory / RESULTS_JSON} and its report.html")


@app.command(cls=Command)
def bench(
    out: Path = typer.Option(None, "--out", help="write the measurements as JSON to this file"),
    only: list[str] = typer.Option(None, "--only", help="workloads whose name contains this (repeatable)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or mps"),
    repeats: int = typer.Option(3, "--repeats", help="timed runs per evaluator (the median is kept)"),
    quick: bool = typer.Option(False, "--quick", help="tiny workloads (seconds; for smoke tests)"),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="also time the literal reference (minutes on paren)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars or log lines"),
    memory_budget: float = typer.Option(None, "--memory-budget", help=MEMORY_BUDGET_HELP),
    scale: int = typer.Option(None, "--scale",
                              help="instead: `causal-scrub run` of one experiment (--only, "
                                   "default paren) at this many rows beside --scale-base rows, each "
                                   "in its own process: time per row and peak resident memory"),
    scale_base: int = typer.Option(4000, "--scale-base", help="rows of the base run of --scale"),
    threads: str = typer.Option(None, "--threads",
                                help="torch thread counts to measure each workload at, e.g. 1,2 "
                                     "(default: torch's own)"),
) -> None:
    """Time the engine against k clean forward passes, the literal reference, hook patching and
    the TransformerLens peer."""
    from . import bench as benchmark

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    with _user_errors():
        if repeats < 1:
            raise ScrubError("--repeats must be at least 1.")
        _check_device(device)
        if out is not None:
            _check_out_file(out)
        if scale is not None:
            from .bench import scale as scaling

            if device != "cpu" or (only and len(only) > 1):
                raise ScrubError("--scale runs one experiment (--only NAME) on the CPU.")
            data = scaling.run(only[0] if only else "paren", n=scale, base_n=scale_base,
                               memory_budget_mb=memory_budget, out=out)
            typer.echo(f"machine: {data['machine']}\n\n{scaling.format_table(data)}")
            if out is not None:
                typer.echo(f"\nwrote {out}")
            return
        data = benchmark.run(quick=quick, repeats=repeats, device=device, only=only or None,
                             out=out, progress=not quiet, with_reference=reference,
                             memory_budget_mb=memory_budget, threads=_thread_counts(threads))
    typer.echo(f"machine: {data['machine']}\n")
    typer.echo(data["table"])
    if out is not None:
        typer.echo(f"\nwrote {out}")


def _thread_counts(text: str | None) -> list[int] | None:
    """`--threads 1,2` as [1, 2] (None when not given)."""
    if text is None:
        return None
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise ScrubError(f"--threads {text!r}: give positive thread counts separated by commas, "
                         "e.g. --threads 1,2.")
    return counts


@app.command("train-sae", cls=Command)
def train_sae(
    experiment: str = typer.Argument(..., metavar="NAME",
                                     help="a bundled experiment whose model to train on"),
    site: str = typer.Option(..., "--site", help="graph node (m0) or TransformerLens hook name "
                                                 "(blocks.0.hook_resid_post)"),
    out: Path = typer.Option(..., "--out", help="directory to write the SAE to (SAELens format)"),
    d_sae: int = typer.Option(512, "--d-sae", help="latents"),
    k: int = typer.Option(16, "--k", help="active latents per token (top-k)"),
    steps: int = typer.Option(3000, "--steps", help="Adam steps"),
    train_rows: int = typer.Option(256, "--train-rows", help="dataset rows to train on"),
    eval_rows: int = typer.Option(128, "--eval-rows", help="held-out rows the numbers are measured on"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a top-k SAE at a site of a bundled model; print and save its reconstruction numbers."""
    from .experiments.sae.train import train_for_experiment

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with _user_errors():
        record = train_for_experiment(experiment, site, out, d_sae=d_sae, k=k, steps=steps,
                                      train_rows=train_rows, eval_rows=eval_rows, seed=seed)
    for key, value in record["held_out"].items():
        typer.echo(f"{key:>20}: {value}")
    typer.echo(f"wrote {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
