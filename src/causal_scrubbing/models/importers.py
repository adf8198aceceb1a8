"""Importers: Hugging Face GPT-2 and TransformerLens models as a `Transformer`, weights copied exactly.

Both are optional extras (`[hf]`, `[tl]`), imported only when an importer is called. An import
is checked: the imported model's logits are compared with the original's, and a setting that
`Transformer` cannot represent is refused by name (`UnsupportedModelError`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UnsupportedModelError
from .transformer import Config, Transformer, _to_tl


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
        from ..errors import missing_extra

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
    from ..errors import ExtraNotInstalled, missing_extra

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
