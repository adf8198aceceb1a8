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

from ..errors import CheckpointError, ScrubError
from ..graph import Graph, Group, Input, Node
from ..names import head_name, mlp_name


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


