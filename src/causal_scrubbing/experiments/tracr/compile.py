"""Any RASP program as ground truth: tracr compiles it, and its allocation is the true circuit.

tracr compiles a RASP program into transformer weights. Every operation of the program becomes
one attention head (Aggregate), one MLP (Map, SequenceMap) or a head and the MLP after it
(SelectorWidth), and every sequence operation (SOp) is written to a subspace of the residual
stream of its own, which only the operations that read it project from. So the circuit is
known before anything is measured, and here it is read off the compiler's program graph and
its allocation (which operation became which head or MLP), never off the weights:

- The **components** of an operation are the heads and MLPs the compiler allocated to it
  (`Operation.components`; a layer's MLP ops share its node `m{l}`, which tracr builds by
  putting their MLPs side by side). `tokens` is written by `embed`, `indices` by `pos_embed`.
- The **true circuit** (`CompiledProgram.true_edges`): an edge sender -> receiver.port is in
  it exactly when the receiver's operation reads, at that port, the SOp the sender writes
  (directly): a head's `q` reads its selector's queries, `k` the selector's keys, `v` the
  aggregated SOp; an MLP (`in`) reads its Map's or SequenceMap's inputs; `out` (`resid`)
  reads the program's output SOp; a SelectorWidth's MLP reads its own head. Since each SOp has
  its own subspace, the residual stream's sum of upstream outputs resolves into exactly these
  reads: every other upstream output is invisible to the port (its projection is zero).
- Reads of SOps that are equal on every input are not edges of the true circuit, since
  resampling them changes nothing (`constant_sops`): `indices` (position i holds index i - 1
  in every input; `pos_embed` is a function of the position alone) and the Maps and
  SequenceMaps of constants only; likewise each head's key reads the BOS direction and its
  query the constant `one` direction (both written by `embed`), and numerical MLPs read `one`
  as a bias. So `embed` sends to an operation only if it reads `tokens`, and `pos_embed`
  never does. `read_edges` keeps every read (the compiled dependency graph, constant reads
  included). With inputs of several lengths an attention op is never constant: it reads which
  positions exist through the padding mask.
- Input plumbing, kept by every circuit and left out of component-level scores
  (`component_edges`): `tokens -> embed`, `tokens -> pos_embed`, `tokens -> pad_mask` and
  `pad_mask -> head.mask` for each head of the circuit (which positions exist).

The model is tracr's own parameters copied into a `Transformer` (no normalisation, ReLU,
bidirectional or causal attention as compiled, positions as tracr embeds them), with the
unembedding read from the output SOp's residual dimensions by tracr's labels: one logit per
output value in the output encoder's order (categorical), or the one dimension (numerical).
Inputs of every length up to `max_seq_len` share one batch, padded with tracr's pad token,
whose keys every head masks (`Config.pad_token`): at each real position the output is then
the compiled model's on the unpadded input, as tracr runs each length on its own.

The task's data are the program's inputs (every sequence over the vocabulary of each length,
or a sample of them where there are too many), BOS first, with the program's own output
(RASP evaluation) as the target at each real position; the loss is cross-entropy of the
logits (categorical) or squared error (numerical), averaged over the real positions where the
program's value is defined and in the output space.

Example (an operation's reads as true-circuit edges, here written by hand):
    >>> from causal_scrubbing.experiments.tracr.compile import Operation, component_edges
    >>> op = Operation("frac", "Aggregate", ("a1.h0",), "a1.h0",
    ...                (("a1.h0", "q", "indices"), ("a1.h0", "k", "indices"), ("a1.h0", "v", "is_x")))
    >>> writers = {"indices": "pos_embed", "is_x": "m0", "frac": "a1.h0"}
    >>> sorted(op.edges(writers))
    [('m0', 'a1.h0', 'v'), ('pos_embed', 'a1.h0', 'k'), ('pos_embed', 'a1.h0', 'q')]
    >>> sorted(component_edges({("tokens", "embed", "tokens"), ("m0", "a1.h0", "v")}))
    [('m0', 'a1.h0', 'v')]
"""

from __future__ import annotations

import importlib
import itertools
import math
import random
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import ScrubError, missing_extra
from ...core.names import head_name, mlp_name
from ...models import Config, Transformer
from ...searching import Triple, build_hypothesis, effective
from .. import Experiment

COMPILER_BOS = "compiler_bos"
COMPILER_PAD = "compiler_pad"
#: Graph nodes fed by the tokens alone: their edges are input plumbing, not components.
INPUT_NODES = frozenset({"tokens", "pad_mask"})


