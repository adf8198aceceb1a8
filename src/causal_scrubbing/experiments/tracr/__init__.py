"""Compiled transformers whose circuits are known by construction (tracr), as ground truth.

tracr compiles a RASP program into transformer weights, so which component computes what is
known before anything is measured. The `auto-circuit` package (Miller et al.) ships two such
models as TransformerLens models, and with each an *official circuit*: the edges that must be
kept when every other edge is resample-ablated, written per token position.

- `reverse`: reverse a sequence of 5 tokens from {1, 2, 3} (4 layers, one head each). The last
  head a3.h0 attends from position i to position 6 - i and copies the token there. Its
  official circuit is `Resid Start -> A3.0.V` and `A3.0 -> Resid End`: the query and key
  compute the reversed position from the length, which is 5 in every input, so resampling
  them changes nothing.
- `xproportion`: at each position, the fraction of the tokens so far that are "x" (vocabulary
  {w, x, y, z}; 2 layers). m0 writes "is x", a1.h0 averages it over the earlier positions.
  Official circuit: `Resid Start -> MLP 0 -> A1.0.V`, `A1.0 -> Resid End`.

This module imports both models exactly (`models.from_transformer_lens`; the official circuits
are read from auto-circuit's own definitions), builds their datasets (every input of 5 tokens
after BOS, `repeats` times), a loss that scores the task (reverse: cross-entropy of the
reversed token at positions 1-5; xproportion: squared error of the output against the true
fraction there), and writes each circuit as a causal-scrubbing hypothesis with
`searching.build_hypothesis` on the model's graph, whose ports are split by position where a
circuit keeps an edge at some positions only (`rewrites.split_positions`). auto-circuit's node
names map onto ours: `Resid Start` is `embed` and `pos_embed` (with their edges from `tokens`),
`A{l}.{h}` is `a{l}.h{h}` (ports `.Q`, `.K`, `.V`: `q`, `k`, `v`), `MLP {l}` is `m{l}` (port
`in`), `Resid End` is `out` (port `resid`).

Hypotheses, per task: `official` (Miller et al.'s circuit at its positions), `official, every
position` (the same edges at every position), and `ACDC paper` (Conmy et al.'s circuit, meant
for zero ablation, at its positions). The reverse official circuit leaves out the middle
position 3 (auto-circuit keeps positions 1, 2, 4, 5), where the output reads the token at
position 3 itself; resampled there, the middle output reads another input's token, so that
circuit recovers the loss at four of the five output positions only. docs/tracr.md has the
numbers.

The experiments are `tracr-reverse` and `tracr-xproportion`; `causal-scrub run tracr` runs
both. They need the optional extra: pip install 'causal-scrubbing[tracr]'.

Any other RASP program compiles with `from_program(program, vocab=..., max_seq_len=...)`
(`tracr.compile`: the model from tracr's own parameters, the true circuit from the compiler's
allocation), and `tracr.programs` bundles ten programs of tracr's library as the experiments
`tracr-lib-<name>` (suite `tracr-lib`).

Example (auto-circuit's edge names as (sender, receiver, port) triples of our graph):
    >>> from causal_scrubbing.experiments import tracr
    >>> sorted(tracr.triples("Resid Start->A3.0.V"))
    [('embed', 'a3.h0', 'v'), ('pos_embed', 'a3.h0', 'v')]
    >>> tracr.edge_name(("m0", "a1.h0", "v")), tracr.edge_name(("tokens", "embed", "tokens"))
    ('MLP 0->A1.0.V', None)
"""

from __future__ import annotations

import copy
import importlib
import itertools
import re
import sys
import types
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import ScrubError, broken_extra, missing_extra
from ...core.graph import Graph
from ...core.hypothesis import InterpNode
from ...core.names import head_name, mlp_name
from ...core.rewrites import split_positions
from ...models import Transformer
from ...searching import Triple, build_hypothesis, graph_edges
from .. import Experiment
from .compile import from_program  # noqa: F401  (the API: tracr.from_program)

