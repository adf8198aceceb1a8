"""`causal-scrub bench`: the engine against its physical limit and the other ways to scrub.

Each workload is one hypothesis on one model, with its datasets drawn once. Five evaluators
then compute the same scrubbed losses, timed side by side in one process:

- **engine**: `engine.evaluate`, the fast evaluator;
- **limit**: k clean forward passes of the model (its own fused `forward`) over the reference
  rows, where k is the number of distinct datasets ("lanes") the hypothesis draws, plus one
  evaluation of the loss. Every evaluator must at least run the model on each dataset once
  and score the output, so engine / limit near 1 is the goal;
- **reference**: `reference.evaluate`, the literal path-by-path algorithm, timed on the first
  `reference_rows` rows and scaled to n (its cost is linear in the rows); skipped where the
  graph has too many paths to enumerate (a GPT-2-sized model has about 10^22);
- **hooks**: `hook_loop.evaluate`, the cache-then-path-patch loop, on our own graph;
- **TL peer**: `tl_peer.TLPeer.evaluate`, the same scrub as a competent researcher writes it
  with TransformerLens (`run_with_cache` once per distinct row set, then `run_with_hooks`
  passes; see `tl_peer`), where transformer_lens is installed and the workload can be written
  with its hooks (otherwise a note says why not).

`threads` (`causal-scrub bench --threads 1,2`) repeats every measurement at each torch thread
count, labelling the rows.

Times are medians of `repeats` runs, the evaluators' runs interleaved (so that a change in a
shared machine's load falls on all of them); peak memory is the most the process held above its
resting level while one evaluator ran (its first run: resident memory on CPU, counted from what
is live after freed memory is handed back, with the allocator left as a user's run has it, so
retained free blocks count; allocated memory on CUDA).
Losses are compared so a speed-up can never come from computing something else.

Example:
    >>> from causal_scrubbing import bench
    >>> [w.name for w in bench.workloads(quick=True)][:3]
    ['paren Ex1b', 'paren Ex4', 'induction naive']
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..core import engine, reference
from ..core.data import Dataset
from ..core.draws import draw_hypothesis, reference_rows
from ..core.errors import ScrubError
from ..core.graph import Graph
from ..core.hypothesis import check
from ..core.memory import resident_mb, trim
from ..core.results import versions
from ..experiments import Experiment
from ..experiments import load as load_experiment
from ..scrubbing import per_example_loss
from . import hook_loop, tl_peer

log = logging.getLogger(__name__)

MAX_REFERENCE_PATHS = 1_000_000  # the literal evaluator is skipped on graphs with more paths


@dataclass
class Workload:
    """One timed case: a hypothesis of an experiment on `n` reference rows."""

    name: str
    experiment: Callable[[], Experiment]
    hypothesis: str
    n: int
    reference_rows: int = 64
    chunk_size: int | None = None  # None: the engine's memory-budget default


def workloads(quick: bool = False) -> list[Workload]:
    """The benchmark's workloads; `quick` shrinks them to run in seconds (for tests)."""
    from ..experiments import ioi

    def gpt2_small():  # the IOI hypothesis's shape on random weights (no download)
        return (ioi.random_workload(n=512) if not quick else
                ioi.random_workload(n_layers=6, n_heads=8, d_model=64, d_vocab=1000, n=256))

    scale = 16 if quick else 1
    return [
        Workload("paren Ex1b", lambda: load_experiment("paren"), "Ex1b", 2048 // scale,
                 8 // (scale // 4 or 1)),
        Workload("paren Ex4", lambda: load_experiment("paren"), "Ex4", 1024 // scale, 8 // (scale // 4 or 1)),
        Workload("induction naive", lambda: load_experiment("induction"), "naive", 256 // scale,
                 32 // scale),
        Workload("induction refined", lambda: load_experiment("induction"), "refined", 256 // scale,
                 32 // scale),
        Workload("IOI", lambda: load_experiment("ioi"), "+ finder queries", 2048 // scale,
                 64 // scale),
        Workload("GPT-2-small-shaped IOI", gpt2_small, "circuit", 32 if not quick else 16),
    ]


@dataclass
class Measurement:
    """What `bench` records for one workload (seconds are medians over repeats)."""

    name: str
    lanes: int
    n: int
    engine_s: float
    limit_s: float
    reference_s: float | None
    hooks_s: float
    engine_peak_mb: float
    limit_peak_mb: float
    reference_peak_mb: float | None
    hooks_peak_mb: float
    loss_engine: float
    loss_reference: float | None
    loss_hooks: float
    reference_rows: int | None = None  # rows the reference was timed on (then scaled to n)
    paths: int = 0
    mixing_ops: int = 0
    notes: list[str] = field(default_factory=list)
    tl_s: float | None = None  # the TransformerLens peer (None: not installed or not expressible)
    tl_peak_mb: float | None = None
    loss_tl: float | None = None
    threads: int | None = None  # torch threads the row was measured at


class PeakMemory:
    """Context manager: the most memory held above the level at entry, in MB.

    On CUDA, allocated tensor memory (`torch.cuda.max_memory_allocated`); on CPU, the
    process's resident set, polled every millisecond from a background thread (Linux
    `/proc/self/statm`; elsewhere the lifetime peak `ru_maxrss` is used, which can only rise).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0


    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        trim()  # start from what is live, not from what an earlier run left in free lists
        self.start = resident_mb()
        self.high = self.start
        self.stop_flag = threading.Event()

        def poll() -> None:
            while not self.stop_flag.wait(0.001):
                self.high = max(self.high, resident_mb())

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
            return
        self.stop_flag.set()
        self.thread.join()
        self.high = max(self.high, resident_mb())
        self.peak_mb = self.high - self.start


def _timed(fn: Callable[[], Tensor], repeats: int, device: torch.device) -> tuple[float, float, Tensor]:
    """(median seconds, peak MB of the first run, result of the last run)."""
    return _timed_together({"fn": fn}, repeats, device)["fn"]


def _timed_together(fns: dict[str, Callable[[], Tensor]], repeats: int, device: torch.device
                    ) -> dict[str, tuple[float, float, Tensor]]:
    """`_timed` of each of `fns`, their runs interleaved (repeat i of every evaluator before
    repeat i + 1 of any), so that a change in the machine's load falls on all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    peak: dict[str, float] = {}
    out: dict[str, Tensor] = {}
    for i in range(repeats):
        for k, fn in fns.items():
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                out[k] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[k].append(time.perf_counter() - t0)
            if i == 0:
                peak[k] = mem.peak_mb
    # median() refuses an empty list: repeats >= 1
    return {k: (statistics.median(times[k]), peak[k], out[k]) for k in fns}


def model_forward(graph: Graph) -> Callable[[Dataset], Tensor]:
    """The model's own forward pass on a batch: the module's when it is a `Transformer`."""
    from ..models import Transformer

    if isinstance(graph.module, Transformer):
        return lambda batch: graph.module(batch["tokens"])
    return graph.forward


def measure(w: Workload, *, repeats: int = 3, device: str | torch.device = "cpu",
            seed: int = 0, with_reference: bool = True,
            memory_budget_mb: float | None = None) -> Measurement:
    """Time and check one workload (see the module docstring for what is measured)."""
    device = torch.device(device)
    exp = w.experiment()
    graph = exp.graph.to(device)
    table = exp.dataset.to(device)
    corr = check(graph, exp.hypotheses[w.hypothesis])
    ref_idx = reference_rows(len(table), w.n, seed)
    sample = draw_hypothesis(corr, table, ref_idx, seed)
    plan = engine.compile_plan(corr)
    slots = engine.slots(plan, sample).rows  # the distinct datasets the limit runs
    chunk = w.chunk_size or 1024
    notes: list[str] = []

    def mean_loss(out: Tensor, rows: Tensor) -> float:
        return float(per_example_loss(exp.loss_fn, out, table.rows(rows), w.name, 0).mean())

    def losses_by_chunk(start: int, stop: int, out: Tensor) -> Tensor:
        return per_example_loss(exp.loss_fn, out, table.rows(ref_idx[start:stop]), w.name, start)

    def run_engine() -> Tensor:
        return engine.evaluate(corr, table, sample, plan=plan, chunk_size=w.chunk_size,
                               memory_budget_mb=memory_budget_mb,
                               reduce=lambda out, a, b: losses_by_chunk(a, b, out))

    forward = model_forward(graph)

    def run_limit() -> Tensor:
        """k clean forward passes, and the loss once (as every scrub must compute it)."""
        with torch.inference_mode():
            for i, rows in enumerate(slots):
                for start in range(0, len(rows), chunk):
                    out = forward(table.rows(rows[start:start + chunk]))
                    if i == 0:
                        losses_by_chunk(start, min(start + chunk, len(rows)), out)
            return out

    def run_hooks() -> Tensor:
        return hook_loop.evaluate(corr, table, sample, plan=plan, chunk_size=chunk,
                                      reduce=lambda out, a, b: losses_by_chunk(a, b, out))

    peer = tl_peer_for(graph, table, corr, plan, notes)

    def run_tl() -> Tensor:
        assert peer is not None
        return peer.evaluate(corr, table, sample, plan=plan, chunk_size=w.chunk_size,
                             reduce=lambda out, a, b: losses_by_chunk(a, b, out))

    log.info("bench %s: %d lanes, %d mixing ops, n=%d", w.name, len(slots), len(plan.ops), w.n)
    warm = sample.rows(0, min(8, w.n))  # first calls pay one-off costs; keep them out of the times
    engine.evaluate(corr, table, warm, plan=plan)
    hook_loop.evaluate(corr, table, warm, plan=plan)
    if peer is not None:
        peer.evaluate(corr, table, warm, plan=plan)
    with torch.inference_mode():
        forward(table.rows(warm.ref))
    evaluators = {"engine": run_engine, "limit": run_limit, "hooks": run_hooks}
    if peer is not None:
        evaluators["tl"] = run_tl
    timed = _timed_together(evaluators, repeats, device)
    (engine_s, engine_mb, engine_losses), (limit_s, limit_mb, _) = timed["engine"], timed["limit"]
    hooks_s, hooks_mb, hooks_losses = timed["hooks"]
    loss_engine, loss_hooks = float(engine_losses.mean()), float(hooks_losses.mean())
    tl_s = tl_mb = loss_tl = None
    if peer is not None:
        tl_s, tl_mb, tl_losses = timed["tl"]
        loss_tl = float(tl_losses.mean())
        if not same_loss(loss_tl, loss_engine):
            notes.append("TL peer and engine losses DIFFER")

    n_paths = graph.count_paths()
    reference_s = reference_mb = loss_reference = None
    m = min(w.reference_rows, w.n)
    if not with_reference:
        notes.append("reference not run (--no-reference)")
    elif n_paths <= MAX_REFERENCE_PATHS:
        sub = sample.rows(0, m)
        with torch.inference_mode():
            ref_s, reference_mb, ref_out = _timed(lambda: reference.evaluate(corr, table, sub), 1, device)
            eng_sub = engine.evaluate(corr, table, sub, plan=plan)
        reference_s = ref_s * w.n / m
        loss_reference = mean_loss(ref_out, ref_idx[:m])
        if not torch.allclose(ref_out, eng_sub, rtol=1e-4, atol=1e-4):
            notes.append("reference and engine DIFFER on the timed rows")
        notes.append(f"reference timed on {m} rows, scaled to {w.n}")
    else:
        notes.append(f"reference skipped: {n_paths:.3g} paths")
    if not same_loss(loss_hooks, loss_engine):
        notes.append("hooks and engine losses DIFFER")
    return Measurement(w.name, len(slots), w.n, engine_s, limit_s, reference_s, hooks_s,
                       engine_mb, limit_mb, reference_mb, hooks_mb, loss_engine, loss_reference,
                       loss_hooks, m if reference_s is not None else None, n_paths, len(plan.ops),
                       notes, tl_s=tl_s, tl_peak_mb=tl_mb, loss_tl=loss_tl,
                       threads=torch.get_num_threads())


def same_loss(a: float, b: float) -> bool:
    """Two evaluators' mean losses agree (to float rounding of a sum over rows)."""
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


def tl_peer_for(graph: Graph, table: Dataset, corr, plan: engine.Plan, notes: list[str]
             ) -> tl_peer.TLPeer | None:
    """The TransformerLens peer of the workload's model, checked to express its plan; None,
    with a note saying why, where transformer_lens is missing or the scrub has no hook form."""
    missing = tl_peer.available()
    if missing is not None:
        notes.append(f"TL peer: {missing}")
        return None
    try:
        if "tokens" not in table:
            raise tl_peer.NotExpressible("the dataset has no tokens to run a transformer on")
        peer = tl_peer.TLPeer(graph.module, table.device, check_tokens=table["tokens"][:4])
        peer.script(corr, plan, table["tokens"].shape[1])
    except tl_peer.NotExpressible as err:
        notes.append(f"TL peer: n/a, {err}")
        return None
    return peer


def machine(device: torch.device, threads: list[int] | None = None) -> str:
    """A one-line description of where the benchmark ran (`threads`: the thread counts the
    rows were measured at, when they were set)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    n_threads = (f"{', '.join(map(str, threads))} torch threads (per row)" if threads
                 else f"{torch.get_num_threads()} torch threads")
    return f"{cpu}, {os.cpu_count()} cores, {n_threads}, torch {torch.__version__}"


def format_table(results: list[Measurement], with_threads: bool = False) -> str:
    """The ratios, one row per workload (and thread count, `with_threads`)."""
    thr = f" {'thr':>3s}" if with_threads else ""
    head = (f"{'workload':26s}{thr} {'lanes':>5s} {'n':>5s} {'engine s':>9s} {'/limit':>7s} "
            f"{'ref x':>8s} {'hooks x':>8s} {'TL x':>7s} {'engine MB':>9s} {'hooks MB':>9s} "
            f"{'TL MB':>7s}")
    lines = [head]
    for r in results:
        ref = f"{r.reference_s / r.engine_s:7.1f}x" if r.reference_s is not None else "     n/a"
        tl = f"{r.tl_s / r.engine_s:6.2f}x" if r.tl_s is not None else "    n/a"
        tl_mb = f"{r.tl_peak_mb:7.0f}" if r.tl_peak_mb is not None else "    n/a"
        threads = f" {r.threads if r.threads is not None else '-':>3}" if with_threads else ""
        lines.append(f"{r.name:26s}{threads} {r.lanes:5d} {r.n:5d} {r.engine_s:9.2f} "
                     f"{r.engine_s / r.limit_s:6.2f}x {ref} {r.hooks_s / r.engine_s:7.1f}x {tl} "
                     f"{r.engine_peak_mb:9.0f} {r.hooks_peak_mb:9.0f} {tl_mb}")
    lines.append("/limit: engine time over k clean forward passes (goal <= 1.3); ref x, hooks x and "
                 "TL x: how many times slower the literal reference, the hook loop and the "
                 "TransformerLens peer are than the engine (TL x >= 1.5 is the goal).")
    for r in results:
        label = (f"{r.name} at {r.threads} thread{'s' if r.threads != 1 else ''}" if with_threads
                 else r.name)
        for note in r.notes:
            lines.append(f"  {label}: {note}")
    return "\n".join(lines)


def run(*, quick: bool = False, repeats: int = 3, device: str = "cpu", only: list[str] | None = None,
        out: str | os.PathLike | None = None, progress: bool = True, with_reference: bool = True,
        memory_budget_mb: float | None = None, threads: list[int] | None = None) -> dict:
    """Measure every workload (or those whose name contains one of `only`); write `out` JSON.

    With `threads`, each workload is measured at each of these torch thread counts in turn
    (`torch.set_num_threads`; restored afterwards), and each row says at which."""
    from tqdm.auto import tqdm

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScrubError(f"--device {device}: this machine has no CUDA device (or this torch build "
                         "has no CUDA support); use --device cpu.")
    if threads is not None and (not threads or any(t < 1 for t in threads)):
        raise ScrubError(f"--threads {threads}: give one or more positive thread counts, e.g. 1,2.")
    everything = workloads(quick)
    chosen = [w for w in everything if not only or any(o.lower() in w.name.lower() for o in only)]
    if not chosen:
        raise ScrubError(f"No workload matches --only {only}; the workloads are "
                         f"{[w.name for w in everything]}.")
    default_threads = torch.get_num_threads()
    results = []
    cases = [(w, t) for w in chosen for t in (threads or [default_threads])]
    try:
        for w, t in tqdm(cases, desc="bench", disable=not progress, leave=False):
            torch.set_num_threads(t)
            results.append(measure(w, repeats=repeats, device=dev, with_reference=with_reference,
                                   memory_budget_mb=memory_budget_mb))
    finally:
        torch.set_num_threads(default_threads)
    data = {"machine": machine(dev, threads), "device": str(dev), "repeats": repeats, "quick": quick,
            "versions": {**versions(), **tl_peer.version()}, "workloads": [asdict(r) for r in results]}
    if threads is not None:
        data["threads"] = list(threads)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
    data["table"] = format_table(results, with_threads=threads is not None)
    return data