def tracr_module(module: str) -> Any:
    """Import `module` of tracr (a clear error naming the extra when it is missing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jax and haiku warn about their own deprecations
            return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra("tracr", "tracr", "Compiling RASP programs") from err


# ---- the operations and the true circuit ----------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One operation of a compiled program: the SOp `label` it computes, its RASP primitive,
    the components the compiler allocated to it, the one that writes its output, and its reads
    as (receiver component, port, SOp label read)."""

    label: str
    primitive: str
    components: tuple[str, ...]
    writer: str
    reads: tuple[tuple[str, str, str], ...]

    def edges(self, writers: dict[str, str]) -> set[Triple]:
        """Its reads as edges (writer of the SOp read, receiver, port)."""
        return {(writers[sop], receiver, port) for receiver, port, sop in self.reads}


def component_edges(edges: Iterable[Triple]) -> set[Triple]:
    """The edges between model components (embeddings, heads, MLPs, output): without the
    input plumbing from `tokens` and `pad_mask`."""
    return {e for e in edges if e[0] not in INPUT_NODES}


def precision_recall(found: Iterable[Triple], true: Iterable[Triple]) -> tuple[float, float]:
    """Component-level precision and recall of `found` against `true` (1.0 where undefined).

    Example:
        >>> precision_recall({("m0", "out", "resid"), ("embed", "m0", "in")},
        ...                  {("m0", "out", "resid"), ("embed", "a0.h0", "v")})
        (0.5, 0.5)
    """
    f, t = component_edges(found), component_edges(true)
    hit = len(f & t)
    return (hit / len(f) if f else 1.0, hit / len(t) if t else 1.0)


