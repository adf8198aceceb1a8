"""The TransformerLens peer: the same scrub as a researcher would hand-write it with TransformerLens.

Without this library, a causal scrub of a transformer is written with TransformerLens's hooks:
the model becomes a `HookedTransformer`; each distinct set of input rows the hypothesis draws is
run once with `run_with_cache`, keeping only the activations the scrub reads (a
`names_filter`); then `run_with_hooks` forward passes recompute the heads and MLPs whose
inputs mix datasets, each hook writing one receiver's input (`blocks.L.hook_q_input[:, :, H]`,
`hook_k_input`, `hook_v_input` with `use_split_qkv_input`, or the whole `hook_resid_pre` when
every receiver of the layer reads one sum; `hook_mlp_in`; per-position parts of a split port
written at their positions only) and reading its output (`hook_z` of head H times its `W_O`,
`hook_mlp_out`). The scrubbed logits are the final LayerNorm and unembedding applied to the
patched residual stream. This module writes that script once for every hypothesis: it
translates the engine's own `Plan` (the same draws, the same lanes, the same mixing ops) into
those cache and patch runs, so that `causal-scrub bench` can time a competent hook script
beside the engine and check that both give the same losses.

What a careful researcher does, the peer does: one cache run per distinct row set (never per
lane), caches stopped at the deepest layer they need, patched passes that start at the first
receiver's layer (`start_at_layer`) and stop after the last (`stop_at_layer`), receivers of
one forward position packed into one pass when nothing between them conflicts (a receiver may
read a receiver of an earlier layer of the same pass), logits only at the positions the loss
reads. The graph rewrites of the bundled hypotheses are written with hooks too: a port split by
position is written position by position; an attention head split by masks of its pattern is
one head computed once, its parts `(pattern * mask) @ v @ W_O` from `hook_pattern` and
`hook_v`; an estimate `h = g + (h - g)` is the head from TransformerLens minus the
hypothesis's own function g (estimates, like features, are the hypothesis's Python functions,
called as written).

Our `Transformer`'s options that TransformerLens lacks are emulated with permanent hooks, as a
user holding such a model would: Shortformer positions added to the query and key inputs
before LayerNorm (`hook_q_input` / `hook_k_input`, TransformerLens adds them after it), a
padding mask on the keys of a bidirectional model (`hook_attn_scores`), a classifier head (the
unembedding at one position). What cannot be written this way raises `NotExpressible` with the
reason, which the bench prints instead of a number.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.bench import tl_peer
    >>> from causal_scrubbing.experiments import ioi
    >>> exp = ioi.random_workload(n_layers=6, n_heads=8, d_model=64, d_vocab=500, n=64)
    >>> corr = cs.check(exp.graph, exp.hypotheses["name movers only"])
    >>> s = cs.draw(corr, exp.dataset, torch.arange(6), torch.Generator().manual_seed(0))
    >>> peer = tl_peer.TLPeer(exp.graph.module)
    >>> out = peer.evaluate(corr, exp.dataset, s)
    >>> torch.allclose(out, cs.engine.evaluate(corr, exp.dataset, s), atol=1e-4)
    True
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.data import Dataset
from ..core.draws import Sample
from ..core.engine import CleanOutput, CleanPortSum, OpResult, Plan, Term, compile_plan, slots
from ..core.errors import ScrubError
from ..core.graph import Graph, Input, Node
from ..core.hypothesis import Correspondence
from ..models import Transformer

#: What the bench says where transformer_lens is missing.
TL_MISSING = "transformer_lens not installed (pip install causal-scrubbing[tl])"


class NotExpressible(ScrubError):
    """A model or hypothesis the peer cannot write with TransformerLens hooks (the message
    says why)."""


def available() -> str | None:
    """None when transformer_lens (with its `HookedTransformer`) can be imported, else why not."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return TL_MISSING
    return None


def version() -> dict[str, str]:
    """{"transformer_lens": its version} where it is installed, else {}."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return {"transformer_lens": installed("transformer_lens")}
    except PackageNotFoundError:
        return {}


# ---- values: a tensor, or a tensor kept at some positions only ---------------------------------


@dataclass
class Positions:
    """`value` at the positions where `mask` is 1 and zero elsewhere (a per-position part of a
    port): a hook writes it at `idx` only; `dense()` is what the rewritten graph's node computes."""

    value: Tensor  # [b, pos, ...]
    mask: Tensor  # [pos] 0/1, value's dtype
    idx: Tensor  # [k] positions where mask is 1

    def dense(self) -> Tensor:
        shape = [1, -1] + [1] * (self.value.dim() - 2)
        return self.value * self.mask.reshape(shape)  # [b, pos, ...]


Value = Tensor | Positions


def dense(v: Value) -> Tensor:
    return v.dense() if isinstance(v, Positions) else v


def add_values(values: list[Value]) -> Tensor:
    """Sum left to right (the engine's order), per-position parts taken dense."""
    total = dense(values[0])
    for v in values[1:]:
        total = total + dense(v)
    return total


def write_into(dst: Tensor, values: list[Value]) -> None:
    """Write the sum of `values` into `dst` [b, pos, ...] in place: per-position parts that
    partition the positions each at its positions only (what a hook patching those positions
    does; the same numbers as their sum), anything else as the sum."""
    parts = [v for v in values if isinstance(v, Positions)]
    if len(parts) == len(values):
        count = torch.zeros(dst.shape[1], dtype=torch.long, device=dst.device)  # [pos]
        for v in parts:
            count[v.idx] += 1
        if bool((count == 1).all()):
            for v in parts:
                dst[:, v.idx] = v.value[:, v.idx]
            return
    dst.copy_(add_values(values))


# ---- what each node of a (rewritten) transformer graph is, in TransformerLens terms ------------


@dataclass(frozen=True)
class Model:
    """A node of the model's own graph: `embed`, `pos_embed`, `pad_mask`, `tokens`, `head`
    (layer, head), `mlp` (layer) or `out`."""

    kind: str
    layer: int = -1
    head: int = -1


