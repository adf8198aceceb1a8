"""Induction experiment: tokenizer, candidates, the attention-split graph, end to end."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.experiments import induction
from causal_scrubbing.experiments.induction import data
from causal_scrubbing.models import Config, Transformer


def test_tokenizer_round_trip():
    tok = data.tokenizer()
    text = "In the beginning God created the heaven and the earth.\nAnd the earth was void."
    ids = tok.encode(text).ids
    assert tok.get_vocab_size() == 2048 and max(ids) < 2048
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # a real BPE, not bytes


def test_committed_tokens_match_the_tokenizer():
    tok = data.tokenizer()
    val = data.load_tokens("val")
    assert val.dtype == torch.int64 and 200_000 < len(val) < 260_000
    assert int(val.max()) < 2048
    decoded = tok.decode(val[:200].tolist())
    assert tok.encode(decoded).ids == val[:200].tolist()


def test_candidates_on_hand_made_sequences():
    t = torch.tensor([[5, 6, 5, 7, 6, 5, 8],
                      [1, 2, 3, 4, 5, 6, 7],
                      [9, 9, 9, 9, 9, 9, 9]])
    assert data.candidates(t).tolist() == [
        [False, False, True, False, True, True, False],
        [False] * 7,
        [False] + [True] * 6,
    ]


def test_good_candidates_are_a_real_subset():
    good = data.good_candidates()
    assert good.dtype == torch.bool and good.shape == (2048,)
    assert 100 < int(good.sum()) < 2000


def test_good_candidates_rule_on_a_hand_made_stream():
    """Token 1 recurs in each window followed by the same (window-specific) token: copying
    predicts it and no bigram does. Token 2 is always followed by 3: the bigram is perfect,
    so copying cannot beat it. Token 4 recurs only twice in all: too rare to judge."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for w in range(6):
        row = torch.randint(10, 16, (data.SEQ + 1,), generator=g)
        r = 20 + w
        row[[10, 100]], row[[11, 101]] = 1, r
        row[[50, 150]], row[[51, 151]] = 2, 3
        if w == 0:
            row[[30, 200]] = 4
        rows.append(row)
    stream = torch.cat(rows)[: 6 * data.SEQ + 1]
    good = data.good_candidates_from(stream.numpy(), vocab=32)
    assert good[1] and not good[2] and not good[4]


def test_behaviour_mask_and_loss():
    ds = induction.dataset(stride=512)
    assert set(ds.keys()) == {"tokens", "next", "mask", "weight"}
    assert torch.equal(ds["tokens"][:, 1:], ds["next"][:, :-1])
    mask = ds["mask"].bool()
    assert (mask <= data.candidates(ds["tokens"])).all() and mask.any()
    # uniform logits: every candidate costs log(2048), so the mean over rows of the loss is
    # log(2048) (the masked mean over all candidates), and each row weighs its candidates
    logits = torch.zeros(len(ds), data.SEQ, 2048)
    loss = induction.loss_fn(logits, ds)
    log_v = torch.log(torch.tensor(2048.0))
    torch.testing.assert_close(loss.mean(), log_v)
    torch.testing.assert_close(loss, log_v * ds["mask"].sum(1) / ds["mask"].sum(1).mean())
    # one candidate predicted perfectly lowers the total by its weight
    r, i = map(int, mask.nonzero()[0])
    logits[r, i, ds["next"][r, i]] = 1e4
    torch.testing.assert_close(induction.loss_fn(logits, ds)[r],
                               loss[r] - log_v / ds["mask"].sum(1).mean())


def test_attention_window_masks_partition_the_pattern():
    n = 6
    parts = [induction.previous_window(1)(n, n), induction._window_rest()(n, n),
             induction.current_position(n, n), induction._rest()(n, n)]
    total = sum(parts)
    assert torch.equal(total, torch.ones(n, n))
    assert all(((p == 0) | (p == 1)).all() for p in parts)
    assert parts[0][3, 2] == 1 and parts[1][3, 1] == 1 and parts[1][3, 0] == 1
    assert parts[2][3, 3] == 1 and parts[3][4, 0] == 1


def test_graph_rewrites_are_exact_on_a_random_shortformer():
    torch.manual_seed(0)
    model = Transformer(Config(n_layers=2, d_model=24, n_heads=3, d_head=8, d_mlp=None,
                               d_vocab=2048, n_ctx=12, positional_embedding_type="shortformer",
                               attn_bias=False)).eval()
    tokens = torch.randint(0, 2048, (6, 12))
    roles = {"induction": ["a1.h1"], "previous": ["a0.h0"], "same-token": ["a0.h2"]}
    g = induction.graph_for(model, cs.Dataset({"tokens": tokens}), roles)  # checked inside
    assert set(g.ports("a0.h0")["parts"]) == {"a0.h0.prev", "a0.h0.window", "a0.h0.self",
                                              "a0.h0.rest"}
    assert g.ports("a0.h1")["parts"] == ("a0.h1.self", "a0.h1.rest")
    assert g.ports("a0.h2")["parts"] == ("a0.h2.identity", "a0.h2.resid")
    assert set(g.ports("a0.h2.identity")) == {"x"}  # a function of the token embedding only
    ds = cs.Dataset({"tokens": tokens, "next": tokens, "mask": torch.ones(6, 12),
                     "weight": torch.ones(6, 12) / 12})
    for name, root in induction.hypotheses(model, roles).items():
        corr = cs.check(g, root)
        sample = cs.draw(corr, ds, torch.arange(6), torch.Generator().manual_seed(1))
        if name in ("unscrubbed", "baseline", "V", "naive", "refined"):  # the reference is slow
            torch.testing.assert_close(cs.engine.evaluate(corr, ds, sample),
                                       cs.reference.evaluate(corr, ds, sample),
                                       atol=1e-4, rtol=1e-4)


def test_run_induction_end_to_end(tmp_path):
    out = tmp_path / "ind"
    result = CliRunner().invoke(app, ["run", "induction", "--n", "48", "--out", str(out),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {x["name"]: x for x in json.loads((out / "results.json").read_text())["experiments"]}
    assert list(rows) == ["unscrubbed", "baseline", "V", "Q", "K", "K prev-pos", "naive",
                          "refined"]
    assert rows["unscrubbed"]["loss_recovered"] == 1.0
    assert rows["baseline"]["loss_recovered"] == 0.0


def test_training_script_runs(tmp_path):
    import subprocess
    import sys

    import numpy as np

    out = tmp_path / "induction"
    tokens = tmp_path / "tokens.npy"  # the training split is not shipped: a slice of validation
    np.save(tokens, data.load_tokens("val")[:5000].numpy().astype(np.uint16))
    result = subprocess.run(
        [sys.executable, "-m", "causal_scrubbing.experiments.induction.train", "--out", str(out),
         "--steps", "2", "--batch", "4", "--eval-every", "2", "--train-tokens", str(tokens)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    log = json.loads((tmp_path / "induction_train_log.json").read_text())
    assert log["steps"] == 2 and {"gap", "val_loss"} <= set(log["history"][-1])
    assert cs.models.load(str(out)).cfg.positional_embedding_type == "shortformer"
