"""causal-scrubbing: test interpretability hypotheses by resampling what they say doesn't matter.

The nouns, bottom to top:

- `Dataset`: named tensors with a leading example axis.
- `Graph`, `Input`, `Node`, `Path`: the model as a DAG of named nodes with named input ports.
- `through`, `direct`, `everything`: path matchers (`paths` module).
- `Exact`, `Uniform`, `SameFeature`, `SharedUniform`, `Pooled`: samplers.
- `InterpNode`: the hypothesis tree; `check` validates it against a graph.
- `draw`: sample every node's dataset; `engine.evaluate` / `reference.evaluate` run the
  treeified model on a draw.
- `scrub`: all of the above plus the metrics, returning a `ScrubResult`.
- Errors all derive from `ScrubError` (a `ValueError`); `SmallClassWarning`, `FeatureWarning`
  and `UndefinedRecoveryWarning` flag results that are computed but easy to misread.

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> r = cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, seed=0)
    >>> r.loss_recovered > 0.99
    True
"""

from __future__ import annotations

from . import models
from .audit import Audit, Comparison, Finding, audit, compare
from .core import __version__, engine, reference
from .core.data import Dataset
from .core.draws import Sample, draw
from .core.errors import (
    CheckpointError,
    DatasetError,
    EmptyClaimError,
    EmptyClassError,
    ExtraNotInstalled,
    FeatureError,
    FeatureWarning,
    GraphError,
    HypothesisError,
    InjectivityError,
    NaNLossError,
    NotExtendingParentError,
    RootClaimError,
    ScrubError,
    TreeStructureError,
    UndefinedRecoveryWarning,
    UnknownNameError,
    UnsupportedModelError,
)
from .core.graph import Graph, Group, Input, Node, Path
from .core.hypothesis import Correspondence, InterpNode, check
from .core.paths import Matcher, chains, direct, everything, through, union
from .core.results import Run, ScrubResult, SeedSpread
from .core.rewrites import RewriteError
from .core.samplers import (
    Exact,
    Pooled,
    SameFeature,
    Sampler,
    SamplingContext,
    SharedUniform,
    SmallClassWarning,
    Uniform,
)
from .experiments import ExperimentFileError
from .scrubbing import random_baseline, scrub, scrub_many, scrub_seeds
from .searching import SearchResult, search
from .searching.attribution import Attribution, attribute
from .searching.curve import CurveResult, faithfulness_curve

__all__ = [
    "Audit", "Comparison", "Finding", "audit", "compare",
    "Attribution", "CurveResult", "attribute", "faithfulness_curve",
    "CheckpointError", "Correspondence", "Dataset", "DatasetError", "EmptyClaimError",
    "EmptyClassError", "Exact", "ExperimentFileError", "ExtraNotInstalled", "FeatureError",
    "FeatureWarning", "Graph", "GraphError", "Group", "HypothesisError", "InjectivityError",
    "Input", "InterpNode", "Matcher", "NaNLossError", "Node", "NotExtendingParentError", "Path",
    "Pooled", "RewriteError", "RootClaimError", "Run", "Sample", "SameFeature", "Sampler",
    "SamplingContext", "ScrubError", "ScrubResult", "SearchResult", "SeedSpread", "SharedUniform",
    "SmallClassWarning", "TreeStructureError", "UndefinedRecoveryWarning", "Uniform",
    "UnknownNameError", "UnsupportedModelError", "chains", "check", "direct", "draw", "engine",
    "everything", "models", "random_baseline", "reference", "scrub", "scrub_many", "scrub_seeds",
    "search", "__version__",
    "through", "union",
]
