"""Hypotheses over SAE latents: the induction and IOI models with an SAE after layer 0.

Both bundled models do their first step of work in layer 0 and read it in layer 1: in the
induction model the previous-token head (`a0.h2`) writes "the previous token is X" for the
induction heads' keys; in the IOI model the IO finders write the IO name at S2 for the movers'
values. A top-k SAE trained on the residual stream after layer 0 (`checkpoints/sae/`, trained
by `sae_train`) is written into each graph (`sae.sae_rewrite`): the stream `resid_post0`
becomes the sum of latent groups, the decoder bias and the error term. The question is whether
a few latents carry what the head-level hypothesis says the head carries.

Latents are chosen by a measurement, not by hand:

- induction, *key latents* (the claims `K (10 latents)`, `K (50 latents)`, `K (200 latents)`):
  per-latent attribution of the task loss through the induction heads' keys
  (`searching.latents.latent_attribution`, EAP-IG, 5 steps): with a mask m over the latents,
  the keys read the latents of the reference row where m = 1 and of another row where m = 0
  (the error term from the other row), and a latent's score is the integrated gradient of the
  loss along m from 0 to 1, i.e. how much claiming that latent at the keys lowers the loss. It
  is measured on 256 rows that `causal-scrub run` at its default 2,048 rows and seed 0 never
  uses as reference rows, and stored with its command in the SAE's `latents.json`
  (`python -m causal_scrubbing.experiments.sae.select`). 50 of 1024 latents is 4.9%.
- induction, *previous-token latents* (`K (50 previous-token latents)`, the first measurement,
  kept for comparison): each latent's activation minus its activation with the
  previous-token head's write replaced by its mean (per token, in absolute value, times the
  norm of its decoder row): how much of what the latent writes depends on the previous-token
  head. It does not look at the loss, and its top 50 recover less (docs/sae.md).
- IOI, *IO latents at S2*: the variance of each latent's activation at S2 explained by the IO
  name (between-name variance, times its decoder row's squared norm). The top latents form
  `io10` and `io25` (the next 15; 25 of 512 is 4.9%).

Every latent-level number is reported beside the SAE's reconstruction (`train_log.json`:
variance explained, loss recovered when the reconstruction replaces the stream, dead latents)
and the *error term's share*: of the effect the hypothesis keeps, the part that is lost when
the error term, kept beside the latents, is resampled instead (results.json `extra`).
See docs/sae.md for the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...core.data import Dataset
from ...core.graph import Graph
from ...core.hypothesis import InterpNode
from ...core.paths import Matcher, chains, direct, through, union
from ...core.results import ScrubResult
from ...core.samplers import Exact, SameFeature, Uniform
from ...models.sae import SAE, load_sae, sae_rewrite
from .. import Experiment
from .train import site_graph

#: The bundled SAEs, by folder name.
SAE_DIR = Path(__file__).parents[2] / "checkpoints" / "sae"
SITE = "resid_post0"  # the residual stream after layer 0 (hook `blocks.0.hook_resid_post`)
HOOK = "blocks.0.hook_resid_post"


def bundled(name: str) -> tuple[SAE, dict[str, Any]]:
    """A bundled SAE and its training record (`train_log.json`)."""
    folder = SAE_DIR / name
    return load_sae(folder), json.loads((folder / "train_log.json").read_text())


def _claims(site: str, groups: list[str]) -> list[str]:
    return [f"{site}.{g}" for g in groups]


def error_shares(pairs: dict[str, str], site_error: str | None = None):
    """An `Experiment.extra` function: for each (hypothesis, the same with the error term
    kept) pair, the share of the kept effect that resampling the error loses,
    (recovered(with error) - recovered(without)) / recovered(with error); and with
    `site_error`, 1 - recovered of the hypothesis that resamples only the error term."""

    def extra(results: dict[str, ScrubResult]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for without, with_error in pairs.items():
            a, b = results[without].loss_recovered, results[with_error].loss_recovered
            out[without] = {"with_error": with_error, "recovered": a, "recovered_with_error": b,
                            "error_share": (b - a) / b if b else float("nan")}
        shares: dict[str, Any] = {"hypotheses": out}
        if site_error is not None:
            shares["error_only_resampled"] = {"hypothesis": site_error,
                                              "error_share": 1 - results[site_error].loss_recovered}
        return shares

    return extra


# ---- induction ----------------------------------------------------------------------------------


@torch.no_grad()
def previous_token_scores(graph: Graph, node: str, sae: SAE, ds: Dataset, rows: Tensor,
                          head: str = "a0.h2") -> Tensor:
    """[d_sae]: mean |f_i(x) - f_i(x with `head`'s write replaced by its mean)| * ||W_dec_i||
    over every token of `rows`: what latent i writes that depends on the previous-token head."""
    act = graph.run(ds.rows(rows), outputs={node, head}, ports=set()).outputs
    x, h = act[node], act[head]  # [b, pos, d] each
    f = sae.encode(x)
    f_abl = sae.encode(x - h + h.mean((0, 1)))
    return (f - f_abl).abs().mean((0, 1)) * sae.W_dec.norm(dim=1)  # [d_sae]


@cache
def _induction_latents(n_rows: int = 32) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The previous-token dependence score of every latent (`previous_token_scores`), sorted."""
    from ...models import load
    from ..induction import dataset

    model = load("induction")
    sae, _ = bundled("induction-resid_post0")
    ds = dataset()
    g, node = site_graph(model.graph(), HOOK, ds.rows(torch.arange(2)))
    rows = torch.arange(len(ds) - n_rows, len(ds))  # the last rows (scrubbing draws from all)
    scores = previous_token_scores(g, node, sae, ds, rows)
    order = scores.argsort(descending=True)
    return tuple(order.tolist()), tuple(scores[order].tolist())


#: The file with the induction SAE's key-latent attribution (`select.py` writes it).
LATENTS_FILE = "latents.json"
#: Attribution settings: rows, EAP-IG steps, seed, and the run whose reference rows it avoids.
ATTRIBUTION = {"n": 256, "steps": 5, "seed": 0, "avoid_n": 2048}


def key_attribution(n: int = ATTRIBUTION["n"], steps: int = ATTRIBUTION["steps"],
                    seed: int = ATTRIBUTION["seed"], avoid_n: int = ATTRIBUTION["avoid_n"]):
    """EAP-IG attribution of the induction loss to every latent of the induction SAE, claimed
    at the induction heads' keys (queries and values read the reference, the error term is
    resampled with the unclaimed latents; `searching.latents.latent_attribution`), on `n` rows
    that a run of `avoid_n` reference rows with `seed` does not use."""
    from ...models import load
    from ...searching.latents import latent_attribution
    from ..induction import ROLES, dataset, loss_fn

    sae, _ = bundled("induction-resid_post0")
    ds = dataset()
    graph = sae_rewrite(load("induction").graph(), HOOK, sae, check_on=ds.rows(torch.arange(4)))
    return latent_attribution(graph, SITE, sae, ds, loss_fn, readers=[(h, "k") for h in ROLES["induction"]],
                              n=n, n_heldout=avoid_n, seed=seed, steps=steps)


@cache
def _key_latents() -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The induction SAE's latents by key attribution (most loss-lowering first) and their
    scores, from `latents.json`."""
    path = SAE_DIR / "induction-resid_post0" / LATENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; write it with `python -m "
                                "causal_scrubbing.experiments.sae.select`.")
    record = json.loads(path.read_text())
    scores = torch.tensor(record["scores"])
    order = scores.argsort(stable=True)
    return tuple(order.tolist()), tuple(scores[order].tolist())


def atoms(sets: Mapping[str, Sequence[int]]) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Latent groups that partition the union of overlapping `sets`, and each set as the
    groups it is the union of (one SAE rewrite then carries every set as a claim).

    >>> atoms({"a": [1, 2, 3], "b": [3, 4]})
    ({'a': [1, 2], 'a_b': [3], 'b': [4]}, {'a': ['a', 'a_b'], 'b': ['a_b', 'b']})
    """
    member: dict[int, tuple[str, ...]] = {}
    for name, latents in sets.items():
        for i in latents:
            member[int(i)] = (*member.get(int(i), ()), name)
    groups: dict[str, list[int]] = {}
    for i in sorted(member):
        groups.setdefault("_".join(member[i]), []).append(i)
    groups = dict(sorted(groups.items()))
    return groups, {name: [g for g in groups if name in g.split("_")] for name in sets}


def _summary(folder: str, sae: SAE, record: dict[str, Any], latents: dict[str, Any],
             scores: Sequence[float], top: int,
             error: Callable[[dict[str, ScrubResult]], dict[str, Any]]
             ) -> Callable[[dict[str, ScrubResult]], dict[str, Any]]:
    """What an SAE experiment's results.json records beside its table (`Experiment.extra`):
    the SAE and its held-out reconstruction, the latents claimed with their scores, and the
    error term's share of each latent-level hypothesis (`error(results)`)."""
    def summary(results: dict[str, ScrubResult]) -> dict[str, Any]:
        return {"sae": {"folder": f"checkpoints/sae/{folder}", "hook_name": HOOK,
                        "d_sae": sae.d_sae, "k": sae.k, "held_out": record["held_out"]},
                "latents": {**latents, f"scores_top{top}": [round(s, 4) for s in scores[:top]],
                            "score_median": round(float(torch.tensor(scores).median()), 4)},
                "error": error(results)}
    return summary


def build_induction() -> Experiment:
    """`causal-scrub run induction-sae`: key latents (by attribution) and previous-token latents
    (by dependence on the previous-token head) against the previous-token head."""
    from ...models import load
    from ..induction import DESCRIPTIONS, ROLES, dataset, loss_fn

    model = load("induction")
    sae, record = bundled("induction-resid_post0")
    ds = dataset()
    order, scores = _key_latents()
    prev_order, prev_scores = _induction_latents()
    sets = {"key10": order[:10], "key50": order[:50], "key200": order[:200], "prev50": prev_order[:50]}
    groups, pieces = atoms(sets)
    graph = sae_rewrite(model.graph(), HOOK, sae, groups=groups, check_on=ds.rows(torch.arange(4)))
    ind, prev = ROLES["induction"], ROLES["previous"]

    def k_claim(targets: list[str]) -> Matcher:
        return union([through(h, port="k").then(t) for h in ind for t in targets])

    def scrub(k: Matcher | None = None, error_resampled: bool = False) -> InterpNode:
        kids = []
        if k is not None:
            kids = [InterpNode("q", Exact(), paths=union([through(h, port="q") for h in ind])),
                    InterpNode("v", Exact(), paths=union([through(h, port="v") for h in ind])),
                    InterpNode("k", Exact(), paths=k)]
        heads = InterpNode("induction heads", Exact(), other=Uniform() if k is not None else Exact(),
                           paths=union([through(h) for h in ind]), children=kids)
        if error_resampled:
            heads.add(InterpNode("error", Uniform(),
                                 paths=union([through(h).then(f"{SITE}.error") for h in ind])))
        return InterpNode("logits", Exact(), other=Exact(), children=[heads])

    latents10, latents50 = _claims(SITE, pieces["key10"]), _claims(SITE, pieces["key50"])
    latents200, prev50 = _claims(SITE, pieces["key200"]), _claims(SITE, pieces["prev50"])
    every = _claims(SITE, [*groups, "rest"])
    error = [f"{SITE}.error"]
    hyps = {
        "unscrubbed": InterpNode("logits", Exact()),
        "baseline": InterpNode("logits", Exact(), other=Exact(), children=[
            InterpNode("induction heads", Uniform(), paths=union([through(h) for h in ind]))]),
        "error resampled": scrub(error_resampled=True),
        "K (head)": scrub(k_claim(prev)),
        "K (10 latents)": scrub(k_claim(latents10)),
        "K (10 latents) + error": scrub(k_claim(latents10 + error)),
        "K (50 latents)": scrub(k_claim(latents50)),
        "K (50 latents) + error": scrub(k_claim(latents50 + error)),
        "K (50 previous-token latents)": scrub(k_claim(prev50)),
        "K (50 previous-token latents) + error": scrub(k_claim(prev50 + error)),
        "K (200 latents)": scrub(k_claim(latents200)),
        "K (200 latents) + error": scrub(k_claim(latents200 + error)),
        "K (all latents)": scrub(k_claim(every)),
        "K (all latents) + error": scrub(k_claim(every + error)),
    }
    n_latents = sae.d_sae
    descriptions = {
        "unscrubbed": DESCRIPTIONS["unscrubbed"], "baseline": DESCRIPTIONS["baseline"],
        "error resampled": "induction heads' inputs kept, but the SAE error term in them resampled",
        "K (head)": DESCRIPTIONS["K"] + " (previous-token head a0.h2, 1 of 8 layer-0 heads)",
        "K (10 latents)": f"keys read only the 10 top key latents by attribution ({10 / n_latents:.1%} "
                          "of latents); other latents, bias and error resampled",
        "K (10 latents) + error": "... and the error term",
        "K (50 latents)": f"keys read only the 50 top key latents ({50 / n_latents:.1%})",
        "K (50 latents) + error": "... and the error term",
        "K (50 previous-token latents)": "keys read only the 50 latents that depend most on the "
                                         f"previous-token head ({50 / n_latents:.1%})",
        "K (50 previous-token latents) + error": "... and the error term",
        "K (200 latents)": f"keys read only the 200 top key latents ({200 / n_latents:.1%})",
        "K (200 latents) + error": "... and the error term",
        "K (all latents)": "keys read every latent; bias and error resampled",
        "K (all latents) + error": "keys read the whole stream through the SAE (= keys kept)",
    }
    extra = error_shares({"K (10 latents)": "K (10 latents) + error",
                          "K (50 latents)": "K (50 latents) + error",
                          "K (50 previous-token latents)": "K (50 previous-token latents) + error",
                          "K (200 latents)": "K (200 latents) + error",
                          "K (all latents)": "K (all latents) + error"}, "error resampled")

    claimed = {"key10": list(order[:10]), "key50": list(order[:50]), "key200": list(order[:200]),
               "prev50": list(prev_order[:50]), "groups": groups,
               "prev50_scores_top50": [round(x, 4) for x in prev_scores[:50]]}
    summary = _summary("induction-resid_post0", sae, record, claimed, scores, 50, extra)

    return Experiment(
        name="induction-sae",
        description="key latents (by attribution) of an SAE after layer 0 against the "
                    "previous-token head, on the induction model",
        graph=graph, dataset=ds, loss_fn=loss_fn, hypotheses=hyps, baseline=hyps["baseline"],
        published={"unscrubbed": 1.0, "baseline": 0.0, "K (head)": 0.83},
        published_label="published (head)", descriptions=descriptions, default_n=2048,
        search_graph=graph, extra=summary)


# ---- IOI ----------------------------------------------------------------------------------------


@torch.no_grad()
def io_scores(graph: Graph, node: str, sae: SAE, ds: Dataset, rows: Tensor) -> Tensor:
    """[d_sae]: the variance of each latent's activation at S2 that the IO name explains
    (between-name variance of the mean activation), times its decoder row's squared norm."""
    batch = ds.rows(rows)
    x = graph.run(batch, outputs={node}, ports=set()).outputs[node]  # [b, pos, d]
    f = sae.encode(x[torch.arange(len(rows)), batch["s2_pos"]])  # [b, d_sae] at S2
    io = batch["io"]
    names = io.unique()
    means = torch.stack([f[io == n].mean(0) for n in names])  # [names, d_sae]
    counts = torch.stack([(io == n).sum() for n in names]).float()[:, None]
    between = (counts * (means - f.mean(0)) ** 2).sum(0) / len(rows)  # [d_sae]
    return between * sae.W_dec.norm(dim=1) ** 2


@cache
def _ioi_latents(n_rows: int = 4000) -> tuple[tuple[int, ...], tuple[float, ...]]:
    from ..ioi import trained
    from ..ioi.data import dataset

    model, tok = trained.load()
    sae, _ = bundled("ioi-resid_post0")
    ds = dataset(tok, n_rows, seed=1)  # other prompts than the experiment's (seed 0)
    g, node = site_graph(model.graph(), HOOK, ds.rows(torch.arange(2)))
    scores = io_scores(g, node, sae, ds, torch.arange(n_rows))
    order = scores.argsort(descending=True)
    return tuple(order.tolist()), tuple(scores[order].tolist())


def build_ioi() -> Experiment:
    """`causal-scrub run ioi-sae`: IO latents at S2 against the IO-finder heads."""
    from ..ioi import experiment, trained

    model, tok = trained.load()
    exp = experiment(model, tok, roles=trained.ROLES, circuit="trained", default_n=2048)
    sae, record = bundled("ioi-resid_post0")
    order, scores = _ioi_latents()
    groups = {"io10": list(order[:10]), "io25": list(order[10:25])}
    graph = sae_rewrite(exp.graph, HOOK, sae, groups=groups,
                        check_on=exp.dataset.rows(torch.arange(16)))
    movers, late, finders = (trained.ROLES[r] for r in ("mover", "late mover", "IO finder"))
    same_io_s2 = SameFeature(trained.io_and_s2_position, name="IO & S2 position")

    def hypothesis(reads: list[str] | None, error_resampled: bool = False) -> InterpNode:
        """`+ IO finders` of `ioi.trained`, with the movers' values reading `reads` (nodes
        feeding the movers' values through the stream after layer 0) on a prompt with the
        same IO and S2 position."""
        node = InterpNode("movers", SameFeature("io"), paths=chains((movers, None)))
        if reads is not None:
            node.add(InterpNode("mover queries & keys", Exact(),
                                paths=chains((movers, "q")) | chains((movers, "k"))))
            node.add(InterpNode("IO carriers", same_io_s2,
                                paths=union([direct(m, port="v").then(r) for m in movers
                                             for r in reads])))
        lates = InterpNode("late movers", SameFeature("io"), paths=chains((late, None)))
        root = InterpNode("logits", Exact(), children=[node, lates])
        if error_resampled:
            root = InterpNode("logits", Exact(), other=Exact(), children=[
                InterpNode("error", Uniform(), paths=through(f"{SITE}.error"))])
        return root

    io10, io25 = _claims(SITE, ["io10"]), _claims(SITE, ["io10", "io25"])
    every = _claims(SITE, ["io10", "io25", "rest"])
    error = [f"{SITE}.error"]
    hyps = {
        "nothing scrubbed": exp.hypotheses["nothing scrubbed"],
        "everything scrubbed": exp.hypotheses["everything scrubbed"],
        "error resampled": hypothesis(None, error_resampled=True),
        "movers": hypothesis(None),
        "+ IO finders (heads)": hypothesis(finders),
        "+ IO latents (10)": hypothesis(io10),
        "+ IO latents (10) + error": hypothesis(io10 + error),
        "+ IO latents (25)": hypothesis(io25),
        "+ IO latents (25) + error": hypothesis(io25 + error),
        "+ all latents": hypothesis(every),
        "+ all latents + error": hypothesis(every + error),
    }
    n = sae.d_sae
    descriptions = {
        "nothing scrubbed": "the model as it is (100%)",
        "everything scrubbed": "every input resampled (the 0% point)",
        "error resampled": "everything kept but the SAE error term after layer 0 (resampled everywhere)",
        "movers": "layer-1 movers' direct effect depends only on the IO",
        "+ IO finders (heads)": "+ movers' values read the IO finders (3 of 4 layer-0 heads) on a "
                                "prompt with the same IO and S2 position",
        "+ IO latents (10)": f"... read instead the 10 top IO latents ({10 / n:.1%} of latents); "
                             "the rest of their values (other latents, bias, error) resampled",
        "+ IO latents (10) + error": "... and the error term",
        "+ IO latents (25)": f"... the 25 top IO latents ({25 / n:.1%})",
        "+ IO latents (25) + error": "... and the error term",
        "+ all latents": "... every latent (same IO and S2 position); bias and error resampled",
        "+ all latents + error": "... and the error term",
    }
    extra = error_shares({"+ IO latents (10)": "+ IO latents (10) + error",
                          "+ IO latents (25)": "+ IO latents (25) + error",
                          "+ all latents": "+ all latents + error"}, "error resampled")

    summary = _summary("ioi-resid_post0", sae, record,
                       {"io10": groups["io10"], "io25": groups["io25"]}, scores, 25, extra)

    return Experiment(
        name="ioi-sae",
        description="IO latents at S2 of an SAE after layer 0 against the IO-finder heads, on the "
                    "IOI model trained here",
        graph=graph, dataset=exp.dataset, loss_fn=exp.loss_fn, hypotheses=hyps,
        baseline=hyps["everything scrubbed"], published={"nothing scrubbed": 1.0,
                                                         "everything scrubbed": 0.0},
        descriptions=descriptions, subsets=dict(exp.subsets), default_n=2048,
        format_inputs=exp.format_inputs, search_graph=graph, extra=summary)


# ---- latent search (`causal-scrub search NAME --latents`) ------------------------------------------


@dataclass
class LatentSite:
    """What `causal-scrub search NAME --latents` searches (`searching.latents.search_latents`):
    the graph without the SAE, the site (a hook name), the SAE, where latents are resampled
    (`readers`), whether the error term is resampled with them, the 0% point, and the order
    latents are grouped and halved in (a score per latent, higher = more important)."""

    graph: Graph
    site: str
    sae: SAE
    readers: list[tuple[str, str]] | None
    error: str
    baseline: InterpNode | None
    order: Tensor | None
    what: str


def induction_latent_site() -> LatentSite:
    """The induction SAE's latents at the induction heads' keys, error resampled (as the `K`
    latent claims of `induction-sae`), against that experiment's baseline, in the order of
    their key attribution (`latents.json`)."""
    from ...models import load
    from ..induction import ROLES

    sae, _ = bundled("induction-resid_post0")
    order, scores = _key_latents()
    key = torch.zeros(sae.d_sae)
    key[list(order)] = -torch.tensor(scores)  # higher = lowers the loss more
    ind = ROLES["induction"]
    baseline = InterpNode("logits", Exact(), other=Exact(), children=[
        InterpNode("induction heads", Uniform(), paths=union([through(h) for h in ind]))])
    return LatentSite(load("induction").graph(), HOOK, sae, [(h, "k") for h in ind], "resampled",
                      baseline, key, "latents at the 8 induction heads' keys (error resampled)")


def ioi_latent_site() -> LatentSite:
    """The IOI SAE's latents at the movers' values (error kept), against the 0% point of
    `ioi-sae` (every input resampled), in the order of their IO score (`io_scores`)."""
    from ..ioi import experiment, trained

    model, tok = trained.load()
    exp = experiment(model, tok, roles=trained.ROLES, circuit="trained", default_n=2048)
    sae, _ = bundled("ioi-resid_post0")
    order, scores = _ioi_latents()
    io = torch.zeros(sae.d_sae)
    io[list(order)] = torch.tensor(scores)
    movers = trained.ROLES["mover"]
    return LatentSite(exp.graph, HOOK, sae, [(m, "v") for m in movers], "kept",
                      exp.hypotheses["everything scrubbed"], io,
                      "latents at the layer-1 movers' values (error kept)")


#: Experiment name -> its latent site, for `causal-scrub search NAME --latents`.
LATENT_SITES: dict[str, Callable[[], LatentSite]] = {"induction-sae": induction_latent_site,
                                                      "ioi-sae": ioi_latent_site}
