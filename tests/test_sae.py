"""SAE rewrites, the SAELens file format, hook names, training, and the bundled SAEs.

The rewrite must be exact (the model's output unchanged to 1e-5) at every kind of site, refuse
what is not exact, and keep the engine's batching (parts reading one lane are one call); the
files must round-trip, read older SAELens layouts, and fail clearly when broken; with sae-lens
installed (the `sae` extra) our files must load there and theirs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing.core.rewrites import RewriteError
from causal_scrubbing.experiments.sae import train as sae_train
from causal_scrubbing.models import sae as S

CHECKPOINTS = Path(cs.__file__).parent / "checkpoints" / "sae"


def small_model(**kw) -> cs.models.Transformer:
    torch.manual_seed(0)
    cfg = cs.models.Config(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=11,
                           n_ctx=8, **kw)
    return cs.models.Transformer(cfg)


def batch(n: int = 6, seed: int = 0) -> cs.Dataset:
    g = torch.Generator().manual_seed(seed)
    return cs.Dataset({"tokens": torch.randint(0, 11, (n, 8), generator=g)})


@pytest.mark.parametrize("arch", S.ARCHITECTURES)
@pytest.mark.parametrize("site", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre",
                                  "blocks.1.hook_resid_mid", "blocks.0.hook_attn_out",
                                  "blocks.1.hook_mlp_out", "a1.h0", "hook_embed"])
def test_rewrite_is_exact_at_every_kind_of_site(arch, site):
    model = small_model()
    g = model.graph()
    sae = S.SAE.random(16, 40, arch, k=5 if arch == "topk" else None, seed=1)
    b = batch()
    g2 = S.sae_rewrite(g, site, sae, check_on=b, groups={"a": [0, 3, 7], "b": [1]})
    with torch.inference_mode():
        diff = (g2(b) - model(b["tokens"])).abs().max().item()
    assert diff < 1e-5
    node = S.site_name(site) if site.startswith("blocks.") and "mlp" not in site else site
    node = {"hook_embed": "embed", "blocks.1.hook_mlp_out": "m1"}.get(site, node)
    assert S.part_names(g2, node) == [f"{node}.{p}" for p in ("a", "b", "rest", "bias", "error")]


def test_rewrite_on_a_shortformer_model_reads_the_site_then_the_positions():
    model = small_model(positional_embedding_type="shortformer")
    g = S.sae_rewrite(model.graph(), "blocks.0.hook_resid_post", S.SAE.random(16, 20, "topk", k=3),
                      check_on=batch())
    assert g.ports("a1.h1")["q"] == ("resid_post0", "pos_embed")
    assert g.ports("out")["resid"][0] == "resid_post0"
    assert g.ports("resid_post0.latents")["x"] == ("embed", "a0.h0", "a0.h1", "m0")


def test_a_wrong_rewrite_is_refused():
    model = small_model()
    sae = S.SAE.random(16, 20, "standard")
    real = S.sae_parts

    def broken(sae, groups=None):  # drops the error term: not the same function
        split = real(sae, groups)
        return lambda x: {**split(x), "error": torch.zeros_like(x)}

    S.sae_parts = broken
    try:
        with pytest.raises(RewriteError, match="changes the model's output"):
            S.sae_rewrite(model.graph(), "m0", sae, check_on=batch())
    finally:
        S.sae_parts = real


@pytest.mark.parametrize("groups, message", [
    ({"bias": [0]}, "reserved"), ({"rest": [0]}, "reserved"), ({"a": [0, 1], "b": [1]}, "both groups"),
    ({"a": [99]}, "out of range"), ({"a": []}, "empty"), ("all", "give a mapping")])
def test_bad_latent_groups_say_what_is_wrong(groups, message):
    with pytest.raises(RewriteError, match=message):
        S.sae_rewrite(small_model().graph(), "m0", S.SAE.random(16, 20, "standard"),
                      check_on=batch(), groups=groups)


def test_bad_sites_say_what_is_wrong():
    g = small_model().graph()
    sae = S.SAE.random(16, 20, "standard")
    with pytest.raises(cs.ScrubError, match="not a supported TransformerLens hook"):
        S.sae_rewrite(g, "blocks.0.hook_q", sae, check_on=batch())
    with pytest.raises(cs.ScrubError, match="no layer 5"):
        S.hook_site(g, "blocks.5.hook_resid_post")
    with pytest.raises(cs.UnknownNameError, match="m7"):
        S.sae_rewrite(g, "m7", sae, check_on=batch())
    with pytest.raises(cs.ScrubError, match="d_in = 12"):
        S.sae_rewrite(g, "m0", S.SAE.random(12, 20, "standard"), check_on=batch())
    twice = S.sae_rewrite(g, "m0", sae, check_on=batch())
    with pytest.raises(RewriteError, match="already"):
        S.sae_rewrite(twice, "m0", sae, check_on=batch())


def test_one_node_per_latent():
    g = S.sae_rewrite(small_model().graph(), "m0", S.SAE.random(16, 6, "topk", k=2),
                      check_on=batch(), groups="each")
    assert S.part_names(g, "m0") == [f"m0.f{i}" for i in range(6)] + ["m0.bias", "m0.error"]


def scrub_model() -> cs.models.Transformer:
    """Small enough for the literal reference evaluator (one path at a time)."""
    torch.manual_seed(0)
    return cs.models.Transformer(cs.models.Config(n_layers=2, d_model=16, n_heads=1, d_head=8,
                                                  d_mlp=None, d_vocab=11, n_ctx=8))


def scrub_graph():
    model = scrub_model()
    sae = S.SAE.random(16, 24, "topk", k=4, seed=2)
    g = S.sae_rewrite(model.graph(), "blocks.0.hook_resid_post", sae, check_on=batch(),
                      groups={"claimed": [0, 1, 2, 3, 4, 5]})
    g2 = torch.Generator().manual_seed(1)
    ds = cs.Dataset({"tokens": torch.randint(0, 11, (64, 8), generator=g2),
                     "f": torch.randint(0, 3, (64,), generator=g2)})
    return g, ds


def latent_hypothesis(sampler: cs.Sampler, error: cs.Sampler | None = None) -> cs.InterpNode:
    kids = [cs.InterpNode("claimed latents", sampler,
                          paths=cs.through("resid_post0").then("resid_post0.claimed"))]
    if error is not None:
        kids.append(cs.InterpNode("error", error,
                                  paths=cs.through("resid_post0").then("resid_post0.error")))
    return cs.InterpNode("out", cs.Exact(), other=cs.Uniform(), children=kids)


@pytest.mark.parametrize("sampler", [cs.Exact(), cs.SameFeature("f"), cs.Uniform()])
@pytest.mark.parametrize("error", [None, cs.Exact(), cs.Uniform()])
def test_latent_claims_engine_equals_reference(sampler, error):
    g, ds = scrub_graph()
    corr = cs.check(g, latent_hypothesis(sampler, error))
    sample = cs.draw(corr, ds, torch.arange(24), torch.Generator().manual_seed(3))
    fast = cs.engine.evaluate(corr, ds, sample, chunk_size=7)
    slow = cs.reference.evaluate(corr, ds, sample)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_latent_parts_on_one_lane_are_one_encode(monkeypatch):
    """Parts that read the same lane are computed by one call of the SAE's group function:
    one encode per lane, not one per part."""
    g, ds = scrub_graph()
    # the error and the unclaimed latents both read the root's `other` lane
    corr = cs.check(g, latent_hypothesis(cs.SameFeature("f")))
    sample = cs.draw(corr, ds, torch.arange(8), torch.Generator().manual_seed(3))
    sae = next(m for m in g.module if isinstance(m, S.SAE))
    calls = []
    pre = sae.pre  # every encode starts here (dense or sparse decode alike)
    monkeypatch.setattr(sae, "pre", lambda x: calls.append(x.shape) or pre(x))
    cs.engine.evaluate(corr, ds, sample)
    assert len(cs.engine.compile_plan(corr).lanes) == 2
    assert len(calls) == 2, calls  # four parts read these two lanes


def test_claiming_everything_at_the_site_reproduces_the_model():
    g, ds = scrub_graph()
    corr = cs.check(g, cs.InterpNode("out", cs.Exact(), other=cs.Exact()))
    ref = torch.arange(16)
    sample = cs.draw(corr, ds, ref, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = cs.engine.evaluate(corr, ds, sample)
        torch.testing.assert_close(out, scrub_model()(ds["tokens"][ref]), rtol=0, atol=1e-5)


# ---- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", S.ARCHITECTURES)
def test_save_and_load_round_trip(tmp_path, arch):
    sae = S.SAE.random(8, 16, arch, k=3 if arch == "topk" else None, seed=4,
                       metadata={"hook_name": "blocks.0.hook_resid_post", "model_name": "m"})
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    back = S.load_sae(tmp_path)
    x = torch.randn(5, 8)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))
    assert back.hook_name == "blocks.0.hook_resid_post"


def test_older_saelens_layouts_load(tmp_path):
    sae = S.SAE.random(8, 16, "topk", k=3, seed=5)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    old = {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
           "d_in": 8, "d_sae": 16, "hook_name": "blocks.2.hook_resid_pre", "hook_layer": 2,
           "apply_b_dec_to_input": cfg["apply_b_dec_to_input"]}
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    back = S.load_sae(tmp_path)
    assert back.architecture == "topk" and back.k == 3 and back.hook_name == "blocks.2.hook_resid_pre"
    x = torch.randn(4, 8)
    assert torch.equal(back(x), sae(x))


def test_broken_files_fail_clearly(tmp_path):
    with pytest.raises(cs.CheckpointError, match="cfg.json is missing"):
        S.load_sae(tmp_path)
    S.SAE.random(8, 16, "standard").save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 32}))
    with pytest.raises(cs.CheckpointError, match=r"W_enc has shape \(8, 16\)"):
        S.load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(cs.CheckpointError, match="normalize_activations"):
        S.load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(cs.CheckpointError, match="gated"):
        S.load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(cs.CheckpointError, match="corrupted"):
        S.load_sae(tmp_path)


@pytest.mark.parametrize("arch", S.ARCHITECTURES)
def test_round_trip_with_sae_lens(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens", reason="the [sae] extra (sae-lens) is not installed")
    ours = S.SAE.random(8, 16, arch, k=3 if arch == "topk" else None, seed=6,
                        metadata={"hook_name": "blocks.0.hook_resid_post"})
    ours.save(tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"))
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), ours(x))
    theirs.save_model(str(tmp_path / "theirs"))
    back = S.load_sae(tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x))
    assert back.hook_name == "blocks.0.hook_resid_post"


# ---- training and the bundled SAEs ------------------------------------------------------------


def test_training_pieces_on_a_small_model():
    model = small_model()
    g, node = sae_train.site_graph(model.graph(), "blocks.0.hook_resid_post", batch())
    ds = batch(64, seed=1)
    acts = sae_train.site_activations(g, ds, node, torch.arange(48))
    assert acts.shape == (48 * 8, 16)
    sae, curve = sae_train.train_topk(acts, d_sae=32, k=4, steps=150, batch_size=128)
    assert curve[-1]["mse"] < curve[0]["mse"]
    loss = lambda out, ref: out.logsumexp(-1).mean(-1)  # noqa: E731
    numbers = sae_train.loss_recovered(g, node, sae, ds, loss, torch.arange(48, 64))
    assert numbers["loss_mean_ablated"] != numbers["loss_clean"]
    exact = sae_train.loss_recovered(g, node, S.SAE.random(16, 16, "standard"), ds, loss,
                                     torch.arange(48, 64))
    assert set(exact) == {"loss_clean", "loss_sae", "loss_mean_ablated", "loss_recovered"}


BUNDLED = sorted(CHECKPOINTS.glob("*/cfg.json"))


@pytest.mark.parametrize("cfg", BUNDLED, ids=lambda p: p.parent.name)
def test_bundled_saes_are_small_logged_and_exact(cfg):
    folder = cfg.parent
    assert sum(f.stat().st_size for f in folder.iterdir()) < 4 * 2**20
    record = json.loads((folder / "train_log.json").read_text())
    assert record["command"].startswith("python -m causal_scrubbing.experiments.sae.train")
    sae = S.load_sae(folder)
    experiment = folder.name.split("-")[0]
    model = cs.models.load(experiment)
    g = model.graph()
    tokens = {"induction": lambda: torch.randint(0, 2048, (2, 256)),
              "ioi": lambda: torch.randint(0, 162, (4, 18))}[experiment]()
    b = cs.Dataset({"tokens": tokens})
    g2 = S.sae_rewrite(g, sae.hook_name, sae, check_on=b)
    with torch.inference_mode():
        out = g(b)
        # to 1e-5 of the output's scale: IOI's logits reach 90, where float32's spacing is 7.6e-6
        assert (g2(b) - out).abs().max().item() <= 1e-5 * max(1.0, out.abs().max().item())


def test_the_bundled_saes_are_there():
    assert [p.parent.name for p in BUNDLED] == ["induction-resid_post0", "ioi-resid_post0"]


@pytest.mark.parametrize("cfg", BUNDLED, ids=lambda p: p.parent.name)
def test_bundled_saes_load_in_sae_lens(cfg):
    sae_lens = pytest.importorskip("sae_lens", reason="the [sae] extra (sae-lens) is not installed")
    theirs = sae_lens.SAE.load_from_disk(str(cfg.parent))
    ours = S.load_sae(cfg.parent)
    x = 3 * torch.randn(16, ours.d_in)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x))
    assert theirs.cfg.metadata.hook_name == ours.hook_name == "blocks.0.hook_resid_post"


def test_search_works_over_latent_nodes():
    """The search (nodes, then features) treats latent groups as nodes: on a site whose first
    coordinate alone matters, it keeps the latents that write it and drops the others."""
    sae = S.SAE(2, 4, "standard")
    with torch.no_grad():  # latents relu(+-x0), relu(+-x1): an exact SAE, error zero
        sae.W_enc.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]))
        sae.W_dec.copy_(sae.W_enc.T)
    sae.apply_b_dec_to_input = False
    g = cs.Graph([cs.Input("x"), cs.Node("h", lambda i: i, i="x"),
                  cs.Node("out", lambda r: r[:, 0], r="h")], output="out")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=gen)
    ds = cs.Dataset({"x": x, "y": x[:, 0], "sign0": (x[:, 0] > 0).long(), "sign1": (x[:, 1] > 0).long()})
    g2 = S.sae_rewrite(g, "h", sae, groups={"first": [0, 1], "second": [2, 3]}, check_on=ds)
    found = cs.search(g2, ds, lambda out, ref: (out - ref["y"]) ** 2, threshold=0.95,
                      granularity="nodes", n=150, n_heldout=100,
                      features={"sign0": "sign0", "sign1": "sign1"})
    kept = {str(e).split(" -> ")[0] for e in found.kept}
    assert "h.first" in kept
    assert not kept & {"h.second", "h.bias", "h.error"}
    assert found.heldout.loss_recovered > 0.95


def test_train_sae_command(tmp_path):
    from typer.testing import CliRunner

    from causal_scrubbing.cli import app

    out = tmp_path / "sae"
    result = CliRunner().invoke(app, ["train-sae", "ioi", "--site", "blocks.0.hook_resid_post",
                                      "--out", str(out), "--d-sae", "32", "--k", "4", "--steps", "30",
                                      "--train-rows", "200", "--eval-rows", "50"])
    assert result.exit_code == 0, result.output
    assert "variance_explained" in result.stdout and "loss_recovered" in result.stdout
    sae = S.load_sae(out)
    assert (sae.d_sae, sae.k, sae.hook_name) == (32, 4, "blocks.0.hook_resid_post")
    record = json.loads((out / "train_log.json").read_text())
    assert record["settings"]["train_tokens"] == 200 * 18
    bad = CliRunner().invoke(app, ["train-sae", "ioi", "--site", "blocks.0.hook_q", "--out", str(out)])
    assert bad.exit_code != 0 and "not a supported TransformerLens hook" in bad.output
