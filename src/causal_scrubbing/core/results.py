"""Results: what a scrub found, kept with everything needed to trust and share it.

A `ScrubResult` holds one hypothesis' scrubbed, model and baseline losses (means, and the
per-example losses on every reference row), loss recovered with its interval, per-subset
numbers and the run's settings. `save` writes it atomically as JSON plus safetensors; `load`
reads it back without executing code. A `SeedSpread` is the same scrub over several seeds.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.randn(100)})
    >>> r = cs.scrub(g, cs.InterpNode("identity"), ds, lambda out, ref: (out - ref["x"]) ** 2)
    >>> r.summary()["loss_recovered"], r.per_example["scrubbed"].shape
    (1.0, torch.Size([100]))
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import ScrubError

if TYPE_CHECKING:
    from ..report.circuit import Figure

#: Why a result's loss recovered is undefined (tables and reports say it in these words).
UNDEFINED_RECOVERY = ("baseline and model losses coincide within noise, so loss recovered "
                      "divides by about zero")

RESULT_JSON = "result.json"
RESULT_TENSORS = "per_example.safetensors"


@dataclass
class ScrubResult:
    """The outcome of scrubbing one hypothesis (see `scrub`). Losses are means over rows."""

    name: str
    loss: float
    model_loss: float
    baseline_loss: float
    loss_recovered: float
    ci: tuple[float, float]
    recovered_se: float
    loss_se: float
    n: int
    seed: int
    per_example: dict[str, Tensor] = field(repr=False)
    subsets: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    #: False when baseline and model losses coincide (`statistics.recovery_defined`): then
    #: `loss_recovered` and its interval divide by about zero and mean nothing.
    recovery_defined: bool = True

    def summary(self) -> dict[str, Any]:
        """Everything but the per-example tensors, as JSON-ready values."""
        return {
            "name": self.name, "scrubbed_loss": self.loss, "model_loss": self.model_loss,
            "baseline_loss": self.baseline_loss, "loss_recovered": self.loss_recovered,
            "ci_low": self.ci[0], "ci_high": self.ci[1], "recovered_se": self.recovered_se,
            "loss_se": self.loss_se, "n": self.n, "seed": self.seed,
            "recovery_defined": self.recovery_defined, "subsets": self.subsets,
            "settings": self.settings,
        }

    def save(self, path: str | os.PathLike) -> FsPath:
        """Write `path/result.json` and `path/per_example.safetensors` atomically."""
        from safetensors.torch import save_file

        target = FsPath(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = FsPath(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            (tmp / RESULT_JSON).write_text(json.dumps(jsonable(self.summary()), indent=2))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.per_example.items()},
                      str(tmp / RESULT_TENSORS))
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScrubResult:
        """Read a result written by `save` (JSON and safetensors only; no code is executed)."""
        from safetensors.torch import load_file

        root = FsPath(path)
        for f in (RESULT_JSON, RESULT_TENSORS):
            if not (root / f).is_file():
                raise ScrubError(f"{root} is not a saved ScrubResult: {f} is missing.")
        try:
            meta = json.loads((root / RESULT_JSON).read_text())
            tensors = load_file(str(root / RESULT_TENSORS))
        except FileNotFoundError as err:
            raise ScrubError(f"{root} is not a saved ScrubResult (missing {err.filename}).") from err
        except (json.JSONDecodeError, Exception) as err:
            raise ScrubError(f"Could not read the ScrubResult in {root}: {err}") from err
        return cls(
            name=meta["name"], loss=meta["scrubbed_loss"], model_loss=meta["model_loss"],
            baseline_loss=meta["baseline_loss"], loss_recovered=meta["loss_recovered"],
            ci=(meta["ci_low"], meta["ci_high"]), recovered_se=meta["recovered_se"],
            loss_se=meta["loss_se"], n=meta["n"], seed=meta["seed"], per_example=tensors,
            subsets=meta.get("subsets", {}), settings=meta.get("settings", {}),
            recovery_defined=meta.get("recovery_defined", True),
        )

    def recovered_text(self) -> str:
        """Loss recovered with its interval, or why it is undefined."""
        if not self.recovery_defined:
            return f"undefined ({UNDEFINED_RECOVERY})"
        return f"{pct(self.loss_recovered)} [95% CI {pct(self.ci[0])}, {pct(self.ci[1])}]"

    def __repr__(self) -> str:
        return (
            f"ScrubResult({self.name!r}): loss {self.loss:.4g} ± {self.loss_se:.2g} "
            f"(model {self.model_loss:.4g}, baseline {self.baseline_loss:.4g})\n"
            f"  loss recovered {self.recovered_text()}, n={self.n}, seed={self.seed}"
        )

    def plot(self, published: float | None = None) -> Figure:
        """Loss recovered with its interval (and `published` beside it) above the per-example
        loss histograms, drawn as the report draws them: a `report.circuit.Figure` (SVG),
        shown inline in a notebook.

        >>> import torch, causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
        >>> ds = cs.Dataset({"x": torch.randn(100)})
        >>> fig = cs.scrub(g, cs.InterpNode("all"), ds, lambda out, ref: (out - ref["x"]) ** 2).plot()
        >>> fig.svg.count('class="chart"'), fig.svg.count('class="hist"'), "100.0%" in fig.svg
        (1, 1, True)
        """
        from ..report.circuit import Figure, result_svg  # (a layer above: presentation)

        return Figure(result_svg(self, published))

    def _repr_html_(self) -> str:
        rows = [("hypothesis", self.name), ("scrubbed loss", f"{self.loss:.4g} ± {self.loss_se:.2g}"),
                ("model loss", f"{self.model_loss:.4g}"), ("baseline loss", f"{self.baseline_loss:.4g}"),
                ("loss recovered", self.recovered_text()), ("n, seed", f"{self.n}, {self.seed}")]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"


@dataclass
class SeedSpread:
    """The same scrub over several seeds: each result, and the spread of loss recovered."""

    results: list[ScrubResult]

    @property
    def loss_recovered(self) -> Tensor:
        return torch.tensor([r.loss_recovered for r in self.results], dtype=torch.float64)

    @property
    def mean(self) -> float:
        return float(self.loss_recovered.mean())

    @property
    def std(self) -> float:
        return float(self.loss_recovered.std()) if len(self.results) > 1 else math.nan

    def __repr__(self) -> str:
        return (f"SeedSpread({self.results[0].name!r}, {len(self.results)} seeds): loss recovered "
                f"{pct(self.mean)} ± {pct(self.std)} (std over seeds)")


@dataclass
class Run:
    """Results of several hypotheses scrubbed on the same reference rows, with what a reader
    needs beside them: the run's name and description, published numbers, one line per
    hypothesis. `causal-scrub run` makes one; `report.write_results` writes it out.

    Example:
        >>> import torch, causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
        >>> ds = cs.Dataset({"x": torch.randn(100)})
        >>> res = cs.scrub_many(g, {"all": cs.InterpNode("all")}, ds,
        ...                     lambda out, ref: (out - ref["x"]) ** 2)
        >>> run = Run("mine", res, seed=0)
        >>> run.model_loss, run.baseline_loss > 0
        (0.0, True)
    """

    name: str
    results: dict[str, ScrubResult]
    seed: int = 0
    description: str = ""
    published: dict[str, float | None] = field(default_factory=dict)  # id -> fraction
    published_label: str = "published"
    descriptions: dict[str, str] = field(default_factory=dict)  # id -> one line
    #: id -> the hypothesis' claims on each edge of the graph (`report.circuit.claims_dict`),
    #: which the report draws over the graph; empty: not drawn
    circuits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the run's rigour audit (`audit.Audit.to_dict()`), shown in its report; None: not audited
    audit: dict[str, Any] | None = None
    #: more numbers the experiment gives (`Experiment.extra`), e.g. an SAE's reconstruction
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.results:
            raise ScrubError(f"Run {self.name!r} has no results; scrub at least one hypothesis.")

    @property
    def first(self) -> ScrubResult:
        return next(iter(self.results.values()))

    @property
    def model_loss(self) -> float:
        return self.first.model_loss

    @property
    def baseline_loss(self) -> float:
        return self.first.baseline_loss


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x


def atomic_write(path: FsPath, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see a
    half-written file, and a failed write leaves the old one in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def replace_dir(new: FsPath, target: FsPath) -> None:
    """Move directory `new` to `target`, replacing any old one without a half-written state."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def versions() -> dict[str, str]:
    from . import __version__

    return {"causal_scrubbing": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


