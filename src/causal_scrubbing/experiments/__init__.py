"""Experiments: a model graph, a dataset, a loss, hypotheses and published numbers.

Each experiment module defines `build() -> Experiment` (a registry entry may name another
function of the module: `module:function`). `load(name)` builds a bundled one by name and
`names()` lists them (`causal-scrub experiments` prints the list). A *suite* names several
bundled experiments (`tracr`: `tracr-reverse` and `tracr-xproportion`), which `causal-scrub
run` runs one after the other (`members(name)`). An *experiment
file* is a user-written Python file with the same `build()`; `load("path/to/file.py")` runs it,
so `causal-scrub run path/to/file.py` treats it exactly like a bundled experiment (see
docs/experiment_files.md).

Example:
    >>> from causal_scrubbing import experiments
    >>> exp = experiments.load("toy")
    >>> exp.name, len(exp.hypotheses)
    ('toy', 5)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import experiment
from ..core.data import Dataset
from ..core.errors import ScrubError, unknown_name
from ..core.graph import Graph
from ..core.hypothesis import InterpNode
from ..core.results import Run
from ..experiment import Experiment, Recipe, register_loader
from ..options import RunOptions
from ..pipeline import Executor
from ..report.circuit import claims_dict

#: experiment name -> (module, one-line description)
REGISTRY: dict[str, tuple[str, str]] = {
    "toy": ("causal_scrubbing.experiments.toy",
            "hand-built AND gate with a distractor input; every number checkable by hand"),
    "paren": ("causal_scrubbing.experiments.paren",
              "Redwood's parentheses-balance checker (Ex0a-Ex4) on our 3-layer model"),
    "induction": ("causal_scrubbing.experiments.induction",
                  "Redwood's induction-head hypotheses on our 2-layer attention-only model"),
    "ioi": ("causal_scrubbing.experiments.ioi",
            "indirect-object identification on our model trained on IOI prompts; with "
            "--weights DIR (a local Hugging Face gpt2), Wang et al.'s circuit in GPT-2 small"),
    "induction-sae": ("causal_scrubbing.experiments.sae:build_induction",
                      "previous-token latents of an SAE after layer 0 against the previous-token "
                      "head (docs/sae.md)"),
    "ioi-sae": ("causal_scrubbing.experiments.sae:build_ioi",
                "IO latents at S2 of an SAE after layer 0 against the IO-finder heads (docs/sae.md)"),
    "tracr-reverse": ("causal_scrubbing.experiments.tracr:build_reverse",
                      "tracr-compiled sequence reversal with auto-circuit's official circuits "
                      "(the tracr extra)"),
    "tracr-xproportion": ("causal_scrubbing.experiments.tracr:build_xproportion",
                          "tracr-compiled fraction of x so far with auto-circuit's official "
                          "circuits (the tracr extra)"),
}

#: The tracr library programs compiled with their true circuits (experiments/tracr/programs.py).
TRACR_LIB = ("length", "hist", "frac_prevs", "pair_balance", "count_less_freq", "sort_unique",
             "sort", "reverse", "sort_freq", "shuffle_dyck")
REGISTRY.update({f"tracr-lib-{p}": (f"causal_scrubbing.experiments.tracr.programs:build_{p}",
                                    f"tracr library program {p} compiled, with the compiler's "
                                    "true circuit (the tracr extra)") for p in TRACR_LIB})

#: suite name -> (its bundled experiments, one-line description)
SUITES: dict[str, tuple[tuple[str, ...], str]] = {
    "tracr": (("tracr-reverse", "tracr-xproportion"), "both tracr experiments, one after the other"),
    "tracr-lib": (tuple(f"tracr-lib-{p}" for p in TRACR_LIB),
                  "the tracr library programs with their true circuits, one after the other"),
}


def circuits(exp: Experiment) -> dict[str, dict[str, Any]]:
    """Each hypothesis' claims on the edges of the experiment's graph, which a run's report
    draws over the graph (`report.circuit.claims_dict`; a run on Ray keeps the same)."""
    return {k: claims_dict(exp.graph, h) for k, h in exp.hypotheses.items()}


def run_experiment(exp: Experiment, options: RunOptions | None = None, *,
                   executor: Executor | None = None, **kwargs: Any) -> Run:
    """`experiment.run_experiment` (the same arguments), with each hypothesis' claims kept in
    the `Run` (`circuits`) so that its report draws them over the model graph."""
    run = experiment.run_experiment(exp, options, executor=executor, **kwargs)
    run.circuits = circuits(exp)
    return run


def names() -> list[str]:
    return list(REGISTRY)


def members(name: str | os.PathLike) -> tuple[str, ...] | None:
    """The bundled experiments of the suite `name`, or None when `name` is no suite."""
    suite = SUITES.get(str(name))
    return None if suite is None else suite[0]


class ExperimentFileError(ScrubError):
    """An experiment file that is missing, fails to run, or has no proper `build()`."""


def load(name: str | os.PathLike, **options) -> Experiment:
    """Build the bundled experiment `name`, or run the experiment file at a path ending in `.py`.

    `options` are passed to its `build(**options)` (e.g. `load("ioi", weights="gpt2")`); with
    none, `build()` is called with no arguments, as experiment files expect.
    """
    if str(name).endswith(".py"):
        return load_file(name, **options)
    if (parts := members(name)) is not None:
        raise ScrubError(f"{str(name)!r} is a suite of experiments ({', '.join(parts)}): "
                         f"`causal-scrub run {name}` runs each of them; here give one of them.")
    if name not in REGISTRY:
        raise unknown_name("experiment", str(name), {**REGISTRY, **SUITES},
                           " (see `causal-scrub experiments`, or give a path to a .py file)")
    module, _, function = REGISTRY[str(name)][0].partition(":")
    build = getattr(importlib.import_module(module), function or "build")
    _check_options(build, options, f"Experiment {str(name)!r}")
    return build(**options)


def _check_options(build: Callable, options: dict, who: str) -> None:
    """A clear error for options (`--weights`, ...) that `build` does not take."""
    if not options:
        return
    params = inspect.signature(build).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    unknown = sorted(set(options) - {p.name for p in params})
    if unknown:
        raise ScrubError(f"{who} takes no {', '.join('--' + u for u in unknown)} option "
                         "(its build() has no such argument).")


def load_file(path: str | os.PathLike, **options) -> Experiment:
    """Run the experiment file `path` and return what its `build(**options)` returns.

    The file is imported as a module named `causal_scrubbing_experiment_file_<stem>_<hash>`
    (one name per resolved path, so it shadows no real module and loading it again replaces
    the old one). Every failure raises `ExperimentFileError` naming the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise ExperimentFileError(f"Experiment file {str(file)!r} {what}. Give the path to a .py file "
                                  "that defines build() (see docs/experiment_files.md).")
    file = file.resolve()
    stem = re.sub(r"\W", "_", file.stem)
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    module_name = f"causal_scrubbing_experiment_file_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        raise ExperimentFileError(f"Cannot import experiment file {str(file)!r}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        sys.modules.pop(module_name, None)
        if not isinstance(err, Exception):
            raise
        raise ExperimentFileError(f"Experiment file {str(file)!r} raised an error while being "
                                  f"imported{_where(err, file)}: {_describe(err)}") from err
    build = getattr(module, "build", None)
    if build is None or not callable(build):
        found = "defines no build()" if build is None else f"has a build that is a {type(build).__name__}"
        raise ExperimentFileError(
            f"Experiment file {str(file)!r} {found}. It must define a function "
            "`build() -> causal_scrubbing.experiments.Experiment` (see docs/experiment_files.md).")
    _check_options(build, options, f"Experiment file {str(file)!r}")
    try:
        exp = build(**options)
    except Exception as err:
        raise ExperimentFileError(f"build() in experiment file {str(file)!r} raised an error"
                                  f"{_where(err, file)}: {_describe(err)}") from err
    _check_experiment(exp, f"build() in experiment file {str(file)!r}")
    return exp


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _where(err: BaseException, file: Path) -> str:
    """` (line N, in f)` for the innermost traceback frame inside `file`, if any."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == file]
    if isinstance(err, SyntaxError) and err.lineno is not None and Path(err.filename or "") == file:
        return f" (line {err.lineno})"
    if not frames:
        return ""
    return f" (line {frames[-1].lineno}, in {frames[-1].name})"


def _check_experiment(exp: object, who: str) -> None:
    """Clear errors for the shapes of mistake a hand-written `build()` makes."""
    if not isinstance(exp, Experiment):
        raise ExperimentFileError(
            f"{who} returned a {type(exp).__name__}; it must return a "
            "causal_scrubbing.experiments.Experiment (see docs/experiment_files.md).")
    if not isinstance(exp.hypotheses, dict) or not exp.hypotheses:
        raise ExperimentFileError(f"{who} returned an Experiment with no hypotheses; give "
                                  "hypotheses={'name': cs.InterpNode(...), ...}.")
    for key, root in exp.hypotheses.items():
        if not isinstance(root, InterpNode):
            raise ExperimentFileError(f"{who}: hypothesis {key!r} is a {type(root).__name__}; "
                                      "each hypothesis must be a root cs.InterpNode.")
    for what, value, kind in (("graph", exp.graph, Graph), ("dataset", exp.dataset, Dataset)):
        if not isinstance(value, kind):
            raise ExperimentFileError(f"{who}: the Experiment's {what} is a {type(value).__name__}; "
                                      f"it must be a cs.{kind.__name__}.")
    if not callable(exp.loss_fn):
        raise ExperimentFileError(f"{who}: the Experiment's loss_fn is not callable; it must be "
                                  "(output, reference_rows) -> per-example loss [n].")


register_loader(load)  # names and paths in recipes (e.g. for Ray workers) resolve through `load`

__all__ = ["REGISTRY", "SUITES", "Experiment", "ExperimentFileError", "Recipe", "circuits", "load",
           "load_file", "members", "names", "run_experiment"]
