"""One scrub pipeline: check, reference rows, sampling context, draws, evaluate, summarise.

Everything that decides a run's numbers happens in `prepare`, before any compute: every
hypothesis and the baseline are checked, the reference rows are drawn, the sampling context
(feature classes) is built, every sampler's feature is checked and every node's dataset is
drawn. The result, a `Prepared` run, is a list of *units* -- the baseline, the unscrubbed model
and each hypothesis -- each with its checked tree and its drawn rows, and a list of evaluation
`Task`s (a unit on a range of reference rows). An *executor* evaluates the tasks:

- `LocalExecutor` in this process (what `scrub_many` and `causal-scrub run` use),
- `distributed.RayExecutor` as Ray tasks on a cluster (`causal-scrub run --ray`),
- the search's scorer evaluates its candidates with the same `evaluate_unit`.

`Prepared.summarize` turns the per-example losses into `ScrubResult`s (loss recovered with a
bootstrap interval; `statistics.summarize`). A row's loss does not depend on which other rows
share its batch, so every executor gives the same numbers (bit for bit on CPU).

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.pipeline import LocalExecutor, prepare
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> ds = cs.Dataset({"x": torch.randn(100)})
    >>> run = prepare(g, {"id": cs.InterpNode("identity")}, ds, lambda o, r: (o - r["x"]) ** 2)
    >>> [str(t) for t in run.tasks(rows=60)][:3]
    ['baseline [0, 60)', 'baseline [60, 100)', 'model [0, 60)']
    >>> run.summarize(LocalExecutor().run([run])[0])["id"].loss_recovered
    1.0
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .core import engine
from .core.data import Dataset
from .core.draws import Sample, check_samplers, draw_hypothesis, reference_rows, sampling_context
from .core.errors import (
    NaNLossError,
    ScrubError,
    UndefinedRecoveryWarning,
    UnknownNameError,
    context,
    unknown_name,
    warn,
)
from .core.graph import Graph, Input
from .core.hypothesis import Correspondence, InterpNode, check
from .core.results import UNDEFINED_RECOVERY, ScrubResult, versions
from .core.samplers import SamplingContext, Uniform
from .core.statistics import RECOVERY_CLOSE, RECOVERY_Z, summarize
from .options import RunOptions, resolve_device

__all__ = ["BASELINE", "HYPOTHESIS", "MODEL", "Executor", "LocalExecutor", "LossFn", "Prepared",
           "Task", "Unit", "check_inputs", "evaluate_unit", "execute", "graph_device",
           "per_example_loss", "prepare", "random_baseline", "unit_roots", "warn_undefined"]

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Dataset], Tensor]
"""(model output [n, ...], reference rows) -> per-example loss [n]."""

MODEL = "model"
BASELINE = "baseline"
HYPOTHESIS = "hypothesis"

Unit = tuple[str, str]
"""(kind, key): (BASELINE, ""), (MODEL, "") or (HYPOTHESIS, the hypothesis' id)."""


def random_baseline() -> InterpNode:
    """The everything-scrubbed hypothesis: the output on random inputs, scored on the reference."""
    return InterpNode("random baseline", Uniform())


def unit_roots(graph: Graph, hypotheses: Mapping[str, InterpNode], baseline: InterpNode | None
               ) -> dict[Unit, InterpNode]:
    """Every unit's interpretation tree, in the order a run evaluates them (baseline, the
    unscrubbed model -- one lane, no mixing -- then each hypothesis). A Ray worker calls this on
    its own copy of the experiment, so both sides agree on what each unit is."""
    roots = {(BASELINE, ""): baseline if baseline is not None else random_baseline(),
             (MODEL, ""): InterpNode(graph.output)}
    roots.update({(HYPOTHESIS, k): h for k, h in hypotheses.items()})
    return roots


def describe(unit: Unit, roots: Mapping[Unit, InterpNode]) -> str:
    """How errors and progress name a unit: "hypothesis 'Ex1'", "baseline 'random baseline'"."""
    kind, key = unit
    if kind == MODEL:
        return "the unscrubbed model"
    if kind == BASELINE:
        return f"baseline {roots[unit].name!r}"
    return f"hypothesis {key!r}"


def per_example_loss(loss_fn: LossFn, output: Tensor, ref_rows: Dataset, what: str,
                     start: int = 0, n: int | None = None) -> Tensor:
    """Apply `loss_fn` and check it returns one finite loss per reference row.

    `ref_rows` are reference rows `start, start + 1, ...` of the run's `n` (default: just
    these rows); both are for the error message, since the loss is computed chunk by chunk.
    """
    losses = loss_fn(output, ref_rows)
    rows = len(ref_rows)
    if not isinstance(losses, Tensor) or losses.shape != (rows,):
        got = (f"shape {tuple(losses.shape)}" if isinstance(losses, Tensor)
               else f"a {type(losses).__name__}")
        n = rows if n is None else n
        chunk = (f"on reference rows {start}..{start + rows - 1}, a chunk of {rows} of the run's "
                 f"{n} reference rows (losses are computed chunk by chunk)" if rows != n
                 else f"on all {n} reference rows")
        raise ScrubError(
            f"The loss function returned {got} for {what} {chunk}. It must return one loss per "
            f"reference row, with no reduction: shape [{n}] for the run's {n} reference rows, "
            f"so shape [{rows}] for these {rows}. E.g. F.cross_entropy(..., reduction='none').")
    bad = ~torch.isfinite(losses)
    if bad.any():
        first = (torch.nonzero(bad).flatten()[:5] + start).tolist()
        raise NaNLossError(f"The loss is NaN or infinite for {what} on {int(bad.sum())} of "
                           f"reference rows {start}..{start + len(ref_rows) - 1} (first: {first});"
                           " evaluation stopped there. Check the model output and the loss "
                           "function on those rows.")
    return losses.detach().float().cpu()


def check_inputs(graph: Graph, dataset: Dataset, what: str = "dataset") -> None:
    """Check that every `Input` the graph's output reads names a field of `dataset`."""
    for name in graph.order:
        node = graph.nodes[name]
        if isinstance(node, Input) and node.field not in dataset:
            spec = f"cs.Input({name!r}" + (f", field={node.field!r})" if node.field != name else ")")
            err = unknown_name("dataset field", node.field, dataset.keys(),
                               f" (read by the graph's {spec})")
            raise UnknownNameError(f"{err} Fix: add the field to the {what}, or point the "
                                   "Input at an existing one with field=.")


def graph_device(graph: Graph) -> torch.device:
    """Where the graph's module lives (CPU for a graph without one)."""
    if graph.module is not None:
        for p in graph.module.parameters():
            return p.device
    return torch.device("cpu")


def evaluate_unit(corr: Correspondence, table: Dataset, sample: Sample, loss_fn: LossFn, what: str,
                  options: RunOptions, *, start: int = 0, n: int | None = None,
                  plan: engine.Plan | None = None, cache: engine.CleanCache | None = None,
                  progress: bool = False) -> Tensor:
    """The per-example losses [len(sample)] of one unit on its drawn rows.

    `sample` holds reference rows `start, start + 1, ...` of a run of `n` rows (for error
    messages); the loss is scored against each reference row's own fields.
    """
    total = len(sample) if n is None else n

    def reduce(out: Tensor, a: int, b: int) -> Tensor:
        return per_example_loss(loss_fn, out, table.rows(sample.ref[a:b]), what, start + a, total)

    return engine.evaluate(corr, table, sample, chunk_size=options.chunk_size,
                           memory_mb=options.memory_mb, memory_budget_mb=options.memory_budget_mb,
                           reduce=reduce, progress=progress, plan=plan, cache=cache)


@dataclass(frozen=True)
class Task:
    """Evaluate `unit` on reference rows [start, stop) of a run (of seed `seed`)."""

    kind: str
    key: str
    start: int
    stop: int
    seed: int = 0

    @property
    def unit(self) -> Unit:
        return (self.kind, self.key)

    def __str__(self) -> str:
        name = self.kind if not self.key else f"{self.kind} {self.key!r}"
        return f"{name} [{self.start}, {self.stop})"


@dataclass
class Prepared:
    """A run with every check made and every draw drawn: what executors evaluate."""

    graph: Graph
    table: Dataset  # every row samplers draw from (and `ref`'s rows first, if given)
    loss_fn: LossFn
    options: RunOptions
    roots: dict[Unit, InterpNode]
    corrs: dict[Unit, Correspondence]
    samples: dict[Unit, Sample]
    ref_idx: Tensor  # [n] reference rows, indices into `table`
    ctx: SamplingContext
    device: torch.device
    subsets: Mapping[str, Callable[[Dataset], Tensor]] = field(default_factory=dict)
    dataset_size: int = 0
    separate_ref: bool = False

    @property
    def n(self) -> int:
        return len(self.ref_idx)

    @property
    def units(self) -> list[Unit]:
        return list(self.roots)

    @property
    def hypotheses(self) -> dict[str, InterpNode]:
        return {key: root for (kind, key), root in self.roots.items() if kind == HYPOTHESIS}

    def what(self, unit: Unit) -> str:
        return describe(unit, self.roots)

    def tasks(self, rows: int | None = None) -> list[Task]:
        """Every unit on consecutive chunks of at most `rows` reference rows (default: all)."""
        rows = rows or self.n
        return [Task(kind, key, a, min(self.n, a + rows), self.options.seed)
                for kind, key in self.units for a in range(0, self.n, rows)]

    def evaluate(self, task: Task, plan: engine.Plan | None = None) -> Tensor:
        """The per-example losses [task.stop - task.start] of one task, in this process."""
        sample = self.samples[task.unit].rows(task.start, task.stop)
        return evaluate_unit(self.corrs[task.unit], self.table, sample, self.loss_fn,
                             self.what(task.unit), self.options, start=task.start, n=self.n,
                             plan=plan, progress=self.options.progress)

    def summarize(self, losses: Mapping[Unit, Tensor]) -> dict[str, ScrubResult]:
        """Each hypothesis' `ScrubResult` from every unit's per-example losses [n]."""
        ref_rows = self.table.rows(self.ref_idx)
        subset_masks = {k: f(ref_rows) for k, f in self.subsets.items()}
        base_root = self.roots[(BASELINE, "")]
        o = self.options
        results = {}
        for key, root in self.hypotheses.items():
            per_example = {"scrubbed": losses[(HYPOTHESIS, key)], "model": losses[(MODEL, "")],
                           "baseline": losses[(BASELINE, "")], "ref_index": self.ref_idx}
            results[key] = summarize(
                key, per_example, seed=o.seed, n_bootstrap=o.n_bootstrap, subsets=subset_masks,
                settings={"hypothesis": str(root), "tree": root.to_dict(),
                          "baseline": str(base_root), "n": self.n, "n_requested": o.n,
                          "seed": o.seed, "chunk_size": o.chunk_size, "memory_mb": o.memory_mb,
                          "memory_budget_mb": o.memory_budget_mb, "device": str(self.device),
                          "dataset_size": self.dataset_size, "separate_ref": self.separate_ref,
                          "versions": versions()})
        return results


def prepare(graph: Graph, hypotheses: Mapping[str, InterpNode], dataset: Dataset, loss_fn: LossFn,
            options: RunOptions | None = None, *, baseline: InterpNode | None = None,
            ref: Dataset | None = None, subsets: Mapping[str, Callable[[Dataset], Tensor]] | None = None,
            move: bool = True) -> Prepared:
    """Every check and every draw of a run, before any compute (see the module docstring).

    Checks, in order: the hypotheses and the baseline (`check`), the device, the fields every
    graph `Input` reads, every sampler's features, and every draw (an empty feature class
    shows only when drawing). A sampler's error names the hypothesis id and the
    interpretation node at fault. `move`: put the graph and the rows on the run's device (a
    Ray driver, which only draws, leaves them where they are).
    """
    options = options or RunOptions()
    roots = unit_roots(graph, hypotheses, baseline)
    corrs: dict[Unit, Correspondence] = {}
    for unit, root in roots.items():
        label = describe(unit, roots) if unit[0] != HYPOTHESIS or len(hypotheses) > 1 else ""
        with context(label):
            corrs[unit] = check(graph, root)
    device = resolve_device(options.device) if options.device is not None else graph_device(graph)

    table = dataset if ref is None else Dataset.cat([ref, dataset])
    check_inputs(graph, table, "dataset" if ref is None else "dataset and ref")
    source = (0, len(table)) if ref is None else (len(ref), len(table))
    n_pool = len(dataset) if ref is None else len(ref)
    ref_idx = reference_rows(n_pool, options.n, options.seed)
    if move:
        graph.to(device)
        table = table.to(device)
    ctx = sampling_context(table, options.seed, source)
    for unit, corr in corrs.items():  # features, before any compute
        check_samplers(corr, ctx, describe(unit, roots))
    # Every draw, before any compute: a draw is a few index tensors, and an empty feature
    # class shows only when drawing. Each draw restarts the "hypothesis" stream, so drawing
    # them all first gives exactly the draws made one at a time, and the baseline draws from
    # the same stream as every hypothesis (a hypothesis identical to it recovers exactly 0%).
    samples = {}
    for unit, corr in corrs.items():
        with context(describe(unit, roots)):
            samples[unit] = draw_hypothesis(corr, table, ref_idx, options.seed, ctx=ctx)
    return Prepared(graph, table, loss_fn, options, roots, corrs, samples, ref_idx, ctx, device,
                    dict(subsets or {}), len(dataset), ref is not None)


class Executor(Protocol):
    """Evaluates prepared runs: for each, every unit's per-example losses [n]."""

    def run(self, runs: Sequence[Prepared]) -> list[dict[Unit, Tensor]]: ...


class LocalExecutor:
    """Evaluates every unit in this process, one after the other, all rows at once (the engine
    chunks them to fit the memory budget)."""

    def run(self, runs: Sequence[Prepared]) -> list[dict[Unit, Tensor]]:
        from tqdm.auto import tqdm

        out = []
        for run in runs:
            losses = {}
            for task in tqdm(run.tasks(), desc="scrubbing", disable=not run.options.progress,
                             leave=False):
                log.info("scrubbing %s on %d reference rows", run.what(task.unit), run.n)
                losses[task.unit] = run.evaluate(task)
            out.append(losses)
        return out


def warn_undefined(results: Mapping[str, ScrubResult], baseline: InterpNode) -> None:
    """`UndefinedRecoveryWarning` when baseline and model losses coincide within noise."""
    if not results:
        return
    r = next(iter(results.values()))
    if r.recovery_defined:
        return
    default = baseline.name == random_baseline().name and isinstance(baseline.sampler, Uniform)
    fix = ("more reference rows (n), or check that the model does the task at all (its loss "
           "should be clearly below the random baseline's)" if default else
           "use a baseline that does clearly worse than the model (e.g. the default "
           "random_baseline()), or more reference rows (n)")
    warn(f"Loss recovered is undefined: {UNDEFINED_RECOVERY} (baseline {baseline.name!r} "
         f"loss {r.baseline_loss:.4g}, model loss {r.model_loss:.4g}, on {r.n} reference "
         f"rows; they differ by less than {RECOVERY_CLOSE:.0%} of the larger and less than "
         f"{RECOVERY_Z} standard errors). Every hypothesis' percentage here is meaningless; "
         f"{fix}.", UndefinedRecoveryWarning)


def execute(runs: Iterable[Prepared], executor: Executor | None = None
            ) -> list[dict[str, ScrubResult]]:
    """Evaluate prepared runs with `executor` (default: this process) and summarise each."""
    runs = list(runs)
    losses = (executor or LocalExecutor()).run(runs)
    out = []
    for run, unit_losses in zip(runs, losses):
        results = run.summarize(unit_losses)
        warn_undefined(results, run.roots[(BASELINE, "")])
        out.append(results)
    return out
