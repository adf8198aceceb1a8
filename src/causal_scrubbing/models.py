"""A plain-PyTorch transformer and its residual-decomposed graph.

`Transformer` covers the models causal scrubbing was published on: pre-LayerNorm blocks;
attention-only or with MLPs (ReLU or GELU); learned GPT-style, Shortformer (positional
embedding added to the query and key inputs only) or no positional embedding; causal, or
bidirectional with a padding mask derived from the tokens; an LM head or a classifier head
read at one position. Parameter names and shapes follow TransformerLens (`W_Q`:
[n_heads, d_model, d_head], `W_O`: [n_heads, d_head, d_model], `W_in`: [d_model, d_mlp], ...),
so import and export are weight copies; `from_hf` and `from_transformer_lens` import
Hugging Face GPT-2 and TransformerLens models exactly (see docs/gpt2.md).

`Transformer.graph()` writes the model as a `Graph` in which the residual stream is
decomposed: the token embedding `embed`, the positional embedding `pos_embed`, every head
`a{l}.h{h}` (ports `q`, `k`, `v`, and `mask` when there is a padding mask, fed by the
token-derived node `pad_mask`), every MLP `m{l}` (port `in`), and `out` (port `resid`). Each
port reads the sum of every node that writes to the residual stream before it. Each head's
output includes an equal share of its layer's output bias, so the sum is exact.

Checkpoints are a safetensors file plus a JSON config; loading never executes code.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> cfg = cs.models.Config(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=None,
    ...                        d_vocab=7, n_ctx=10)
    >>> model = cs.models.Transformer(cfg)
    >>> tokens = torch.randint(0, 7, (3, 10))
    >>> g = model.graph()
    >>> torch.allclose(g(cs.Dataset({"tokens": tokens})), model(tokens), atol=1e-5)
    True
    >>> [n for n in g.nodes][:5]
    ['tokens', 'embed', 'pos_embed', 'a0.h0', 'a0.h1']
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ScrubError, unknown_name
from .graph import Graph, Group, Input, Node
from .names import head_name, mlp_name, parse_head  # noqa: F401  (parse_head re-exported)


class CheckpointError(ScrubError):
    """A checkpoint that is missing, corrupted, or does not match its config."""


@dataclass
class Config:
    """Transformer hyperparameters (TransformerLens names where they exist)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int | None  # None: attention only
    d_vocab: int
    n_ctx: int
    d_vocab_out: int | None = None  # default: d_vocab
    act_fn: str = "relu"  # "relu", "gelu" (exact, erf) or "gelu_new" (GPT-2's tanh approximation)
    positional_embedding_type: str = "standard"  # "standard", "shortformer" or "none"
    attention_dir: str = "causal"  # "causal" or "bidirectional"
    pad_token: int | None = None  # keys at this token are masked out (bidirectional models)
    head: str = "lm"  # "lm": logits at every position; "classifier": logits at classifier_pos
    classifier_pos: int = 0
    attn_bias: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        checks = {
            "act_fn": ("relu", "gelu", "gelu_new"),
            "positional_embedding_type": ("standard", "shortformer", "none"),
            "attention_dir": ("causal", "bidirectional"),
            "head": ("lm", "classifier"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ScrubError(f"Config.{name} = {getattr(self, name)!r}; use one of {allowed}.")
        if self.d_vocab_out is None:
            self.d_vocab_out = self.d_vocab

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise CheckpointError(f"Unknown config keys {sorted(extra)}; known: {sorted(known)}.")
        return cls(**d)


class LayerNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.W_Q = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_K = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_V = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_O = nn.Parameter(torch.randn(h, dh, d) / math.sqrt(h * dh))
        self.b_Q = nn.Parameter(torch.zeros(h, dh), requires_grad=cfg.attn_bias)
        self.b_K = nn.Parameter(torch.zeros(h, dh), requires_grad=cfg.attn_bias)
        self.b_V = nn.Parameter(torch.zeros(h, dh), requires_grad=cfg.attn_bias)
        self.b_O = nn.Parameter(torch.zeros(d), requires_grad=cfg.attn_bias)

    def pattern(self, q_in: Tensor, k_in: Tensor, key_mask: Tensor | None,
                heads: slice | int = slice(None)) -> Tensor:
        """Attention probabilities [batch, head, query, key] from normalised inputs."""
        q = torch.einsum("bpd,hde->bhpe", q_in, self.W_Q[heads].reshape(-1, *self.W_Q.shape[1:]))
        k = torch.einsum("bpd,hde->bhpe", k_in, self.W_K[heads].reshape(-1, *self.W_K.shape[1:]))
        q = q + self.b_Q[heads].reshape(-1, 1, self.cfg.d_head)
        k = k + self.b_K[heads].reshape(-1, 1, self.cfg.d_head)
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        n = scores.shape[-1]
        if self.cfg.attention_dir == "causal":
            causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if key_mask is not None:  # [batch, key] True where the key may be attended to
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1)

    def values(self, v_in: Tensor, heads: slice | int = slice(None)) -> Tensor:
        """Per-head values [batch, head, key, d_head]."""
        v = torch.einsum("bpd,hde->bhpe", v_in, self.W_V[heads].reshape(-1, *self.W_V.shape[1:]))
        return v + self.b_V[heads].reshape(-1, 1, self.cfg.d_head)

    def head_output(self, pattern: Tensor, v: Tensor, heads: slice | int = slice(None)) -> Tensor:
        """Each head's write to the residual stream [batch, head, pos, d_model] (no bias)."""
        z = torch.einsum("bhqk,bhke->bhqe", pattern, v)
        return torch.einsum("bhqe,hed->bhqd", z, self.W_O[heads].reshape(-1, *self.W_O.shape[1:]))

    def forward(self, q_in: Tensor, k_in: Tensor, v_in: Tensor, key_mask: Tensor | None) -> Tensor:
        """All heads at once with fused attention [batch, pos, d_model] (bias included).

        Deliberately a separate implementation from the per-head functions the graph uses,
        so that "graph == forward" checks one against the other.
        """
        q = torch.einsum("bpd,hde->bhpe", q_in, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("bpd,hde->bhpe", k_in, self.W_K) + self.b_K[:, None]
        v = torch.einsum("bpd,hde->bhpe", v_in, self.W_V) + self.b_V[:, None]
        n = q.shape[2]
        mask = None
        if self.cfg.attention_dir == "causal":
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None, None]
        if key_mask is not None:
            km = key_mask[:, None, None, :]
            mask = km if mask is None else mask & km
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [batch, head, pos, d_head]
        return torch.einsum("bhpe,hed->bpd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp) / math.sqrt(cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.randn(cfg.d_mlp, cfg.d_model) / math.sqrt(cfg.d_mlp))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = {"relu": F.relu, "gelu": F.gelu,
                    "gelu_new": partial(F.gelu, approximate="tanh")}[cfg.act_fn]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps)
            self.mlp = MLP(cfg)


