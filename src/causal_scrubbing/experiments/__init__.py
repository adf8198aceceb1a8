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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..data import Dataset
from ..errors import ScrubError, unknown_name
from ..graph import Graph
from ..hypothesis import InterpNode
from ..results import Run, ScrubResult
from ..samplers import Feature
from ..scrubbing import LossFn, scrub_many

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

#: suite name -> (its bundled experiments, one-line description)
SUITES: dict[str, tuple[tuple[str, ...], str]] = {
    "tracr": (("tracr-reverse", "tracr-xproportion"), "both tracr experiments, one after the other"),
}


@dataclass
class Experiment:
    """Everything `causal-scrub run` needs to scrub a family of hypotheses on one model."""

    name: str
    description: str
    graph: Graph
    dataset: Dataset
    loss_fn: LossFn
    hypotheses: dict[str, InterpNode]  # id -> root, in the order of the results table
    baseline: InterpNode | None = None  # None: the random-output baseline
    published: dict[str, float | None] = field(default_factory=dict)  # id -> fraction
    published_label: str = "published"  # header of that column
    descriptions: dict[str, str] = field(default_factory=dict)  # id -> one line
    subsets: dict[str, Callable[[Dataset], Tensor]] = field(default_factory=dict)
    default_n: int | None = None
    #: (dataset, row) -> the text `causal-scrub show` prints for that row's inputs, e.g. the
    #: parentheses of a token row; None prints each input field's raw values
    format_inputs: Callable[[Dataset, int], str] | None = None
    #: name -> feature (a dataset field or a function of the Dataset): the candidates
    #: `causal-scrub search` tries for what each kept node computes
    features: dict[str, Feature] = field(default_factory=dict)
    #: the graph `causal-scrub search` walks (None: `graph`). An experiment whose graph carries
    #: rewrites for its hypotheses (per-position splits) gives the model's own graph here, so
    #: the search visits components, not their per-position copies.
    search_graph: Graph | None = None
    #: results -> numbers results.json records beside the table (`extra`), e.g. an SAE's
    #: reconstruction and its error term's share of each latent-level hypothesis
    extra: Callable[[dict[str, ScrubResult]], dict[str, Any]] | None = None


def run_experiment(exp: Experiment, n: int | None = None, seed: int = 0, progress: bool = False,
                   device: str | None = None, memory_mb: float | None = None,
                   memory_budget_mb: float | None = None) -> Run:
    """Scrub every hypothesis of `exp` on the same `n` reference rows (default: the
    experiment's) and return them as a `Run` with the experiment's published numbers."""
    n = n if n is not None else exp.default_n
    results = scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=n, seed=seed,
                         baseline=exp.baseline, subsets=exp.subsets, progress=progress,
                         device=device, memory_mb=memory_mb, memory_budget_mb=memory_budget_mb)
    return Run(exp.name, results, seed, exp.description, dict(exp.published),
               exp.published_label, dict(exp.descriptions),
               exp.extra(results) if exp.extra is not None else {})


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
