"""Running an experiment's scrubs on a Ray cluster (the optional `[ray]` extra).

The work of a run -- every hypothesis, the baseline and the unscrubbed model, for every seed --
is split into *tasks*: (what, seed, a chunk of reference rows). The driver does everything
that decides the numbers exactly as `scrub_many` does, with the same functions: it checks
the hypotheses, draws the reference rows (`draws.reference_rows`) and every hypothesis'
datasets (`draws.draw_hypothesis`), once. Workers only evaluate: each task runs
`engine.evaluate` (or the model's forward pass) on its chunk of rows and returns the
per-example losses. The driver joins each (what, seed)'s chunks in row order, checks that
every reference row came back exactly once, and computes the statistics with
`statistics.summarize`. A row's loss does not depend on which other rows share its batch, so
on CPU the results are bit-identical to the single-process run.

Workers are Ray actors, one per slot (`workers`, each holding one CPU and `gpus_per_task`
GPUs). Each builds the experiment once, from a picklable *recipe* (a bundled experiment's
name, an experiment file's path, or a zero-argument function returning an `Experiment`), and
takes the dataset from the object store, where the driver put it once; each (what, seed)'s
drawn row indices are put there once too. A worker that dies is restarted (and rebuilds its
model) and its unfinished tasks are retried; an error of the user's (`ScrubError`, e.g. a NaN
loss) stops the run with the library's own message.

Nothing here is imported by `import causal_scrubbing`; Ray is imported only when a run starts.

Example (not run here: it starts a Ray cluster):

    from causal_scrubbing import distributed
    run = distributed.run_experiment("paren", n=2000, workers=2)      # a local cluster
    runs = distributed.sweep("paren", seeds=[0, 1, 2, 3], n=2000, address="auto")  # join one
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import engine
from .draws import Sample, check_n, check_samplers, draw_hypothesis, reference_rows, sampling_context
from .errors import ScrubError, UndefinedRecoveryWarning, context, missing_extra, warn
from .experiments import Experiment, circuits, load
from .graph import Graph
from .hypothesis import Correspondence, InterpNode, check
from .results import UNDEFINED_RECOVERY, Run, ScrubResult, versions
from .scrubbing import (
    check_inputs,
    per_example_loss,
    random_baseline,
    resolve_device,
)
from .statistics import RECOVERY_CLOSE, RECOVERY_Z, summarize

log = logging.getLogger(__name__)

Recipe = str | os.PathLike | Callable[..., Experiment]
"""How a worker builds the experiment: a bundled experiment's name, the path of an experiment
file (it must exist at that path on every node), or a picklable function returning one."""

MODEL = "model"
BASELINE = "baseline"
HYPOTHESIS = "hypothesis"


def _ray() -> Any:
    """The `ray` module, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise missing_extra("ray", "ray", "Running on Ray (--ray)") from err
    return ray


def build(recipe: Recipe, options: Mapping[str, Any] | None = None) -> Experiment:
    """The experiment `recipe` describes, built with `options` (as `experiments.load`)."""
    if callable(recipe):
        return recipe(**dict(options or {}))
    return load(recipe, **dict(options or {}))


def _portable(recipe: Recipe) -> Recipe:
    """An experiment file's path made absolute, so a worker in another directory finds it."""
    if not callable(recipe) and str(recipe).endswith(".py"):
        return str(Path(recipe).expanduser().resolve())
    return recipe


def fingerprint(graph: Graph) -> str:
    """A hash of the graph's weights: driver and workers must run the same model."""
    h = hashlib.sha1()
    if graph.module is not None:
        for name, value in sorted(graph.module.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- the cluster ------------------------------------------------------------------------------


@contextmanager
def cluster(address: str | None = None, workers: int | None = None) -> Iterator[bool]:
    """Connect to Ray for the duration of the block; yields whether this call connected.

    Already connected (`ray.init` called by the caller): use that connection and leave it
    open. `address` given: join that cluster (`"auto"`, `"HOST:6379"`, `"ray://..."`) and
    disconnect after (the cluster keeps running). Otherwise start a local cluster with
    `workers` CPUs (default: this machine's) and shut it down after, also on Ctrl-C.
    """
    ray = _ray()
    if ray.is_initialized():
        yield False
        return
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                 logging_level=logging.WARNING)
    try:
        yield True
    finally:
        ray.shutdown()


