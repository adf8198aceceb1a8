"""Importers: Hugging Face and TransformerLens models as a `Transformer`, weights copied exactly.

An importer reads a model's config, maps each setting to a `Config` field, and copies every
weight into our TransformerLens-named parameters (upcast to float32, on the CPU). `from_hf`
dispatches on the model's class: GPT-2, GPT-NeoX (Pythia), Llama, Mistral, Qwen2 and Gemma-2
(also when built by `AutoModelForCausalLM`). `from_transformer_lens` imports a
`HookedTransformer`. Both libraries are optional extras (`[hf]`, `[tl]`), imported only when an
importer is called. An import is checked: the imported model's logits are compared with the
original's, and a setting that `Transformer` cannot represent is refused by name
(`UnsupportedModelError`), never approximated. docs/models.md lists what maps to what.

Example:
    >>> import torch
    >>> from causal_scrubbing import models
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> hf = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    ...     max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0))
    >>> model = models.from_hf(hf)
    >>> model.cfg.n_key_value_heads, model.cfg.normalization_type, model.cfg.gated_mlp
    (2, 'RMS', True)
    >>> model.graph().ports("a1.h3")["k"][:3]
    ('embed', 'a0.h0', 'a0.h1')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UnsupportedModelError
from .transformer import ROPE_TYPES, Config, Transformer, to_tl


def _refuse(source: str, problems: list[str]) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Cannot import this {source} exactly: " + "; ".join(problems) + ". `Transformer` does not "
        "implement these settings (the importer's docstring lists what it supports)."
    )


def copy_weights(cfg: Config, weights: dict[str, Tensor], source: str) -> Transformer:
    """A `Transformer(cfg)` holding `weights` (TransformerLens names, every parameter), copied
    exactly (upcast to float32, on the CPU), in eval mode."""
    model = Transformer(cfg)
    params = {to_tl(name): p for name, p in model.named_parameters()}
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
#: the tanh approximation; HF's "gelu" is the exact erf GELU; "swish" is SiLU).
_HF_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu",
           "silu": "silu", "swish": "silu"}

#: Hugging Face model classes `from_hf` imports, by class name (the dispatch table).
HF_FAMILIES = ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
               "Qwen2ForCausalLM", "Gemma2ForCausalLM")


def from_hf(model, *, check: bool = True, pad_token: int | None = None) -> Transformer:
    """Import a Hugging Face causal LM as a `Transformer`, weights copied exactly.

    Dispatches on the model's class (a model made by `AutoModelForCausalLM` is an instance of
    one of these): `GPT2LMHeadModel`, `GPTNeoXForCausalLM` (Pythia), `LlamaForCausalLM`,
    `MistralForCausalLM`, `Qwen2ForCausalLM`, `Gemma2ForCausalLM`. Weights are upcast to
    float32 (exact) on the CPU; the result is in eval mode. What each family maps to, and what
    is refused, is in docs/models.md; in short:

    - GPT-2: `Conv1D` weights [in, out] split per head; `gelu_new`, `gelu` or `relu`. Refused:
      `add_cross_attention`, `scale_attn_by_inverse_layer_idx`, `scale_attn_weights=False`,
      other activations, pruned heads (`reorder_and_upcast_attn` is the same computation in
      float32, accepted).
    - GPT-NeoX: the fused `query_key_value` split per head, rotary on the first
      `rotary_pct` (`partial_rotary_factor`) of each head's dimensions, parallel or sequential
      attention and MLP (`use_parallel_residual`), untied `embed_out`, LayerNorm.
    - Llama, Mistral, Qwen2: RMSNorm, rotary (`rope_theta`; `rope_scaling` / `rope_parameters`
      of type default, "linear" or "llama3"), grouped-query attention, gated MLP, any biases
      (Qwen2's q/k/v, Llama's `attention_bias` / `mlp_bias`), tied or untied embeddings,
      sliding windows (Mistral's `sliding_window`; Qwen2's sliding layers).
    - Gemma-2: RMSNorm with (1 + weight) (imported as w = 1 + weight), norms before and after
      attention and MLP (`post_norms`: the graph's layer nodes `a{l}`), soft caps, alternating
      sliding-window layers (`layer_types`), embeddings times sqrt(d_model) (folded into
      `W_E`; the unembedding keeps the unscaled copy), GeGLU, `query_pre_attn_scalar`.

    Refused with an `UnsupportedModelError` naming the setting: other classes; rotary types
    yarn, dynamic, longrope (and any other); attention types other than full and sliding;
    other activations; bidirectional Gemma-2.

    Padding: pass `pad_token` to mask keys at that token (the graph gains the `pad_mask` node
    and each head a `mask` port), as Hugging Face does with an `attention_mask` that is 0 at
    those tokens. Positions are 0..n-1 whatever the padding, as in the Hugging Face forward
    pass without `position_ids`; a query with no visible key (a left-padding position) reads
    nothing. With `check=True` the imported model's logits on two random rows (without the pad
    token) are compared with the original's, and the import is refused if they differ.

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
        from ..core.errors import missing_extra

        raise missing_extra("transformers", "hf", "models.from_hf") from err
    readers = {"GPT2LMHeadModel": _hf_gpt2, "GPTNeoXForCausalLM": _hf_neox,
               "LlamaForCausalLM": _hf_llama, "MistralForCausalLM": _hf_llama,
               "Qwen2ForCausalLM": _hf_llama, "Gemma2ForCausalLM": _hf_llama}
    family = next((name for name in HF_FAMILIES if getattr(transformers, name, None) is not None
                   and isinstance(model, getattr(transformers, name))), None)
    if family is None:
        raise UnsupportedModelError(
            f"models.from_hf imports one of {', '.join(HF_FAMILIES)}; got {type(model).__name__}. "
            "(Other architectures are not supported; TransformerLens models: from_transformer_lens.)")
    source = f"{family} model"
    cfg, w = readers[family](model, source)
    if pad_token is not None:
        cfg.pad_token = int(pad_token)
    ours = copy_weights(cfg, w, source)
    if check:
        emb = model.get_input_embeddings().weight
        device, was_training = emb.device, model.training
        model.eval()  # no dropout
        try:
            _check_logits(ours, lambda tok: model(input_ids=tok.to(device)).logits, source,
                          emb.dtype, avoid_token=pad_token)
        finally:
            model.train(was_training)
    return ours


