"""Bundled experiments: a model graph, a dataset, a loss, hypotheses and published numbers.

Each experiment module defines `build() -> Experiment`. `load(name)` builds one by name and
`names()` lists them (`causal-scrub experiments` prints the list).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ..data import Dataset
from ..errors import unknown_name
from ..graph import Graph
from ..hypothesis import InterpNode
from ..metrics import LossFn

#: experiment name -> (module, one-line description)
REGISTRY: dict[str, tuple[str, str]] = {
    "toy": ("causal_scrubbing.experiments.toy",
            "hand-built AND gate with a distractor input; every number checkable by hand"),
    "paren": ("causal_scrubbing.experiments.paren",
              "Redwood's parentheses-balance checker (Ex0a-Ex4) on our 3-layer model"),
    "induction": ("causal_scrubbing.experiments.induction",
                  "Redwood's induction-head hypotheses on our 2-layer attention-only model"),
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


def names() -> list[str]:
    return list(REGISTRY)


def load(name: str) -> Experiment:
    """Build the bundled experiment `name`."""
    if name not in REGISTRY:
        raise unknown_name("experiment", name, REGISTRY, " (see `causal-scrub experiments`)")
    return importlib.import_module(REGISTRY[name][0]).build()