class Transformer(nn.Module):
    """A pre-LayerNorm transformer; see the module docstring for the options."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model) * 0.02)
        if cfg.positional_embedding_type != "none":
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, cfg.d_vocab_out) / math.sqrt(cfg.d_model))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))

    # ---- pieces shared by forward() and the graph's node functions -------------------------

    def key_mask(self, tokens: Tensor) -> Tensor | None:
        """[batch, pos] True where keys may be attended to (not padding), or None."""
        return None if self.cfg.pad_token is None else tokens != self.cfg.pad_token

    def pos(self, tokens: Tensor) -> Tensor:
        """The positional embedding broadcast to the batch [batch, pos, d_model]."""
        return self.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits from the residual stream [batch, pos, d_model] (a classifier reads one position)."""
        if self.cfg.head == "classifier":
            resid = resid[:, self.cfg.classifier_pos]  # [batch, d_model]
        return self.ln_final(resid) @ self.W_U + self.b_U

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits: [batch, pos, d_vocab_out] (LM) or [batch, d_vocab_out] (classifier)."""
        cfg = self.cfg
        if tokens.shape[1] > cfg.n_ctx:
            raise ScrubError(f"Sequence length {tokens.shape[1]} exceeds n_ctx = {cfg.n_ctx}.")
        resid = self.W_E[tokens]  # [batch, pos, d_model]
        shortformer = cfg.positional_embedding_type == "shortformer"
        if cfg.positional_embedding_type == "standard":
            resid = resid + self.pos(tokens)
        mask = self.key_mask(tokens)
        for block in self.blocks:
            qk_in = block.ln1(resid + self.pos(tokens)) if shortformer else block.ln1(resid)
            v_in = block.ln1(resid)
            resid = resid + block.attn(qk_in, qk_in, v_in, mask)
            if not cfg.attn_only:
                resid = resid + block.mlp(block.ln2(resid))
        return self.unembed(resid)

    # ---- the residual-decomposed graph -----------------------------------------------------

    def graph(self) -> Graph:
        """The model as a `Graph` of embeddings, heads (q/k/v/mask ports), MLPs and output."""
        cfg = self.cfg
        nodes: list[Input | Node] = [Input("tokens")]
        writers: list[str] = ["embed"]
        nodes.append(Node("embed", lambda tokens: self.W_E[tokens], tokens="tokens"))
        shortformer = cfg.positional_embedding_type == "shortformer"
        if cfg.positional_embedding_type == "standard":
            nodes.append(Node("pos_embed", self.pos, tokens="tokens"))
            writers.append("pos_embed")
        elif shortformer:
            nodes.append(Node("pos_embed", self.pos, tokens="tokens"))
        if cfg.pad_token is not None:
            nodes.append(Node("pad_mask", self.key_mask, tokens="tokens"))
        groups = []
        for layer in range(cfg.n_layers):
            heads = []
            for h in range(cfg.n_heads):
                qk_writers = [*writers, "pos_embed"] if shortformer else list(writers)
                ports: dict[str, list[str]] = {"q": qk_writers, "k": qk_writers, "v": list(writers)}
                if cfg.pad_token is not None:
                    ports["mask"] = ["pad_mask"]
                nodes.append(Node(head_name(layer, h), self.head_fn(layer, h), **ports))
                heads.append(head_name(layer, h))
            writers.extend(heads)
            groups.append(Group(tuple(heads), self.layer_heads_fn(layer)))
            if not cfg.attn_only:
                block = self.blocks[layer]
                nodes.append(Node(mlp_name(layer),
                                  lambda _b=block, **port: _b.mlp(_b.ln2(port["in"])),
                                  **{"in": list(writers)}))
                writers.append(mlp_name(layer))
        nodes.append(Node("out", lambda resid: self.unembed(resid), resid=list(writers)))
        return Graph(nodes, output="out", module=self, groups=groups)

    def head_fn(self, layer: int, h: int, pattern_weight=None):
        """The graph node function of head `a{layer}.h{h}`: (q, k, v[, mask]) -> its write to
        the residual [batch, pos, d_model], including 1/n_heads of the layer's output bias.

        `pattern_weight(n_q, n_k) -> [n_q, n_k]` multiplies the attention pattern (for
        `rewrites.split_attention`); the bias share is then scaled, per query, by the
        attention mass the weighted pattern keeps, so complementary weights sum to the head.
        """
        block, n_heads = self.blocks[layer], self.cfg.n_heads

        def head(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
            attn = block.attn
            lq = block.ln1(q)
            lk = lq if k is q else block.ln1(k)  # the ports often read the same sum
            lv = lq if v is q else (lk if v is k else block.ln1(v))
            pattern = attn.pattern(lq, lk, mask, heads=slice(h, h + 1))
            bias = attn.b_O / n_heads
            if pattern_weight is not None:
                pattern = pattern * pattern_weight(*pattern.shape[-2:]).to(pattern)
                bias = pattern.sum(-1)[:, 0, :, None] * bias  # the bias follows the attention mass
            out = attn.head_output(pattern, attn.values(lv, heads=slice(h, h + 1)),
                                   heads=slice(h, h + 1))
            return out[:, 0] + bias  # [batch, pos, d_model]

        return head

    def layer_heads_fn(self, layer: int, parts: dict[str, tuple[int, Callable | None]] | None = None):
        """All heads of a layer at once, for when they read the same (q, k, v[, mask]) sums:
        -> {name: write to the residual [batch, pos, d_model]} (a graph `Group`'s function).

        `parts` maps output names to `(head, pattern_weight)`: head `head`, its pattern
        multiplied by `pattern_weight` as in `head_fn` (None: the whole head). Default: every
        head under its own name. Inputs, patterns and values are computed once for all parts.
        """
        block, n_heads = self.blocks[layer], self.cfg.n_heads
        parts = parts or {head_name(layer, h): (h, None) for h in range(n_heads)}

        def heads(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
            attn = block.attn
            lq = block.ln1(q)
            lk = lq if k is q else block.ln1(k)
            lv = lq if v is q else (lk if v is k else block.ln1(v))
            pattern, values = attn.pattern(lq, lk, mask), attn.values(lv)  # [b, h, q, k], [b, h, k, e]
            bias = attn.b_O / n_heads
            whole = [name for name, (_, w) in parts.items() if w is None]
            out = {}
            if whole:
                heads_ = [parts[name][0] for name in whole]
                written = torch.einsum("bhqk,bhke,hed->bhqd", pattern[:, heads_], values[:, heads_],
                                       attn.W_O[heads_]) + bias  # [b, len(whole), q, d]
                out.update({name: written[:, i] for i, name in enumerate(whole)})
            for name, (h, w) in parts.items():
                if w is not None:
                    p = pattern[:, h] * w(*pattern.shape[-2:]).to(pattern)  # [b, q, k]
                    z = torch.einsum("bqk,bke->bqe", p, values[:, h])
                    out[name] = z @ attn.W_O[h] + p.sum(-1)[..., None] * bias  # [b, q, d]
            return out

        return heads

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict_tl(self) -> dict[str, Tensor]:
        """Parameters under TransformerLens names (`blocks.0.attn.W_Q`, `embed.W_E`, ...)."""
        out = {}
        for name, p in self.named_parameters():
            out[_to_tl(name)] = p.detach()
        return out

    def save(self, path: str | Path) -> None:
        """Write `path.safetensors` and `path.json` (the config)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict_tl().items()},
                  str(path.with_suffix(".safetensors")))
        path.with_suffix(".json").write_text(json.dumps(asdict(self.cfg), indent=2))


