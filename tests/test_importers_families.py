"""Importers for the model families interpretability researchers study, checked exactly.

Each family (GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Gemma-2, TransformerLens models with no
normalisation or with RMSNorm, rotary, grouped-query attention, gated or parallel MLPs) is
built with random weights from its config class (no download, float32, perturbed so every
norm and bias matters). Its logits, our `Transformer`'s and our graph's must agree to 1e-4
over several sequence lengths and with left or right padding; rewrites of the new graphs must
still check; settings we cannot represent are refused by name.
"""

from __future__ import annotations

import re

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing import models
from causal_scrubbing.core import rewrites
from causal_scrubbing.core.errors import UnsupportedModelError

transformers = pytest.importorskip("transformers")

VOCAB, PAD = 64, 0
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=1,
              pad_token_id=PAD)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

#: family -> (model class, config class, config kwargs); windows of 4 so that 16 tokens use them.
FAMILIES = {
    "pythia (parallel residual, rotary_pct 0.25)": (
        "GPTNeoXForCausalLM", "GPTNeoXConfig", dict(rotary_pct=0.25)),
    "gpt-neox sequential, linear rope on half": (
        "GPTNeoXForCausalLM", "GPTNeoXConfig", dict(use_parallel_residual=False, rope_parameters={
            "rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0, "partial_rotary_factor": 0.5})),
    "llama (GQA 4:2, untied)": (
        "LlamaForCausalLM", "LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3 rope, MQA, tied, attention and mlp biases": (
        "LlamaForCausalLM", "LlamaConfig", dict(num_key_value_heads=1, attention_bias=True,
                                                mlp_bias=True, tie_word_embeddings=True,
                                                rope_parameters=LLAMA3)),
    "mistral (sliding_window 4)": (
        "MistralForCausalLM", "MistralConfig", dict(num_key_value_heads=2, sliding_window=4)),
    "qwen2 (q/k/v biases, sliding layer 1)": (
        "Qwen2ForCausalLM", "Qwen2Config", dict(num_key_value_heads=2, use_sliding_window=True,
                                                sliding_window=4, max_window_layers=1)),
    "gemma2 (post-norms, soft caps, alternating windows)": (
        "Gemma2ForCausalLM", "Gemma2Config", dict(num_key_value_heads=2, head_dim=16,
                                                  query_pre_attn_scalar=12, sliding_window=4,
                                                  attn_logit_softcapping=5.0,
                                                  final_logit_softcapping=3.0)),
}


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial norms and biases, so that every copied term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p))


def hf_model(family: str, seed: int = 0, **kw):
    model_cls, config_cls, family_kw = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**COMMON, **family_kw, **kw})
    model = getattr(transformers, model_cls)(config)
    perturb(model, seed)
    return model.eval()


_CACHE: dict[str, tuple] = {}


def imported(family: str):
    """(Hugging Face model, our import with pad token PAD), built once per family."""
    if family not in _CACHE:
        hf = hf_model(family)
        _CACHE[family] = hf, models.from_hf(hf, pad_token=PAD)
    return _CACHE[family]


def tokens(n: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))  # [n, seq]


def pad(t: torch.Tensor, side: str) -> torch.Tensor:
    """Row i padded with 2 * i pad tokens on `side`."""
    t = t.clone()
    for i in range(t.shape[0]):
        k = min(2 * i, t.shape[1] - 1)
        if k:
            t[i, :k] = PAD if side == "left" else t[i, :k]
            if side == "right":
                t[i, -k:] = PAD
    return t