@dataclass
class CompiledProgram:
    """A RASP program compiled by tracr, as a `Transformer` with its true circuit."""

    program: Any  # the rasp.SOp
    vocab: list[Any]  # the input tokens (sorted by their ids)
    max_seq_len: int
    categorical: bool  # the output SOp's encoding
    assembled: Any  # tracr's AssembledTransformerModel
    model: Transformer
    operations: dict[str, Operation]  # SOp label -> operation, in the compiler's graph order
    writers: dict[str, str]  # SOp label -> the component that writes it
    encoding: dict[Any, int]  # input token (with BOS and pad) -> id
    output_values: list[Any] | None  # categorical: the output values, in logit order
    output_dims: list[int] = field(default_factory=list)  # residual dimensions read by `out`
    exprs: dict[str, Any] = field(default_factory=dict)  # SOp label -> its RASP expression
    value_sets: dict[str, list[Any]] = field(default_factory=dict)  # SOp label -> its values

    @property
    def output(self) -> str:
        return str(self.program.label)

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    def absent_at_padding(self, label: str) -> bool:
        """Whether the SOp is absent (no direction of its space set) at a padded position:
        `tokens` (the pad token is outside the vocabulary), a categorical Map or SequenceMap of
        an absent SOp (its MLP sees no input), and a categorical Aggregate whose query is absent
        (it selects nothing: the default, None). Numerical SOps hold a number there (0 for an
        aggregate that selects nothing), SelectorWidth a width, `indices` the position."""
        if label in ("tokens", "indices") or ":" in label:
            return label == "tokens"
        expr, op = self.exprs[label], self.operations[label]
        if not self._categorical(label) or op.primitive == "SelectorWidth":
            return False
        if op.primitive == "Aggregate":
            return self.absent_at_padding(expr.selector.queries.label)
        return any(self.absent_at_padding(sop) for _, _, sop in op.reads)

    def _categorical(self, label: str) -> bool:
        rasp = tracr_module("tracr.rasp.rasp")
        return bool(rasp.is_categorical(self.exprs[label]))

    def used_reads(self, lengths_vary: bool = True) -> set[tuple[str, str, str]]:
        """The reads (receiver, port, SOp) that the operation's function depends on: judged
        over the compiler's value sets of its inputs (and, where lengths vary, "absent" for an
        input `absent_at_padding`, which no selector matches and which an MLP maps to absent,
        or to 0 if its output is numerical). A selector whose predicate ignores its query
        (`lambda k, q: k <= 2`), or a Map that is constant, does not use that read; an aggregate
        uses its value."""
        rasp = tracr_module("tracr.rasp.rasp")
        used = set()
        for op in self.operations.values():
            expr = self.exprs[op.label]
            for receiver, port, sop in op.reads:
                if ":" in sop or port == "v":
                    used.add((receiver, port, sop))
                    continue
                if op.primitive in ("Aggregate", "SelectorWidth"):
                    sel = expr.selector
                    keys, queries = self._domain(sel.keys.label, lengths_vary), \
                        self._domain(sel.queries.label, lengths_vary)
                    pred = _absent_false(sel.predicate)
                    depends = _varies(pred, [keys, queries], 0 if port == "k" else 1)
                else:
                    ins = [expr.inner] if isinstance(expr, rasp.Map) else [expr.fst, expr.snd]
                    if len({x.label for x in ins}) == 1:  # SequenceMap(f, x, x): one read of x
                        f = expr.f if len(ins) == 1 else (lambda x, _f=expr.f: _f(x, x))
                        ins = ins[:1]
                    else:
                        f = expr.f
                    domains = [self._domain(x.label, lengths_vary) for x in ins]
                    g = _absent_propagates(f, ABSENT if self._categorical(op.label) else 0)
                    depends = any(_varies(g, domains, i)
                                  for i, x in enumerate(ins) if x.label == sop)
                if depends:
                    used.add((receiver, port, sop))
        return used

    def _domain(self, label: str, lengths_vary: bool) -> list[Any]:
        values = list(self.value_sets.get(label, []))
        return values + [ABSENT] if lengths_vary and self.absent_at_padding(label) else values

    def constant_sops(self, lengths_vary: bool = True) -> set[str]:
        """The SOps whose value is the same on every input: `indices` (position i holds index
        i - 1 in every input), and the operations that use (`used_reads`) constants only,
        except that where lengths vary an attention op is never constant (it reads which
        positions exist, through the padding mask)."""
        used = self.used_reads(lengths_vary)
        const: dict[str, bool] = {"tokens": False, "indices": True}

        def is_const(label: str) -> bool:
            if label not in const:
                op = self.operations[label.split(":")[0]]
                ins = [s for r, p, s in op.reads if (r, p, s) in used and ":" not in s]
                attention = op.primitive in ("Aggregate", "SelectorWidth")
                const[label] = (not (attention and lengths_vary)) and all(is_const(s) for s in ins)
            return const[label]

        return {label for label in [*self.writers] if is_const(label)}

    def read_edges(self) -> set[Triple]:
        """Every read of every operation as an edge (writer of the SOp read, receiver, port),
        with `out`'s read of the output SOp: the compiled program's dependency graph."""
        edges = {(self.writers[self.output], "out", "resid")}
        for op in self.operations.values():
            edges |= op.edges(self.writers)
        return edges

    def true_edges(self, lengths_vary: bool = True) -> set[Triple]:
        """The true circuit as (sender, receiver, port) triples of `model.graph()` (module
        docstring): the reads that the operations use (`used_reads`) of SOps that vary over the
        inputs (not `constant_sops`, which resampling cannot change), with the input plumbing
        (the padding mask of each head whose operation varies, where lengths vary)."""
        const, used = self.constant_sops(lengths_vary), self.used_reads(lengths_vary)
        edges = {("tokens", "embed", "tokens"), ("tokens", "pos_embed", "tokens")}
        if self.output not in const:
            edges.add((self.writers[self.output], "out", "resid"))
        for op in self.operations.values():
            edges |= {(self.writers[s], r, p) for r, p, s in op.reads
                      if s not in const and (r, p, s) in used}
            if lengths_vary and op.label not in const:
                heads = [c for c in op.components if c.startswith("a")]
                edges |= {("tokens", "pad_mask", "tokens")} | {("pad_mask", h, "mask") for h in heads}
        return effective(self.model.graph(), edges)

    def describe(self) -> str:
        """One line per operation: `label (primitive): components <- reads`."""
        lines = []
        for op in self.operations.values():
            reads = ", ".join(f"{r}.{p} <- {s} ({self.writers[s]})" for r, p, s in op.reads)
            lines.append(f"{op.label} ({op.primitive}): {'+'.join(op.components)}; {reads}")
        lines.append(f"out.resid <- {self.output} ({self.writers[self.output]})")
        return "\n".join(lines)

    def encode(self, seqs: Sequence[Sequence[Any]]) -> Tensor:
        """Token ids [n, max_seq_len + 1]: BOS, the sequence, then pad tokens."""
        bos, pad = self.encoding[COMPILER_BOS], self.encoding[COMPILER_PAD]
        rows = []
        for s in seqs:
            if not 1 <= len(s) <= self.max_seq_len:
                raise ScrubError(f"Input {list(s)!r} has length {len(s)}; this program was compiled "
                                 f"for lengths 1 to {self.max_seq_len} (max_seq_len).")
            unknown = [t for t in s if t not in self.encoding or t in (COMPILER_BOS, COMPILER_PAD)]
            if unknown:
                raise ScrubError(f"Input {list(s)!r} has tokens {unknown} outside the vocabulary "
                                 f"{self.vocab} the program was compiled for.")
            rows.append([bos] + [self.encoding[t] for t in s] + [pad] * (self.max_seq_len - len(s)))
        return torch.tensor(rows, dtype=torch.long)

    def tracr_output(self, seqs: Sequence[Sequence[Any]]) -> list[np.ndarray]:
        """tracr's own compiled model on each input (run per length, unpadded, as tracr does):
        the output space's residual values at every position [len + 1, d_vocab_out] (the
        logits `model` reproduces)."""
        jnp = tracr_module("jax.numpy")
        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(len(s), []).append(i)
        ids = self.encode(seqs)
        for n, rows in by_len.items():
            batch = jnp.array(ids[rows, : n + 1].numpy())
            res = self.assembled.forward(self.assembled.params, batch).transformer_output.output
            values = np.asarray(res)[..., self.output_dims]  # [rows, n + 1, d_vocab_out]
            for j, i in enumerate(rows):
                out[i] = values[j]
        return out

    def evaluate(self, seq: Sequence[Any]) -> list[Any]:
        """The program's own (RASP) output on `seq`."""
        rasp = tracr_module("tracr.rasp.rasp")
        return list(rasp.evaluate(self.program, list(seq)))