def _hf_gpt2(model, source: str) -> tuple[Config, dict[str, Tensor]]:
    """GPT-2's config and weights under our names (see `from_hf`)."""
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
        raise _refuse(source, problems)
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
            raise _refuse(source, [f"h.{i}.attn.c_attn.weight has shape {tuple(qkv_w.shape)}, "
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
    return cfg, w


def _hf_rope(hc, d_head: int, problems: list[str]) -> dict:
    """Config fields for a Hugging Face config's rotary embedding (transformers 4.x or 5.x):
    rotary_dim, rotary_base, rope_scaling. Unsupported rotary types are added to `problems`."""
    params = dict(getattr(hc, "rope_parameters", None) or getattr(hc, "rope_scaling", None) or {})
    if params and all(isinstance(v, dict) for v in params.values()):  # per layer type (5.x)
        distinct = {repr(sorted(v.items())) for v in params.values()}
        if len(distinct) > 1:
            problems.append(f"rope_parameters differ between layer types ({sorted(params)})")
        params = dict(next(iter(params.values())))
    rope_type = params.get("rope_type", params.get("type", "default"))
    base = params.get("rope_theta", getattr(hc, "rope_theta", None)
                      or getattr(hc, "rotary_emb_base", None) or 10000.0)
    factor = params.get("partial_rotary_factor", getattr(hc, "partial_rotary_factor", None)
                        or getattr(hc, "rotary_pct", None) or 1.0)
    scaling = None
    if rope_type not in ROPE_TYPES:
        problems.append(f"rope_type={rope_type!r} in rope_scaling / rope_parameters (supported: "
                        f"{', '.join(ROPE_TYPES)}: the frequencies of the others depend on the "
                        "sequence length or rescale attention, which is not implemented)")
    elif rope_type == "linear":
        scaling = {"rope_type": "linear", "factor": float(params["factor"])}
    elif rope_type == "llama3":
        scaling = {"rope_type": "llama3", **{k: float(params[k]) for k in (
            "factor", "low_freq_factor", "high_freq_factor")},
            "original_max_position_embeddings": int(params.get(
                "original_max_position_embeddings", hc.max_position_embeddings))}
    return {"positional_embedding_type": "rotary", "rotary_dim": int(d_head * factor),
            "rotary_base": float(base), "rope_scaling": scaling}


def _hf_act(name: str, setting: str, problems: list[str]) -> str:
    if name not in _HF_ACT:
        problems.append(f"{setting}={name!r} (supported: {sorted(_HF_ACT)})")
        return "relu"
    return _HF_ACT[name]


def _per_head_in(weight: Tensor, n: int, dh: int) -> Tensor:
    """An `nn.Linear` weight [n * d_head, d_model] as [n, d_model, d_head]."""
    return weight.reshape(n, dh, -1).permute(0, 2, 1)


def _bias(linear, shape: tuple[int, ...]) -> Tensor:
    """An `nn.Linear`'s bias reshaped, or zeros when it has none."""
    return torch.zeros(shape) if linear.bias is None else linear.bias.reshape(shape)


def _hf_neox(model, source: str) -> tuple[Config, dict[str, Tensor]]:
    """GPT-NeoX / Pythia: config and weights under our names (see `from_hf`)."""
    hc = model.config
    problems: list[str] = []
    d, h = hc.hidden_size, hc.num_attention_heads
    dh = d // h
    act = _hf_act(hc.hidden_act, "hidden_act", problems)
    rope = _hf_rope(hc, dh, problems)
    if problems:
        raise _refuse(source, problems)
    cfg = Config(n_layers=hc.num_hidden_layers, d_model=d, n_heads=h, d_head=dh,
                 d_mlp=hc.intermediate_size, d_vocab=hc.vocab_size, n_ctx=hc.max_position_embeddings,
                 act_fn=act, parallel_attn_mlp=bool(hc.use_parallel_residual),
                 ln_eps=hc.layer_norm_eps, **rope)
    t = model.gpt_neox
    w = {"embed.W_E": t.embed_in.weight,  # [d_vocab, d_model]
         "ln_final.w": t.final_layer_norm.weight, "ln_final.b": t.final_layer_norm.bias,
         "unembed.W_U": model.get_output_embeddings().weight.T,  # [d_model, d_vocab] (embed_out)
         "unembed.b_U": _bias(model.get_output_embeddings(), (hc.vocab_size,))}
    for i, layer in enumerate(t.layers):
        at, mlp, pre = layer.attention, layer.mlp, f"blocks.{i}"
        # query_key_value's outputs are [head, (q | k | v), d_head]
        qkv = at.query_key_value.weight.reshape(h, 3, dh, d)  # [n_heads, 3, d_head, d_model]
        qkv_b = _bias(at.query_key_value, (h, 3, dh))
        for j, name in enumerate("QKV"):
            w[f"{pre}.attn.W_{name}"] = qkv[:, j].permute(0, 2, 1)  # [n_heads, d_model, d_head]
            w[f"{pre}.attn.b_{name}"] = qkv_b[:, j]  # [n_heads, d_head]
        w[f"{pre}.attn.W_O"] = at.dense.weight.T.reshape(h, dh, d)  # [n_heads, d_head, d_model]
        w[f"{pre}.attn.b_O"] = _bias(at.dense, (d,))
        w[f"{pre}.ln1.w"], w[f"{pre}.ln1.b"] = layer.input_layernorm.weight, layer.input_layernorm.bias
        w[f"{pre}.ln2.w"] = layer.post_attention_layernorm.weight
        w[f"{pre}.ln2.b"] = layer.post_attention_layernorm.bias
        w[f"{pre}.mlp.W_in"] = mlp.dense_h_to_4h.weight.T  # [d_model, d_mlp]
        w[f"{pre}.mlp.b_in"] = _bias(mlp.dense_h_to_4h, (hc.intermediate_size,))
        w[f"{pre}.mlp.W_out"] = mlp.dense_4h_to_h.weight.T  # [d_mlp, d_model]
        w[f"{pre}.mlp.b_out"] = _bias(mlp.dense_4h_to_h, (d,))
    return cfg, w


def _hf_windows(hc, family: str, problems: list[str]) -> list[int | None] | None:
    """Per-layer sliding windows: Mistral's `sliding_window` (every layer), or the layers whose
    `layer_types` entry is "sliding_attention" (Qwen2, Gemma-2)."""
    n, window = hc.num_hidden_layers, getattr(hc, "sliding_window", None)
    if family == "MistralForCausalLM":
        return None if window is None else [int(window)] * n
    types = getattr(hc, "layer_types", None)
    if types is None:
        if family == "Qwen2ForCausalLM" and window is not None and getattr(hc, "use_sliding_window", False):
            start = getattr(hc, "max_window_layers", n)  # transformers 4.x
            types = ["sliding_attention" if i >= start else "full_attention" for i in range(n)]
        else:
            return None
    other = sorted({t for t in types} - {"full_attention", "sliding_attention"})
    if other:
        problems.append(f"layer_types containing {other} (supported: full_attention, sliding_attention)")
    if "sliding_attention" not in types:
        return None
    if window is None:
        problems.append("layer_types with sliding_attention but sliding_window=None")
        return None
    return [int(window) if t == "sliding_attention" else None for t in types]


def _hf_llama(model, source: str) -> tuple[Config, dict[str, Tensor]]:
    """Llama, Mistral, Qwen2 and Gemma-2: config and weights under our names (see `from_hf`)."""
    family = source.split()[0]
    gemma = family == "Gemma2ForCausalLM"
    hc = model.config
    problems: list[str] = []
    d, h = hc.hidden_size, hc.num_attention_heads
    kv = getattr(hc, "num_key_value_heads", None) or h
    dh = getattr(hc, "head_dim", None) or d // h
    act_setting = "hidden_activation" if gemma and getattr(hc, "hidden_activation", None) else "hidden_act"
    act = _hf_act(getattr(hc, act_setting), act_setting, problems)
    rope = _hf_rope(hc, dh, problems)
    windows = _hf_windows(hc, family, problems)
    extra: dict = {}
    if gemma:
        if getattr(hc, "use_bidirectional_attention", False):
            problems.append("use_bidirectional_attention=True (sliding windows are causal here)")
        extra = dict(post_norms=True, attn_scale=math.sqrt(hc.query_pre_attn_scalar),
                     attn_scores_soft_cap=hc.attn_logit_softcapping,
                     output_logits_soft_cap=hc.final_logit_softcapping)
    if problems:
        raise _refuse(source, problems)
    cfg = Config(n_layers=hc.num_hidden_layers, d_model=d, n_heads=h, d_head=dh,
                 d_mlp=hc.intermediate_size, d_vocab=hc.vocab_size, n_ctx=hc.max_position_embeddings,
                 act_fn=act, normalization_type="RMS", gated_mlp=True,
                 n_key_value_heads=None if kv == h else kv, attn_windows=windows,
                 ln_eps=hc.rms_norm_eps, **rope, **extra)
    inner = model.model

    def norm(module) -> Tensor:  # Gemma's RMSNorm multiplies by (1 + weight), in float32
        return 1.0 + module.weight.float() if gemma else module.weight

    embed = inner.embed_tokens.weight  # [d_vocab, d_model]
    if gemma:  # Gemma-2 multiplies the embeddings by sqrt(d_model), rounded to the weights' dtype
        scale = getattr(inner.embed_tokens, "embed_scale", None)
        scale = torch.tensor(d ** 0.5) if scale is None else scale
        embed = embed * scale.to(embed.dtype)
    lm_head = model.get_output_embeddings()
    w = {"embed.W_E": embed, "ln_final.w": norm(inner.norm),
         "unembed.W_U": lm_head.weight.T,  # [d_model, d_vocab] (tied or not)
         "unembed.b_U": _bias(lm_head, (hc.vocab_size,))}
    for i, layer in enumerate(inner.layers):
        at, mlp, pre = layer.self_attn, layer.mlp, f"blocks.{i}"
        w[f"{pre}.attn.W_Q"] = _per_head_in(at.q_proj.weight, h, dh)  # [n_heads, d_model, d_head]
        w[f"{pre}.attn.W_K"] = _per_head_in(at.k_proj.weight, kv, dh)  # [n_kv_heads, d_model, d_head]
        w[f"{pre}.attn.W_V"] = _per_head_in(at.v_proj.weight, kv, dh)
        w[f"{pre}.attn.b_Q"] = _bias(at.q_proj, (h, dh))
        w[f"{pre}.attn.b_K"] = _bias(at.k_proj, (kv, dh))
        w[f"{pre}.attn.b_V"] = _bias(at.v_proj, (kv, dh))
        w[f"{pre}.attn.W_O"] = at.o_proj.weight.T.reshape(h, dh, d)  # [n_heads, d_head, d_model]
        w[f"{pre}.attn.b_O"] = _bias(at.o_proj, (d,))
        w[f"{pre}.ln1.w"] = norm(layer.input_layernorm)
        if gemma:
            w[f"{pre}.ln1_post.w"] = norm(layer.post_attention_layernorm)
            w[f"{pre}.ln2.w"] = norm(layer.pre_feedforward_layernorm)
            w[f"{pre}.ln2_post.w"] = norm(layer.post_feedforward_layernorm)
        else:
            w[f"{pre}.ln2.w"] = norm(layer.post_attention_layernorm)
        w[f"{pre}.mlp.W_gate"] = mlp.gate_proj.weight.T  # [d_model, d_mlp]
        w[f"{pre}.mlp.b_gate"] = _bias(mlp.gate_proj, (hc.intermediate_size,))
        w[f"{pre}.mlp.W_in"] = mlp.up_proj.weight.T  # [d_model, d_mlp]
        w[f"{pre}.mlp.b_in"] = _bias(mlp.up_proj, (hc.intermediate_size,))
        w[f"{pre}.mlp.W_out"] = mlp.down_proj.weight.T  # [d_mlp, d_model]
        w[f"{pre}.mlp.b_out"] = _bias(mlp.down_proj, (d,))
    return cfg, w


#: TransformerLens config fields we cannot represent, and their value when unused.
_TL_PLAIN = {
    "num_experts": None, "use_qk_norm": False, "post_embedding_ln": False, "use_local_attn": False,
    "window_size": None, "scale_attn_by_inverse_layer_idx": False, "use_logn_attn": False,
    "clip_qkv": None, "use_attention_sinks": False, "relative_attention_num_buckets": None,
    "rotary_adjacent_pairs": False, "use_yarn_rope": False, "use_dynamic_ntk_rope": False,
}
_TL_ACT = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
           "silu": "silu"}
#: TransformerLens normalization_type -> ours (the "Pre" variants: folded weights, w = 1, b = 0).
_TL_NORM = {"LN": "LN", "LNPre": "LN", "RMS": "RMS", "RMSPre": "RMS", None: "none"}


def from_transformer_lens(model: Any, *, check: bool = True) -> Transformer:
    """Import a TransformerLens `HookedTransformer` (transformer_lens 2.x or 3.x) as a `Transformer`.

    Parameter names and shapes are the same, so this is a copy (upcast to float32, on the CPU;
    eval mode). Supported: `normalization_type` "LN", "RMS" (weights copied), "LNPre",
    "RMSPre" (the norm folded into the next weights: ours with w = 1, b = 0 is exactly that) or
    None (no normalisation, as in tracr-compiled models); standard or rotary positions (rotary
    in the GPT-NeoX layout, `rotary_dim`, `rotary_base`, NTK-by-parts = Llama-3 scaling);
    `attn_only`; `act_fn` relu, gelu, gelu_new, gelu_pytorch_tanh (the last two: the tanh
    approximation) or silu; grouped-query attention (`n_key_value_heads`); gated MLPs whose
    `b_in` is zero (TransformerLens adds `b_in` after the gate product, Hugging Face inside:
    with it zero both are the same; TransformerLens conversions of Llama-style models have it
    zero); `parallel_attn_mlp`; norms before and after attention and MLP
    (`use_normalization_before_and_after`); attention-score and output-logit soft caps;
    `attn_scale`; causal or bidirectional attention; any `d_vocab_out`.

    Refused with an `UnsupportedModelError` (naming each setting): alibi or Shortformer
    positions (TransformerLens adds Shortformer positions after ln1, this library before it),
    GPT-J-style adjacent-pair rotary, YaRN and dynamic NTK rotary, local attention, QK norm,
    mixture-of-experts MLPs, post-norm architectures, a non-zero gated `b_in`, other attention
    scales and other activations. With `check=True` the imported model's logits on two random
    rows are compared with the original's, and the import is refused if they differ.

    Example:
        >>> from causal_scrubbing import models
        >>> from transformer_lens import HookedTransformer  # doctest: +SKIP
        >>> tl = HookedTransformer.from_pretrained("gpt2")  # doctest: +SKIP
        >>> model = models.from_transformer_lens(tl)  # doctest: +SKIP
    """
    if not isinstance(model, _hooked_transformer_class()):
        raise UnsupportedModelError(
            f"models.from_transformer_lens imports a transformer_lens.HookedTransformer; got "
            f"{type(model).__name__}.")
    w: dict[str, Tensor] = dict(model.named_parameters())
    _check_tl_config(model.cfg, w)
    cfg = _tl_config(model.cfg)
    ours = copy_weights(cfg, _tl_weights(model.cfg, cfg, w), "TransformerLens model")
    if check:
        _check_tl_logits(ours, model)
    return ours


def _hooked_transformer_class() -> Any:
    """transformer_lens's `HookedTransformer` class, or a clear error naming what to install."""
    from ..core.errors import ExtraNotInstalled, missing_extra

    try:
        import transformer_lens  # noqa: F401
    except ImportError as err:
        raise missing_extra("transformer_lens", "tl", "models.from_transformer_lens") from err
    try:
        from transformer_lens import HookedTransformer
        found: Any = HookedTransformer  # (a separate name, so the check narrows only this one)
        if not isinstance(found, type):  # the submodule of that name, not the class
            raise ImportError("transformer_lens.HookedTransformer is not a class")
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
    return found


def _check_tl_config(tc: Any, w: Mapping[str, Tensor]) -> None:
    """Refuse, naming every one, the settings of a TransformerLens config `Transformer` lacks."""
    problems = []
    if tc.normalization_type not in _TL_NORM:
        problems.append(f"normalization_type={tc.normalization_type!r} (supported: "
                        f"{', '.join(map(repr, _TL_NORM))})")
    elif getattr(tc, "final_rms", False) and _TL_NORM[tc.normalization_type] != "RMS":
        problems.append(f"final_rms=True with normalization_type={tc.normalization_type!r} (one "
                        "kind of norm throughout)")
    if tc.positional_embedding_type not in ("standard", "rotary"):
        why = ("; TransformerLens adds Shortformer positions after ln1, `Transformer` before it"
               if tc.positional_embedding_type == "shortformer" else "")
        problems.append(f"positional_embedding_type={tc.positional_embedding_type!r} (supported: "
                        f"'standard', 'rotary'{why})")
    if not tc.attn_only and tc.act_fn not in _TL_ACT:
        problems.append(f"act_fn={tc.act_fn!r} (supported: {sorted(_TL_ACT)})")
    if tc.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={tc.attention_dir!r}")
    for field, plain in _TL_PLAIN.items():
        if getattr(tc, field, plain) != plain:
            problems.append(f"{field}={getattr(tc, field)!r} (supported: {plain!r})")
    try:
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    except ImportError:
        POST_NORM_ARCHITECTURES = ()
    if getattr(tc, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        problems.append(f"original_architecture={tc.original_architecture!r} (post-norm blocks)")
    if tc.gated_mlp and not tc.attn_only:
        nonzero = [i for i in range(tc.n_layers) if w[f"blocks.{i}.mlp.b_in"].abs().max() > 0]
        if nonzero:
            problems.append(f"gated_mlp=True with a non-zero b_in in blocks {nonzero[:5]} "
                            "(TransformerLens adds it after the gate product; Transformer inside)")
    if problems:
        raise _refuse("TransformerLens model", problems)


def _tl_config(tc: Any) -> Config:
    """Our `Config` for a (checked) TransformerLens config."""
    def cap_of(field: str) -> float | None:
        value = getattr(tc, field, -1.0)
        return float(value) if value is not None and value > 0 else None

    output_cap, scores_cap = cap_of("output_logits_soft_cap"), cap_of("attn_scores_soft_cap")
    scale = getattr(tc, "attn_scale", math.sqrt(tc.d_head)) if getattr(tc, "use_attn_scale", True) else 1.0
    rotary: dict = {}
    if tc.positional_embedding_type == "rotary":
        rotary = dict(rotary_dim=tc.rotary_dim or tc.d_head, rotary_base=float(tc.rotary_base))
        if getattr(tc, "use_NTK_by_parts_rope", False):
            rotary["rope_scaling"] = {
                "rope_type": "llama3", "factor": float(tc.NTK_by_parts_factor),
                "low_freq_factor": float(tc.NTK_by_parts_low_freq_factor),
                "high_freq_factor": float(tc.NTK_by_parts_high_freq_factor),
                "original_max_position_embeddings": int(tc.NTK_original_ctx_len)}
    kv = getattr(tc, "n_key_value_heads", None)
    return Config(n_layers=tc.n_layers, d_model=tc.d_model, n_heads=tc.n_heads, d_head=tc.d_head,
                  d_mlp=None if tc.attn_only else tc.d_mlp, d_vocab=tc.d_vocab, n_ctx=tc.n_ctx,
                  d_vocab_out=tc.d_vocab_out, act_fn="relu" if tc.attn_only else _TL_ACT[tc.act_fn],
                  attention_dir=tc.attention_dir, ln_eps=tc.eps,
                  positional_embedding_type=tc.positional_embedding_type,
                  normalization_type=_TL_NORM[tc.normalization_type],
                  n_key_value_heads=None if kv in (None, tc.n_heads) else kv,
                  gated_mlp=bool(tc.gated_mlp) and not tc.attn_only,
                  parallel_attn_mlp=bool(tc.parallel_attn_mlp) and not tc.attn_only,
                  post_norms=bool(getattr(tc, "use_normalization_before_and_after", False)),
                  attn_scale=None if abs(scale - math.sqrt(tc.d_head)) <= 1e-6 * scale else float(scale),
                  output_logits_soft_cap=output_cap, attn_scores_soft_cap=scores_cap, **rotary)


def _tl_weights(tc: Any, cfg: Config, w: dict[str, Tensor]) -> dict[str, Tensor]:
    """TransformerLens's parameters under our names: grouped-query key/value weights renamed,
    unit weights for folded norms, zero gate biases."""
    for name in list(w):  # grouped-query attention keeps its key/value weights as _W_K, _b_K, ...
        if name.split(".")[-1] in ("_W_K", "_W_V", "_b_K", "_b_V"):
            w[name.replace("._", ".")] = w.pop(name)
    norms = ["ln_final"] + [f"blocks.{i}.{ln}" for i in range(cfg.n_layers) for ln in (
        ("ln1",) if cfg.attn_only else ("ln1", "ln2"))
        + ((("ln1_post",) if cfg.attn_only else ("ln1_post", "ln2_post")) if cfg.post_norms else ())]
    if tc.normalization_type in ("LNPre", "RMSPre"):  # folded: no norm weights; ours are w = 1, b = 0
        for ln in norms:  # (norms after attention and MLP keep their weights: copied)
            if f"{ln}.w" not in w:
                w[f"{ln}.w"] = torch.ones(cfg.d_model)
                if cfg.normalization_type == "LN":
                    w[f"{ln}.b"] = torch.zeros(cfg.d_model)
    if cfg.gated_mlp:
        assert cfg.d_mlp is not None  # gated_mlp is only set with an MLP
        for i in range(cfg.n_layers):
            w[f"blocks.{i}.mlp.b_gate"] = torch.zeros(cfg.d_mlp)
    return w


def _check_tl_logits(ours: Transformer, model: Any) -> None:
    """Refuse the import if our logits differ from the TransformerLens model's."""
    was_training = model.training
    model.eval()
    tokenizer = getattr(model, "tokenizer", None)
    left_pad = tokenizer is not None and getattr(tokenizer, "padding_side", None) == "left"
    try:
        _check_logits(ours, model, "TransformerLens model", model.cfg.dtype,
                      avoid_token=tokenizer.pad_token_id if left_pad and tokenizer is not None
                      else None)
    finally:
        model.train(was_training)