TASKS = ("reverse", "xproportion")
LENGTH = 5  # tokens after BOS, as auto-circuit's tracr models are compiled (max_seq_len)
BOS = "BOS"
#: The input edges inside auto-circuit's `Resid Start` (kept by every circuit).
INPUT_EDGES: frozenset[Triple] = frozenset({("tokens", "embed", "tokens"),
                                            ("tokens", "pos_embed", "tokens")})

#: circuit id -> (auto-circuit module, function per task, description)
CIRCUITS: dict[str, tuple[str, dict[str, str], str]] = {
    "official": ("auto_circuit.metrics.official_circuits.circuits.tracr.{task}_official",
                 {"reverse": "tracr_reverse_true_edges",
                  "xproportion": "tracr_xproportion_official_edges"},
                 "Miller et al.'s circuit (resample ablation), at its token positions"),
    "ACDC paper": ("auto_circuit.metrics.official_circuits.circuits.tracr.{task}_official",
                   {"reverse": "tracr_reverse_acdc_edges",
                    "xproportion": "tracr_xproportion_acdc_edges"},
                   "Conmy et al.'s circuit (meant for zero ablation), at its token positions"),
}


# ---- auto-circuit ------------------------------------------------------------------------------


def _alias_kv_cache() -> None:
    """auto-circuit 1.0.1 imports TransformerLens's key-value cache by its 1.x/2.x name
    (`transformer_lens.past_key_value_caching.HookedTransformerKeyValueCache`), which
    transformer_lens 3 renamed `TransformerLensKeyValueCache`. Where only the new name exists,
    the old one is made to refer to it (the tracr models never use a key-value cache)."""
    import transformer_lens

    new = getattr(transformer_lens, "TransformerLensKeyValueCache", None)
    if new is None or hasattr(transformer_lens, "HookedTransformerKeyValueCache"):
        return
    transformer_lens.HookedTransformerKeyValueCache = new
    name = "transformer_lens.past_key_value_caching"
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.HookedTransformerKeyValueCache = new  # type: ignore[attr-defined]
        sys.modules[name] = module


def auto_circuit(module: str) -> Any:
    """Import `module` of auto-circuit (a clear error naming the extra when it is missing)."""
    try:
        import auto_circuit  # noqa: F401
    except ImportError as err:
        if err.name == "auto_circuit":
            raise missing_extra("auto_circuit", "tracr", "The tracr experiment") from err
        raise broken_extra("tracr", "The tracr experiment", err) from err
    _alias_kv_cache()
    try:
        return importlib.import_module(module)
    except ImportError as err:  # installed, but one of its own needs is missing or too new
        raise broken_extra("tracr", "The tracr experiment", err) from err


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ScrubError(f"Unknown tracr task {task!r}; use one of {', '.join(TASKS)}.")
    return task


@dataclass(frozen=True)
class Compiled:
    """A task's compiled model: the TransformerLens model auto-circuit builds, and tracr's
    token encoding (input token -> id, including BOS and the pad token)."""

    tl_model: Any
    encoding: dict[Any, int]

    @property
    def vocab(self) -> list[Any]:
        """The task's tokens (without BOS and pad), in the order of their ids."""
        return sorted((t for t in self.encoding if t not in (BOS, "compiler_pad")),
                      key=self.encoding.__getitem__)


@cache
def compile_task(task: str) -> Compiled:
    """Compile the task's RASP program with tracr and convert it, as auto-circuit does
    (`get_tracr_model`; about 10 s, once per process)."""
    utils = auto_circuit("auto_circuit.model_utils.tracr_model_utils")
    with warnings.catch_warnings():  # transformer_lens 3 deprecates the class tracr models use
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        tl_model, assembled = utils.get_tracr_model(check_task(task), "cpu")
    return Compiled(tl_model.eval(), dict(assembled.input_encoder.encoding_map))


@cache
def _imported(task: str) -> Transformer:
    from ...models import from_transformer_lens

    return from_transformer_lens(compile_task(task).tl_model)


