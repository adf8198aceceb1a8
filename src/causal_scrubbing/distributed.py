"""Running a run's evaluations on a Ray cluster (the optional `[ray]` extra): an executor.

The driver prepares every run exactly as a single process does (`pipeline.prepare`: every
check, the reference rows and every draw, once), and `RayExecutor` evaluates the prepared
tasks -- (unit, seed, a chunk of reference rows) -- on worker actors. Each worker evaluates a
task with `pipeline.evaluate_unit`, the function the in-process executor uses, and returns its
per-example losses. The driver joins each unit's chunks in row order, checks that every
reference row came back exactly once, and summarises with `Prepared.summarize`. A row's loss
does not depend on which other rows share its batch, so on CPU the results are bit-identical
to the single-process run.

Workers are Ray actors, one per slot (`workers`, each holding one CPU and `gpus_per_task`
GPUs). Each builds the experiment once, from a picklable *recipe* (`experiment.Recipe`: a
bundled experiment's name, an experiment file's path, or a zero-argument function returning an
`Experiment`), and takes the dataset from the object store, where the driver put it once; each
unit's drawn rows are put there once too. A worker that dies is restarted (and rebuilds its
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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .core import engine
from .core.draws import Sample
from .core.errors import ScrubError, missing_extra
from .core.graph import Graph
from .core.hypothesis import Correspondence, check
from .core.results import Run
from .experiment import Experiment, Recipe, build, run_seeds
from .options import RunOptions, resolve_device
from .pipeline import Prepared, Task, Unit, describe, evaluate_unit, unit_roots
from .report.circuit import claims_dict

__all__ = ["RayExecutor", "Worker", "cluster", "fingerprint", "join", "run_experiment", "split",
           "sweep"]

log = logging.getLogger(__name__)


def _ray() -> Any:
    """The `ray` module, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise missing_extra("ray", "ray", "Running on Ray (--ray)") from err
    return ray


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
        self.roots = unit_roots(exp.graph, exp.hypotheses, exp.baseline)
        self.compiled: dict[Unit, tuple[Correspondence, engine.Plan]] = {}
        self.load_s = time.perf_counter() - began

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "start_s": self.start_s, "load_s": self.load_s,
                "threads": torch.get_num_threads()}

    def _compiled(self, unit: Unit) -> tuple[Correspondence, engine.Plan]:
        if unit not in self.compiled:
            corr = check(self.graph, self.roots[unit])
            self.compiled[unit] = (corr, engine.compile_plan(corr))
        return self.compiled[unit]

    def run(self, task: Task, table: list[Any], sample: Sample, n: int, options: RunOptions,
            submitted: float) -> tuple[Tensor, dict[str, float]]:
        """The per-example losses [stop - start] of `task`, and when it waited and ran."""
        began = time.time()
        if self.failed is not None:
            raise self.failed
        if self.crash_once is not None and task.kind == "hypothesis" and task.start == 0:
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
        corr, plan = self._compiled(task.unit)
        losses = evaluate_unit(corr, self.table, sample.rows(task.start, task.stop), self.loss_fn,
                               describe(task.unit, self.roots), options, start=task.start, n=n,
                               plan=plan)
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


# ---- the executor -----------------------------------------------------------------------------


def _unwrap(err: BaseException) -> BaseException:
    """The user's own error inside a Ray task error (a `ScrubError`), else `err` itself."""
    cause = getattr(err, "cause", None)
    while cause is not None and not isinstance(cause, ScrubError):
        cause = getattr(cause, "cause", None)
    return cause if cause is not None else err


