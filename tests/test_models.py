"""The transformer: graph == forward, head names, checkpoints, and rewrites."""

from __future__ import annotations

import json

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing import models
from causal_scrubbing.core import rewrites
from causal_scrubbing.models import CheckpointError, Config, Transformer

CONFIGS = {
    "attn-only causal LM": dict(d_mlp=None),
    "mlp bidirectional classifier with padding": dict(
        d_mlp=12, attention_dir="bidirectional", pad_token=1, head="classifier", d_vocab_out=2),
    "gelu shortformer": dict(d_mlp=12, act_fn="gelu", positional_embedding_type="shortformer"),
    "no positional embedding": dict(d_mlp=None, positional_embedding_type="none"),
}


def make(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = Config(**{**dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=7, n_ctx=10), **kw})
    model = Transformer(cfg)
    with torch.no_grad():  # non-trivial biases and norms, so every term is exercised
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tokens(n=6, seq=10, pad=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(2, 7, (n, seq), generator=g)
    t[:, 0] = 0
    if pad is not None:  # padding at the end of each row, of varying length
        for i in range(n):
            t[i, seq - i % 4:] = pad
    return t


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_equals_forward(name):
    model = make(**CONFIGS[name])
    t = tokens(pad=model.cfg.pad_token)
    with torch.no_grad():
        torch.testing.assert_close(model.graph()(cs.Dataset({"tokens": t})), model(t),
                                   atol=1e-5, rtol=1e-5)


def test_graph_has_the_named_nodes_and_ports():
    g = make(**CONFIGS["mlp bidirectional classifier with padding"]).graph()
    assert {"embed", "pos_embed", "pad_mask", "a0.h0", "a1.h1", "m0", "m1", "out"} <= set(g.nodes)
    assert set(g.ports("a1.h0")) == {"q", "k", "v", "mask"}
    assert g.ports("a1.h0")["mask"] == ("pad_mask",)
    assert g.ports("a1.h0")["q"] == ("embed", "pos_embed", "a0.h0", "a0.h1", "m0")
    assert g.ports("out")["resid"][-1] == "m1"
    sf = make(**CONFIGS["gelu shortformer"]).graph()
    assert "pos_embed" in sf.ports("a0.h0")["q"] and "pos_embed" not in sf.ports("a0.h0")["v"]
    assert "pos_embed" not in sf.ports("out")["resid"]


@pytest.mark.parametrize("text", ["a1.h0", "L1H0", "l1h0", "1.0", "(1, 0)", " a1.h0 "])
def test_head_names(text):
    assert models.parse_head(text) == "a1.h0"
    assert models.parse_head((1, 0)) == "a1.h0"


def test_bad_head_name():
    with pytest.raises(cs.ScrubError, match="not a head name.*'a1.h5'"):
        models.parse_head("head one")


def test_checkpoint_roundtrip_and_errors(tmp_path):
    model = make(**CONFIGS["mlp bidirectional classifier with padding"])
    model.save(tmp_path / "m")
    loaded = models.load(str(tmp_path / "m"))
    t = tokens(pad=1)
    torch.testing.assert_close(loaded(t), model(t))
    assert "blocks.0.attn.W_Q" in model.state_dict_tl()
    assert model.state_dict_tl()["blocks.0.attn.W_Q"].shape == (2, 16, 8)

    weights, config = tmp_path / "m.safetensors", tmp_path / "m.json"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        models.load_file(tmp_path / "m")
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupted"):
        models.load_file(tmp_path / "m")
    weights.write_bytes(raw)

    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "d_model": 32}))
    with pytest.raises(CheckpointError, match="has shape .* but the config needs"):
        models.load_file(tmp_path / "m")
    config.write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(CheckpointError, match="does not match its config: missing"):
        models.load_file(tmp_path / "m")
    config.write_text(json.dumps({**cfg, "colour": "red"}))
    with pytest.raises(CheckpointError, match="Unknown config keys"):
        models.load_file(tmp_path / "m")
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid config"):
        models.load_file(tmp_path / "m")
    config.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        models.load_file(tmp_path / "m")
    with pytest.raises(cs.UnknownNameError, match="checkpoint"):
        models.load("no-such-model")


def test_bad_config_value():
    with pytest.raises(cs.ScrubError, match="act_fn"):
        Config(n_layers=1, d_model=4, n_heads=1, d_head=4, d_mlp=4, d_vocab=3, n_ctx=4,
               act_fn="swish")


# ---- rewrites ----------------------------------------------------------------------------


@pytest.fixture
def padded():
    model = make(**CONFIGS["mlp bidirectional classifier with padding"])
    t = tokens(n=8, pad=1)
    return model, model.graph(), cs.Dataset({"tokens": t})


def test_split_positions(padded):
    model, g, batch = padded
    g2 = rewrites.split_positions(g, "a1.h0", ("q", "k", "v"),
                                  {"p0": [0], "p1": [1], "rest": range(2, 10)}, check_on=batch)
    assert g2.ports("a1.h0")["v"] == ("a1.h0.v@p0", "a1.h0.v@p1", "a1.h0.v@rest")
    assert g2.ports("a1.h0.v@p1")["in"] == g.ports("a1.h0")["v"]
    with pytest.raises(rewrites.RewriteError, match="changes the model's output"):
        rewrites.split_positions(g, "a1.h0", "v", {"p0": [0], "p1": [1]}, check_on=batch)
    with pytest.raises(rewrites.RewriteError, match="both groups"):
        rewrites.split_positions(g, "a1.h0", "v", {"a": [0, 1], "b": [1]}, check_on=batch)


