"""Options as objects: every setting of a run or a search, checked once, in one place.

`RunOptions` holds what every scrub takes (reference rows, seed, chunking, memory, device,
bootstrap, progress); `SearchOptions` adds what a search takes (threshold, granularity, draws,
tolerances, held-out rows, cache). The Python API (`scrub`, `scrub_many`, `scrub_seeds`,
`search`, `experiments.run_experiment`), the command line and Ray all build one of these, so a
bad value gets the same clear error wherever it comes from, and no entry point can drift from
the others (each used to repeat about eleven keyword arguments).

Example:
    >>> from causal_scrubbing.options import RunOptions
    >>> RunOptions(n=1000, seed=1).replace(seed=2).seed
    2
    >>> RunOptions(n=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    causal_scrubbing.core.errors.ScrubError: n must be a positive number of reference rows, got 0. ...
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from .core.draws import check_n
from .core.errors import ScrubError

__all__ = ["Draws", "Granularity", "RunOptions", "SearchOptions", "check_tolerances",
           "resolve_device"]

_Options = TypeVar("_Options", bound="RunOptions")

Granularity = Literal["edges", "nodes"]
Draws = Literal["shared", "independent"]


def _whole(value: object, name: str, least: int) -> int:
    """`value` as an int >= `least`, or a `ScrubError` naming the option."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None or number < least:
        raise ScrubError(f"{name} must be a whole number of at least {least}, got {value!r}.")
    return number


def _megabytes(value: object, name: str, zero_ok: bool = False) -> float | None:
    """`value` as a positive (or, with `zero_ok`, non-negative) finite float, or None."""
    if value is None:
        return None
    try:
        mb = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        mb = math.nan
    if isinstance(value, bool) or not math.isfinite(mb) or mb < 0 or (mb == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        raise ScrubError(f"{name} must be a number of MB, {least}, got {value!r}.")
    return mb


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a `torch.device`, after checking this machine and PyTorch build have it.

    Raises `ScrubError` naming the device and the fix (e.g. for "gpu", or "cuda" without CUDA).

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    causal_scrubbing.core.errors.ScrubError: Unknown device 'gpu'. Did you mean 'cuda'? ...
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            hint = " Did you mean 'cuda'?" if str(device).strip().lower().startswith("gpu") else ""
            raise ScrubError(
                f"Unknown device {device!r}.{hint} Use 'cpu', 'cuda' (or 'cuda:0', 'cuda:1', "
                "...) or 'mps', as PyTorch names devices.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ScrubError(
                f"Device {str(device)!r} was asked for, but CUDA is not available here "
                f"(PyTorch {torch.__version__}, torch.cuda.is_available() is False). Run on "
                "device='cpu', or install a CUDA build of PyTorch on a machine with an NVIDIA GPU.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ScrubError(
                f"Device {str(device)!r} was asked for, but this machine has {count} CUDA "
                f"device(s): use 'cuda:0'{' to ' + repr(f'cuda:{count - 1}') if count > 1 else ''}.")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ScrubError(f"Device {str(device)!r} was asked for, but Apple's MPS is not "
                             "available here. Run on device='cpu'.")
    return dev


@dataclass(frozen=True)
class RunOptions:
    """How to run a scrub; every value is checked when the object is made.

    Attributes:
        n: reference rows (a positive whole number), drawn uniformly with replacement; None
            uses every row of the dataset (or of `ref`) once.
        seed: seeds every draw (reference rows, each hypothesis' datasets, bootstrap).
        chunk_size: reference rows evaluated at once; None: as many as fit in `memory_mb`.
        memory_mb: the budget one chunk may use (default 512 MB on CPU, a quarter of a GPU's
            free memory).
        memory_budget_mb: the most memory the whole process may hold (see `engine.evaluate`).
        device: where to run ("cpu", "cuda", "cuda:1", "mps"); None: where the graph is.
        n_bootstrap: bootstrap resamples for the intervals.
        progress: progress bars.
    """

    n: int | None = None
    seed: int = 0
    chunk_size: int | None = None
    memory_mb: float | None = None
    memory_budget_mb: float | None = None
    device: str | None = None
    n_bootstrap: int = 1000
    progress: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("n", check_n(self.n))
        set_("seed", _whole(self.seed, "seed", 0))
        if self.chunk_size is not None:
            set_("chunk_size", _whole(self.chunk_size, "chunk_size", 1))
        set_("memory_mb", _megabytes(self.memory_mb, "memory_mb"))
        set_("memory_budget_mb", _megabytes(self.memory_budget_mb, "memory_budget_mb"))
        if self.device is not None:
            set_("device", str(resolve_device(self.device)))
        set_("n_bootstrap", _whole(self.n_bootstrap, "n_bootstrap", 1))
        set_("progress", bool(self.progress))

    def replace(self: _Options, **changes: Any) -> _Options:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)

    def run_options(self) -> RunOptions:
        """These options as plain `RunOptions` (a `SearchOptions` drops its search fields)."""
        return RunOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunOptions)})

    @classmethod
    def of(cls: type[_Options], options: _Options | None, **kwargs: Any) -> _Options:
        """`options` with every keyword that is not None replacing its field (the keyword form
        of the API and an options object mix); `cls(**kwargs)` when `options` is None."""
        given = {k: v for k, v in kwargs.items() if v is not None}
        if options is None:
            return cls(**given)
        return dataclasses.replace(options, **given) if given else options


