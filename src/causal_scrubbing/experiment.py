"""An experiment: a model graph, a dataset, a loss, hypotheses and published numbers, and how to
run all its hypotheses at once.

`Experiment` is what `causal-scrub run` scrubs; `run_experiment` scrubs every hypothesis of
one on the same reference rows, through the scrub pipeline, with any executor (this process by
default, Ray with `distributed.RayExecutor`). A *recipe* says how to build an experiment where
it is needed again (a Ray worker builds its own copy): a bundled experiment's name, the path of
an experiment file, or a picklable function returning an `Experiment`. Names and paths are
resolved by the loader the `experiments` package registers (`register_loader`), so this layer
needs nothing from the bundled experiments above it.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.experiment import Experiment, run_experiment
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> exp = Experiment("id", "identity", g, cs.Dataset({"x": torch.randn(64)}),
    ...                  lambda o, r: (o - r["x"]) ** 2, {"all": cs.InterpNode("identity")})
    >>> run_experiment(exp, seed=0).results["all"].loss_recovered
    1.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .core.data import Dataset
from .core.errors import ScrubError
from .core.graph import Graph
from .core.hypothesis import InterpNode
from .core.results import Run, ScrubResult
from .core.samplers import Feature
from .options import RunOptions
from .pipeline import Executor, LossFn, execute, prepare

__all__ = ["Experiment", "Recipe", "build", "register_loader", "run_experiment", "run_seeds"]

Recipe = str | os.PathLike | Callable[..., "Experiment"]
"""How to build an experiment again: a bundled experiment's name, the path of an experiment
file (it must exist at that path wherever it is built), or a picklable function returning one."""


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


_LOADER: list[Callable[..., Experiment]] = []


def register_loader(load: Callable[..., Experiment]) -> None:
    """Set the function that builds an experiment from a name or path (the `experiments`
    package registers its `load` when it is imported)."""
    _LOADER[:] = [load]


def build(recipe: Recipe, options: Mapping[str, Any] | None = None) -> Experiment:
    """The experiment `recipe` describes, built with `options` (as `experiments.load`)."""
    if callable(recipe):
        return recipe(**dict(options or {}))
    if not _LOADER:
        import importlib

        importlib.import_module("causal_scrubbing.experiments")  # registers the loader
    return _LOADER[0](recipe, **dict(options or {}))


def _options(exp: Experiment, options: RunOptions | None, kwargs: Mapping[str, Any]) -> RunOptions:
    opts = RunOptions.of(options, **kwargs)
    if opts.n is None and exp.default_n is not None:
        opts = opts.replace(n=exp.default_n)
    return opts


def run_seeds(exp: Experiment, seeds: list[int], options: RunOptions | None = None, *,
              executor: Executor | None = None, **kwargs: Any) -> dict[int, Run]:
    """`run_experiment` for each seed, every seed's draws made before any compute, evaluated
    by one `executor` (default: this process); `{seed: Run}`."""
    if not seeds:
        raise ScrubError("Give at least one seed.")
    opts = _options(exp, options, kwargs)
    runs = [prepare(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, opts.replace(seed=s),
                    baseline=exp.baseline, subsets=exp.subsets, move=executor is None)
            for s in seeds]
    return {s: Run(exp.name, results, s, exp.description, dict(exp.published),
                   exp.published_label, dict(exp.descriptions),
                   extra=exp.extra(results) if exp.extra is not None else {})
            for s, results in zip(seeds, execute(runs, executor))}


def run_experiment(exp: Experiment, options: RunOptions | None = None, *,
                   executor: Executor | None = None, n: int | None = None, seed: int | None = None,
                   progress: bool | None = None, device: str | None = None,
                   chunk_size: int | None = None, memory_mb: float | None = None,
                   memory_budget_mb: float | None = None, n_bootstrap: int | None = None) -> Run:
    """Scrub every hypothesis of `exp` on the same `n` reference rows (default: the
    experiment's) and return them as a `Run` with the experiment's published numbers.

    `options` (a `RunOptions`) or the keywords (each given one replaces its field) say how;
    `executor` where (default: this process; `distributed.RayExecutor` for a Ray cluster).
    """
    opts = _options(exp, options, dict(n=n, seed=seed, progress=progress, device=device,
                                       chunk_size=chunk_size, memory_mb=memory_mb,
                                       memory_budget_mb=memory_budget_mb, n_bootstrap=n_bootstrap))
    return run_seeds(exp, [opts.seed], opts, executor=executor)[opts.seed]
