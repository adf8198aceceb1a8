"""A plain-PyTorch transformer and its residual-decomposed graph.

`Transformer` covers the models causal scrubbing was published on and the families
interpretability researchers study: pre-norm blocks with LayerNorm, RMSNorm or no normalisation;
attention-only or with MLPs (ReLU, GELU, SiLU; plain or gated `W_out(act(x W_gate) * x W_in)`);
learned GPT-style, Shortformer (positional embedding added to the query and key inputs only),
rotary (all or a leading fraction of each head's dimensions; "linear" and "llama3" frequency
scaling) or no positional embedding; causal, sliding-window or bidirectional attention, with a
padding mask derived from the tokens; grouped-query attention (query heads sharing a key/value
head); attention and MLP in parallel (GPT-NeoX) or in sequence; Gemma-2's norms after attention
and after the MLP, attention-score and final-logit soft caps and attention scale; an LM head or a
classifier head read at one position. Parameter names and shapes follow TransformerLens (`W_Q`:
[n_heads, d_model, d_head], `W_K`: [n_key_value_heads, d_model, d_head], `W_O`:
[n_heads, d_head, d_model], `W_in`: [d_model, d_mlp], ...), so import and export are weight
copies; `models.from_hf` and `models.from_transformer_lens` import Hugging Face and
TransformerLens models exactly (see docs/models.md).

`Transformer.graph()` writes the model as a `Graph` in which the residual stream is
decomposed: the token embedding `embed`, the positional embedding `pos_embed`, every head
`a{l}.h{h}` (ports `q`, `k`, `v`, and `mask` when there is a padding mask, fed by the
token-derived node `pad_mask`), every MLP `m{l}` (port `in`), and `out` (port `resid`). Each
port reads the sum of every node that writes to the residual stream before it. Each head's
output includes an equal share of its layer's output bias, so the sum is exact. Under
grouped-query attention a head's `k` and `v` ports feed its key/value group's weights. With
norms after attention (`post_norms`, Gemma-2) the heads' sum is normalised before it is added
to the residual, which is not linear in the heads: the heads then write to a layer node `a{l}`
(port `heads`) that applies the norm and writes to the residual stream. With
`parallel_attn_mlp` (GPT-NeoX) `m{l}` reads the same residual as the heads of layer l.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import CheckpointError, ScrubError
from ..core.graph import Graph, Group, Input, Node
from ..core.names import head_name, mlp_name


@dataclass
class Config:
    """Transformer hyperparameters (TransformerLens names where they exist).

    Every field added after the first release has a default that keeps the original model
    (pre-LayerNorm, one key/value head per head, plain MLP, sequential blocks), so older
    checkpoint configs load unchanged.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int | None  # None: attention only
    d_vocab: int
    n_ctx: int
    d_vocab_out: int | None = None  # default: d_vocab
    act_fn: str = "relu"  # "relu", "gelu" (exact, erf), "gelu_new" (tanh approximation) or "silu"
    positional_embedding_type: str = "standard"  # "standard", "shortformer", "rotary" or "none"
    attention_dir: str = "causal"  # "causal" or "bidirectional"
    pad_token: int | None = None  # keys at this token are masked out
    head: str = "lm"  # "lm": logits at every position; "classifier": logits at classifier_pos
    classifier_pos: int = 0
    attn_bias: bool = True
    ln_eps: float = 1e-5
    normalization_type: str = "LN"  # "LN" (LayerNorm), "RMS" (RMSNorm) or "none"
    n_key_value_heads: int | None = None  # grouped-query attention; None: one per head
    gated_mlp: bool = False  # W_out(act(x W_gate + b_gate) * (x W_in + b_in)) + b_out
    parallel_attn_mlp: bool = False  # the MLP reads the layer's input, as attention does
    post_norms: bool = False  # a norm after attention (ln1_post) and after the MLP (ln2_post)
    rotary_dim: int | None = None  # rotary: dimensions rotated per head (None: all of d_head)
    rotary_base: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear" | "llama3", "factor": ..., ...}
    attn_scale: float | None = None  # attention scores are divided by this; None: sqrt(d_head)
    attn_scores_soft_cap: float | None = None  # scores -> cap * tanh(scores / cap)
    output_logits_soft_cap: float | None = None  # logits -> cap * tanh(logits / cap)
    attn_windows: list[int | None] | None = None  # per layer: attend to the last W keys only

    def __post_init__(self) -> None:
        checks = {
            "act_fn": ("relu", "gelu", "gelu_new", "silu"),
            "positional_embedding_type": ("standard", "shortformer", "rotary", "none"),
            "attention_dir": ("causal", "bidirectional"),
            "head": ("lm", "classifier"),
            "normalization_type": ("LN", "RMS", "none"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ScrubError(f"Config.{name} = {getattr(self, name)!r}; use one of {allowed}.")
        if self.d_vocab_out is None:
            self.d_vocab_out = self.d_vocab
        kv = self.n_key_value_heads
        if kv is not None and (kv < 1 or self.n_heads % kv):
            raise ScrubError(f"Config.n_key_value_heads = {kv} must divide n_heads = {self.n_heads}.")
        if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.d_head
                                                and self.rotary_dim % 2 == 0):
            raise ScrubError(f"Config.rotary_dim = {self.rotary_dim} must be even and at most "
                             f"d_head = {self.d_head}.")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ScrubError(f"Config.rope_scaling rope_type = {rope_type!r}; use one of {ROPE_TYPES}.")
        if self.attn_windows is not None and len(self.attn_windows) != self.n_layers:
            raise ScrubError(f"Config.attn_windows has {len(self.attn_windows)} entries; give one "
                             f"per layer ({self.n_layers}), None for full attention.")

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (n_heads unless grouped-query attention)."""
        return self.n_key_value_heads or self.n_heads

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise CheckpointError(f"Unknown config keys {sorted(extra)}; known: {sorted(known)}.")
        return cls(**d)


#: Rotary frequency schedules implemented exactly (those of Hugging Face's `rope_type`).
ROPE_TYPES = ("default", "linear", "llama3")


def rotary_inv_freq(cfg: Config) -> Tensor:
    """Rotary inverse frequencies [rotary_dim // 2], float32, as Hugging Face computes them."""
    dim = cfg.rotary_dim or cfg.d_head
    inv = 1.0 / (cfg.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv = inv / scaling["factor"]
    elif rope_type == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotary_cos_sin(inv_freq: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """cos and sin [n, rotary_dim] for positions 0..n-1 (each frequency twice, halves layout)."""
    freqs = torch.arange(n, device=inv_freq.device).float()[:, None] * inv_freq  # [n, rotary_dim // 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [n, rotary_dim]
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first rotary_dim dimensions of x [batch, head, pos, d_head] (GPT-NeoX layout:
    dimension i pairs with i + rotary_dim / 2); the rest pass through."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    half = torch.cat((-x_rot[..., rd // 2:], x_rot[..., :rd // 2]), dim=-1)
    out = x_rot * cos + half * sin  # [batch, head, pos, rotary_dim]
    return out if rd == x.shape[-1] else torch.cat((out, x_pass), dim=-1)


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """cap * tanh(x / cap) (Gemma-2's soft capping); x itself when cap is None."""
    return x if cap is None else torch.tanh(x / cap) * cap


class LayerNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w. Gemma's (1 + weight) form is imported as w = 1 + weight."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class NoNorm(nn.Module):
    """No normalisation (TransformerLens `normalization_type=None`, e.g. tracr models)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def make_norm(cfg: Config) -> nn.Module:
    if cfg.normalization_type == "RMS":
        return RMSNorm(cfg.d_model, cfg.ln_eps)
    if cfg.normalization_type == "none":
        return NoNorm()
    return LayerNorm(cfg.d_model, cfg.ln_eps)


class Attention(nn.Module):
    inv_freq: Tensor  # a buffer, rotary models only

    def __init__(self, cfg: Config, layer: int = 0):
        super().__init__()
        h, d, dh, kv = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.n_kv_heads
        self.cfg = cfg
        self.W_Q = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_K = nn.Parameter(torch.randn(kv, d, dh) / math.sqrt(d))
        self.W_V = nn.Parameter(torch.randn(kv, d, dh) / math.sqrt(d))
        self.W_O = nn.Parameter(torch.randn(h, dh, d) / math.sqrt(h * dh))
        self.b_Q = nn.Parameter(torch.zeros(h, dh), requires_grad=cfg.attn_bias)
        self.b_K = nn.Parameter(torch.zeros(kv, dh), requires_grad=cfg.attn_bias)
        self.b_V = nn.Parameter(torch.zeros(kv, dh), requires_grad=cfg.attn_bias)
        self.b_O = nn.Parameter(torch.zeros(d), requires_grad=cfg.attn_bias)
        self.window = cfg.attn_windows[layer] if cfg.attn_windows is not None else None
        self.scale = math.sqrt(cfg.d_head) if cfg.attn_scale is None else cfg.attn_scale
        self.rotary = cfg.positional_embedding_type == "rotary"
        if self.rotary:
            self.register_buffer("inv_freq", rotary_inv_freq(cfg), persistent=False)

    def kv_heads(self, heads: slice | int | list[int]) -> slice | int | list[int]:
        """The key/value heads serving query heads `heads` (the same heads without GQA)."""
        if self.cfg.n_kv_heads == self.cfg.n_heads:
            return heads
        group = self.cfg.n_heads // self.cfg.n_kv_heads
        idx = (list(range(self.cfg.n_heads))[heads] if isinstance(heads, slice)
               else [heads] if isinstance(heads, int) else list(heads))
        return [i // group for i in idx]

    def rotate(self, x: Tensor) -> Tensor:
        """Rotary positions applied to queries or keys [batch, head, pos, d_head]."""
        cos, sin = rotary_cos_sin(self.inv_freq, x.shape[2])  # [pos, rotary_dim]
        return apply_rotary(x, cos.to(x), sin.to(x))

    def allowed(self, n_q: int, n_k: int, device) -> Tensor | None:
        """[n_q, n_k] True where a query may attend to a key (causal, window), or None."""
        allowed = None
        if self.cfg.attention_dir == "causal":
            allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()
        if self.window is not None:  # keys q - window < k <= q, as Hugging Face's sliding window
            q = torch.arange(n_q, device=device)[:, None]
            near = torch.arange(n_k, device=device)[None, :] > q - self.window
            allowed = near if allowed is None else allowed & near
        return allowed

    def pattern(self, q_in: Tensor, k_in: Tensor, key_mask: Tensor | None,
                heads: slice | int = slice(None)) -> Tensor:
        """Attention probabilities [batch, head, query, key] from normalised inputs."""
        kv = self.kv_heads(heads)
        q = torch.einsum("bpd,hde->bhpe", q_in, self.W_Q[heads].reshape(-1, *self.W_Q.shape[1:]))
        k = torch.einsum("bpd,hde->bhpe", k_in, self.W_K[kv].reshape(-1, *self.W_K.shape[1:]))
        q = q + self.b_Q[heads].reshape(-1, 1, self.cfg.d_head)
        k = k + self.b_K[kv].reshape(-1, 1, self.cfg.d_head)
        if self.rotary:
            q, k = self.rotate(q), self.rotate(k)
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / self.scale
        scores = soft_cap(scores, self.cfg.attn_scores_soft_cap)
        n = scores.shape[-1]
        if self.cfg.attention_dir == "causal" and self.window is None:
            causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        elif self.window is not None:
            allowed = self.allowed(n, n, scores.device)
            assert allowed is not None  # a window always restricts
            scores = scores.masked_fill(~allowed, float("-inf"))
        if key_mask is not None:  # [batch, key] True where the key may be attended to
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        pattern = scores.softmax(-1)
        if key_mask is not None and self.cfg.attention_dir == "causal":
            pattern = pattern.nan_to_num(0.0)  # a query with no visible key (left padding) reads nothing
        return pattern

    def attend(self, q_in: Tensor, k_in: Tensor, v_in: Tensor, key_mask: Tensor | None,
               heads: slice | int = slice(None)) -> Tensor:
        """Each head's mix of values [batch, head, query, d_head]: `pattern` times `values`,
        computed by fused attention (the pattern is never held) unless scores are soft-capped."""
        if self.cfg.attn_scores_soft_cap is not None:  # no fused kernel soft-caps
            return self.pattern(q_in, k_in, key_mask, heads) @ self.values(v_in, heads)
        kv = self.kv_heads(heads)
        q = torch.einsum("bpd,hde->bhpe", q_in, self.W_Q[heads].reshape(-1, *self.W_Q.shape[1:]))
        k = torch.einsum("bpd,hde->bhpe", k_in, self.W_K[kv].reshape(-1, *self.W_K.shape[1:]))
        q = q + self.b_Q[heads].reshape(-1, 1, self.cfg.d_head)
        k = k + self.b_K[kv].reshape(-1, 1, self.cfg.d_head)
        if self.rotary:
            q, k = self.rotate(q), self.rotate(k)
        v = self.values(v_in, heads)
        n_q, n_k = q.shape[2], k.shape[2]
        mask = self.allowed(n_q, n_k, q.device)  # [q, k] or None
        if key_mask is not None:  # [batch, key] -> [batch, 1, 1, key]
            km = key_mask[:, None, None, :]
            mask = km if mask is None else mask & km
        causal_only = self.cfg.attention_dir == "causal" and self.window is None and key_mask is None
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal_only else mask,
                                           is_causal=causal_only and n_q == n_k,
                                           scale=1 / self.scale)
        if key_mask is not None and self.cfg.attention_dir == "causal":
            z = z.nan_to_num(0.0)  # a query with no visible key (left padding) reads nothing
        return z

    def values(self, v_in: Tensor, heads: slice | int = slice(None)) -> Tensor:
        """Per-head values [batch, head, key, d_head]."""
        kv = self.kv_heads(heads)
        v = torch.einsum("bpd,hde->bhpe", v_in, self.W_V[kv].reshape(-1, *self.W_V.shape[1:]))
        return v + self.b_V[kv].reshape(-1, 1, self.cfg.d_head)

    def head_output(self, pattern: Tensor, v: Tensor, heads: slice | int = slice(None)) -> Tensor:
        """Each head's write to the residual stream [batch, head, pos, d_model] (no bias)."""
        z = torch.einsum("bhqk,bhke->bhqe", pattern, v)
        return torch.einsum("bhqe,hed->bhqd", z, self.W_O[heads].reshape(-1, *self.W_O.shape[1:]))

    def forward(self, q_in: Tensor, k_in: Tensor, v_in: Tensor, key_mask: Tensor | None) -> Tensor:
        """All heads at once with fused attention [batch, pos, d_model] (bias included).

        Deliberately a separate implementation from the per-head functions the graph uses,
        so that "graph == forward" checks one against the other: key/value heads are computed
        once and repeated for their query heads here, gathered per query head there.
        """
        q = torch.einsum("bpd,hde->bhpe", q_in, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("bpd,hde->bhpe", k_in, self.W_K) + self.b_K[:, None]
        v = torch.einsum("bpd,hde->bhpe", v_in, self.W_V) + self.b_V[:, None]
        if self.cfg.n_kv_heads != self.cfg.n_heads:  # [batch, kv_head, pos, e] -> [batch, head, pos, e]
            group = self.cfg.n_heads // self.cfg.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if self.rotary:
            q, k = self.rotate(q), self.rotate(k)
        n = q.shape[2]
        mask = None
        if self.cfg.attention_dir == "causal" and self.window is None:
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None, None]
        elif self.window is not None:
            allowed = self.allowed(n, n, q.device)
            assert allowed is not None  # a window always restricts
            mask = allowed[None, None]
        if key_mask is not None:
            km = key_mask[:, None, None, :]
            mask = km if mask is None else mask & km
        if self.cfg.attn_scores_soft_cap is not None:  # no fused kernel soft-caps: written out
            scores = soft_cap(q @ k.transpose(-1, -2) / self.scale, self.cfg.attn_scores_soft_cap)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            z = scores.softmax(-1) @ v  # [batch, head, pos, d_head]
        elif self.cfg.attn_scale is None:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [batch, head, pos, d_head]
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1 / self.scale)
        if key_mask is not None and self.cfg.attention_dir == "causal":
            z = z.nan_to_num(0.0)  # a query with no visible key (left padding) reads nothing
        return torch.einsum("bhpe,hed->bpd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d_mlp = cfg.d_mlp
        assert d_mlp is not None  # attention-only models have no MLP
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, d_mlp) / math.sqrt(cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        if cfg.gated_mlp:
            self.W_gate = nn.Parameter(torch.randn(cfg.d_model, d_mlp) / math.sqrt(cfg.d_model))
            self.b_gate = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_mlp, cfg.d_model) / math.sqrt(d_mlp))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.gated = cfg.gated_mlp
        acts: dict[str, Callable[[Tensor], Tensor]] = {
            "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
            "gelu_new": partial(F.gelu, approximate="tanh")}
        self.act = acts[cfg.act_fn]

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:  # [batch, pos, d_mlp] hidden: act(gate) * up
            hidden = self.act(x @ self.W_gate + self.b_gate) * (x @ self.W_in + self.b_in)
            return hidden @ self.W_out + self.b_out
        return self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int = 0):
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        if cfg.post_norms:
            self.ln1_post = make_norm(cfg)
        if not cfg.attn_only:
            self.ln2 = make_norm(cfg)
            self.mlp = MLP(cfg)
            if cfg.post_norms:
                self.ln2_post = make_norm(cfg)

    def attn_out(self, written: Tensor) -> Tensor:
        """What the attention layer adds to the residual, from its heads' sum (post-norm or not)."""
        return self.ln1_post(written) if self.attn.cfg.post_norms else written

    def mlp_out(self, resid: Tensor) -> Tensor:
        """What the MLP adds to the residual it reads [batch, pos, d_model]."""
        out = self.mlp(self.ln2(resid))
        return self.ln2_post(out) if self.attn.cfg.post_norms else out


if TYPE_CHECKING:
    class _Blocks(nn.ModuleList):
        """`Transformer.blocks` as the type checker sees it: an `nn.ModuleList` of `Block`s."""

        @overload
        def __getitem__(self, idx: slice) -> nn.ModuleList: ...
        @overload
        def __getitem__(self, idx: int) -> Block: ...
        def __getitem__(self, idx: int | slice) -> Block | nn.ModuleList: ...
        def __iter__(self) -> Iterator[Block]: ...


class Transformer(nn.Module):
    """A pre-norm transformer; see the module docstring for the options."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model) * 0.02)
        if cfg.positional_embedding_type in ("standard", "shortformer"):
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * 0.02)
        self.blocks = cast("_Blocks", nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers)))
        self.ln_final = make_norm(cfg)
        d_out = cfg.d_vocab_out
        assert d_out is not None  # Config.__post_init__ defaults it to d_vocab
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, d_out) / math.sqrt(cfg.d_model))
        self.b_U = nn.Parameter(torch.zeros(d_out))

    # ---- pieces shared by forward() and the graph's node functions -------------------------

    def key_mask(self, tokens: Tensor) -> Tensor | None:
        """[batch, pos] True where keys may be attended to (not padding), or None."""
        return None if self.cfg.pad_token is None else self.pad_mask(tokens)

    def pad_mask(self, tokens: Tensor) -> Tensor:
        """[batch, pos] True where the token is not `cfg.pad_token` (the graph's `pad_mask` node)."""
        pad = self.cfg.pad_token
        assert pad is not None  # only models with a pad token have a padding mask
        return tokens != pad

    def pos(self, tokens: Tensor) -> Tensor:
        """The positional embedding broadcast to the batch [batch, pos, d_model]."""
        return self.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits from the residual stream [batch, pos, d_model] (a classifier reads one position)."""
        if self.cfg.head == "classifier":
            resid = resid[:, self.cfg.classifier_pos]  # [batch, d_model]
        logits = self.ln_final(resid) @ self.W_U + self.b_U
        return soft_cap(logits, self.cfg.output_logits_soft_cap)

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
            attn = block.attn_out(block.attn(qk_in, qk_in, v_in, mask))  # [batch, pos, d_model]
            if cfg.parallel_attn_mlp and not cfg.attn_only:
                resid = resid + attn + block.mlp_out(resid)
                continue
            resid = resid + attn
            if not cfg.attn_only:
                resid = resid + block.mlp_out(resid)
        return self.unembed(resid)

    # ---- the residual-decomposed graph -----------------------------------------------------

    def graph(self) -> Graph:
        """The model as a `Graph` of embeddings, heads (q/k/v/mask ports), MLPs and output
        (and, with `post_norms`, one node `a{l}` per attention layer applying the norm)."""
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
            nodes.append(Node("pad_mask", self.pad_mask, tokens="tokens"))
        groups = []
        for layer in range(cfg.n_layers):
            block = self.blocks[layer]
            layer_input = list(writers)  # what the heads (and a parallel MLP) read
            heads = []
            for h in range(cfg.n_heads):
                qk_writers = [*writers, "pos_embed"] if shortformer else list(writers)
                ports: dict[str, list[str]] = {"q": qk_writers, "k": qk_writers, "v": list(writers)}
                if cfg.pad_token is not None:
                    ports["mask"] = ["pad_mask"]
                nodes.append(Node(head_name(layer, h), self.head_fn(layer, h), **ports))
                heads.append(head_name(layer, h))
            groups.append(Group(tuple(heads), self.layer_heads_fn(layer)))
            if cfg.post_norms:  # the norm of the heads' sum is not a sum over heads: one node
                nodes.append(Node(attn_layer_name(layer), lambda heads, _b=block: _b.ln1_post(heads),
                                  heads=heads))
                writers.append(attn_layer_name(layer))
            else:
                writers.extend(heads)
            if not cfg.attn_only:
                mlp_reads = layer_input if cfg.parallel_attn_mlp else list(writers)
                nodes.append(Node(mlp_name(layer), lambda _b=block, **port: _b.mlp_out(port["in"]),
                                  **{"in": mlp_reads}))
                writers.append(mlp_name(layer))
        nodes.append(Node("out", lambda resid: self.unembed(resid), resid=list(writers)))
        return Graph(nodes, output="out", module=self, groups=groups)

    def head_fn(self, layer: int, h: int, pattern_weight: Callable[[int, int], Tensor] | None = None
                ) -> Callable[..., Tensor]:
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
            one = slice(h, h + 1)
            bias = attn.b_O / n_heads
            if pattern_weight is None:
                z = attn.attend(lq, lk, lv, mask, heads=one)  # [batch, 1, pos, d_head]
                return z[:, 0] @ attn.W_O[h] + bias  # [batch, pos, d_model]
            pattern = attn.pattern(lq, lk, mask, heads=one)
            pattern = pattern * pattern_weight(*pattern.shape[-2:]).to(pattern)
            bias = pattern.sum(-1)[:, 0, :, None] * bias  # the bias follows the attention mass
            out = attn.head_output(pattern, attn.values(lv, heads=one), heads=one)
            return out[:, 0] + bias  # [batch, pos, d_model]

        return head

    def head_identity_fn(self, layer: int, h: int) -> Callable[[Tensor], Tensor]:
        """What head `a{layer}.h{h}` would write if its attention pattern were the identity
        (each position attending only to itself): `x`, the head's v-port input [batch, pos,
        d_model] -> [batch, pos, d_model], bias included. An estimate for `rewrites.add_estimate`, e.g. of a
        layer-0 head that attends to earlier copies of the current token (in a model whose
        values carry no position, such copies have the current position's value).
        """
        block, n_heads = self.blocks[layer], self.cfg.n_heads

        def identity(x: Tensor) -> Tensor:
            attn = block.attn
            values = attn.values(block.ln1(x), heads=slice(h, h + 1))[:, 0]  # [b, pos, d_head]
            return values @ attn.W_O[h] + attn.b_O / n_heads  # [b, pos, d_model]

        return identity

    def layer_heads_fn(self, layer: int, parts: Mapping[str, tuple[int, Callable | None]] | None = None
                       ) -> Callable[..., dict[str, Tensor]]:
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
            bias = attn.b_O / n_heads
            whole = [name for name, (_, w) in parts.items() if w is None]
            out = {}
            if whole:
                heads_ = [parts[name][0] for name in whole]
                z = attn.attend(lq, lk, lv, mask)[:, heads_]  # [b, len(whole), q, e]
                written = torch.einsum("bhqe,hed->bhqd", z, attn.W_O[heads_]) + bias  # [b, len(whole), q, d]
                out.update({name: written[:, i] for i, name in enumerate(whole)})
            if len(whole) < len(parts):
                pattern, values = attn.pattern(lq, lk, mask), attn.values(lv)  # [b, h, q, k], [b, h, k, e]
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
            out[to_tl(name)] = p.detach()
        return out

    def save(self, path: str | Path) -> None:
        """Write `path.safetensors` and `path.json` (the config)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict_tl().items()},
                  str(path.with_suffix(".safetensors")))
        path.with_suffix(".json").write_text(json.dumps(asdict(self.cfg), indent=2))


def attn_layer_name(layer: int) -> str:
    """The node that normalises layer `layer`'s summed heads (models with `post_norms`)."""
    return f"a{int(layer)}"


def to_tl(name: str) -> str:
    """Our parameter name `name` as TransformerLens names it in a state dict."""
    name = name.replace("W_E", "embed.W_E").replace("W_pos", "pos_embed.W_pos")
    if name in ("W_U", "b_U"):
        return f"unembed.{name}"
    return name