def check_tolerances(tolerances: Iterable[float]) -> tuple[float, ...]:
    """`search`'s per-step tolerances as a tuple of increasing fractions, or a clear error.

    >>> check_tolerances([0.002, 0.01])
    (0.002, 0.01)
    """
    try:
        out = tuple(float(t) for t in tolerances)
    except (TypeError, ValueError):
        raise ScrubError(f"tolerances must be numbers such as 0.001, 0.01, got {tolerances!r}."
                         ) from None
    if any(not (math.isfinite(t) and t >= 0) for t in out) or list(out) != sorted(out):
        raise ScrubError(f"tolerances must be finite, non-negative and increasing (fractions of "
                         f"loss recovered, e.g. 0.001, 0.01), got {list(out)}.")
    return out


@dataclass(frozen=True)
class SearchOptions(RunOptions):
    """How to run a search: `RunOptions` (its `n` is the search rows, default 1000) and

    Attributes:
        threshold: the loss recovered (a fraction in [0, 1]) every accepted step keeps.
        granularity: "edges" or "nodes".
        draws: "shared" or "independent" (see `searching`).
        tolerances: per-step limits of the passes before the last (increasing fractions).
        n_heldout: held-out rows (default: `n`).
        cache_mb: memory for clean activations kept across candidates (None: the default).
    """

    threshold: float = 0.9
    granularity: Granularity = "edges"
    draws: Draws = "shared"
    tolerances: tuple[float, ...] = field(default=())
    n_heldout: int | None = None
    cache_mb: float | None = None

    def __post_init__(self) -> None:
        if self.n is None:
            object.__setattr__(self, "n", 1000)
        super().__post_init__()
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        try:
            threshold = float(self.threshold)
        except (TypeError, ValueError):
            raise ScrubError(f"threshold must be a number such as 0.95, got {self.threshold!r}."
                             ) from None
        if not (math.isfinite(threshold) and 0 <= threshold <= 1):
            raise ScrubError(f"threshold must be a fraction of the loss recovered between 0 and 1 "
                             f"(e.g. 0.95 for 95%), got {self.threshold!r}.")
        set_("threshold", threshold)
        if self.granularity not in ("edges", "nodes"):
            raise ScrubError(f"granularity must be 'edges' or 'nodes', got {self.granularity!r}.")
        if self.draws not in ("shared", "independent"):
            raise ScrubError(f"draws must be 'shared' or 'independent', got {self.draws!r}.")
        set_("tolerances", check_tolerances(self.tolerances))
        set_("n_heldout", check_n(self.n_heldout) or self.n)
        if self.cache_mb is not None:
            set_("cache_mb", _megabytes(self.cache_mb, "cache_mb", zero_ok=True))