# ---- the worker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Evaluate `what` (MODEL, BASELINE or (HYPOTHESIS, key)) for `seed` on reference rows
    [start, stop) of that seed's `n`."""

    kind: str
    key: str
    seed: int
    start: int
    stop: int
    n: int

    @property
    def unit(self) -> tuple[str, str, int]:
        return (self.kind, self.key, self.seed)


class Worker:
    """Holds one built experiment and evaluates tasks on it (a Ray actor, see `_actor_class`).

    Each task carries the object-store reference of the driver's dataset (inside a list, so
    Ray hands it over unresolved); the worker fetches it with its first task. `weights` is the
    driver's model `fingerprint`, checked so a `build()` that is not deterministic fails
    clearly; `created` the driver's clock when it asked for this worker.
    `crash_once` (tests only): a file path; the first task of a hypothesis finding it absent
    creates it and kills this worker's process, as a crashed machine would.
    """

    def __init__(self, recipe: Recipe, options: Mapping[str, Any], device: str | None,
                 weights: str, created: float, crash_once: str | None = None):
        self.start_s = max(0.0, time.time() - created)
        self.load_s = 0.0
        self.failed: Exception | None = None
        try:
            self._load(recipe, options, device, weights)
        except Exception as err:  # raised by the first task, where Ray reports it as it is
            self.failed = err
        self.crash_once = crash_once

    def _load(self, recipe: Recipe, options: Mapping[str, Any], device: str | None,
              weights: str) -> None:
        began = time.perf_counter()
        exp = build(recipe, options)
        if fingerprint(exp.graph) != weights:
            raise ScrubError(
                "The experiment built on a worker has different model weights from the one built "
                "on the driver: its build() is not deterministic (e.g. random weights without a "
                "fixed seed, or a checkpoint that differs between machines). Seed it, or load "
                "the weights from a file every node sees.")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.graph = exp.graph
        self.graph.to(self.device)
        self.table: Any = None
        self.loss_fn = exp.loss_fn
        self.hypotheses = dict(exp.hypotheses)
        self.baseline = exp.baseline if exp.baseline is not None else random_baseline()
        self.compiled: dict[tuple[str, str], tuple[Correspondence, engine.Plan]] = {}
        self.load_s = time.perf_counter() - began

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "start_s": self.start_s, "load_s": self.load_s,
                "threads": torch.get_num_threads()}

    def _compiled(self, kind: str, key: str) -> tuple[Correspondence, engine.Plan]:
        if (kind, key) not in self.compiled:
            root = self.baseline if kind == BASELINE else self.hypotheses[key]
            corr = check(self.graph, root)
            self.compiled[(kind, key)] = (corr, engine.compile_plan(corr))
        return self.compiled[(kind, key)]

    def run(self, task: Task, table: list[Any], rows: Sample | Tensor, chunk_size: int | None,
            memory_mb: float | None, submitted: float) -> tuple[Tensor, dict[str, float]]:
        """The per-example losses [stop - start] of `task`, and when it waited and ran."""
        began = time.time()
        if self.failed is not None:
            raise self.failed
        if self.crash_once is not None and task.kind == HYPOTHESIS and task.start == 0:
            try:
                fd = os.open(self.crash_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        t0 = time.perf_counter()
        if self.table is None:
            self.table = _ray().get(table[0]).to(self.device)
        data, loss_fn = self.table, self.loss_fn
        if task.kind == MODEL:
            assert isinstance(rows, Tensor)
            ref = rows[task.start:task.stop]
            step = chunk_size or 1024
            with torch.inference_mode():
                losses = torch.cat([
                    per_example_loss(loss_fn, self.graph.forward(data.rows(ref[i:i + step])),
                                     data.rows(ref[i:i + step]), "the unscrubbed model",
                                     task.start + i, task.n)
                    for i in range(0, len(ref), step)])
        else:
            assert isinstance(rows, Sample)
            corr, plan = self._compiled(task.kind, task.key)
            sample = rows.rows(task.start, task.stop)
            what = (f"baseline {self.baseline.name!r}" if task.kind == BASELINE
                    else f"hypothesis {task.key!r}")

            def reduce(out: Tensor, start: int, stop: int) -> Tensor:
                return per_example_loss(loss_fn, out, data.rows(sample.ref[start:stop]), what,
                                        task.start + start, task.n)

            losses = engine.evaluate(corr, data, sample, chunk_size=chunk_size,
                                     memory_mb=memory_mb, plan=plan, reduce=reduce)
        return losses, {"queued": max(0.0, began - submitted), "compute": time.perf_counter() - t0}


def _actor_class(gpus_per_task: float, max_retries: int) -> Any:
    ray = _ray()
    return ray.remote(num_cpus=1, num_gpus=gpus_per_task, max_restarts=max_retries,
                      max_task_retries=max_retries)(Worker)


# ---- splitting and joining ------------------------------------------------------------------


def split(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Reference rows [0, n) as consecutive chunks of at most `chunk_rows` rows.

    >>> split(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(a, min(n, a + chunk_rows)) for a in range(0, n, chunk_rows)]


def join(chunks: Mapping[tuple[int, int], Tensor], n: int, what: str) -> Tensor:
    """The chunks' losses in row order, after checking they cover rows [0, n) exactly once.

    >>> join({(2, 3): torch.tensor([2.]), (0, 2): torch.tensor([0., 1.])}, 3, "x").tolist()
    [0.0, 1.0, 2.0]
    """
    at = 0
    parts = []
    for (start, stop), losses in sorted(chunks.items()):
        if start != at or len(losses) != stop - start:
            raise RuntimeError(f"{what}: chunk [{start}, {stop}) with {len(losses)} losses does "
                               f"not continue the rows joined so far [0, {at})")
        parts.append(losses)
        at = stop
    if at != n:
        raise RuntimeError(f"{what}: the chunks cover rows [0, {at}), not all {n}")
    return torch.cat(parts)


# ---- the driver -------------------------------------------------------------------------------


@dataclass
class _Seed:
    """What the driver decided for one seed: the reference rows and every draw."""

    seed: int
    ref_idx: Tensor
    samples: dict[tuple[str, str], Sample]


def _prepare(exp: Experiment, seeds: Sequence[int], n: int | None) -> tuple[
        dict[str, Correspondence], Correspondence, InterpNode, list[_Seed]]:
    """Every check and every draw, before any compute, as `scrub_many` makes them."""
    base_root = exp.baseline if exp.baseline is not None else random_baseline()
    corrs = {}
    for k, h in exp.hypotheses.items():
        with context(f"hypothesis {k!r}" if len(exp.hypotheses) > 1 else ""):
            corrs[k] = check(exp.graph, h)
    with context(f"baseline {base_root.name!r}"):
        base_corr = check(exp.graph, base_root)
    table = exp.dataset
    check_inputs(exp.graph, table, "dataset")
    base_where = f"baseline {base_root.name!r}"
    prepared = []
    for seed in seeds:
        ref_idx = reference_rows(len(table), n, seed)
        ctx = sampling_context(table, seed, (0, len(table)))
        for key, corr in corrs.items():
            check_samplers(corr, ctx, f"hypothesis {key!r}")
        check_samplers(base_corr, ctx, base_where)
        samples = {}
        with context(base_where):
            samples[(BASELINE, "")] = draw_hypothesis(base_corr, table, ref_idx, seed, ctx=ctx)
        for key, corr in corrs.items():
            with context(f"hypothesis {key!r}"):
                samples[(HYPOTHESIS, key)] = draw_hypothesis(corr, table, ref_idx, seed, ctx=ctx)
        prepared.append(_Seed(seed, ref_idx, samples))
    return corrs, base_corr, base_root, prepared


def _unwrap(err: BaseException) -> BaseException:
    """The user's own error inside a Ray task error (a `ScrubError`), else `err` itself."""
    cause = getattr(err, "cause", None)
    while cause is not None and not isinstance(cause, ScrubError):
        cause = getattr(cause, "cause", None)
    return cause if cause is not None else err


def sweep(experiment: Recipe | Experiment, *, seeds: Sequence[int] = (0,), n: int | None = None,
          options: Mapping[str, Any] | None = None, recipe: Recipe | None = None,
          device: str | None = None, memory_mb: float | None = None, chunk_size: int | None = None,
          address: str | None = None, workers: int | None = None, gpus_per_task: float = 0,
          chunk_rows: int | None = None, max_retries: int = 3, n_bootstrap: int = 1000,
          progress: bool = False, _crash_once: str | None = None) -> dict[int, Run]:
    """Scrub every hypothesis of an experiment for every seed on Ray; `{seed: Run}`.

    Each `Run` equals `experiments.run_experiment(exp, n=n, seed=seed, ...)` (bit for bit on
    CPU).

    Args:
        experiment: a recipe (`Recipe`: name, experiment-file path, or function) or an
            already built `Experiment` (then give the `recipe` it was built from: workers
            build their own copy from it, and the driver uses this one).
        options: `build(**options)` arguments (e.g. `{"weights": "/models/gpt2"}`).
        device: where workers run (`"cpu"`, `"cuda"`; with `gpus_per_task`, default "cuda").
        memory_mb, chunk_size: as for `scrub_many`, inside each task.
        address: join this Ray cluster (default: start a local one; see `cluster`).
        workers: worker actors (default: every CPU of the cluster, or GPUs / `gpus_per_task`).
        gpus_per_task: GPUs each worker holds (fractions share a GPU).
        chunk_rows: reference rows per task (default: enough tasks for 4 per worker).
        max_retries: restarts of a dead worker, and retries of its unfinished tasks.
    """
    if isinstance(experiment, Experiment):
        if recipe is None:
            raise ScrubError("sweep() got a built Experiment but no recipe= to build it on the "
                             "workers (e.g. recipe='paren').")
        exp = experiment
    else:
        recipe = experiment
        exp = build(recipe, options)
    recipe = _portable(recipe)
    if workers is not None and workers < 1:
        raise ScrubError(f"workers must be at least 1, got {workers}.")
    if gpus_per_task < 0:
        raise ScrubError(f"gpus_per_task must be 0 or more, got {gpus_per_task}.")
    if chunk_rows is not None and chunk_rows < 1:
        raise ScrubError(f"chunk_rows must be at least 1, got {chunk_rows}.")
    if device is None and gpus_per_task > 0:
        device = "cuda"
    if device is not None and gpus_per_task == 0:
        device = str(resolve_device(device))  # the driver's check; GPU workers check their own
    n = check_n(n if n is not None else exp.default_n)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ScrubError("sweep() needs at least one seed.")

    began = time.perf_counter()
    corrs, _, base_root, prepared = _prepare(exp, seeds, n)
    draw_s = time.perf_counter() - began
    n_ref = len(prepared[0].ref_idx)
    units = len(seeds) * (len(corrs) + 2)

    ray = _ray()
    with cluster(address, workers):
        k = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        if gpus_per_task > 0 and workers is None:
            k = max(1, int(ray.cluster_resources().get("GPU", 0) / gpus_per_task))
        rows = chunk_rows or math.ceil(n_ref / max(1, math.ceil(4 * k / units)))
        tasks: list[Task] = []
        for p in prepared:
            # in the order `scrub_many` computes them, so one worker meets a failure first
            # where the single-process run does
            for kind, key in [(BASELINE, ""), (MODEL, ""), *((HYPOTHESIS, h) for h in corrs)]:
                tasks += [Task(kind, key, p.seed, a, b, n_ref) for a, b in split(n_ref, rows)]
        losses = _execute(ray, tasks, prepared, exp, recipe, options or {}, device, memory_mb,
                          chunk_size, k, gpus_per_task, max_retries, progress, _crash_once, draw_s)

    runs = {}
    drawn = circuits(exp)  # the report draws each hypothesis over the graph, as a local run's
    for p in prepared:
        model = losses[(MODEL, "", p.seed)]
        base = losses[(BASELINE, "", p.seed)]
        ref_rows = exp.dataset.rows(p.ref_idx)
        subset_masks = {k: f(ref_rows) for k, f in (exp.subsets or {}).items()}
        results: dict[str, ScrubResult] = {}
        for key in exp.hypotheses:
            per_example = {"scrubbed": losses[(HYPOTHESIS, key, p.seed)], "model": model,
                           "baseline": base, "ref_index": p.ref_idx}
            results[key] = summarize(
                key, per_example, seed=p.seed, n_bootstrap=n_bootstrap, subsets=subset_masks,
                settings={"hypothesis": str(exp.hypotheses[key]),
                          "tree": exp.hypotheses[key].to_dict(), "baseline": str(base_root),
                          "n": n_ref, "n_requested": n, "seed": p.seed, "chunk_size": chunk_size,
                          "memory_mb": memory_mb, "memory_budget_mb": None,
                          "device": str(device or "cpu"),
                          "dataset_size": len(exp.dataset), "separate_ref": False,
                          "versions": versions()})
        _warn_undefined(results, base_root)
        runs[p.seed] = Run(exp.name, results, p.seed, exp.description, dict(exp.published),
                           exp.published_label, dict(exp.descriptions), drawn)
    return runs


def run_experiment(experiment: Recipe | Experiment, *, seed: int = 0, **kwargs: Any) -> Run:
    """`sweep` for one seed: the distributed `experiments.run_experiment`."""
    return sweep(experiment, seeds=[seed], **kwargs)[seed]


def _warn_undefined(results: dict[str, ScrubResult], base_root: InterpNode) -> None:
    r = next(iter(results.values()))
    if r.recovery_defined:
        return
    warn(f"Loss recovered is undefined: {UNDEFINED_RECOVERY} (baseline {base_root.name!r} "
         f"loss {r.baseline_loss:.4g}, model loss {r.model_loss:.4g}, on {r.n} reference "
         f"rows; they differ by less than {RECOVERY_CLOSE:.0%} of the larger and less than "
         f"{RECOVERY_Z} standard errors). Every hypothesis' percentage here is meaningless; "
         "use a baseline that does clearly worse than the model (e.g. the default "
         "random_baseline()), or more reference rows (n).", UndefinedRecoveryWarning)


def _execute(ray: Any, tasks: list[Task], prepared: list[_Seed], exp: Experiment, recipe: Recipe,
             options: Mapping[str, Any], device: str | None, memory_mb: float | None,
             chunk_size: int | None, k: int, gpus_per_task: float, max_retries: int,
             progress: bool, crash_once: str | None, draw_s: float
             ) -> dict[tuple[str, str, int], Tensor]:
    """Run `tasks` on `k` worker actors, two in flight per worker; the joined losses."""
    from tqdm.auto import tqdm

    began = time.perf_counter()
    table_ref = ray.put(exp.dataset)
    data = {}
    for p in prepared:
        data[(MODEL, "", p.seed)] = ray.put(p.ref_idx)
        for (kind, key), sample in p.samples.items():
            data[(kind, key, p.seed)] = ray.put(sample)
    actor = _actor_class(gpus_per_task, max_retries)
    weights = fingerprint(exp.graph)
    actors = [actor.remote(recipe, dict(options), device, weights, time.time(), crash_once)
              for _ in range(k)]
    queue = deque(tasks)
    inflight: dict[Any, tuple[Task, int]] = {}
    done: dict[tuple[str, str, int], dict[tuple[int, int], Tensor]] = {}
    queued_s = compute_s = 0.0

    def submit(i: int) -> None:
        task = queue.popleft()
        ref = actors[i].run.remote(task, [table_ref], data[task.unit], chunk_size, memory_mb,
                                   time.time())
        inflight[ref] = (task, i)

    try:
        for _ in range(2):
            for i in range(k):
                if queue:
                    submit(i)
        with tqdm(total=len(tasks), unit="task", desc="scrubbing on Ray", disable=not progress,
                  leave=False) as bar:
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                task, i = inflight.pop(ready[0])
                try:
                    losses, times = ray.get(ready[0])
                except Exception as err:  # a Ray task error: re-raise the user's own error
                    cause = _unwrap(err)
                    if cause is not err:
                        raise cause from None
                    raise
                done.setdefault(task.unit, {})[(task.start, task.stop)] = losses
                queued_s += times["queued"]
                compute_s += times["compute"]
                bar.update(1)
                if queue:
                    submit(i)
        loads = ray.get([a.info.remote() for a in actors])
    finally:
        for ref in inflight:
            ray.cancel(ref, force=False)
        for a in actors:
            ray.kill(a)
    wall = time.perf_counter() - began
    start_s = max(x["start_s"] for x in loads)
    load_s = max(x["load_s"] for x in loads)
    log.info("Ray: %d tasks on %d workers (%d torch thread%s each) in %.1f s, after %.1f s of "
             "checks and draws on the driver. Workers: process start and imports up to %.1f s, "
             "model loading up to %.1f s. Tasks: %.1f s waiting in queues (behind worker "
             "start-up and each other) and %.1f s computing in all, %.0f%% of the workers' "
             "%.1f s.", len(tasks), k, loads[0]["threads"], "" if loads[0]["threads"] == 1 else "s",
             wall, draw_s, start_s, load_s, queued_s, compute_s,
             100 * compute_s / max(1e-9, wall * k), wall * k)
    return {unit: join(chunks, prepared[0].ref_idx.numel(), f"{unit}") for unit, chunks in done.items()}
