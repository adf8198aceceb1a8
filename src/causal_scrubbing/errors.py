"""Errors raised by causal-scrubbing, one class per kind of mistake.

Every error says what was wrong, where (the node, port or path), and how to fix it. They all
derive from `ScrubError` (a `ValueError`), so `except cs.ScrubError` catches any of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ScrubError(ValueError):
    """Base class of every error this library raises about its input."""


class UnknownNameError(ScrubError, KeyError):
    """A node, port, field or experiment name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class GraphError(ScrubError):
    """A model graph that is not a well-formed DAG of named nodes and ports."""


class HypothesisError(ScrubError):
    """Base class of the invalid-correspondence errors."""


class TreeStructureError(HypothesisError):
    """The interpretation is not a tree: repeated names, a node used twice, or a cycle."""


class RootClaimError(HypothesisError):
    """The root interpretation node does not claim the model's output."""


class EmptyClaimError(HypothesisError):
    """An interpretation node's path matcher matches no path of the graph."""


class NotExtendingParentError(HypothesisError):
    """A child claims a path that does not extend one of its parent's claimed paths."""


class InjectivityError(HypothesisError):
    """Two interpretation nodes claim the same path (or the same treeified node)."""


class FeatureError(ScrubError):
    """A feature function returned something that is not one value per example."""


class EmptyClassError(ScrubError):
    """A reference value has no example in the source dataset with the same feature value."""


class NaNLossError(ScrubError):
    """The loss function returned NaN or infinity."""


class DatasetError(ScrubError):
    """A dataset whose fields do not share one leading example axis, or a missing field."""


class CheckpointError(ScrubError):
    """A checkpoint that is missing, corrupted, or does not match its config."""


class UnsupportedModelError(CheckpointError):
    """A model to import uses a setting that `Transformer` cannot represent exactly."""


class ExtraNotInstalled(ScrubError, ImportError):
    """An optional package that a feature needs is not installed (see `missing_extra`)."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """` Did you mean 'x'?` for the closest of `options`, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name(kind: str, name: str, options: Iterable[str], where: str = "") -> UnknownNameError:
    """Build an `UnknownNameError` naming the bad name, the nearest valid one, and the choices."""
    options = list(options)
    listing = ", ".join(repr(o) for o in options[:12]) + (", ..." if len(options) > 12 else "")
    return UnknownNameError(
        f"Unknown {kind} {name!r}{where}.{did_you_mean(name, options)} Valid {kind}s: {listing}."
    )


def missing_extra(package: str, extra: str, feature: str = "") -> ExtraNotInstalled:
    """Build the error for a missing optional package, naming the pip extra that installs it.

    Raise it from the failed lazy import: `raise missing_extra("transformers", "hf") from err`.

    Example:
        >>> print(missing_extra("transformers", "hf", "models.from_hf"))  # doctest: +NORMALIZE_WHITESPACE
        models.from_hf needs the optional package 'transformers', which is not installed.
        Install it with: pip install 'causal-scrubbing[hf]'
    """
    who = feature or "This feature"
    return ExtraNotInstalled(
        f"{who} needs the optional package {package!r}, which is not installed. "
        f"Install it with: pip install 'causal-scrubbing[{extra}]'"
    )