def test_split_output_positions_and_estimate(padded):
    model, g, batch = padded
    g2 = rewrites.split_output_positions(g, "a0.h0", {"p1": [1], "other": [0, *range(2, 10)]},
                                         check_on=batch)
    assert g2.ports("a0.h0")["parts"] == ("a0.h0@p1", "a0.h0@other")
    direction = torch.randn(16)
    direction = direction / direction.norm()
    proj = lambda h: (h @ direction)[..., None] * direction  # noqa: E731
    g3 = rewrites.add_estimate(g2, "a0.h0@p1", proj, check_on=batch)
    assert set(g3.nodes) >= {"a0.h0@p1.est", "a0.h0@p1.resid"}
    # an estimate computed from the tokens alone
    phi = lambda tokens: (tokens == 3).float().mean(1)[:, None, None] * direction  # noqa: E731
    g4 = rewrites.add_estimate(g, "a0.h0", phi, inputs={"tokens": ["tokens"]}, check_on=batch)
    assert g4.ports("a0.h0.est") == {"tokens": ("tokens",)}
    assert set(g4.ports("a0.h0.resid")) == {"q", "k", "v", "mask", "tokens"}


def test_split_attention_previous_position(padded):
    model, g, batch = padded
    g2 = rewrites.split_attention(
        g, "a0.h1", lambda w: model.head_fn(0, 1, w),
        {"prev": rewrites.previous_position,
         "rest": rewrites.complement(rewrites.previous_position)}, check_on=batch)
    assert g2.ports("a0.h1")["parts"] == ("a0.h1.prev", "a0.h1.rest")
    with pytest.raises(rewrites.RewriteError):
        rewrites.split_attention(g, "a0.h1", lambda w: model.head_fn(0, 1, w),
                                 {"prev": rewrites.previous_position}, check_on=batch)
    assert rewrites.previous_position(3, 3).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_engine_equals_reference_on_a_rewritten_transformer():
    model = make(n_layers=2, n_heads=1, d_mlp=None, attention_dir="bidirectional", pad_token=1,
                 head="classifier", d_vocab_out=2)
    t = tokens(n=40, pad=1, seed=5)
    ds = cs.Dataset({"tokens": t, "first": t[:, 1], "n_pad": (t == 1).sum(1)})
    g = rewrites.split_positions(model.graph(), "a1.h0", ("q", "k", "v"),
                                 {"p1": [1], "rest": [0, *range(2, 10)]}, check_on=ds)
    root = cs.InterpNode("out", children=[
        cs.InterpNode("head", cs.SameFeature("first"), paths=cs.direct("a1.h0"), children=[
            cs.InterpNode("p1", cs.SameFeature("first"), paths=cs.direct("a1.h0").then(
                "a1.h0.v@p1") | cs.direct("a1.h0").then("a1.h0.q@p1")),
            cs.InterpNode("mask", cs.SameFeature("n_pad"),
                          paths=cs.direct("a1.h0").then("a1.h0", port="mask")),
        ]),
    ])
    corr = cs.check(g, root)
    sample = cs.draw(corr, ds, torch.arange(40), torch.Generator().manual_seed(0))
    torch.testing.assert_close(cs.engine.evaluate(corr, ds, sample, chunk_size=16),
                               cs.reference.evaluate(corr, ds, sample), atol=1e-5, rtol=1e-5)


def test_then_same_node_with_port_narrows_the_match():
    m = cs.direct("a1.h0").then("a1.h0", port="mask")
    assert m == cs.direct("a1.h0", port="mask")


@pytest.mark.parametrize("name", ["L1H0", "1.0", (1, 0), "(1, 0)"])
def test_matchers_accept_familiar_head_names(name):
    g = make(d_mlp=None).graph()
    a = cs.check(g, cs.InterpNode("out", children=[cs.InterpNode("h", paths=cs.direct(name))]))
    b = cs.check(g, cs.InterpNode("out", children=[cs.InterpNode("h", paths=cs.direct("a1.h0"))]))
    assert a.matchers[1].segments == b.matchers[1].segments
    root = cs.InterpNode("out", children=[cs.InterpNode("h", paths=cs.direct("a1.h0").then(
        name.replace("1", "0", 1) if isinstance(name, str) else (0, 0)))])
    assert cs.check(g, root)


def test_reference_evaluator_resolves_familiar_head_names():
    model = make(d_mlp=None)
    t = tokens(n=12)
    ds = cs.Dataset({"tokens": t, "first": t[:, 1]})
    root = cs.InterpNode("out", children=[
        cs.InterpNode("h", cs.SameFeature("first"), paths=cs.direct("L1H0"))])
    corr = cs.check(model.graph(), root)
    sample = cs.draw(corr, ds, torch.arange(12), torch.Generator().manual_seed(0))
    torch.testing.assert_close(cs.engine.evaluate(corr, ds, sample),
                               cs.reference.evaluate(corr, ds, sample), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_attention_equals_the_pattern_times_the_values(name):
    """`Attention.attend` (fused attention, what the graph's heads compute) gives `pattern`
    @ `values` (what analyses read), on every architecture the tests build."""
    model = make(**CONFIGS[name])
    t = tokens(pad=model.cfg.pad_token)
    acts = model.graph().run(cs.Dataset({"tokens": t}))
    block = model.blocks[1]
    head = "a1.h0" if "a1.h0" in acts.outputs else next(n for n in acts.outputs if n.startswith("a1"))
    q, k, v = (block.ln1(acts.port_inputs[(head, p)]) for p in ("q", "k", "v"))
    mask = model.key_mask(t) if model.cfg.pad_token is not None else None
    with torch.no_grad():
        fused = block.attn.attend(q, k, v, mask)
        literal = block.attn.pattern(q, k, mask) @ block.attn.values(v)
    torch.testing.assert_close(fused, literal, atol=1e-5, rtol=1e-5)