def load_model(task: str) -> Transformer:
    """The task's model as our `Transformer` (a fresh copy; logits equal to the TransformerLens
    model's, checked when imported)."""
    return copy.deepcopy(_imported(check_task(task)))


# ---- the data and the loss -----------------------------------------------------------------------


def dataset(task: str, repeats: int = 4) -> Dataset:
    """Every input of `LENGTH` tokens after BOS, `repeats` times (exactly uniform): `tokens`
    [n, LENGTH + 1] and the answer at positions 1..LENGTH: `target` [n, LENGTH], the reversed
    token's id (reverse) or the fraction of "x" so far (xproportion)."""
    if repeats < 1:
        raise ScrubError(f"repeats must be at least 1, got {repeats}.")
    enc = compile_task(check_task(task)).encoding
    vocab = compile_task(task).vocab
    seqs = list(itertools.product(vocab, repeat=LENGTH))
    tokens = torch.tensor([[enc[BOS]] + [enc[t] for t in s] for s in seqs])  # [V^L, L + 1]
    if task == "reverse":
        target = tokens[:, 1:].flip(1)  # [V^L, L]: input ids are output ids (0, 1, 2)
    else:
        is_x = (tokens[:, 1:] == enc["x"]).float()  # [V^L, L]
        target = is_x.cumsum(1) / torch.arange(1, LENGTH + 1)  # [V^L, L]
    return Dataset({"tokens": tokens.repeat(repeats, 1), "target": target.repeat(repeats, 1)})


def reverse_loss(out: Tensor, ref: Dataset) -> Tensor:
    """Cross-entropy of the reversed token at positions 1..LENGTH, averaged there [n]."""
    logits = out[:, 1:]  # [n, L, d_vocab_out]
    target = ref["target"].to(out.device)  # [n, L]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                         reduction="none")  # [n * L]
    return ce.view(target.shape).mean(1)


def xproportion_loss(out: Tensor, ref: Dataset) -> Tensor:
    """Squared error of the output against the fraction of "x" at positions 1..LENGTH,
    averaged there [n]."""
    return ((out[:, 1:, 0] - ref["target"].to(out.device)) ** 2).mean(1)  # [n]


LOSSES = {"reverse": reverse_loss, "xproportion": xproportion_loss}


# ---- auto-circuit's edges on our graph --------------------------------------------------------


_HEAD = re.compile(r"A(\d+)\.(\d+)")
_MLP = re.compile(r"MLP (\d+)")


def _senders(name: str) -> tuple[str, ...]:
    if name == "Resid Start":
        return ("embed", "pos_embed")
    if m := _HEAD.fullmatch(name):
        return (head_name(int(m[1]), int(m[2])),)
    if m := _MLP.fullmatch(name):
        return (mlp_name(int(m[1])),)
    raise ScrubError(f"{name!r} is not an auto-circuit source node ('Resid Start', 'A1.0', 'MLP 1').")


def _receiver(name: str) -> tuple[str, str]:
    if name == "Resid End":
        return ("out", "resid")
    if (m := _HEAD.fullmatch(name[:-2])) and name[-2:] in (".Q", ".K", ".V"):
        return (head_name(int(m[1]), int(m[2])), name[-1].lower())
    if m := _MLP.fullmatch(name):
        return (mlp_name(int(m[1])), "in")
    raise ScrubError(f"{name!r} is not an auto-circuit destination node ('Resid End', "
                     "'A1.0.Q', 'MLP 1').")


def triples(name: str) -> set[Triple]:
    """auto-circuit's edge `name` ('Resid Start->A3.0.V') as triples of the model's graph."""
    if name.count("->") != 1:
        raise ScrubError(f"{name!r} is not an auto-circuit edge name ('SOURCE->DESTINATION').")
    src, dest = name.split("->")
    node, port = _receiver(dest)
    return {(s, node, port) for s in _senders(src)}