class _Absent:
    """The value of an SOp at a padded position, where its subspace is empty."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()
_ERROR = object()  # what a function that raises "returns"
#: `_varies` gives up (answers True) beyond this many evaluations.
MAX_EVALUATIONS = 200_000


def _absent_false(predicate: Any) -> Any:
    """A selector predicate (key, query) that never selects an absent key or query."""
    return lambda k, q: False if k is ABSENT or q is ABSENT else bool(predicate(k, q))


def _absent_propagates(f: Any, absent: Any) -> Any:
    """An MLP's function, `absent` whenever an input is absent (a categorical MLP then writes
    nothing: ABSENT; a numerical one 0)."""
    return lambda *xs: absent if any(x is ABSENT for x in xs) else f(*xs)


def _varies(f: Any, domains: Sequence[Sequence[Any]], i: int) -> bool:
    """Whether f(*args) changes with argument i while the others are held, over `domains`.

    Example:
        >>> _varies(lambda k, q: k <= 2, [[1, 2, 3], [1, 2, 3]], 1), _varies(min, [[1, 2], [1, 2]], 0)
        (False, True)
    """
    others = [d for j, d in enumerate(domains) if j != i]
    if math.prod(len(d) for d in domains) > MAX_EVALUATIONS:
        return True

    def call(args: list[Any]) -> Any:
        try:
            return f(*args)
        except Exception:
            return _ERROR

    for rest in itertools.product(*others):
        outs = [call([*rest[:i], v, *rest[i:]]) for v in domains[i]]
        if any(not _same(o, outs[0]) for o in outs[1:]):
            return True
    return False


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not (a is ABSENT or b is ABSENT or a is _ERROR or b is _ERROR) else a is b
    except Exception:
        return a is b


# ---- compiling ---------------------------------------------------------------------------------


def _check_program(program: Any, vocab: Iterable[Any], max_seq_len: int) -> list[Any]:
    rasp = tracr_module("tracr.rasp.rasp")
    if not isinstance(program, rasp.SOp):
        raise ScrubError(f"The program must be a RASP SOp (e.g. tracr.compiler.lib.make_hist()), "
                         f"got a {type(program).__name__}.")
    try:
        vocab = list(vocab)
    except TypeError:
        raise ScrubError(f"vocab must be a collection of tokens such as {{'a', 'b'}}, got {vocab!r}."
                         ) from None
    if not vocab or len(set(vocab)) != len(vocab):
        raise ScrubError(f"vocab must be a non-empty set of distinct tokens, got {vocab!r}.")
    if COMPILER_BOS in vocab or COMPILER_PAD in vocab:
        raise ScrubError(f"vocab must not contain tracr's own tokens {COMPILER_BOS!r} and "
                         f"{COMPILER_PAD!r}; rename those tokens.")
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ScrubError(f"max_seq_len must be a positive integer, got {max_seq_len!r}.")
    return vocab


def _allocation(graph: Any, sources: Any, craft_model: Any) -> tuple[dict[int, str], dict[int, list]]:
    """The compiler's half-layer numbers (0 attention, 1 MLP, 2 attention, ...) mapped to the
    model's layer names (`attn{l}`, `mlp{l}`), and the heads of each attention half-layer."""
    c2m = tracr_module("tracr.compiler.craft_graph_to_model")
    assemble = tracr_module("tracr.compiler.assemble")
    nodes = tracr_module("tracr.compiler.nodes")
    allocation = c2m._allocate_modules_to_layers(graph, sources)
    used: set[int] = set()
    for node_id, half in dict(allocation).items():
        node = graph.nodes[node_id]
        if c2m._node_is_residual_block(node):
            used |= {half, half + 1}
        elif node.get(nodes.MODEL_BLOCK) is not None:
            used.add(half)
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    halves = sorted(used)
    if len(halves) != len(module_names) or len(halves) != len(craft_model.blocks):
        raise ScrubError("tracr's layer allocation does not match its compiled model "  # pragma: no cover
                         f"({len(halves)} half-layers, {len(module_names)} modules); this tracr "
                         "version is not supported.")
    names, heads = {}, {}
    for half, name, block in zip(halves, module_names, craft_model.blocks):
        m = re.fullmatch(r"transformer/layer_(\d+)/(attn|mlp)", name)
        assert m is not None and (m[2] == "attn") == (half % 2 == 0)
        names[half] = f"{m[2]}{m[1]}"
        if m[2] == "attn":
            heads[half] = list(block.as_multi().heads())
    return names, heads


