"""Importers: Hugging Face GPT-2 and TransformerLens models become `Transformer`s exactly.

Every model here has random weights (no download): its logits, and those of our `graph()`,
must equal the original's; settings we cannot represent are refused by name; a missing
optional package names the pip extra that installs it.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing import models
from causal_scrubbing.core.errors import ExtraNotInstalled
from causal_scrubbing.models import UnsupportedModelError

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=100,
             bos_token_id=0, eos_token_id=0)  # special tokens inside the vocabulary
# TransformerLens 3.x warns that HookedTransformer (what from_transformer_lens imports) is
# deprecated in favour of TransformerBridge; the warning is expected, nothing else is ignored.
TL_DEPRECATED = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial biases and LayerNorm weights, so every copied term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p))


def hf_gpt2(seed: int = 0, **kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**SMALL, **kw}))
    perturb(model, seed)
    return model.eval()


def tokens(vocab: int = 100, n: int = 4, seq: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))  # [n, seq]


def assert_same_logits(ours: models.Transformer, theirs: torch.Tensor, t: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours(t), theirs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.graph()(cs.Dataset({"tokens": t})), theirs, atol=1e-4, rtol=1e-4)


# ---- Hugging Face GPT-2 -----------------------------------------------------------------------

HF_VARIANTS = {
    "gpt2 defaults (gelu_new, tied unembedding)": {},
    "exact gelu, untied unembedding, n_inner": dict(activation_function="gelu", n_inner=48,
                                                    tie_word_embeddings=False),
    "relu, layer_norm_epsilon": dict(activation_function="relu", layer_norm_epsilon=1e-3),
    "reorder_and_upcast_attn (eager)": dict(reorder_and_upcast_attn=True, attn_implementation="eager"),
}


@pytest.mark.parametrize("name", list(HF_VARIANTS))
def test_from_hf_matches_logits_and_graph(name):
    hf = hf_gpt2(**HF_VARIANTS[name])
    ours = models.from_hf(hf)
    t = tokens()
    with torch.no_grad():
        theirs = hf(input_ids=t).logits  # [n, seq, vocab]
    assert_same_logits(ours, theirs, t)
    assert ours.cfg.n_ctx == 32 and ours.cfg.ln_eps == hf.config.layer_norm_epsilon
    assert "a1.h3" in ours.graph().nodes


def test_from_hf_copies_weights_exactly():
    hf = hf_gpt2()
    ours = models.from_hf(hf)
    tl = ours.state_dict_tl()
    attn = hf.transformer.h[1].attn
    d, dh = 64, 16
    # head 2's query: columns 2*dh:3*dh of the query block of the fused c_attn [d_model, 3 * d_model]
    assert torch.equal(tl["blocks.1.attn.W_Q"][2], attn.c_attn.weight[:, 2 * dh:3 * dh])
    assert torch.equal(tl["blocks.1.attn.W_V"][3], attn.c_attn.weight[:, 2 * d + 3 * dh:2 * d + 4 * dh])
    assert torch.equal(tl["blocks.1.attn.b_K"][0], attn.c_attn.bias[d:d + dh])
    assert torch.equal(tl["blocks.1.attn.W_O"][1], attn.c_proj.weight[dh:2 * dh])
    assert torch.equal(tl["unembed.W_U"], hf.transformer.wte.weight.T)  # tied
    assert torch.equal(tl["unembed.b_U"], torch.zeros(100))
    assert ours.cfg.act_fn == "gelu_new"


def test_from_hf_upcasts_half_precision_exactly():
    hf = hf_gpt2().to(torch.bfloat16)
    ours = models.from_hf(hf)  # the logit check uses a tolerance suited to bfloat16
    assert ours.W_E.dtype == torch.float32
    assert torch.equal(ours.W_E, hf.transformer.wte.weight.float())


@pytest.mark.parametrize("setting, value", [
    ("add_cross_attention", True),
    ("scale_attn_by_inverse_layer_idx", True),
    ("scale_attn_weights", False),
    ("activation_function", "quick_gelu"),
])
def test_from_hf_refuses_what_it_cannot_represent(setting, value):
    hf = hf_gpt2(**{setting: value})
    with pytest.raises(UnsupportedModelError, match=rf"{setting}={value!r}"):
        models.from_hf(hf)


def test_from_hf_refuses_other_models():
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel, GPTNeoXForCausalLM.*; got Linear"):
        models.from_hf(torch.nn.Linear(2, 2))


def test_from_hf_check_catches_an_unrecorded_change():
    hf = hf_gpt2()
    hf.transformer.ln_f.eps = 10.0  # the module no longer matches its config
    with pytest.raises(UnsupportedModelError, match="computes different logits"):
        models.from_hf(hf)
    assert models.from_hf(hf, check=False).cfg.ln_eps == 1e-5  # what the config says


@pytest.mark.parametrize("fn, package, extra", [
    (models.from_hf, "transformers", "hf"),
    (models.from_transformer_lens, "transformer_lens", "tl"),
])
def test_missing_package_names_the_extra(monkeypatch, fn, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    with pytest.raises(ExtraNotInstalled, match=re.escape(f"pip install 'causal-scrubbing[{extra}]'")) as err:
        fn(object())
    assert isinstance(err.value, ImportError) and isinstance(err.value, cs.ScrubError)


def test_transformer_lens_without_hooked_transformer(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", types.ModuleType("transformer_lens"))
    with pytest.raises(ExtraNotInstalled, match=r"removed in 4\.0.*transformer_lens>=2,<4"):
        models.from_transformer_lens(object())


# ---- TransformerLens ------------------------------------------------------------------------


def tl_model(seed: int = 0, **kw):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=100, n_ctx=32,
               act_fn="gelu_new", normalization_type="LN")
    torch.manual_seed(seed)
    model = HookedTransformer(HookedTransformerConfig(**{**cfg, **kw}))
    perturb(model, seed)
    return model.eval()


TL_VARIANTS = {
    "LN, gelu_new": {},
    "LNPre, exact gelu": dict(normalization_type="LNPre", act_fn="gelu"),
    "attention only": dict(attn_only=True, d_mlp=None),
    "relu, d_vocab_out": dict(act_fn="relu", d_vocab_out=7),
    "bidirectional": dict(attention_dir="bidirectional"),
}


@TL_DEPRECATED
@pytest.mark.parametrize("name", list(TL_VARIANTS))
def test_from_transformer_lens_matches_logits_and_graph(name):
    tl = tl_model(**TL_VARIANTS[name])
    ours = models.from_transformer_lens(tl)
    t = tokens()
    with torch.no_grad():
        theirs = tl(t)  # [n, seq, d_vocab_out]
    assert_same_logits(ours, theirs, t)
    for k, v in ours.state_dict_tl().items():
        if k in dict(tl.named_parameters()):
            assert torch.equal(v, tl.get_parameter(k)), k


@TL_DEPRECATED
def test_from_transformer_lens_after_folding_layernorm():
    """from_pretrained's default processing (fold LN -> LNPre, centre weights, fold value biases)."""
    tl = tl_model()
    tl.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert tl.cfg.normalization_type == "LNPre"
    ours = models.from_transformer_lens(tl)
    t = tokens()
    with torch.no_grad():
        assert_same_logits(ours, tl(t), t)
    assert torch.equal(ours.blocks[0].ln1.w, torch.ones(64))