@dataclass(frozen=True)
class HeadPart:
    """A head or a part of a split head: the head's output on its q/k/v[/mask] ports, its
    pattern multiplied by `weight(n_q, n_k)` (an attention split), minus `estimate` of the
    ports `extra` (the residual of `h = g + (h - g)`), kept at the positions `positions`
    (None: all)."""

    layer: int
    head: int
    weight: Callable[[int, int], Tensor] | None = None
    estimate: Callable[..., Tensor] | None = None
    extra: tuple[str, ...] = ()
    positions: Tensor | None = None


@dataclass(frozen=True)
class PassThrough:
    """A per-position part `{node}.{port}@{part}` of a split port: its input at `mask`'s positions."""

    mask: Tensor
    idx: Tensor


@dataclass(frozen=True)
class SumNode:
    """A split node's sum of its parts (`split_node`); `base` is the model node it replaced."""

    base: Model


@dataclass(frozen=True)
class Estimate:
    """The hypothesis's own estimate `g` (`add_estimate`): called on its ports' values."""

    fn: Callable[..., Tensor]


Kind = Model | HeadPart | PassThrough | SumNode | Estimate


def _position_mask(fn: Callable[..., Tensor], port: str, n_pos: int, d: int) -> Tensor | None:
    """The 0/1 position mask [n_pos] that `fn(**{port: x})` multiplies x by, or None."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, n_pos, d, generator=g)  # [2, pos, d]
    try:
        with torch.inference_mode():
            m = fn(**{port: torch.ones_like(x)})
            y = fn(**{port: x})
    except Exception:  # noqa: BLE001 - not a per-position function of that shape
        return None
    if not isinstance(m, Tensor) or m.shape != x.shape:
        return None
    mask = m[0, :, 0]
    if not bool(((mask == 0) | (mask == 1)).all()) or not torch.equal(m, mask[None, :, None].expand_as(m)):
        return None
    return mask if torch.equal(y, x * mask[None, :, None]) else None


def classify(graph: Graph, n_pos: int) -> dict[str, Kind]:
    """Each node of `graph` (the model's graph, possibly rewritten) as the TransformerLens
    computation it is, for sequences of `n_pos` tokens; `NotExpressible` for a node that is
    none of them."""
    model = graph.module
    if not isinstance(model, Transformer):
        raise NotExpressible("the model is not a causal_scrubbing Transformer")
    base = model.graph()
    cfg = model.cfg
    kinds: dict[str, Kind] = {}

    def model_kind(name: str) -> Model:
        kind = _model_kind_of(graph, name)
        if kind.kind not in ("embed", "pos_embed", "pad_mask", "out", "tokens", "head", "mlp"):
            raise NotExpressible(f"graph node {name!r} has no TransformerLens counterpart")
        return kind

    targets = {u: (n, p) for n in graph.order for p, ups in graph.ports(n).items() for u in ups}
    for name in graph.order:
        node = graph.nodes[name]
        if name in base.nodes:
            if isinstance(node, Input):
                kinds[name] = Model("tokens")
                continue
            base_ports = set(base.ports(name))
            if set(node.ports) == base_ports:
                kinds[name] = model_kind(name)
            elif set(node.ports) == {"parts"}:
                kinds[name] = SumNode(model_kind(name))
            else:
                raise NotExpressible(f"graph node {name!r} has ports {sorted(node.ports)}, "
                                     f"not the model's {sorted(base_ports)}")
            continue
        # a node a rewrite added
        node = _node(graph, name)
        target = targets.get(name)
        if target is None:
            raise NotExpressible(f"rewrite node {name!r} feeds nothing")
        n, p = target
        if p != "parts" and set(node.ports) == {"in"} and name.startswith(f"{n}.{p}@"):
            if n not in base.nodes or base.ports(n).get(p) != tuple(node.ports["in"]):
                raise NotExpressible(f"port split {name!r} reads other nodes than {n}.{p}")
            mask = _position_mask(node.fn, "in", n_pos, cfg.d_model)
            if mask is None:
                raise NotExpressible(f"port split {name!r} is not a per-position split "
                                     "(only those can be written as hooks on positions)")
            kinds[name] = PassThrough(mask, torch.nonzero(mask).flatten())
            continue
        if p == "parts" and n in base.nodes:
            kinds[name] = _part_kind(graph, base, model, name, n, n_pos)
            continue
        raise NotExpressible(f"rewrite node {name!r} (feeding {n}.{p}) is of a kind the peer "
                             "does not write with hooks")
    return kinds


def _probe_inputs(graph: Graph, model: Transformer, ports: Iterable[str], node: str, n_pos: int
                  ) -> dict[str, Tensor]:
    """Random values for `node`'s `ports`: tokens for a token port, a padding mask for a mask
    port, residual-stream vectors otherwise."""
    g = torch.Generator().manual_seed(1)
    cfg = model.cfg
    out = {}
    for p in ports:
        ups = graph.ports(node)[p]
        if len(ups) == 1 and graph.is_input(ups[0]):
            out[p] = torch.randint(0, cfg.d_vocab, (2, n_pos), generator=g)
        elif tuple(ups) == ("pad_mask",):
            out[p] = torch.ones(2, n_pos, dtype=torch.bool)
        else:
            out[p] = torch.randn(2, n_pos, cfg.d_model, generator=g)
    return out


def _node(graph: Graph, name: str) -> Node:
    node = graph.nodes[name]
    if not isinstance(node, Node):
        raise NotExpressible(f"{name!r} is an input, not a node")
    return node


def _part_kind(graph: Graph, base: Graph, model: Transformer, name: str, n: str, n_pos: int
               ) -> Kind:
    """What part `name` of the split node `n` computes (see `HeadPart`, `Estimate`)."""
    node = _node(graph, name)
    kind = _model_kind_of(base, n)
    own = set(base.ports(n))
    ports = set(node.ports)
    if not own <= ports:  # reads none of the node's own inputs: the hypothesis's estimate g
        if own & ports:
            raise NotExpressible(f"part {name!r} of {n!r} reads some of its ports only")
        return Estimate(node.fn)
    if kind.kind != "head":
        raise NotExpressible(f"part {name!r} of {n!r}: only attention heads' parts are written "
                             "with hooks")
    closure = _head_fn_closure(node.fn)
    if closure is not None:  # `Transformer.head_fn(layer, h, pattern_weight)`: an attention split
        if closure.get("h") != kind.head or closure.get("block") is not model.blocks[kind.layer]:
            raise NotExpressible(f"part {name!r} of {n!r} computes another head")
        return HeadPart(kind.layer, kind.head, weight=closure.get("pattern_weight"))
    extra = ports - own
    base_fn = _node(base, n).fn
    probe = _probe_inputs(graph, model, sorted(ports), name, n_pos)
    siblings = [s for s in graph.ports(n)["parts"] if s != name]
    if extra:  # h - g(extra): the residual of `add_estimate` with inputs
        est = [s for s in siblings if set(_node(graph, s).ports) == extra]
        if len(est) == 1:
            est_fn = _node(graph, est[0]).fn
            with torch.inference_mode():
                want = base_fn(**{p: probe[p] for p in own}) - est_fn(**{p: probe[p] for p in extra})
                got = node.fn(**probe)
            if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                return HeadPart(kind.layer, kind.head, estimate=est_fn, extra=tuple(sorted(extra)))
        raise NotExpressible(f"part {name!r} of {n!r} is not the residual h - g of an estimate")
    with torch.inference_mode():  # the head's output at some positions (`split_output_positions`)
        whole = base_fn(**probe)
        got = node.fn(**probe)
    ones = (whole != 0).any(-1).any(0)  # [pos] where the head writes something
    mask = (got != 0).any(-1).any(0).to(whole.dtype)
    if got.shape == whole.shape and bool(ones.all()) and torch.equal(got, whole * mask[None, :, None]):
        return HeadPart(kind.layer, kind.head, positions=mask)
    raise NotExpressible(f"part {name!r} of {n!r} is a function of the head's output or inputs "
                         "that the peer cannot identify (an estimate of the output, say)")


_HEAD = re.compile(r"a(\d+)\.h(\d+)")
_MLP = re.compile(r"m(\d+)")


def _model_kind_of(graph: Graph, name: str) -> Model:
    """The model-graph node `name` as a `Model` (its kind is the name for other nodes)."""
    if graph.is_input(name):
        return Model("tokens")
    if m := _HEAD.fullmatch(name):
        return Model("head", int(m.group(1)), int(m.group(2)))
    if m := _MLP.fullmatch(name):
        return Model("mlp", int(m.group(1)))
    return Model(name)


def _head_fn_closure(fn: Callable) -> dict[str, Any] | None:
    """The variables of a `Transformer.head_fn` node function, or None for another function."""
    if not getattr(fn, "__qualname__", "").endswith("head_fn.<locals>.head"):
        return None
    return dict(inspect.getclosurevars(fn).nonlocals)


# ---- the model as a HookedTransformer ----------------------------------------------------------


class TLModel:
    """`model` as a TransformerLens `HookedTransformer` (weights copied, eval mode), with
    permanent hooks for what TransformerLens lacks: Shortformer positions before LayerNorm and
    a padding mask on the keys (see the module docstring). Its logits are checked against the
    model's on a batch of `check_tokens` (or random tokens)."""

    def __init__(self, model: Transformer, device: str | torch.device = "cpu",
                 check_tokens: Tensor | None = None):
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = model.cfg
        problems = []
        if cfg.post_norms:
            problems.append("norms after attention and MLP (post_norms: the graph's layer nodes)")
        if cfg.attn_windows is not None:
            problems.append("sliding-window attention")
        rope = (cfg.rope_scaling or {}).get("rope_type", "default")
        if rope not in ("default", "llama3"):
            problems.append(f"rotary scaling {rope!r}")
        if cfg.gated_mlp and any(float(b.mlp.b_in.abs().max()) > 0 or float(b.mlp.b_gate.abs().max()) > 0
                                 for b in model.blocks):
            problems.append("a gated MLP with biases (TransformerLens adds b_in after the gate)")
        if problems:
            raise NotExpressible("TransformerLens cannot hold this model: " + "; ".join(problems))
        self.cfg = cfg
        self.device = torch.device(device)
        self.shortformer = cfg.positional_embedding_type == "shortformer"
        pos_type = {"standard": "standard", "rotary": "rotary"}.get(cfg.positional_embedding_type,
                                                                      "shortformer")
        kw: dict[str, Any] = dict(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head,
            n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, d_vocab_out=cfg.d_vocab_out,
            act_fn=cfg.act_fn, attn_only=cfg.attn_only, eps=cfg.ln_eps,
            normalization_type={"LN": "LN", "RMS": "RMS", "none": None}[cfg.normalization_type],
            attention_dir=cfg.attention_dir, positional_embedding_type=pos_type,
            default_prepend_bos=False, gated_mlp=cfg.gated_mlp, parallel_attn_mlp=cfg.parallel_attn_mlp,
            use_attn_scale=True, attn_scale=cfg.attn_scale or math.sqrt(cfg.d_head),
            attn_scores_soft_cap=cfg.attn_scores_soft_cap or -1.0,
            output_logits_soft_cap=cfg.output_logits_soft_cap or -1.0,
            dtype=torch.float32, device=str(self.device))
        if cfg.n_key_value_heads is not None:  # one k/v input per query head, as our ports are
            kw.update(n_key_value_heads=cfg.n_key_value_heads, ungroup_grouped_query_attention=True)
        if cfg.positional_embedding_type == "rotary":
            kw.update(rotary_dim=cfg.rotary_dim or cfg.d_head, rotary_base=cfg.rotary_base)
            if rope == "llama3":
                s = cfg.rope_scaling or {}
                kw.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=s["factor"],
                          NTK_by_parts_low_freq_factor=s["low_freq_factor"],
                          NTK_by_parts_high_freq_factor=s["high_freq_factor"],
                          NTK_original_ctx_len=s["original_max_position_embeddings"])
        with warnings.catch_warnings():  # TransformerLens 3.x: "HookedTransformer is deprecated"
            warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
            tl = HookedTransformer(HookedTransformerConfig(**kw))
        weights = {k: v.to(self.device) for k, v in model.state_dict_tl().items()}
        if pos_type == "shortformer":  # TransformerLens would add positions after ln1: add none
            weights["pos_embed.W_pos"] = torch.zeros_like(weights.get(
                "pos_embed.W_pos", torch.zeros(cfg.n_ctx, cfg.d_model, device=self.device)))
        if cfg.n_key_value_heads is not None:
            for name in list(weights):
                if name.split(".")[-1] in ("W_K", "W_V", "b_K", "b_V"):
                    head, _, leaf = name.rpartition(".")
                    weights[f"{head}._{leaf}"] = weights.pop(name)
        weights = {k: v for k, v in weights.items() if "W_gate" in k or "b_gate" not in k}
        missing = {k for k, _ in tl.named_parameters()} - set(weights)
        if missing:
            raise NotExpressible(f"TransformerLens's parameters {sorted(missing)[:3]} have no "
                                 "counterpart in this model")
        tl.load_state_dict(weights, strict=False)
        self.tl = tl.eval()
        self.W_pos = model.W_pos.detach().to(self.device) if self.shortformer else None  # [n_ctx, d]
        self.key_mask: Tensor | None = None  # [b, pos] for the current run, set around it
        self._add_perma_hooks()
        self._check(model, check_tokens)

    # -- the permanent hooks (our Transformer's semantics) ------------------------------------

    def _add_perma_hooks(self) -> None:
        cfg = self.cfg
        if self.shortformer:
            self.tl.set_use_split_qkv_input(True)  # the q/k inputs differ from the v input
        for layer in range(cfg.n_layers):
            if self.W_pos is not None:
                for name in ("hook_q_input", "hook_k_input"):
                    self.tl.add_perma_hook(f"blocks.{layer}.{name}", self._add_positions)
            if cfg.pad_token is not None:
                self.tl.add_perma_hook(f"blocks.{layer}.attn.hook_attn_scores", self._mask_keys)

    def _add_positions(self, x: Tensor, hook: Any) -> Tensor:
        """Shortformer: positions added to the query/key inputs [b, pos, heads, d] before ln1."""
        assert self.W_pos is not None
        return x + self.W_pos[: x.shape[1], None, :]

    def _mask_keys(self, scores: Tensor, hook: Any) -> Tensor | None:
        """The padding mask of the run's own tokens on every head's scores [b, heads, q, k]."""
        if self.key_mask is None:
            return None
        return scores.masked_fill(~self.key_mask[:, None, None, :], float("-inf"))

    def _check(self, model: Transformer, tokens: Tensor | None) -> None:
        cfg = self.cfg
        if tokens is None:  # (a classifier reads its position: full-length rows)
            n_pos = cfg.n_ctx if cfg.head == "classifier" else min(cfg.n_ctx, 16)
            tokens = torch.randint(0, cfg.d_vocab, (2, n_pos), generator=torch.Generator().manual_seed(0))
        tokens = tokens.to(self.device)
        with torch.inference_mode():
            ours = model(tokens)
            theirs = self.logits(tokens)
        err = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else math.inf
        if not err <= 1e-4 * (1 + ours.abs().max().item()):
            raise NotExpressible(f"the HookedTransformer's logits differ from the model's "
                                 f"(max difference {err:.3g})")

    # -- runs -------------------------------------------------------------------------------

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits from the residual stream before `ln_final` [b, pos, d], at the classifier's
        position only when the model has one ([b, d_vocab_out] then)."""
        if self.cfg.head == "classifier":
            resid = resid[:, self.cfg.classifier_pos: self.cfg.classifier_pos + 1]  # [b, 1, d]
        if self.cfg.normalization_type != "none":
            resid = self.tl.ln_final(resid)
        logits = self.tl.unembed(resid)  # [b, pos, d_vocab_out]
        cap = self.cfg.output_logits_soft_cap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits[:, 0] if self.cfg.head == "classifier" else logits

    def logits(self, tokens: Tensor) -> Tensor:
        last = f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"
        return self.unembed(self.cache(tokens, {last}, self.cfg.n_layers)[last])

    def cache(self, tokens: Tensor, names: set[str], stop: int | None) -> dict[str, Tensor]:
        """`run_with_cache` on `tokens`, keeping `names`, stopped before block `stop`."""
        self.key_mask = tokens != self.cfg.pad_token if self.cfg.pad_token is not None else None
        try:
            _, cache = self.tl.run_with_cache(tokens, names_filter=lambda n: n in names,
                                              stop_at_layer=stop, return_cache_object=False)
        finally:
            self.key_mask = None
        return cache

    def patched(self, batch: int, n_pos: int, hooks: list[tuple[str, Callable]], start: int, stop: int,
                split: bool, mlp_in: bool) -> None:
        """A `run_with_hooks` pass over blocks [start, stop) whose hooks write the receivers'
        inputs and read their outputs (the input residual is a placeholder: every receiver's
        input is written by a hook)."""
        tl = self.tl
        resid = torch.zeros(batch, n_pos, self.cfg.d_model, device=self.device)  # [b, pos, d]
        if split != tl.cfg.use_split_qkv_input:
            tl.set_use_split_qkv_input(split)
        if mlp_in:
            tl.set_use_hook_mlp_in(True)
        try:
            tl.run_with_hooks(resid, start_at_layer=start, stop_at_layer=stop, fwd_hooks=hooks)
        finally:
            tl.set_use_split_qkv_input(self.shortformer)
            if mlp_in:
                tl.set_use_hook_mlp_in(False)


# ---- the translated plan -----------------------------------------------------------------------


@dataclass
class Slot:
    """One TransformerLens computation in a patched pass: head (layer, h) or MLP `layer` on
    the given port terms (ops that read the same terms share it)."""

    component: tuple  # ("head", layer, h) | ("mlp", layer)
    ports: dict[str, tuple[Term, ...]]
    ops: list[int] = field(default_factory=list)
    needs_pattern: bool = False

    @property
    def layer(self) -> int:
        return self.component[1]


@dataclass
class Script:
    """A plan written as TransformerLens runs: `clean` (op -> the clean output it reads),
    `virtual` ops (computed in Python from other values: per-position parts, sums of parts,
    estimates, the final unembedding), and `passes`, each a list of slots run in one pass."""

    plan: Plan
    kinds: dict[str, Kind]
    clean: dict[int, Term]
    virtual: set[int]
    slot_of_op: dict[int, Slot]
    passes: list[list[Slot]]


def _resid_points(model: Transformer) -> dict[tuple[str, ...], tuple[str, bool]]:
    """Upstream tuple of a port of the model's graph -> (TransformerLens hook holding that sum,
    whether the positions are to be added: Shortformer query/key inputs)."""
    g, cfg = model.graph(), model.cfg
    out: dict[tuple[str, ...], tuple[str, bool]] = {}
    shortformer = cfg.positional_embedding_type == "shortformer"
    for name in g.order:
        kind = _model_kind_of(g, name)
        for p, ups in g.ports(name).items():
            if kind.kind == "head" and p in ("q", "k", "v"):
                point = (f"blocks.{kind.layer}.hook_resid_pre", shortformer and p != "v")
            elif kind.kind == "mlp":
                point = (f"blocks.{kind.layer}.hook_resid_{'pre' if cfg.parallel_attn_mlp else 'mid'}",
                         False)
            elif name == "out":
                point = (f"blocks.{cfg.n_layers - 1}.hook_resid_post", False)
            else:
                continue
            out.setdefault(tuple(ups), point)
    return out


class TLPeer:
    """The TransformerLens peer for one model: `evaluate` computes a hypothesis's scrubbed
    output as the hook script described in the module docstring would."""

    def __init__(self, model: Transformer, device: str | torch.device = "cpu",
                 check_tokens: Tensor | None = None):
        if not isinstance(model, Transformer):
            raise NotExpressible("the model is not a causal_scrubbing Transformer")
        self.model = model
        self.tl = TLModel(model, device, check_tokens)
        self.resid = _resid_points(model)
        self._kinds: list[tuple[Graph, int, dict[str, Kind]]] = []  # (graph, n_pos, its kinds)

    # -- translating a plan -----------------------------------------------------------------

    def kinds(self, graph: Graph, n_pos: int) -> dict[str, Kind]:
        """`classify(graph, n_pos)`, computed once per graph and sequence length."""
        for g, n, kinds in self._kinds:
            if g is graph and n == n_pos:
                return kinds
        if graph.module is not self.model:
            raise NotExpressible("the graph is of another model than the peer's")
        kinds = classify(graph, n_pos)
        self._kinds.append((graph, n_pos, kinds))
        return kinds

    def script(self, corr: Correspondence, plan: Plan, n_pos: int) -> Script:
        """`plan` as cache runs and patched passes (`NotExpressible` if it cannot be)."""
        graph = corr.graph
        kinds = self.kinds(graph, n_pos)
        clean: dict[int, Term] = {}
        virtual: set[int] = set()
        slot_of_op: dict[int, Slot] = {}
        slot_by_key: dict[tuple, Slot] = {}
        for k, op in enumerate(plan.ops):
            lane = _own_clean_lane(graph, op)
            if lane is not None:  # the node on one lane's own inputs: its clean output
                clean[k] = CleanOutput(op.node, lane)
                continue
            kind = kinds[op.node]
            if isinstance(kind, (PassThrough, SumNode, Estimate)) or kind == Model("out"):
                virtual.add(k)
                continue
            if isinstance(kind, Model) and kind.kind == "head":
                kind = HeadPart(kind.layer, kind.head)
            if isinstance(kind, HeadPart):
                own = tuple(sorted(p for p, _ in op.ports if p not in kind.extra))
                ports = {p: terms for p, terms in op.ports if p in own}
                key: tuple = (("head", kind.layer, kind.head), tuple((p, ports[p]) for p in own))
            elif isinstance(kind, Model) and kind.kind == "mlp":
                ports = dict(op.ports)
                key = (("mlp", kind.layer), tuple(sorted(ports.items())))
            else:
                raise NotExpressible(f"op %{k} recomputes {op.node!r}, which the peer cannot "
                                     "recompute with hooks")
            if key not in slot_by_key:
                slot_by_key[key] = Slot(key[0], ports)
            slot = slot_by_key[key]
            slot.ops.append(k)
            slot.needs_pattern |= isinstance(kind, HeadPart) and kind.weight is not None
            slot_of_op[k] = slot
        passes = _schedule(plan, clean, virtual, slot_of_op)
        return Script(plan, kinds, clean, virtual, slot_of_op, passes)

    # -- running it -------------------------------------------------------------------------

    def evaluate(self, corr: Correspondence, table: Dataset, sample: Sample, *,
                 chunk_size: int | None = None, plan: Plan | None = None,
                 reduce: Callable[[Tensor, int, int], Tensor] | None = None) -> Tensor:
        """The scrubbed output [n, ...] (`chunk_size` reference rows at a time, default: what
        fits a 512 MB activation budget; `reduce` as in `engine.evaluate`)."""
        reduce = reduce or (lambda out, start, stop: out)
        plan = plan or compile_plan(corr)
        tokens = table["tokens"]
        n_pos = tokens.shape[1]
        script = self.script(corr, plan, n_pos)
        slot = slots(plan, sample)
        needs = self._cache_needs(corr.graph, script, slot)
        chunk = chunk_size or self.default_chunk(n_pos)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(sample), chunk):
                stop = min(len(sample), start + chunk)
                run = _Run(self, corr.graph, script, slot, table, start, stop, needs)
                outputs.append(reduce(run.result(), start, stop))
        return torch.cat(outputs)

    def default_chunk(self, n_pos: int, budget_mb: float = 512.0) -> int:
        """Rows per chunk so that one patched pass's largest activations (per-head q/k/v inputs
        and their norms, attention scores and pattern, MLP hidden layer) fit `budget_mb`."""
        cfg = self.model.cfg
        per_row = 4 * n_pos * (6 * cfg.n_heads * cfg.d_model + 3 * cfg.n_heads * n_pos
                               + 2 * (cfg.d_mlp or 0) + 4 * cfg.d_model)
        return max(1, int(budget_mb * 2**20 // per_row))

    def _cache_needs(self, graph: Graph, script: Script, slot: Any) -> dict[int, tuple[set[str], int]]:
        """Slot -> (the hooks its cache run keeps, the block it stops before)."""
        names: dict[int, set[str]] = {i: set() for i in range(len(slot.rows))}
        reads: list[Term] = [script.plan.result] + [t for k, op in enumerate(script.plan.ops)
                                                    if k not in script.clean for t in op.reads()]
        reads += list(script.clean.values())
        kinds = script.kinds
        for t in reads:
            if isinstance(t, CleanOutput):
                names[slot.slot_of[t.lane]] |= self._out_hooks(graph, kinds, t.node)
            elif isinstance(t, CleanPortSum):
                names[slot.slot_of[t.lane]] |= self._port_hooks(graph, kinds, graph.ports(t.node)[t.port])
        out = {}
        for i, ns in names.items():
            layers = [int(n.split(".")[1]) for n in ns if n.startswith("blocks.")]
            out[i] = (ns, max(layers, default=-1) + 1)
        return out

    def _out_hooks(self, graph: Graph, kinds: dict[str, Kind], node: str) -> set[str]:
        kind = kinds[node]
        if isinstance(kind, SumNode):
            kind = kind.base
        if isinstance(kind, Model):
            if kind.kind == "head":
                return {f"blocks.{kind.layer}.attn.hook_z"}
            if kind.kind == "mlp":
                return {f"blocks.{kind.layer}.hook_mlp_out"}
            if kind.kind == "embed":
                return {"hook_embed"}
            if kind.kind == "pos_embed":
                return {"hook_pos_embed"} if self.tl.W_pos is None else set()
            if kind.kind == "out":
                return {f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post"}
            return set()  # tokens, pad_mask: from the tokens
        if isinstance(kind, HeadPart):
            hooks = {f"blocks.{kind.layer}.attn.hook_z"}
            if kind.weight is not None:
                hooks |= {f"blocks.{kind.layer}.attn.hook_pattern", f"blocks.{kind.layer}.attn.hook_v"}
            for p in kind.extra:
                hooks |= self._port_hooks(graph, kinds, graph.ports(node)[p])
            return hooks
        if isinstance(kind, PassThrough):
            return self._port_hooks(graph, kinds, graph.ports(node)["in"])
        assert isinstance(kind, Estimate)
        hooks = set()
        for ups in graph.ports(node).values():
            hooks |= self._port_hooks(graph, kinds, ups)
        return hooks

    def _port_hooks(self, graph: Graph, kinds: dict[str, Kind], ups: tuple[str, ...]) -> set[str]:
        ups = tuple(ups)
        if ups in self.resid:
            return {self.resid[ups][0]}
        under = _partition_of(kinds, graph, ups)
        if under is not None:
            return self._port_hooks(graph, kinds, under)
        hooks: set[str] = set()
        for u in ups:
            hooks |= self._out_hooks(graph, kinds, u)
        return hooks


def _own_clean_lane(graph: Graph, op) -> Any:
    """The lane L when every port of `op` reads its own clean sum on L (an op the engine lifted
    out of a clean pass: the node's clean output on L), else None."""
    lanes = set()
    for p, terms in op.ports:
        if len(terms) != 1 or not isinstance(t := terms[0], CleanPortSum):
            return None
        if tuple(graph.ports(t.node)[t.port]) != tuple(graph.ports(op.node)[p]):
            return None
        lanes.add(t.lane)
    return lanes.pop() if len(lanes) == 1 else None


def _partition_of(kinds: dict[str, Kind], graph: Graph, ups: tuple[str, ...]) -> tuple[str, ...] | None:
    """When `ups` are per-position parts of one sum that together cover every position once
    (a port split by position), that sum's upstream tuple; else None."""
    if not ups or not all(isinstance(kinds.get(u), PassThrough) for u in ups):
        return None
    unders = {tuple(graph.ports(u)["in"]) for u in ups}
    if len(unders) != 1:
        return None
    masks = [kind.mask for u in ups if isinstance(kind := kinds[u], PassThrough)]
    total = torch.stack(masks).sum(0)  # [pos] how many parts keep each position
    return unders.pop() if bool((total == 1).all()) else None


def _position(slot: Slot) -> tuple[int, int]:
    """Where a slot's output appears in a forward pass: (layer, 0) heads, (layer, 1) MLPs."""
    return (slot.layer, 0 if slot.component[0] == "head" else 1)


def _schedule(plan: Plan, clean: dict[int, Term], virtual: set[int],
              slot_of_op: dict[int, Slot]) -> list[list[Slot]]:
    """Slots into patched passes, in order: a slot goes to the first pass, no earlier than
    what it reads (the same pass when that comes earlier in the forward order), whose
    component is free."""
    deps_memo: dict[int, set[int]] = {}

    def tl_deps(terms: Iterable[Term]) -> set[int]:
        out: set[int] = set()
        for t in terms:
            if not isinstance(t, OpResult) or t.index in clean:
                continue
            k = t.index
            if k not in deps_memo:
                deps_memo[k] = (tl_deps(plan.ops[k].reads()) if k in virtual else {k})
            out |= deps_memo[k]
        return out

    pass_of: dict[int, int] = {}  # slot id -> pass
    passes: list[dict[tuple, Slot]] = []
    for k in range(len(plan.ops)):
        slot = slot_of_op.get(k)
        if slot is None or id(slot) in pass_of:
            continue
        earliest = 0
        for op in slot.ops:
            for d in tl_deps(plan.ops[op].reads()):
                ds = slot_of_op[d]
                if ds is slot:
                    continue
                p = pass_of[id(ds)]
                earliest = max(earliest, p if _position(ds) < _position(slot) else p + 1)
        p = earliest
        while p < len(passes) and slot.component in passes[p]:
            p += 1
        if p == len(passes):
            passes.append({})
        passes[p][slot.component] = slot
        pass_of[id(slot)] = p
    return [list(ps.values()) for ps in passes]


class _Run:
    """One chunk of reference rows: the cache runs, then the patched passes."""

    def __init__(self, peer: TLPeer, graph: Graph, script: Script, slot: Any, table: Dataset,
                 start: int, stop: int, needs: dict[int, tuple[set[str], int]]):
        self.peer, self.graph, self.script, self.slot = peer, graph, script, slot
        self.tlm = peer.tl
        self.kinds = script.kinds
        self.cfg = peer.model.cfg
        device = self.tlm.device
        # 1. one cache run per distinct row set, keeping only what the scrub reads
        self.tokens = [table["tokens"][rows[start:stop]].to(device) for rows in slot.rows]
        self.caches = [self.tlm.cache(self.tokens[i], names, stop_at) if names else {}
                       for i, (names, stop_at) in needs.items()]
        self.results: dict[int, Value] = {}
        self.clean_memo: dict[tuple, Value] = {}
        self.batch = stop - start
        self.n_pos = table["tokens"].shape[1]

    # -- values -----------------------------------------------------------------------------

    def value(self, t: Term) -> Value:
        if isinstance(t, OpResult):
            k = t.index
            if k in self.script.clean:
                return self.value(self.script.clean[k])
            if k not in self.results:
                if k not in self.script.virtual:
                    raise AssertionError(f"op %{k} read before its pass ran")
                self.results[k] = self.virtual(k)
            return self.results[k]
        i = self.slot.slot_of[t.lane]
        if isinstance(t, CleanOutput):
            return self.clean_out(t.node, i)
        return self.clean_port(tuple(self.graph.ports(t.node)[t.port]), i)

    def values(self, terms: Iterable[Term]) -> list[Value]:
        return [self.value(t) for t in terms]

    def port_sum(self, terms: Iterable[Term]) -> Tensor:
        return add_values(self.values(terms))

    def virtual(self, k: int) -> Value:
        op = self.script.plan.ops[k]
        kind = self.kinds[op.node]
        ports = dict(op.ports)
        if isinstance(kind, PassThrough):
            return Positions(self.port_sum(ports["in"]), kind.mask.to(self.tlm.device),
                             kind.idx.to(self.tlm.device))
        if isinstance(kind, SumNode):
            return self.port_sum(ports["parts"])
        if isinstance(kind, Estimate):
            return kind.fn(**{p: self.port_sum(terms) for p, terms in ports.items()})
        assert kind == Model("out")
        return self.tlm.unembed(self.port_sum(ports["resid"]))

    def clean_out(self, node: str, i: int) -> Value:
        key = ("out", node, i)
        if key not in self.clean_memo:
            self.clean_memo[key] = self._clean_out(node, i)
        return self.clean_memo[key]

    def _clean_out(self, node: str, i: int) -> Value:
        kind = self.kinds[node]
        cache, tokens = self.caches[i], self.tokens[i]
        if isinstance(kind, SumNode):
            kind = kind.base
        if isinstance(kind, Model):
            if kind.kind == "tokens":
                return tokens
            if kind.kind == "pad_mask":
                assert self.cfg.pad_token is not None  # only models with one have the node
                return torch.ne(tokens, self.cfg.pad_token)  # [b, pos]
            if kind.kind == "embed":
                return cache["hook_embed"]
            if kind.kind == "pos_embed":
                if self.tlm.W_pos is not None:
                    return self.tlm.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)
                return cache["hook_pos_embed"]
            if kind.kind == "mlp":
                return cache[f"blocks.{kind.layer}.hook_mlp_out"]
            if kind.kind == "out":
                return self.tlm.unembed(cache[f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"])
            kind = HeadPart(kind.layer, kind.head)
        if isinstance(kind, HeadPart):
            a = f"blocks.{kind.layer}.attn."
            z = cache[a + "hook_z"][:, :, kind.head]  # [b, pos, d_head]
            pattern = cache[a + "hook_pattern"][:, kind.head] if kind.weight is not None else None
            v = cache[a + "hook_v"][:, :, kind.head] if kind.weight is not None else None
            extra = {p: self.clean_port(tuple(self.graph.ports(node)[p]), i) for p in kind.extra}
            return self.head_output(kind, z, pattern, v, extra)
        if isinstance(kind, PassThrough):
            under = self.clean_port(tuple(self.graph.ports(node)["in"]), i)
            return Positions(dense(under), kind.mask.to(self.tlm.device), kind.idx.to(self.tlm.device))
        assert isinstance(kind, Estimate)
        return kind.fn(**{p: dense(self.clean_port(tuple(ups), i))
                          for p, ups in self.graph.ports(node).items()})

    def clean_port(self, ups: tuple[str, ...], i: int) -> Value:
        key = ("port", ups, i)
        if key not in self.clean_memo:
            point = self.peer.resid.get(ups)
            if point is not None:
                value = self.caches[i][point[0]]
                if point[1]:  # Shortformer query/key input: the residual plus the positions
                    assert self.tlm.W_pos is not None
                    value = value + self.tlm.W_pos[: value.shape[1]]
            else:
                under = _partition_of(self.kinds, self.graph, ups)
                value = (dense(self.clean_port(under, i)) if under is not None
                         else add_values([self.clean_out(u, i) for u in ups]))
            self.clean_memo[key] = value
        return self.clean_memo[key]

    def head_output(self, kind: HeadPart, z: Tensor, pattern: Tensor | None, v: Tensor | None,
                    extra: dict[str, Value]) -> Value:
        """What a head part writes, from the head's z [b, pos, d_head] (or, for an attention
        split, its pattern [b, q, k] and values [b, k, d_head]), as the rewritten graph has it."""
        attn = self.tlm.tl.blocks[kind.layer].attn
        bias = attn.b_O / self.cfg.n_heads  # [d]: each head's share of the output bias
        if kind.weight is not None:
            assert pattern is not None and v is not None
            p = pattern * kind.weight(*pattern.shape[-2:]).to(pattern)  # [b, q, k]
            out = torch.einsum("bqk,bke->bqe", p, v) @ attn.W_O[kind.head] + p.sum(-1)[..., None] * bias
        else:
            out = z @ attn.W_O[kind.head] + bias  # [b, pos, d]
        if kind.estimate is not None:
            out = out - kind.estimate(**{p: dense(x) for p, x in extra.items()})
        if kind.positions is not None:
            mask = kind.positions.to(out)
            return Positions(out, mask, torch.nonzero(mask).flatten())
        return out

    # -- the patched passes -----------------------------------------------------------------

    def result(self) -> Tensor:
        for slots_ in self.script.passes:
            self.run_pass(slots_)
        return dense(self.value(self.script.plan.result))

    def run_pass(self, pass_slots: list[Slot]) -> None:
        heads: dict[int, list[Slot]] = {}
        mlps: list[Slot] = []
        for s in pass_slots:
            (heads.setdefault(s.layer, []) if s.component[0] == "head" else mlps).append(s)
        layers = [s.layer for s in pass_slots]
        start, stop = min(layers), max(layers) + 1
        # per-head inputs only where one layer's receivers read different sums
        split = self.tlm.shortformer or any(
            len({(s.ports["q"], s.ports["k"], s.ports["v"]) for s in ss}) > 1
            or any(not (s.ports["q"] == s.ports["k"] == s.ports["v"]) for s in ss)
            for ss in heads.values())
        hooks: list[tuple[str, Callable]] = []
        for layer, ss in heads.items():
            b = f"blocks.{layer}."
            if split:
                for port in ("q", "k", "v"):
                    hooks.append((f"{b}hook_{port}_input", self._write_heads(ss, port)))
            else:
                hooks.append((f"{b}hook_resid_pre", self._write_resid(ss[0].ports["q"])))
            if any("mask" in s.ports for s in ss):
                hooks.append((f"{b}attn.hook_attn_scores", self._write_masks(ss)))
            captured: dict[str, Tensor] = {}
            if any(s.needs_pattern for s in ss):
                hooks.append((f"{b}attn.hook_pattern", _keep(captured, "pattern")))
                hooks.append((f"{b}attn.hook_v", _keep(captured, "v")))
            hooks.append((f"{b}attn.hook_z", self._read_heads(ss, captured)))
        for s in mlps:
            b = f"blocks.{s.layer}."
            hooks.append((f"{b}hook_mlp_in", self._write_resid(s.ports["in"])))
            hooks.append((f"{b}hook_mlp_out", self._read_mlp(s)))
        self.tlm.patched(self.batch, self.n_pos, hooks, start, stop, split, bool(mlps))

    def _write_heads(self, ss: list[Slot], port: str) -> Callable:
        def hook(x: Tensor, hook: Any) -> Tensor:  # x: [b, pos, heads, d]
            for s in ss:
                write_into(x[:, :, s.component[2]], self.values(s.ports[port]))
            return x
        return hook

    def _write_resid(self, terms: tuple[Term, ...]) -> Callable:
        def hook(x: Tensor, hook: Any) -> Tensor:  # x: [b, pos, d]
            values = self.values(terms)
            if len(values) == 1 and isinstance(values[0], Tensor):
                return values[0]
            out = torch.empty_like(x)
            write_into(out, values)
            return out
        return hook

    def _write_masks(self, ss: list[Slot]) -> Callable:
        def hook(scores: Tensor, hook: Any) -> Tensor:  # [b, heads, q, k]
            for s in ss:
                if "mask" in s.ports:
                    h = s.component[2]
                    keep = self.port_sum(s.ports["mask"])  # [b, k] True where a key is seen
                    scores[:, h] = scores[:, h].masked_fill(~keep.bool()[:, None, :], float("-inf"))
            return scores
        return hook

    def _read_heads(self, ss: list[Slot], captured: dict[str, Tensor]) -> Callable:
        def hook(z: Tensor, hook: Any) -> None:  # [b, pos, heads, d_head]
            for s in ss:
                h = s.component[2]
                pattern = captured["pattern"][:, h] if "pattern" in captured else None  # [b, q, k]
                v = captured["v"][:, :, h] if "v" in captured else None  # [b, k, d_head]
                for k in s.ops:
                    kind = self.kinds[self.script.plan.ops[k].node]
                    part = kind if isinstance(kind, HeadPart) else HeadPart(s.layer, h)
                    ports = dict(self.script.plan.ops[k].ports)
                    extra: dict[str, Value] = {p: self.port_sum(ports[p]) for p in part.extra}
                    self.results[k] = self.head_output(part, z[:, :, h], pattern, v, extra)
        return hook

    def _read_mlp(self, s: Slot) -> Callable:
        def hook(out: Tensor, hook: Any) -> None:  # [b, pos, d]
            for k in s.ops:
                self.results[k] = out
        return hook


def _keep(captured: dict[str, Tensor], key: str) -> Callable:
    def hook(x: Tensor, hook: Any) -> None:
        captured[key] = x
    return hook


def evaluate(corr: Correspondence, table: Dataset, sample: Sample, *, chunk_size: int | None = None,
             plan: Plan | None = None, reduce: Callable[[Tensor, int, int], Tensor] | None = None,
             peer: TLPeer | None = None) -> Tensor:
    """The scrubbed output computed by the TransformerLens peer (built for `corr`'s model
    unless `peer` is given); the arguments are those of `hook_loop.evaluate`."""
    peer = peer or TLPeer(corr.graph.module)
    return peer.evaluate(corr, table, sample, chunk_size=chunk_size, plan=plan, reduce=reduce)