def _operations(graph: Any, sources: Any, craft_model: Any) -> tuple[dict[str, Operation], dict[str, str]]:
    rasp = tracr_module("tracr.rasp.rasp")
    nodes = tracr_module("tracr.compiler.nodes")
    transformers = tracr_module("tracr.craft.transformers")
    c2m = tracr_module("tracr.compiler.craft_graph_to_model")
    allocation = c2m._allocate_modules_to_layers(graph, sources)
    names, heads = _allocation(graph, sources, craft_model)

    def head_components(block: Any, half: int) -> list[str]:
        wanted = list(block.as_multi().heads()) if isinstance(block, transformers.MultiAttentionHead) \
            else [block]
        layer = int(names[half][len("attn"):])
        found = [head_name(layer, i) for i, h in enumerate(heads[half]) if any(h is w for w in wanted)]
        assert len(found) == len(wanted), "a head of the program is missing from the compiled layer"
        return found

    def mlp_component(half: int) -> str:
        return mlp_name(int(names[half][len("mlp"):]))

    writers = {rasp.tokens.label: "embed", rasp.indices.label: "pos_embed"}
    ops: dict[str, Operation] = {}
    for node_id, node in graph.nodes.items():
        expr, block = node[nodes.EXPR], node.get(nodes.MODEL_BLOCK)
        if not isinstance(expr, rasp.SOp) or block is None:
            continue
        half = allocation[node_id]
        label = expr.label
        kind = type(expr).__name__
        if isinstance(expr, rasp.Aggregate):
            hs = head_components(block, half)
            sel = expr.selector
            reads = tuple((h, p, s.label) for h in hs
                          for p, s in (("q", sel.queries), ("k", sel.keys), ("v", expr.sop)))
            ops[label] = Operation(label, kind, tuple(hs), hs[0], reads)
        elif isinstance(expr, rasp.SelectorWidth):
            attn, _ = block.blocks
            hs, m = head_components(attn, half), mlp_component(half + 1)
            sel = expr.selector
            inner = f"{label}:selector width attention"
            writers[inner] = hs[0]
            reads = tuple((h, p, s.label) for h in hs for p, s in (("q", sel.queries), ("k", sel.keys)))
            ops[label] = Operation(label, kind, (*hs, m), m, (*reads, (m, "in", inner)))
        elif isinstance(expr, (rasp.Map, rasp.SequenceMap)):
            m = mlp_component(half)
            ins = [expr.inner] if isinstance(expr, rasp.Map) else [expr.fst, expr.snd]
            reads = tuple(dict.fromkeys((m, "in", s.label) for s in ins))
            ops[label] = Operation(label, kind, (m,), m, reads)
        else:  # pragma: no cover - tracr compiles no other SOp into a block
            raise ScrubError(f"The compiled program has an operation {label!r} ({kind}) that this "
                             "importer does not know; only Map, SequenceMap, Aggregate and "
                             "SelectorWidth are compiled by tracr.")
        writers[label] = ops[label].writer
    return ops, writers