@TL_DEPRECATED
@pytest.mark.parametrize("kw, setting", [
    (dict(positional_embedding_type="alibi"), "positional_embedding_type='alibi'"),
    (dict(positional_embedding_type="rotary", rotary_dim=16, rotary_adjacent_pairs=True),
     "rotary_adjacent_pairs=True"),
    (dict(positional_embedding_type="shortformer"), "Shortformer positions after ln1"),
    (dict(act_fn="solu_ln"), "act_fn='solu_ln'"),
    (dict(gated_mlp=True), "gated_mlp=True with a non-zero b_in"),  # perturb() makes b_in non-zero
])
def test_from_transformer_lens_refuses_what_it_cannot_represent(kw, setting):
    with pytest.raises(UnsupportedModelError, match=re.escape(setting)):
        models.from_transformer_lens(tl_model(**kw))


# ---- docs/gpt2.md ------------------------------------------------------------------------------


def test_gpt2_doc_runs(tmp_path, monkeypatch):
    """The ```python blocks of docs/gpt2.md run in order (```py blocks need real weights: shown only)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/gpt2.md").read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    # random weights stand in for GPT-2: model and baseline losses coincide, and scrub says so
    with pytest.warns(cs.UndefinedRecoveryWarning):
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/gpt2.md[python block {i}]", "exec"), namespace)