def _to_tl(name: str) -> str:
    name = name.replace("W_E", "embed.W_E").replace("W_pos", "pos_embed.W_pos")
    if name in ("W_U", "b_U"):
        return f"unembed.{name}"
    return name


def load_file(path: str | Path) -> Transformer:
    """Load `path.safetensors` + `path.json`; errors say what is missing or mismatched."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as st_load

    path = Path(path)
    weights, config = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (weights, config):
        if not f.exists():
            raise CheckpointError(f"Checkpoint file {f} is missing.")
    try:
        cfg = Config.from_dict(json.loads(config.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"Checkpoint config {config} is not a valid config: {err}") from err
    try:
        tensors = st_load(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"Checkpoint weights {weights} are corrupted or not a safetensors "
                              f"file: {err}") from err
    model = Transformer(cfg)
    expected = model.state_dict_tl()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"Checkpoint {weights} does not match its config: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise CheckpointError(f"Checkpoint {weights}: {k} has shape {tuple(tensors[k].shape)} "
                                  f"but the config needs {tuple(v.shape)}.")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[_to_tl(name)])
    model.eval()
    return model


#: Bundled checkpoints, by name, relative to this package's `checkpoints/` folder.
BUNDLED = {"paren": "checkpoints/paren", "induction": "checkpoints/induction"}


def load(name: str) -> Transformer:
    """Load a bundled checkpoint by name (e.g. `"paren"`) or a checkpoint path."""
    if name in BUNDLED:
        return load_file(Path(__file__).parent / BUNDLED[name])
    if Path(name).with_suffix(".json").exists():
        return load_file(name)
    raise unknown_name("checkpoint", name, BUNDLED, " (give a bundled name or a path)")


# ---- importers: Hugging Face GPT-2 and TransformerLens --------------------------------------


class UnsupportedModelError(CheckpointError):
    """A model to import uses a setting that `Transformer` cannot represent exactly."""


def _refuse(source: str, problems: list[str]) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Cannot import this {source} exactly: " + "; ".join(problems) + ". `Transformer` does not "
        "implement these settings (the importer's docstring lists what it supports)."
    )


def _copy_weights(cfg: Config, weights: dict[str, Tensor], source: str) -> Transformer:
    """A `Transformer(cfg)` holding `weights` (TransformerLens names, every parameter), copied
    exactly (upcast to float32, on the CPU), in eval mode."""
    model = Transformer(cfg)
    params = {_to_tl(name): p for name, p in model.named_parameters()}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise _refuse(source, [f"its parameters do not match the config read from it: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}"])
    with torch.no_grad():
        for name, p in params.items():
            w = weights[name]
            if w.shape != p.shape:
                raise _refuse(source, [f"{name} has shape {tuple(w.shape)}, expected {tuple(p.shape)}"])
            p.copy_(w.detach().to("cpu", torch.float32))
    return model.eval()


def _check_logits(model: Transformer, original, source: str, dtype: torch.dtype,
                  avoid_token: int | None = None) -> None:
    """Refuse the import if `model` and `original` (tokens -> logits) disagree on 2 rows."""
    n, vocab = min(model.cfg.n_ctx, 16), model.cfg.d_vocab
    tokens = torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(0))  # [2, n]
    if avoid_token is not None:  # e.g. a left-padding tokenizer's pad token, which would be masked
        tokens[tokens == avoid_token] = (avoid_token + 1) % vocab
    with torch.no_grad():
        ours = model(tokens)  # [2, n, d_vocab_out]
        theirs = original(tokens).detach().to("cpu", torch.float32)  # [2, n, d_vocab_out]
    tol = (1e-4 if dtype == torch.float32 else 2e-2) * (1 + theirs.abs().max().item())
    err = (ours - theirs).abs().max().item()
    if not err <= tol:
        raise UnsupportedModelError(
            f"The imported {source} computes different logits from the original (max difference "
            f"{err:.3g}, tolerance {tol:.3g}) although every setting checked was supported. Please "
            "report this with the model's config; pass check=False to import it anyway."
        )


#: Hugging Face activation names -> `Config.act_fn` (gelu_new and gelu_pytorch_tanh are both
#: the tanh approximation; HF's "gelu" is the exact erf GELU).
_HF_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def from_hf(model, *, check: bool = True) -> Transformer:
    """Import a Hugging Face `transformers.GPT2LMHeadModel` as a `Transformer`, weights copied exactly.

    GPT-2's `Conv1D` weights are [in, out]: the fused `c_attn` [d_model, 3 * d_model] is split
    into `W_Q`, `W_K`, `W_V` [n_heads, d_model, d_head] (and its bias into `b_Q`, `b_K`, `b_V`),
    `c_proj` [d_model, d_model] becomes `W_O` [n_heads, d_head, d_model]; `W_U` is a copy of
    `lm_head.weight` transposed (tied to `wte` in GPT-2) and `b_U` is zero (GPT-2 has no
    unembedding bias). LayerNorm eps is `layer_norm_epsilon`, `n_ctx` is `n_positions`,
    activation `gelu_new` (tanh-approximated GELU, as GPT-2) or `gelu` / `relu`. Weights are
    upcast to float32 (exact) on the CPU; the result is in eval mode.

    Refused with an `UnsupportedModelError` (naming the setting): `add_cross_attention`,
    `scale_attn_by_inverse_layer_idx`, `scale_attn_weights=False`, other activations, pruned
    heads. `reorder_and_upcast_attn` is accepted: it only changes where the 1/sqrt(d_head) scale
    is applied and upcasts to float32, the same computation in float32. With `check=True` the
    imported model's logits on two random rows are compared with the original's, and the import
    is refused if they differ.

    Example:
        >>> from causal_scrubbing import models
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=8,
        ...                                 vocab_size=11, bos_token_id=0, eos_token_id=0))
        >>> model = models.from_hf(hf)
        >>> model.cfg.act_fn, model.cfg.n_ctx, list(model.graph().nodes)[:4]
        ('gelu_new', 8, ['tokens', 'embed', 'pos_embed', 'a0.h0'])
        >>> gpt2 = models.from_hf(GPT2LMHeadModel.from_pretrained("gpt2"))  # doctest: +SKIP
    """
    try:
        import transformers
    except ImportError as err:
        from .errors import missing_extra

        raise missing_extra("transformers", "hf", "models.from_hf") from err
    if not isinstance(model, transformers.GPT2LMHeadModel):
        raise UnsupportedModelError(
            f"models.from_hf imports a transformers.GPT2LMHeadModel; got {type(model).__name__}. "
            "(Other architectures are not supported; TransformerLens models: from_transformer_lens.)")
    hc = model.config
    problems = []
    if getattr(hc, "add_cross_attention", False):
        problems.append("add_cross_attention=True (cross-attention layers have no counterpart here)")
    if getattr(hc, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True (attention scores are scaled by "
                        "1/sqrt(d_head) only)")
    if not getattr(hc, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False (attention scores are always scaled by 1/sqrt(d_head))")
    if hc.activation_function not in _HF_ACT:
        problems.append(f"activation_function={hc.activation_function!r} (supported: {sorted(_HF_ACT)})")
    if getattr(hc, "pruned_heads", None):
        problems.append(f"pruned_heads={hc.pruned_heads} (every layer must have n_head heads)")
    if problems:
        raise _refuse("GPT-2 model", problems)
    d, h = hc.n_embd, hc.n_head
    dh = d // h
    cfg = Config(n_layers=hc.n_layer, d_model=d, n_heads=h, d_head=dh, d_mlp=hc.n_inner or 4 * d,
                 d_vocab=hc.vocab_size, n_ctx=hc.n_positions, act_fn=_HF_ACT[hc.activation_function],
                 ln_eps=hc.layer_norm_epsilon)
    t = model.transformer
    lm_bias = model.lm_head.bias
    w = {"embed.W_E": t.wte.weight, "pos_embed.W_pos": t.wpe.weight,  # [d_vocab | n_ctx, d_model]
         "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
         "unembed.W_U": model.lm_head.weight.T,  # [d_model, d_vocab]
         "unembed.b_U": torch.zeros(cfg.d_vocab) if lm_bias is None else lm_bias}
    for i, block in enumerate(t.h):
        at, mlp, pre = block.attn, block.mlp, f"blocks.{i}"
        qkv_w, qkv_b = at.c_attn.weight, at.c_attn.bias  # [d_model, 3 * d_model], [3 * d_model]
        if qkv_w.shape != (d, 3 * d):
            raise _refuse("GPT-2 model", [f"h.{i}.attn.c_attn.weight has shape {tuple(qkv_w.shape)}, "
                                          f"expected {(d, 3 * d)}"])
        for j, name in enumerate("QKV"):
            # columns j*d:(j+1)*d are head-major: [d_model, n_heads * d_head] -> [n_heads, d_model, d_head]
            w[f"{pre}.attn.W_{name}"] = qkv_w[:, j * d:(j + 1) * d].reshape(d, h, dh).permute(1, 0, 2)
            w[f"{pre}.attn.b_{name}"] = qkv_b[j * d:(j + 1) * d].reshape(h, dh)  # [n_heads, d_head]
        w[f"{pre}.attn.W_O"] = at.c_proj.weight.reshape(h, dh, d)  # [n_heads, d_head, d_model]
        w[f"{pre}.attn.b_O"] = at.c_proj.bias  # [d_model]
        w[f"{pre}.ln1.w"], w[f"{pre}.ln1.b"] = block.ln_1.weight, block.ln_1.bias
        w[f"{pre}.ln2.w"], w[f"{pre}.ln2.b"] = block.ln_2.weight, block.ln_2.bias
        w[f"{pre}.mlp.W_in"], w[f"{pre}.mlp.b_in"] = mlp.c_fc.weight, mlp.c_fc.bias  # [d_model, d_mlp]
        w[f"{pre}.mlp.W_out"], w[f"{pre}.mlp.b_out"] = mlp.c_proj.weight, mlp.c_proj.bias  # [d_mlp, d_model]
    ours = _copy_weights(cfg, w, "GPT-2 model")
    if check:
        device, was_training = t.wte.weight.device, model.training
        model.eval()  # no dropout
        try:
            _check_logits(ours, lambda tok: model(input_ids=tok.to(device)).logits, "GPT-2 model",
                          t.wte.weight.dtype)
        finally:
            model.train(was_training)
    return ours


#: TransformerLens config fields we cannot represent, and their value when unused.
_TL_PLAIN = {
    "parallel_attn_mlp": False, "n_key_value_heads": None, "gated_mlp": False, "num_experts": None,
    "final_rms": False, "uses_rms_norm": False, "use_qk_norm": False, "post_embedding_ln": False,
    "use_normalization_before_and_after": False, "use_local_attn": False, "window_size": None,
    "scale_attn_by_inverse_layer_idx": False, "use_logn_attn": False, "clip_qkv": None,
    "use_attention_sinks": False, "use_attn_scale": True, "relative_attention_num_buckets": None,
}
_TL_ACT = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}


def from_transformer_lens(model, *, check: bool = True) -> Transformer:
    """Import a TransformerLens `HookedTransformer` (transformer_lens 2.x or 3.x) as a `Transformer`.

    Parameter names and shapes are the same, so this is a copy (upcast to float32, on the CPU;
    eval mode). Supported: `normalization_type` "LN" (weights copied) or "LNPre" (LayerNorm
    folded into the next weights: our LayerNorm with w = 1, b = 0 is exactly LNPre); standard
    positional embeddings; `attn_only`; `act_fn` relu, gelu, gelu_new or gelu_pytorch_tanh
    (the last two: the tanh approximation); causal or bidirectional attention scaled by
    1/sqrt(d_head); any `d_vocab_out`.

    Refused with an `UnsupportedModelError` (naming each setting): RMSNorm or no normalization,
    rotary / alibi / shortformer positions (TransformerLens adds Shortformer positions after
    ln1, this library before it), parallel attention and MLP, grouped-query attention, gated or
    mixture-of-experts MLPs, local attention, QK norm, soft caps, other attention scales and
    other activations. With `check=True` the imported model's logits on two random rows are
    compared with the original's, and the import is refused if they differ.

    Example:
        >>> from causal_scrubbing import models
        >>> from transformer_lens import HookedTransformer  # doctest: +SKIP
        >>> tl = HookedTransformer.from_pretrained("gpt2")  # doctest: +SKIP
        >>> model = models.from_transformer_lens(tl)  # doctest: +SKIP
    """
    from .errors import ExtraNotInstalled, missing_extra

    try:
        import transformer_lens  # noqa: F401
    except ImportError as err:
        raise missing_extra("transformer_lens", "tl", "models.from_transformer_lens") from err
    try:
        from transformer_lens import HookedTransformer
    except ImportError as err:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = f"transformer_lens {version('transformer_lens')}"
        except PackageNotFoundError:
            installed = "the installed transformer_lens"
        raise ExtraNotInstalled(
            f"models.from_transformer_lens imports a HookedTransformer, which {installed} does not "
            "have (it was removed in 4.0). Install a version that has it: pip install "
            "'causal-scrubbing[tl]' (transformer_lens>=2,<4).") from err
    if not isinstance(model, HookedTransformer):
        raise UnsupportedModelError(
            f"models.from_transformer_lens imports a transformer_lens.HookedTransformer; got "
            f"{type(model).__name__}.")
    tc = model.cfg
    problems = []
    if tc.normalization_type not in ("LN", "LNPre"):
        problems.append(f"normalization_type={tc.normalization_type!r} (supported: 'LN', 'LNPre')")
    if tc.positional_embedding_type != "standard":
        why = ("; TransformerLens adds Shortformer positions after ln1, `Transformer` before it"
               if tc.positional_embedding_type == "shortformer" else "")
        problems.append(f"positional_embedding_type={tc.positional_embedding_type!r} (supported: "
                        f"'standard'{why})")
    if not tc.attn_only and tc.act_fn not in _TL_ACT:
        problems.append(f"act_fn={tc.act_fn!r} (supported: {sorted(_TL_ACT)})")
    if tc.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={tc.attention_dir!r}")
    for field, plain in _TL_PLAIN.items():
        if getattr(tc, field, plain) != plain:
            problems.append(f"{field}={getattr(tc, field)!r} (supported: {plain!r})")
    for field in ("output_logits_soft_cap", "attn_scores_soft_cap"):
        if (getattr(tc, field, -1.0) or -1.0) > 0:
            problems.append(f"{field}={getattr(tc, field)!r} (soft caps are not supported)")
    scale = getattr(tc, "attn_scale", math.sqrt(tc.d_head))
    if getattr(tc, "use_attn_scale", True) and abs(scale - math.sqrt(tc.d_head)) > 1e-6 * scale:
        problems.append(f"attn_scale={scale!r} (supported: sqrt(d_head) = {math.sqrt(tc.d_head):.6g})")
    if problems:
        raise _refuse("TransformerLens model", problems)
    cfg = Config(n_layers=tc.n_layers, d_model=tc.d_model, n_heads=tc.n_heads, d_head=tc.d_head,
                 d_mlp=None if tc.attn_only else tc.d_mlp, d_vocab=tc.d_vocab, n_ctx=tc.n_ctx,
                 d_vocab_out=tc.d_vocab_out, act_fn="relu" if tc.attn_only else _TL_ACT[tc.act_fn],
                 attention_dir=tc.attention_dir, ln_eps=tc.eps)
    w = dict(model.named_parameters())
    if tc.normalization_type == "LNPre":  # folded: no LayerNorm weights; ours are w = 1, b = 0
        lns = ["ln_final"] + [f"blocks.{i}.{ln}" for i in range(cfg.n_layers)
                              for ln in (("ln1",) if cfg.attn_only else ("ln1", "ln2"))]
        for ln in lns:
            w[f"{ln}.w"], w[f"{ln}.b"] = torch.ones(cfg.d_model), torch.zeros(cfg.d_model)
    ours = _copy_weights(cfg, w, "TransformerLens model")
    if check:
        was_training = model.training
        model.eval()
        tokenizer = getattr(model, "tokenizer", None)
        left_pad = tokenizer is not None and getattr(tokenizer, "padding_side", None) == "left"
        try:
            _check_logits(ours, model, "TransformerLens model", tc.dtype,
                          avoid_token=tokenizer.pad_token_id if left_pad else None)
        finally:
            model.train(was_training)
    return ours
