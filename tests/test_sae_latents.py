"""Which latents matter: per-latent attribution and the bisecting latent search, on planted cases.

An exact SAE whose latents read one coordinate each (relu(+x_j) and relu(-x_j), shuffled so
that the planted latents are not neighbours) sits on a site read by nodes that use only known
coordinates: attribution must rank those latents first and give the others exactly zero, and
the search must keep exactly them, at every reader or at the readers it is restricted to.
"""

from __future__ import annotations

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing.core.errors import ScrubError
from causal_scrubbing.models import sae as S
from causal_scrubbing.searching.latents import latent_attribution, search_latents

D = 8  # site width; the SAE has 2 * D latents
PERM = torch.randperm(2 * D, generator=torch.Generator().manual_seed(3))  # latent slot -> index


def planted(coord: int) -> list[int]:
    """The two latents (relu(+x), relu(-x)) that write coordinate `coord`."""
    return sorted(PERM[[2 * coord, 2 * coord + 1]].tolist())


def exact_sae() -> S.SAE:
    sae = S.SAE(D, 2 * D, "standard", apply_b_dec_to_input=False)
    w = torch.zeros(D, 2 * D)  # [d_in, d_sae]
    for j in range(D):
        w[j, PERM[2 * j]], w[j, PERM[2 * j + 1]] = 1.0, -1.0
    with torch.no_grad():
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w.T)
    return sae


def setup():
    """out = A + B; A reads the site's coordinate 1, B its coordinate 5 (a tanh: nonlinear)."""
    g = cs.Graph([cs.Input("x"), cs.Node("h", lambda i: i, i="x"),
                  cs.Node("A", lambda i: 2 * torch.tanh(i[:, 1]), i="h"),
                  cs.Node("B", lambda i: i[:, 5] ** 2, i="h"),
                  cs.Node("out", lambda r: r, r=["A", "B"])], output="out")
    x = torch.randn(600, D, generator=torch.Generator().manual_seed(0))
    ds = cs.Dataset({"x": x, "y": 2 * torch.tanh(x[:, 1]) + x[:, 5] ** 2})
    return g, ds, lambda out, ref: (out - ref["y"]) ** 2


def test_attribution_ranks_the_planted_latents_first_and_adds_up():
    g, ds, loss = setup()
    sae = exact_sae()
    g2 = S.sae_rewrite(g, "h", sae, check_on=ds.rows(torch.arange(4)))
    att = latent_attribution(g2, "h", sae, ds, loss, n=200, steps=10)
    assert sorted(att.top(4)) == sorted(planted(1) + planted(5))
    others = [i for i in range(2 * D) if i not in planted(1) + planted(5)]
    assert torch.equal(att.scores[others], torch.zeros(len(others)))
    assert (att.scores[planted(1) + planted(5)] < 0).all()  # claiming them lowers the loss
    # completeness (EAP-IG, trapezoid): the scores add up to L(all claimed) - L(none claimed)
    assert att.total == pytest.approx(att.all_loss - att.none_loss, rel=0.05)
    assert att.all_loss == pytest.approx(0.0, abs=1e-5)  # the SAE is exact: all claimed = model
    # at one reader only that reader's coordinate counts
    at_a = latent_attribution(g2, "h", sae, ds, loss, n=200, readers=[("A", "i")])
    assert sorted(at_a.top(2)) == planted(1)
    assert torch.equal(at_a.scores[planted(5)], torch.zeros(2))


@pytest.mark.parametrize("n_groups", [1, 2, 5])
def test_search_keeps_exactly_the_planted_latents(n_groups):
    g, ds, loss = setup()
    found = search_latents(g, "h", exact_sae(), ds, loss, threshold=0.95, n=150, n_heldout=150,
                           n_groups=n_groups)
    assert found.latents == sorted(planted(1) + planted(5))
    assert found.groups == [[i] for i in found.latents]
    assert found.loss_recovered >= 0.95
    assert found.heldout.n == 150 and found.heldout.loss_recovered > 0.95
    lo, hi = found.heldout.ci
    assert lo <= found.heldout.loss_recovered <= hi
    assert found.rounds[-1]["latents_kept"] == 4
    assert len(found.rounds) >= 2  # it split groups at least once
    assert found.to_json()["latents"] == found.latents


def test_search_at_one_reader_keeps_only_what_that_reader_uses():
    g, ds, loss = setup()
    sae = exact_sae()
    found = search_latents(g, "h", sae, ds, loss, threshold=0.95, n=150, readers=[("A", "i")])
    assert found.latents == planted(1)
    assert found.readers == [("A", "i")]
    # ordered by attribution, the search finds the same latents
    g2 = S.sae_rewrite(g, "h", sae, check_on=ds.rows(torch.arange(4)))
    att = latent_attribution(g2, "h", sae, ds, loss, n=150, readers=[("A", "i")])
    ordered = search_latents(g, "h", sae, ds, loss, threshold=0.95, n=150, readers=[("A", "i")],
                             order=-att.scores, n_groups=4)
    assert ordered.latents == planted(1)


