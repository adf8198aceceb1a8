"""Errors and warnings raised by causal-scrubbing, one class per kind of mistake.

Every error says what was wrong, where (the node, port or path; for a sampler, the
interpretation node holding it and, when several hypotheses run together, the hypothesis id),
and how to fix it. They all derive from `ScrubError` (a `ValueError`), so `except cs.ScrubError`
catches any of them. The warnings flag results that are computed but easy to misread.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


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


class FeatureWarning(UserWarning):
    """A `SameFeature` feature that cannot resample: it has a different value on every row."""


class UndefinedRecoveryWarning(UserWarning):
    """Baseline and model losses coincide, so loss recovered divides by about zero."""


def warn(message: str, category: type[Warning]) -> None:
    """`warnings.warn`, attributed to the first caller outside this package (the user's line)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """` Did you mean 'x'?` for the closest of `options`, or an empty string.

    Case is ignored when comparing, so a typo that differs only in case is always found.

    >>> did_you_mean("Count", ["count", "horizon"]), did_you_mean("A1.H0", ["a1.h0", "a1.h1"])
    (" Did you mean 'count'?", " Did you mean 'a1.h0'?")
    """
    name, names = str(name), [str(o) for o in options]
    folded: dict[str, str] = {}
    for o in names:
        folded.setdefault(o.casefold(), o)
    if name.casefold() in folded:
        return f" Did you mean {folded[name.casefold()]!r}?"
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.5)
    return f" Did you mean {folded[close[0]]!r}?" if close else ""


def with_context(err: ScrubError, where: str) -> ScrubError:
    """A copy of `err`, of the same class, whose message starts with `where: `.

    >>> str(with_context(FeatureError("Feature 'f' has NaN values."), "interpretation node 'c'"))
    "interpretation node 'c': Feature 'f' has NaN values."
    """
    new = type(err)(f"{where}: {err}")
    new.__dict__.update(err.__dict__)
    return new


@contextmanager
def context(where: str) -> Iterator[None]:
    """Prefix the message of any `ScrubError` raised inside with `where` (see `with_context`).

    A prefix that would join a `hypothesis ...` to an `interpretation node ...` is joined with
    a comma: "hypothesis 'Ex1b', interpretation node 'count': Feature 'count' ...".
    """
    if not where:
        yield
        return
    try:
        yield
    except ScrubError as err:
        text = str(err)
        if text.startswith("interpretation node "):
            new = type(err)(f"{where}, {text}")
            new.__dict__.update(err.__dict__)
        else:
            new = with_context(err, where)
        raise new.with_traceback(err.__traceback__) from None


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


def broken_extra(extra: str, feature: str, err: ImportError) -> ExtraNotInstalled:
    """Build the error for an optional package that is installed but fails to import (a
    dependency of its own missing, or a version without what we use), naming the extra whose
    pins make it work.

    Example:
        >>> err = ModuleNotFoundError("No module named 'attr'", name="attr")
        >>> print(broken_extra("tracr", "The tracr experiment", err))  # doctest: +NORMALIZE_WHITESPACE
        The tracr experiment needs the optional packages of the [tracr] extra, but importing them
        failed: No module named 'attr'. Install the extra, which pins versions that work
        together: pip install 'causal-scrubbing[tracr]'
    """
    return ExtraNotInstalled(
        f"{feature} needs the optional packages of the [{extra}] extra, but importing them failed: "
        f"{err}. Install the extra, which pins versions that work together: pip install "
        f"'causal-scrubbing[{extra}]'")