def _to_transformer(assembled: Any, output_dims: list[int], pad_id: int, causal: bool) -> Transformer:
    """tracr's parameters as a `Transformer` (weights copied exactly, float32)."""
    from ...models.importers import copy_weights

    tc = assembled.model_config
    p = {k: {n: torch.tensor(np.asarray(v), dtype=torch.float64) for n, v in d.items()}
         for k, d in assembled.params.items()}
    W_E, W_pos = p["token_embed"]["embeddings"], p["pos_embed"]["embeddings"]
    d_model, H, dh = W_E.shape[1], tc.num_heads, tc.key_size
    cfg = Config(n_layers=tc.num_layers, d_model=d_model, n_heads=H, d_head=dh,
                 d_mlp=tc.mlp_hidden_size, d_vocab=W_E.shape[0], n_ctx=W_pos.shape[0],
                 d_vocab_out=len(output_dims), act_fn="relu", attention_dir="causal" if causal
                 else "bidirectional", pad_token=pad_id, normalization_type="none")
    W_U = torch.zeros(d_model, len(output_dims), dtype=torch.float64)
    W_U[output_dims, torch.arange(len(output_dims))] = 1.0
    weights = {"embed.W_E": W_E, "pos_embed.W_pos": W_pos, "unembed.W_U": W_U,
               "unembed.b_U": torch.zeros(len(output_dims))}
    for layer in range(tc.num_layers):
        a, m, b = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp", f"blocks.{layer}"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            weights[f"{b}.attn.W_{ours}"] = p[f"{a}/{theirs}"]["w"].view(d_model, H, dh).permute(1, 0, 2)
            weights[f"{b}.attn.b_{ours}"] = p[f"{a}/{theirs}"]["b"].view(H, dh)
        weights[f"{b}.attn.W_O"] = p[f"{a}/linear"]["w"].view(H, dh, d_model)
        weights[f"{b}.attn.b_O"] = p[f"{a}/linear"]["b"]
        for ours, theirs in (("in", "linear_1"), ("out", "linear_2")):
            weights[f"{b}.mlp.W_{ours}"] = p[f"{m}/{theirs}"]["w"]
            weights[f"{b}.mlp.b_{ours}"] = p[f"{m}/{theirs}"]["b"]
    return copy_weights(cfg, weights, "tracr-compiled model")


def compile_program(program: Any, *, vocab: Iterable[Any], max_seq_len: int, causal: bool = False,
                    mlp_exactness: float = 100) -> CompiledProgram:
    """Compile `program` with tracr (the steps of `compile_rasp_to_model`, keeping the program
    graph and the allocation) and import it as a `Transformer` with its operations.

    Raises `ScrubError` for bad arguments and for programs tracr cannot compile (naming the
    unsupported expressions tracr reports)."""
    vocab = _check_program(program, vocab, max_seq_len)
    mods = {name: tracr_module(f"tracr.compiler.{name}") for name in (
        "assemble", "basis_inference", "craft_graph_to_model", "craft_model_to_transformer",
        "expr_to_craft_graph", "rasp_to_graph", "validating", "nodes")}
    bases = tracr_module("tracr.craft.bases")
    rasp = tracr_module("tracr.rasp.rasp")
    label = program.label
    where = f"the program {label!r} (vocab {sorted(map(str, vocab))}, max_seq_len {max_seq_len})"
    unsupported = mods["validating"].static_validate(program)
    if unsupported:
        reasons = "; ".join(f"{u.expr.label}: {str(u.reason).rstrip('.')}" for u in unsupported)
        raise ScrubError(f"tracr cannot compile {where}: {reasons}. Rewrite those expressions with "
                         "operations tracr supports (Map, SequenceMap, Aggregate of a Select, "
                         "SelectorWidth; numerical aggregates of 0/1 values).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extracted = mods["rasp_to_graph"].extract_rasp_graph(program)
            graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
            if rasp.tokens.label not in graph.nodes:
                raise ScrubError(f"{where} does not read rasp.tokens; tracr compiles only programs "
                                 "of the tokens.")
            mods["basis_inference"].infer_bases(graph, sink, set(vocab), max_seq_len)
            mods["expr_to_craft_graph"].add_craft_components_to_rasp_graph(
                graph, bos_dir=bases.BasisDirection(rasp.tokens.label, COMPILER_BOS),
                mlp_exactness=mlp_exactness)
            if not any(n.get(mods["nodes"].MODEL_BLOCK) is not None for n in graph.nodes.values()):
                raise ScrubError(f"{where} has no operation to compile (it is tokens or indices "
                                 "itself); apply at least one Map, SequenceMap, Aggregate or "
                                 "SelectorWidth.")
            craft_model = mods["craft_graph_to_model"].craft_graph_to_model(graph, sources)
            assembled = mods["craft_model_to_transformer"].craft_model_to_transformer(
                craft_model=craft_model, graph=graph, sink=sink, max_seq_len=max_seq_len,
                causal=causal, compiler_bos=COMPILER_BOS, compiler_pad=COMPILER_PAD)
    except ScrubError:
        raise
    except Exception as err:
        raise ScrubError(f"tracr cannot compile {where}: {type(err).__name__}: {err}") from err
    ops, writers = _operations(graph, sources, craft_model)
    out_space = [str(d) for d in sink[mods["nodes"].OUTPUT_BASIS]]
    output_dims = [assembled.residual_labels.index(d) for d in out_space]
    categorical = bool(rasp.is_categorical(sink[mods["nodes"].EXPR]))
    encoding = dict(assembled.input_encoder.encoding_map)
    model = _to_transformer(assembled, output_dims, encoding[COMPILER_PAD], causal)
    tokens = sorted((t for t in encoding if t not in (COMPILER_BOS, COMPILER_PAD)), key=encoding.__getitem__)
    values = list(assembled.output_encoder.encoding_map) if categorical else None
    exprs = {node_id: node[mods["nodes"].EXPR] for node_id, node in graph.nodes.items()
             if isinstance(node[mods["nodes"].EXPR], rasp.SOp)}
    value_sets = {node_id: _sorted(node.get(mods["nodes"].VALUE_SET, ()))
                  for node_id, node in graph.nodes.items() if node_id in exprs}
    return CompiledProgram(program, tokens, max_seq_len, categorical, assembled, model, ops,
                           writers, encoding, values, output_dims, exprs, value_sets)


def _sorted(values: Iterable[Any]) -> list[Any]:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=repr)