def test_a_floor_stops_at_groups_of_that_size():
    g, ds, loss = setup()
    found = search_latents(g, "h", exact_sae(), ds, loss, threshold=0.95, n=100, floor=4,
                           n_groups=2)
    assert all(len(grp) <= 4 for grp in found.groups)
    assert set(planted(1) + planted(5)) <= set(found.latents)


@pytest.mark.parametrize("kwargs, message", [
    ({"readers": [("A", "x")]}, "Node 'A' has no port 'x'"),
    ({"readers": [("out", "r")]}, "does not read the site 'h'"),
    ({"readers": ["A"]}, "A reader is a (node, port) pair"),
    ({"error": "dropped"}, "error must be 'resampled'"),
    ({"order": [1.0, 2.0]}, "order must hold one finite score per latent, 16 numbers"),
    ({"threshold": 1.5}, "threshold must be a fraction"),
    ({"floor": 0}, "floor must be a whole number, 1 or more"),
])
def test_bad_input_says_what_is_wrong(kwargs, message):
    g, ds, loss = setup()
    args = {"threshold": 0.9, "n": 20, **kwargs}
    with pytest.raises(ScrubError, match=message.replace("(", r"\(").replace(")", r"\)")):
        search_latents(g, "h", exact_sae(), ds, loss, **args)


def test_bad_attribution_input_says_what_is_wrong():
    g, ds, loss = setup()
    sae = exact_sae()
    g2 = S.sae_rewrite(g, "h", sae, check_on=ds.rows(torch.arange(4)))
    with pytest.raises(ScrubError, match="Unknown attribution method"):
        latent_attribution(g2, "h", sae, ds, loss, n=10, method="ig")
    with pytest.raises(ScrubError, match="steps must be a whole number"):
        latent_attribution(g2, "h", sae, ds, loss, n=10, steps=0)
    with pytest.raises(ScrubError, match="does not read the site"):
        latent_attribution(g2, "h", sae, ds, loss, n=10, readers=[("out", "r")])


def test_search_latents_command(tmp_path):
    """`causal-scrub search ioi-sae --latents` writes latents.json with the kept latents and a
    held-out interval (a coarse floor keeps it quick); bad combinations fail clearly."""
    import json

    from typer.testing import CliRunner

    from causal_scrubbing.cli import app

    out = tmp_path / "lat"
    result = CliRunner().invoke(app, ["search", "ioi-sae", "--latents", "--threshold", "0.5",
                                      "--n", "32", "--groups", "2", "--floor", "128", "--out",
                                      str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "latents.json").read_text())
    assert record["experiment"] == "ioi-sae" and record["d_sae"] == 512
    assert record["readers"] == [f"a1.h{h}.v" for h in range(4)]
    assert all(len(g) <= 128 for g in record["groups"])
    assert record["n_latents"] == len(record["latents"]) == sum(len(g) for g in record["groups"])
    lo, hi = record["heldout"]["ci"]
    assert lo <= record["heldout"]["loss_recovered"] <= hi and record["heldout"]["n"] == 32
    assert f"{record['n_latents']} of 512 latents kept" in result.stdout
    bad = CliRunner().invoke(app, ["search", "paren", "--latents", "--threshold", "0.9", "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code != 0 and "'paren' has no SAE site" in bad.output
    none = CliRunner().invoke(app, ["search", "ioi-sae", "--latents", "--out", str(tmp_path / "y")])
    assert none.exit_code != 0 and "--threshold is required with --latents" in none.output


def test_the_bundled_key_latents_are_the_top_of_their_scores():
    """latents.json (the induction SAE's key attribution) records its command and settings, and
    the claims `induction-sae` makes are the top of its scores."""
    import json

    from causal_scrubbing.experiments import sae as X

    record = json.loads((X.SAE_DIR / "induction-resid_post0" / X.LATENTS_FILE).read_text())
    scores = torch.tensor(record["scores"])
    assert scores.shape == (1024,)
    assert record["top50"] == scores.argsort(stable=True)[:50].tolist()
    assert record["command"].startswith("python -m causal_scrubbing.experiments.sae.select")
    assert record["settings"]["readers"] == [f"a1.h{h}.k" for h in range(8)]
    assert record["total"] == pytest.approx(record["all_loss"] - record["none_loss"], rel=0.05)
    order, _ = X._key_latents()
    assert list(order[:50]) == record["top50"]


@pytest.mark.slow
def test_the_bundled_key_latents_are_reproducible():
    """Recomputing the attribution (about a minute on one thread) gives the stored top 50."""
    import json

    from causal_scrubbing.experiments import sae as X

    record = json.loads((X.SAE_DIR / "induction-resid_post0" / X.LATENTS_FILE).read_text())
    att = X.key_attribution()
    assert att.top(50) == record["top50"]
    torch.testing.assert_close(att.scores, torch.tensor(record["scores"]), atol=1e-6, rtol=1e-4)