def edge_name(triple: Triple) -> str | None:
    """The auto-circuit name of a triple of the model's graph; None for the input edges
    inside `Resid Start` (tokens -> embed, tokens -> pos_embed)."""
    sender, node, port = triple
    if triple in INPUT_EDGES:
        return None
    if sender in ("embed", "pos_embed"):
        src = "Resid Start"
    elif m := re.fullmatch(r"a(\d+)\.h(\d+)", sender):
        src = f"A{m[1]}.{m[2]}"
    elif m := re.fullmatch(r"m(\d+)", sender):
        src = f"MLP {m[1]}"
    else:
        raise ScrubError(f"{sender!r} is not a node of a tracr model's graph.")
    if node == "out":
        dest = "Resid End"
    elif m := re.fullmatch(r"a(\d+)\.h(\d+)", node):
        dest = f"A{m[1]}.{m[2]}.{port.upper()}"
    elif m := re.fullmatch(r"m(\d+)", node):
        dest = f"MLP {m[1]}"
    else:
        raise ScrubError(f"{node!r} is not a node of a tracr model's graph.")
    return f"{src}->{dest}"


def edge_names(graph: Graph) -> list[str]:
    """Every auto-circuit edge of the model's graph (auto-circuit's component graph), in our
    graph's order."""
    return list(dict.fromkeys(n for t in graph_edges(graph) if (n := edge_name(t)) is not None))


@dataclass(frozen=True)
class _Edge:
    """What auto-circuit's circuit functions read of an edge: its name and position."""

    name: str
    seq_idx: int


def official_edges(task: str, circuit: str = "official") -> dict[str, tuple[int, ...]]:
    """auto-circuit's circuit `circuit` ("official" or "ACDC paper") for `task`: edge name ->
    the token positions it is kept at, read from auto-circuit's own definition."""
    if circuit not in CIRCUITS:
        raise ScrubError(f"Unknown tracr circuit {circuit!r}; use one of {', '.join(CIRCUITS)}.")
    module, functions, _ = CIRCUITS[circuit]
    fn = getattr(auto_circuit(module.format(task=check_task(task))), functions[task])
    graph = _imported(task).graph()
    n_ctx = LENGTH + 1
    model = types.SimpleNamespace(  # duck-types the PatchableModel the functions read
        cfg=types.SimpleNamespace(model_name=f"tracr-{task}"), separate_qkv=True,
        edges=[_Edge(n, i) for n in edge_names(graph) for i in range(n_ctx)])
    found: dict[str, list[int]] = {}
    for e in fn(model, token_positions=True):
        found.setdefault(e.name, []).append(e.seq_idx)
    return {name: tuple(sorted(ps)) for name, ps in sorted(found.items())}


def position_groups(edges: Iterable[Mapping[str, Iterable[int]]]) -> dict[tuple[str, str], list[list[int]]]:
    """The receiver ports (node, port) that some circuit keeps at some positions only, each with
    the coarsest split of the positions that every circuit's kept positions there are unions of
    (reverse: [[0, 3], [1, 2, 4, 5]])."""
    every = tuple(range(LENGTH + 1))
    kept: dict[tuple[str, str], set[tuple[int, ...]]] = {}
    for circuit in edges:
        for name, ps in circuit.items():
            kept.setdefault(_receiver(name.split("->")[1]), set()).add(tuple(sorted(set(ps))))
    groups = {}
    for port, sets in sorted(kept.items()):
        if sets <= {every}:
            continue
        atoms: dict[tuple[bool, ...], list[int]] = {}
        for i in every:
            atoms.setdefault(tuple(i in s for s in sorted(sets)), []).append(i)
        groups[port] = sorted(atoms.values())
    return groups


def _part(node: str, port: str, positions: Iterable[int]) -> str:
    """The pass-through node of `node.port` at `positions`: `a3.h0.v@1245`."""
    return f"{node}.{port}@" + "".join(str(i) for i in positions)