# ---- data and loss ---------------------------------------------------------------------------------


def program_inputs(vocab: Sequence[Any], max_seq_len: int, *, n_inputs: int = 4096,
                   lengths: Iterable[int] | None = None, seed: int = 0) -> list[tuple[Any, ...]]:
    """Every sequence over `vocab` of each length in `lengths` (default 1..max_seq_len) if
    there are at most `n_inputs`; otherwise `n_inputs` random ones (the length uniform among
    `lengths`, then the tokens uniform), seeded.

    Example:
        >>> program_inputs(["a", "b"], 2)
        [('a',), ('b',), ('a', 'a'), ('a', 'b'), ('b', 'a'), ('b', 'b')]
        >>> len(program_inputs(range(10), 8, n_inputs=100)), len(program_inputs(range(10), 8))
        (100, 4096)
    """
    lens = sorted(set(lengths)) if lengths is not None else list(range(1, max_seq_len + 1))
    if not lens or any(not 1 <= n <= max_seq_len for n in lens):
        raise ScrubError(f"lengths must be between 1 and max_seq_len = {max_seq_len}, got {lens}.")
    vocab = list(vocab)
    if sum(len(vocab) ** n for n in lens) <= n_inputs:
        return [s for n in lens for s in itertools.product(vocab, repeat=n)]
    rng = random.Random(seed)
    return [tuple(rng.choice(vocab) for _ in range(rng.choice(lens))) for _ in range(n_inputs)]


def program_dataset(cp: CompiledProgram, seqs: Sequence[Sequence[Any]], min_rows: int = 1024) -> Dataset:
    """The inputs `seqs` with the program's output as targets, repeated (whole) to at least
    `min_rows` rows: `tokens` [n, max_seq_len + 1]; `target` [n, max_seq_len] (categorical:
    the output value's logit index; numerical: the value) and `valid` [n, max_seq_len] (a real
    position whose value is defined and in the output space). Inputs with no valid position
    are left out."""
    targets, valid, kept = [], [], []
    index = {v: i for i, v in enumerate(cp.output_values or [])}
    for s in seqs:
        values = cp.evaluate(s)
        t = [0.0] * cp.max_seq_len
        ok = [False] * cp.max_seq_len
        for i, v in enumerate(values):
            if cp.categorical and v in index:
                t[i], ok[i] = index[v], True
            elif not cp.categorical and isinstance(v, (int, float)) and math.isfinite(v):
                t[i], ok[i] = float(v), True
        if any(ok):
            kept.append(s)
            targets.append(t)
            valid.append(ok)
    if not kept:
        raise ScrubError(f"The program {cp.output!r} has no defined output in its output space on "
                         "any of the inputs; give inputs it is defined on.")
    reps = max(1, math.ceil(min_rows / len(kept)))
    target = torch.tensor(targets, dtype=torch.long if cp.categorical else torch.float32)
    return Dataset({"tokens": cp.encode(kept).repeat(reps, 1), "target": target.repeat(reps, 1),
                    "valid": torch.tensor(valid).repeat(reps, 1)})