def ours_and_graph(model: models.Transformer, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(t), model.graph()(cs.Dataset({"tokens": t}))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_graph_equal_the_hf_model(family):
    hf, ours = imported(family)
    for seq in (1, 7, 16):  # 16 > the sliding windows, so they matter
        t = tokens(3, seq, seed=seq)
        with torch.no_grad():
            theirs = hf(input_ids=t).logits  # [3, seq, vocab]
        model_out, graph_out = ours_and_graph(ours, t)
        torch.testing.assert_close(model_out, theirs, atol=1e-4, rtol=0)
        torch.testing.assert_close(graph_out, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_padding_mask_matches_hf_attention_mask(family, side):
    """Keys at the pad token are masked, as HF's attention_mask; positions stay 0..n-1 (as
    HF's forward without position_ids). Logits at real tokens must agree; at pad positions
    they mean nothing (a query with no visible key reads nothing here, HF varies by kernel)."""
    hf, ours = imported(family)
    t = pad(tokens(4, 12), side)
    mask = t != PAD
    with torch.no_grad():
        theirs = hf(input_ids=t, attention_mask=mask.long()).logits
    model_out, graph_out = ours_and_graph(ours, t)
    assert torch.isfinite(graph_out).all() and torch.isfinite(model_out).all()
    torch.testing.assert_close(model_out[mask], theirs[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(graph_out[mask], theirs[mask], atol=1e-4, rtol=0)
    assert ours.graph().ports("a1.h0")["mask"] == ("pad_mask",)


def test_graph_shapes_of_the_families():
    neox = imported("pythia (parallel residual, rotary_pct 0.25)")[1].graph()
    assert neox.ports("m0")["in"] == neox.ports("a0.h0")["q"] == ("embed",)  # parallel: same input
    assert neox.ports("a1.h0")["q"] == ("embed", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0")
    llama = imported("llama (GQA 4:2, untied)")[1]
    assert llama.cfg.n_key_value_heads == 2 and llama.blocks[0].attn.W_K.shape == (2, 32, 8)
    assert set(llama.graph().ports("a0.h3")) == {"q", "k", "v", "mask"}
    assert llama.graph().ports("m0")["in"][-1] == "a0.h3"
    gemma = imported("gemma2 (post-norms, soft caps, alternating windows)")[1]
    g = gemma.graph()
    assert g.ports("a0")["heads"] == ("a0.h0", "a0.h1", "a0.h2", "a0.h3")
    assert g.ports("m0")["in"] == ("embed", "a0")
    assert g.ports("out")["resid"] == ("embed", "a0", "m0", "a1", "m1")
    assert gemma.cfg.attn_windows == [4, None] and gemma.cfg.output_logits_soft_cap == 3.0


def test_copied_weights():
    hf, ours = imported("llama (GQA 4:2, untied)")
    at = hf.model.layers[1].self_attn
    tl = ours.state_dict_tl()
    # query head 3 and key/value head 1 (which serves query heads 2 and 3): rows of q/k_proj
    assert torch.equal(tl["blocks.1.attn.W_Q"][3], at.q_proj.weight[24:32].T)
    assert torch.equal(tl["blocks.1.attn.W_K"][1], at.k_proj.weight[8:16].T)
    assert torch.equal(tl["blocks.1.attn.W_O"][2], at.o_proj.weight[:, 16:24].T)
    assert torch.equal(tl["blocks.1.mlp.W_gate"], hf.model.layers[1].mlp.gate_proj.weight.T)
    hf_g, gemma = imported("gemma2 (post-norms, soft caps, alternating windows)")
    assert torch.equal(gemma.blocks[0].ln1_post.w, 1 + hf_g.model.layers[0].post_attention_layernorm.weight)
    assert torch.equal(gemma.W_E, hf_g.model.embed_tokens.weight * 32 ** 0.5)


@pytest.mark.parametrize("family", ["pythia (parallel residual, rotary_pct 0.25)",
                                    "qwen2 (q/k/v biases, sliding layer 1)",
                                    "gemma2 (post-norms, soft caps, alternating windows)"])
def test_rewrites_check_on_the_new_graphs(family):
    _, ours = imported(family)
    t = pad(tokens(6, 10), "right")
    batch = cs.Dataset({"tokens": t})
    g = ours.graph()
    g2 = rewrites.split_positions(g, "a1.h2", ("q", "k", "v"),
                                  {"first": [0], "rest": range(1, 10)}, check_on=batch)
    assert g2.ports("a1.h2")["k"] == ("a1.h2.k@first", "a1.h2.k@rest")
    g3 = rewrites.split_attention(
        g2, "a0.h1", lambda w: ours.head_fn(0, 1, w),
        {"prev": rewrites.previous_position, "rest": rewrites.complement(rewrites.previous_position)},
        check_on=batch)
    assert g3.ports("a0.h1")["parts"] == ("a0.h1.prev", "a0.h1.rest")
    with pytest.raises(rewrites.RewriteError):
        rewrites.split_positions(g, "a1.h2", "v", {"first": [0]}, check_on=batch)


def test_engine_equals_reference_on_a_post_norm_graph():
    """Gemma-2's layer nodes `a{l}` (a norm of the heads' sum) under a scrubbed hypothesis."""
    _, ours = imported("gemma2 (post-norms, soft caps, alternating windows)")
    t = tokens(24, 8, seed=3)
    ds = cs.Dataset({"tokens": t, "first": t[:, 0] % 3})
    root = cs.InterpNode("out", children=[
        cs.InterpNode("a1.h0", cs.SameFeature("first"), paths=cs.through("a1.h0")),
        cs.InterpNode("m0", cs.Exact(), paths=cs.direct("m0")),
    ])
    corr = cs.check(ours.graph(), root)
    sample = cs.draw(corr, ds, torch.arange(24), torch.Generator().manual_seed(0))
    torch.testing.assert_close(cs.engine.evaluate(corr, ds, sample),
                               cs.reference.evaluate(corr, ds, sample), atol=1e-5, rtol=1e-5)


def test_from_hf_dispatches_automodel_and_checkpoints_roundtrip(tmp_path):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(**COMMON, num_key_value_heads=2)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    ours = models.from_hf(hf)
    assert ours.cfg.n_key_value_heads == 2 and ours.cfg.attn_windows is None
    ours.save(tmp_path / "qwen")
    loaded = models.load(str(tmp_path / "qwen"))
    t = tokens(2, 9)
    torch.testing.assert_close(loaded(t), ours(t), atol=0, rtol=0)


@pytest.mark.parametrize("family, kw, setting", [
    ("llama (GQA 4:2, untied)", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4,
                                                      "factor": 2.0}), "rope_type='yarn'"),
    ("llama (GQA 4:2, untied)", dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4,
                                                      "factor": 2.0}), "rope_type='dynamic'"),
    ("llama (GQA 4:2, untied)", dict(hidden_act="quick_gelu"), "hidden_act='quick_gelu'"),
    ("gemma2 (post-norms, soft caps, alternating windows)", dict(use_bidirectional_attention=True),
     "use_bidirectional_attention=True"),
])
def test_refusals_name_the_setting(family, kw, setting):
    with pytest.raises(UnsupportedModelError, match=re.escape(setting)):
        models.from_hf(hf_model(family, **kw))


def test_unsupported_class_is_refused_by_name():
    config = transformers.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4, n_positions=16,
                                     rotary_dim=4)
    with pytest.raises(UnsupportedModelError, match="GPTNeoXForCausalLM.*got GPTJForCausalLM"):
        models.from_hf(transformers.GPTJForCausalLM(config))