@dataclass
class RayExecutor:
    """Evaluates prepared runs on Ray worker actors (see the module docstring).

    Attributes:
        recipe: how workers build the experiment (`experiment.Recipe`).
        options: `build(**options)` arguments (e.g. `{"weights": "/models/gpt2"}`).
        device: where workers run (`"cpu"`, `"cuda"`; with `gpus_per_task`, default "cuda").
        address: join this Ray cluster (default: start a local one; see `cluster`).
        workers: worker actors (default: every CPU of the cluster, or GPUs / `gpus_per_task`).
        gpus_per_task: GPUs each worker holds (fractions share a GPU).
        chunk_rows: reference rows per task (default: enough tasks for 4 per worker).
        max_retries: restarts of a dead worker, and retries of its unfinished tasks.
    """

    recipe: Recipe
    options: Mapping[str, Any] = field(default_factory=dict)
    device: str | None = None
    address: str | None = None
    workers: int | None = None
    gpus_per_task: float = 0
    chunk_rows: int | None = None
    max_retries: int = 3
    crash_once: str | None = None  # tests only (see `Worker`)

    def __post_init__(self) -> None:
        self.recipe = _portable(self.recipe)
        if self.workers is not None and self.workers < 1:
            raise ScrubError(f"workers must be at least 1, got {self.workers}.")
        if self.gpus_per_task < 0:
            raise ScrubError(f"gpus_per_task must be 0 or more, got {self.gpus_per_task}.")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ScrubError(f"chunk_rows must be at least 1, got {self.chunk_rows}.")
        if self.device is None and self.gpus_per_task > 0:
            self.device = "cuda"
        if self.device is not None and self.gpus_per_task == 0:
            self.device = str(resolve_device(self.device))  # GPU workers check their own

    def run(self, runs: Sequence[Prepared]) -> list[dict[Unit, Tensor]]:
        ray = _ray()
        with cluster(self.address, self.workers):
            k = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            if self.gpus_per_task > 0 and self.workers is None:
                k = max(1, int(ray.cluster_resources().get("GPU", 0) / self.gpus_per_task))
            units = sum(len(r.units) for r in runs)
            n_ref = runs[0].n
            rows = self.chunk_rows or math.ceil(n_ref / max(1, math.ceil(4 * k / units)))
            # in the order the single process computes them, so one worker meets a failure
            # first where the single-process run does
            tasks = [t for r in runs for t in r.tasks(rows)]
            done = self._execute(ray, tasks, runs, k)
        return [{unit: join(done[(r.options.seed, unit)], r.n, f"{unit} (seed {r.options.seed})")
                 for unit in r.units} for r in runs]

    def _execute(self, ray: Any, tasks: list[Task], runs: Sequence[Prepared], k: int
                 ) -> dict[tuple[int, Unit], dict[tuple[int, int], Tensor]]:
        """Run `tasks` on `k` worker actors, two in flight per worker; each unit's chunks."""
        from tqdm.auto import tqdm

        began = time.perf_counter()
        first = runs[0]
        progress = first.options.progress
        table_ref = ray.put(first.table)
        data = {(r.options.seed, unit): ray.put(sample) for r in runs
                for unit, sample in r.samples.items()}
        by_seed = {r.options.seed: r for r in runs}
        actor = _actor_class(self.gpus_per_task, self.max_retries)
        weights = fingerprint(first.graph)
        actors = [actor.remote(self.recipe, dict(self.options), self.device, weights, time.time(),
                               self.crash_once) for _ in range(k)]
        queue = deque(tasks)
        inflight: dict[Any, tuple[Task, int]] = {}
        done: dict[tuple[int, Unit], dict[tuple[int, int], Tensor]] = {}
        queued_s = compute_s = 0.0

        def submit(i: int) -> None:
            task = queue.popleft()
            run = by_seed[task.seed]
            ref = actors[i].run.remote(task, [table_ref], data[(task.seed, task.unit)], run.n,
                                       run.options.replace(progress=False), time.time())
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
                    done.setdefault((task.seed, task.unit), {})[(task.start, task.stop)] = losses
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
        log.info("Ray: %d tasks on %d workers (%d torch thread%s each) in %.1f s. Workers: process "
                 "start and imports up to %.1f s, model loading up to %.1f s. Tasks: %.1f s "
                 "waiting in queues (behind worker start-up and each other) and %.1f s computing "
                 "in all, %.0f%% of the workers' %.1f s.", len(tasks), k, loads[0]["threads"],
                 "" if loads[0]["threads"] == 1 else "s", wall,
                 max(x["start_s"] for x in loads), max(x["load_s"] for x in loads), queued_s,
                 compute_s, 100 * compute_s / max(1e-9, wall * k), wall * k)
        return done


# ---- the entry points ---------------------------------------------------------------------------


def sweep(experiment: Recipe | Experiment, *, seeds: Sequence[int] = (0,),
          run_options: RunOptions | None = None, recipe: Recipe | None = None,
          options: Mapping[str, Any] | None = None, device: str | None = None,
          address: str | None = None, workers: int | None = None, gpus_per_task: float = 0,
          chunk_rows: int | None = None, max_retries: int = 3, _crash_once: str | None = None,
          **kwargs: Any) -> dict[int, Run]:
    """Scrub every hypothesis of an experiment for every seed on Ray; `{seed: Run}`.

    Each `Run` equals `experiment.run_experiment(exp, n=n, seed=seed, ...)` (bit for bit on
    CPU): this is that function with a `RayExecutor`.

    Args:
        experiment: a recipe (`Recipe`: name, experiment-file path, or function) or an
            already built `Experiment` (then give the `recipe` it was built from: workers
            build their own copy from it, and the driver uses this one).
        run_options, **kwargs: how to scrub (a `RunOptions`, or its fields as keywords: n,
            chunk_size, memory_mb, n_bootstrap, progress; the seed comes from `seeds`).
        options: `build(**options)` arguments (e.g. `{"weights": "/models/gpt2"}`).
        device, address, workers, gpus_per_task, chunk_rows, max_retries: as `RayExecutor`.
    """
    if isinstance(experiment, Experiment):
        if recipe is None:
            raise ScrubError("sweep() got a built Experiment but no recipe= to build it on the "
                             "workers (e.g. recipe='paren').")
        exp = experiment
    else:
        recipe = experiment
        exp = build(recipe, options)
    if kwargs.get("memory_budget_mb") is not None or (
            run_options is not None and run_options.memory_budget_mb is not None):
        raise ScrubError("memory_budget_mb bounds a single process; on Ray give each task's "
                         "chunk budget with memory_mb (or chunk_size) instead.")
    executor = RayExecutor(recipe, dict(options or {}), device, address, workers, gpus_per_task,
                           chunk_rows, max_retries, _crash_once)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ScrubError("sweep() needs at least one seed.")
    opts = RunOptions.of(run_options, **kwargs)
    if executor.device is not None:
        opts = opts.replace(device=None)  # checked by the executor; the driver only draws
    runs = run_seeds(exp, seeds, opts, executor=executor)
    drawn = {k: claims_dict(exp.graph, h) for k, h in exp.hypotheses.items()}  # as a local run's
    for run in runs.values():
        run.circuits = drawn
        for result in run.results.values():
            result.settings["device"] = executor.device or "cpu"
    return runs


def run_experiment(experiment: Recipe | Experiment, *, seed: int = 0, **kwargs: Any) -> Run:
    """`sweep` for one seed: `experiment.run_experiment` on Ray."""
    return sweep(experiment, seeds=[seed], **kwargs)[seed]