def categorical_loss(out: Tensor, ref: Dataset) -> Tensor:
    """Cross-entropy of the program's output value at the valid positions, averaged there [n]."""
    logits = out[:, 1:]  # [n, L, d_vocab_out]
    target, valid = ref["target"].to(out.device), ref["valid"].to(out.device)  # [n, L]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                         reduction="none").view(target.shape)  # [n, L]
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def numerical_loss(out: Tensor, ref: Dataset) -> Tensor:
    """Squared error of the output against the program's value at the valid positions,
    averaged there [n]."""
    target, valid = ref["target"].to(out.device), ref["valid"].to(out.device)  # [n, L]
    err = (out[:, 1:, 0] - target) ** 2  # [n, L]
    return (err * valid).sum(1) / valid.sum(1).clamp(min=1)


# ---- the experiment -------------------------------------------------------------------------------


@dataclass
class ProgramExperiment(Experiment):
    """An `Experiment` of a compiled program, with its compilation and true circuit."""

    compiled: CompiledProgram | None = None
    true_edges: frozenset[Triple] = frozenset()


def format_inputs(cp: CompiledProgram):
    """(dataset, row) -> the row's tokens without padding, e.g. `BOS a b c`."""
    names = {i: ("BOS" if t == COMPILER_BOS else str(t)) for t, i in cp.encoding.items()}
    pad = cp.encoding[COMPILER_PAD]

    def fmt(ds: Dataset, row: int) -> str:
        return " ".join(names[int(t)] for t in ds["tokens"][row] if int(t) != pad)

    return fmt


def from_program(program: Any, *, vocab: Iterable[Any], max_seq_len: int, name: str | None = None,
                 causal: bool = False, mlp_exactness: float = 100,
                 inputs: Sequence[Sequence[Any]] | None = None, n_inputs: int = 4096,
                 min_rows: int = 1024, seed: int = 0) -> ProgramExperiment:
    """Compile a RASP `program` with tracr into an experiment whose true circuit is known.

    The experiment's graph is the compiled model's; its dataset the program's inputs
    (`inputs`, or `program_inputs(vocab, max_seq_len, n_inputs=..., seed=...)`) with the
    program's outputs as targets; its loss cross-entropy (categorical output) or squared error
    (numerical); its hypothesis `true circuit` the compiler's circuit (module docstring), also
    given as an edge set (`true_edges`) and with the compilation (`compiled`).

    Example (skipped where the tracr extra is not installed):
        >>> import pytest; lib = pytest.importorskip("tracr.compiler.lib")
        >>> exp = from_program(lib.make_length(), vocab={"a", "b"}, max_seq_len=3)
        >>> exp.name
        'tracr-length'
        >>> print(exp.compiled.describe())  # labels carry tracr's instance ids  # doctest: +ELLIPSIS
        length_... (SelectorWidth): a0.h0+m0; a0.h0.q <- tokens (embed), a0.h0.k <- tokens ...
        out.resid <- length_... (m0)
        >>> sorted(component_edges(exp.true_edges))
        [('a0.h0', 'm0', 'in'), ('embed', 'a0.h0', 'k'), ('embed', 'a0.h0', 'q'), ('m0', 'out', 'resid')]
    """
    cp = compile_program(program, vocab=vocab, max_seq_len=max_seq_len, causal=causal,
                         mlp_exactness=mlp_exactness)
    seqs = list(inputs) if inputs is not None else program_inputs(cp.vocab, max_seq_len,
                                                                  n_inputs=n_inputs, seed=seed)
    ds = program_dataset(cp, seqs, min_rows)
    graph = cp.model.graph()
    true = cp.true_edges(lengths_vary=len({len(x) for x in seqs}) > 1)
    kind = "categorical" if cp.categorical else "numerical"
    metric = "cross-entropy of the output value" if cp.categorical else "squared error of the output"
    return ProgramExperiment(
        name=name or f"tracr-{program.name}",
        description=f"tracr-compiled RASP program {program.name!r} ({kind} output, {cp.n_layers} layers, "
                    f"inputs of length 1-{max_seq_len}; loss: {metric} at every real position)",
        graph=graph, dataset=ds, loss_fn=categorical_loss if cp.categorical else numerical_loss,
        hypotheses={"true circuit": build_hypothesis(graph, true)},
        descriptions={"true circuit": f"the compiler's circuit: {len(component_edges(true))} edges "
                                      "between components, each a read of an operation's input SOp"},
        format_inputs=format_inputs(cp), search_graph=cp.model.graph(),
        compiled=cp, true_edges=frozenset(true))