def circuit_graph(model: Transformer, groups: Mapping[tuple[str, str], list[list[int]]],
                  check_on: Dataset) -> Graph:
    """The model's graph with each port of `groups` split into one pass-through node per
    position group (`{node}.{port}@{positions}`, e.g. `a3.h0.v@1245`), checked on `check_on`."""
    g = model.graph()
    for (node, port), parts in groups.items():
        named = {_part(node, port, ps)[len(f"{node}.{port}@"):]: ps for ps in parts}
        g = split_positions(g, node, port, named, check_on=check_on)
    return g


def circuit_triples(graph: Graph, edges: Mapping[str, Iterable[int]]) -> set[Triple]:
    """The kept triples of `graph` (from `circuit_graph`) for auto-circuit edges kept at the
    given positions: on a split port, the edge into each kept position group's node and that
    node's edge into the port; elsewhere the edge itself (which must then be kept at every
    position)."""
    kept = set(INPUT_EDGES)
    for name, positions in edges.items():
        ps = sorted(set(positions))
        for sender, node, port in triples(name):
            prefix = f"{node}.{port}@"
            parts = {u: [int(c) for c in u[len(prefix):]] for u in graph.ports(node)[port]
                     if u.startswith(prefix)}
            if not parts:
                if ps != list(range(LENGTH + 1)):
                    raise ScrubError(f"{name} is kept at positions {ps} only, but {node}.{port} is "
                                     "not split by position; split it (circuit_graph).")
                kept.add((sender, node, port))
                continue
            chosen = [u for u, group in parts.items() if set(group) <= set(ps)]
            if sorted(i for u in chosen for i in parts[u]) != ps:
                raise ScrubError(f"{name} is kept at positions {ps}, which are not a union of the "
                                 f"position groups {sorted(parts.values())} of {node}.{port}.")
            for part in chosen:
                kept |= {(sender, part, "in"), (part, node, port)}
    return kept


def circuits(task: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """The task's circuits by hypothesis id: edge name -> kept positions."""
    every = tuple(range(LENGTH + 1))
    official = official_edges(task, "official")
    return {"official": official,
            "official, every position": {name: every for name in official},
            "ACDC paper": official_edges(task, "ACDC paper")}


DESCRIPTIONS = {
    "official": CIRCUITS["official"][2],
    "official, every position": "the same edges, kept at every position",
    "ACDC paper": CIRCUITS["ACDC paper"][2],
}


def format_inputs(task: str):
    """(dataset, row) -> the row's tokens, e.g. `BOS 1 2 3 1 2` (for `causal-scrub show`)."""
    names = {i: str(t) for t, i in compile_task(task).encoding.items()}

    def fmt(ds: Dataset, row: int) -> str:
        return " ".join(names[int(t)] for t in ds["tokens"][row])

    return fmt


def build(task: str = "reverse", repeats: int = 4) -> Experiment:
    """The tracr experiment for `task` ("reverse" or "xproportion"): its compiled model, every
    input `repeats` times, the task's loss and auto-circuit's circuits as hypotheses."""
    check_task(task)
    model = load_model(task)
    ds = dataset(task, repeats)
    found = circuits(task)
    graph = circuit_graph(model, position_groups(found.values()), ds.rows(torch.arange(8)))
    hyps: dict[str, InterpNode] = {k: build_hypothesis(graph, circuit_triples(graph, edges))
                                   for k, edges in found.items()}
    metric = ("cross-entropy of the reversed token" if task == "reverse"
              else "squared error of the fraction of x")
    return Experiment(
        name=f"tracr-{task}",
        description=f"tracr-compiled {task} model with auto-circuit's circuits (loss: {metric} "
                    f"at positions 1-{LENGTH})",
        graph=graph, dataset=ds, loss_fn=LOSSES[task], hypotheses=hyps,
        descriptions=dict(DESCRIPTIONS), format_inputs=format_inputs(task),
        search_graph=model.graph(),
    )


def build_reverse() -> Experiment:
    """`build("reverse")`: the `tracr-reverse` experiment."""
    return build("reverse")


def build_xproportion() -> Experiment:
    """`build("xproportion")`: the `tracr-xproportion` experiment."""
    return build("xproportion")