# ---- TransformerLens -----------------------------------------------------------------------

TL_DEPRECATED = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
TL_VARIANTS = {
    "no normalisation (tracr-style)": dict(normalization_type=None, act_fn="relu"),
    "no normalisation, attention only": dict(normalization_type=None, attn_only=True, d_mlp=None),
    "llama-style: RMS, rotary, GQA, gated silu": dict(
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16,
        n_key_value_heads=2, gated_mlp=True, act_fn="silu", final_rms=True),
    "neox-style: parallel, partial rotary": dict(
        positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True),
    "gemma-style: post-norms, soft caps, attn_scale": dict(
        normalization_type="RMSPre", positional_embedding_type="rotary", rotary_dim=16,
        use_normalization_before_and_after=True, attn_scores_soft_cap=5.0,
        output_logits_soft_cap=3.0, attn_scale=3.0, act_fn="gelu_pytorch_tanh", gated_mlp=True),
}


@TL_DEPRECATED
@pytest.mark.parametrize("name", list(TL_VARIANTS))
def test_from_transformer_lens_families(name):
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=16, d_mlp=64, d_vocab=VOCAB, n_ctx=16,
               act_fn="gelu_new", normalization_type="LN")
    torch.manual_seed(0)
    tl = HookedTransformer(HookedTransformerConfig(**{**cfg, **TL_VARIANTS[name]}))
    perturb(tl)
    with torch.no_grad():  # TransformerLens adds a gated MLP's b_in after the gate: keep it zero
        for n, p in tl.named_parameters():
            if TL_VARIANTS[name].get("gated_mlp") and n.endswith("mlp.b_in"):
                p.zero_()
    tl.eval()
    ours = models.from_transformer_lens(tl)
    for seq in (5, 16):
        t = tokens(3, seq, seed=seq)
        with torch.no_grad():
            theirs = tl(t)
        model_out, graph_out = ours_and_graph(ours, t)
        torch.testing.assert_close(model_out, theirs, atol=1e-4, rtol=0)
        torch.testing.assert_close(graph_out, theirs, atol=1e-4, rtol=0)


def test_layer_node_is_claimable():
    _, ours = imported("gemma2 (post-norms, soft caps, alternating windows)")
    root = cs.InterpNode("out", children=[cs.InterpNode("attn 1", paths=cs.direct("a1"))])
    assert cs.check(ours.graph(), root)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_models_doc_runs(tmp_path, monkeypatch):
    """The ```python blocks of docs/models.md run (```py blocks need real weights: shown only)."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs/models.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/models.md[python block {i}]", "exec"), namespace)
