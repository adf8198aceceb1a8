"""Paren data, features on hand-checked strings, and the training script."""

from __future__ import annotations

import subprocess
import sys

import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments.paren import data
from causal_scrubbing.experiments.paren import features as f


def ds(*strings):
    return cs.Dataset({"tokens": data.tokenize(list(strings))})


def test_tokenize_layout():
    t = data.tokenize(["()("])[0]
    assert t[:6].tolist() == [data.START, data.OPEN, data.CLOSE, data.OPEN, data.END, data.PAD]
    assert len(t) == 42 and data.to_string(t) == "()("


def test_tests_and_categories_on_hand_checked_strings():
    d = ds("()", "(())()", ")(", "(()", "())", "))((", "(((", "())(()")
    #        bal    bal    hor   both   cnt   hor    both   hor
    assert f.count_test(d).tolist() == [True, True, True, False, False, True, False, True]
    assert f.horizon_test(d).tolist() == [True, True, False, False, True, False, False, False]
    assert f.is_balanced(d).tolist() == [True, True, False, False, False, False, False, False]
    assert data.category(d["tokens"]).tolist() == [0, 0, 2, 3, 1, 2, 3, 2]
    assert f.starts_open(d).tolist() == [True, True, False, True, True, False, True, True]
    assert f.count_and_open(d)[2].tolist() == [True, False]
    assert f.length(d).tolist() == [2, 6, 2, 3, 3, 4, 3, 6]


def test_open_proportions_and_horizon_classes():
    d = ds("(()", "())(")
    p = f.p_open_after(d)
    # "(()": suffixes from position 1: "(()" 2/3, "()" 1/2, ")" 0; then END, PAD: 0
    assert torch.allclose(p[0, :6], torch.tensor([2 / 3, 2 / 3, 1 / 2, 0, 0, 0], dtype=p.dtype))
    assert f.p1_if_starts_open(d).tolist() == [2 / 3, 0.5]
    assert f.p1_if_starts_open(ds(")(")).tolist() == [-1.0]
    # START(p=2/3 > .5) ( (2/3) ( (1/2) ) END-after-")" PAD
    assert f.horizon_classes(d)[0, :6].tolist() == [-2, -2, 2, 2, 1, 0]
    assert f.horizon_classes(d)[1, :7].tolist() == [2, 2, 2, 2, -2, -1, 0]
    assert f.horizon_all(d).tolist() == [False, False]
    assert f.horizon_all(ds("(())")).tolist() == [True]
    assert f.horizon_at(4)(d).tolist() == [1, -2]
    before = f.p_open_before(d)
    assert torch.allclose(before[1, :6], torch.tensor([0, 0, 1, 1 / 2, 1 / 3, 1 / 2],
                                                      dtype=before.dtype))


def test_adjusted_proportion_interpolates_before_and_after():
    d = ds("())(")
    w = torch.zeros(41, 42)
    assert torch.equal(f.adjusted_p_open_after(d, w), f.p_open_after(d))
    w[4] = 1.0
    assert torch.equal(f.adjusted_p_open_after(d, w), f.p_open_before(d))


def test_redwood_like_distribution_shape():
    t = data.encode(data.redwood_like(20000, seed=3))
    cats = torch.bincount(data.category(t), minlength=4).double() / len(t)
    # Redwood's data: 26.4% balanced; 12.9 / 13.05 / 47.6 % failing count / horizon / both
    for got, want in zip(cats.tolist(), [0.264, 0.129, 0.1305, 0.476]):
        assert abs(got - want) < 0.02
    lengths = f.length(cs.Dataset({"tokens": t}))
    assert (lengths % 2 == 0).all() and lengths.min() == 2 and lengths.max() == 40
    short, long = lengths == 2, lengths == 40
    assert f.is_balanced(cs.Dataset({"tokens": t[short]})).double().mean() > 0.65
    assert f.is_balanced(cs.Dataset({"tokens": t[long]})).double().mean() < 0.1


def test_near_misses_fail_exactly_one_way():
    swap = data.encode(data.near_misses(500, 1, "swap"))
    assert (data.category(swap) == 2).all()  # equal counts, depth dips below zero
    parens = data.parens(swap)
    assert (parens.cumsum(1).min(1).values == -1).all()
    extra = data.encode(data.near_misses(500, 2, "extra"))
    assert (~data.count_test(extra)).all() and (f.length(cs.Dataset({"tokens": extra})) % 2 == 1).all()


def test_training_script_runs(tmp_path):
    out = tmp_path / "paren"
    result = subprocess.run(
        [sys.executable, "-m", "causal_scrubbing.experiments.paren.train", "--out", str(out),
         "--steps", "3", "--n-train", "2000", "--eval-every", "3", "--batch", "16"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "paren.safetensors").exists() and (tmp_path / "paren.json").exists()
    assert "redwood_like/acc" in result.stdout
    model = cs.models.load(str(out))
    assert model(data.tokenize(["()"])).shape == (1, 2)


def test_head_names_parse_from_layer_10_on():
    """`v_open` reads the head's own layer: a11.h1 is block 11, not block 1."""
    from causal_scrubbing.core.names import head_index
    from causal_scrubbing.experiments import paren
    from causal_scrubbing.models import Config, Transformer

    assert head_index("a12.h3") == (12, 3) and head_index("L10H0") == (10, 0)
    torch.manual_seed(0)
    cfg = Config(n_layers=12, d_model=8, n_heads=2, d_head=4, d_mlp=None, d_vocab=5, n_ctx=42,
                 attention_dir="bidirectional", pad_token=data.PAD, head="classifier")
    model = Transformer(cfg)

    def by_hand(layer: int, h: int) -> torch.Tensor:
        block, pos = model.blocks[layer], model.W_pos[1:41]
        ov = [(block.ln1(model.W_E[t] + pos) @ block.attn.W_V[h] + block.attn.b_V[h])
              @ block.attn.W_O[h] for t in (data.OPEN, data.CLOSE)]
        return 0.5 * (ov[0] - ov[1]).mean(0)

    got = paren.v_open(model, "a11.h1")
    assert torch.allclose(got, by_hand(11, 1))
    assert not torch.allclose(got, by_hand(1, 1))


def test_each_build_has_its_own_model():
    """Moving one experiment's model (as a run with device= does) moves no other's."""
    from causal_scrubbing.experiments import paren

    first, second = paren.build(), paren.build()
    assert first.graph.module is not second.graph.module
    assert first.dataset is second.dataset  # the expensive, device-free parts are shared
    first.graph.to(torch.float64)  # stands in for another device: Module.to moves in place
    try:
        assert next(first.graph.module.parameters()).dtype == torch.float64
        for exp in (second, paren.build()):
            assert next(exp.graph.module.parameters()).dtype == torch.float32
    finally:
        first.graph.to(torch.float32)


def test_format_inputs_shows_the_parentheses():
    from causal_scrubbing.experiments import paren

    d = ds("(()())", ")(")
    assert [paren.format_inputs(d, i) for i in range(2)] == ["(()())", ")("]
