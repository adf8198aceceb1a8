"""Training SAEs on a bundled model's activations, and measuring how well they reconstruct.

A latent-level hypothesis is only as trustworthy as the SAE under it: an SAE that reconstructs
badly leaves much of the effect in its error term, where no latent claim can reach. So an SAE
is reported with its reconstruction: the variance of the site it explains, the model's loss
when the SAE's reconstruction replaces the site (as a fraction of the loss that mean-ablating
the site loses: *loss recovered*), its mean number of active latents (L0) and its dead latents
(never active on the evaluation rows).

`train_topk` trains a top-k SAE (simplest to train well: the sparsity is fixed, no L1
coefficient to tune) with Adam on the mean squared error, unit-norm decoder rows, the decoder
bias started at the mean activation, and the AuxK loss of Gao et al. (2024) that makes dead
latents reconstruct what the live ones miss. `train_for_experiment` collects the activations
of a bundled experiment's model at a site, trains, measures, and writes the SAELens directory
with `train_log.json` (the command, the settings, the loss curve, the numbers). The command:

    python -m causal_scrubbing.experiments.sae.train induction --site blocks.0.hook_resid_post --out DIR

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> acts = torch.randn(512, 8) @ torch.randn(8, 8)  # [tokens, d_in]
    >>> sae, log = train_topk(acts, d_sae=32, k=4, steps=200, batch_size=128, seed=0)
    >>> reconstruction(sae, acts)["variance_explained"] > 0.5
    True
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import ScrubError
from ...core.graph import Graph
from ...models.sae import SAE, hook_site, replaced, residual_node, site_name

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Dataset], Tensor]


def site_graph(graph: Graph, site: str, check_on: Dataset) -> tuple[Graph, str]:
    """`graph` with the site as one node (a residual hook gets its `residual_node`), and its name."""
    if site in graph.nodes:
        return graph, site
    where = hook_site(graph, site) if site.startswith(("blocks.", "hook_")) else None
    if where is None:
        graph.check_node(site, " (the SAE site; give a node name or a TransformerLens hook name)")
    if isinstance(where, str):
        return graph, where
    assert where is not None
    name = site_name(site)
    return residual_node(graph, where, name, check_on=check_on), name


@torch.no_grad()
def site_activations(graph: Graph, ds: Dataset, node: str, rows: Tensor, batch_size: int = 16) -> Tensor:
    """Node `node`'s output on dataset rows `rows`, flattened to [rows * positions, d_in]."""
    out = []
    for i in range(0, len(rows), batch_size):
        batch = ds.rows(rows[i:i + batch_size])
        x = graph.run(batch, outputs={node}, ports=set()).outputs[node]  # [b, pos, d_in]
        out.append(x.reshape(-1, x.shape[-1]))
    return torch.cat(out)


def train_topk(acts: Tensor, d_sae: int, k: int, steps: int = 3000, batch_size: int = 1024,
               lr: float = 1e-3, seed: int = 0, dead_after: int = 20_000,
               metadata: dict[str, Any] | None = None, log_every: int = 250) -> tuple[SAE, list[dict]]:
    """Train a top-k SAE on `acts` [tokens, d_in]; returns it and the loss curve.

    Each step draws `batch_size` rows; the loss is the mean squared error (summed over d_in)
    plus 1/32 of the AuxK loss over latents not active in the last `dead_after` tokens. The
    decoder rows are renormalised to unit norm after every step.
    """
    if acts.dim() != 2:
        raise ScrubError(f"train_topk needs activations [tokens, d_in]; got shape {tuple(acts.shape)}.")
    g = torch.Generator().manual_seed(seed)
    n, d_in = acts.shape
    sae = SAE.random(d_in, d_sae, "topk", k=k, seed=seed, metadata=metadata)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
        scale = (acts - acts.mean(0)).norm(dim=1).mean()
        sae.W_enc.copy_(sae.W_dec.T / scale)  # pre-activations of order one at the start
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    last_active = torch.zeros(d_sae, dtype=torch.long)
    seen = 0
    curve: list[dict] = []
    k_aux = min(d_sae, max(1, d_in // 2))
    for step in range(steps):
        x = acts[torch.randint(0, n, (batch_size,), generator=g)]  # [b, d_in]
        pre = sae.pre(x)  # [b, d_sae]
        f = sae.activation(pre)
        recon = sae.decode(f)
        err = x - recon
        mse = err.pow(2).sum(-1).mean()
        seen += batch_size
        last_active[(f > 0).any(0)] = seen
        dead = (seen - last_active) > dead_after
        aux = torch.zeros(())
        if dead.any():
            masked = pre.masked_fill(~dead, float("-inf"))
            top = masked.topk(min(k_aux, int(dead.sum())), dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            aux = (f_aux @ sae.W_dec - err.detach()).pow(2).sum(-1).mean()
        loss = mse + aux / 32
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        if step % log_every == 0 or step == steps - 1:
            var = (x - x.mean(0)).pow(2).sum(-1).mean()
            curve.append({"step": step, "mse": round(mse.item(), 6),
                          "variance_explained": round(1 - mse.item() / var.item(), 4),
                          "dead": int(dead.sum())})
            log.info("sae step %d: mse %.4f, variance explained %.3f, dead %d", step, mse.item(),
                     curve[-1]["variance_explained"], curve[-1]["dead"])
    return sae.eval(), curve


@torch.no_grad()
def reconstruction(sae: SAE, acts: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Variance explained, mean active latents (L0) and dead latents (never active) on
    `acts` [tokens, d_in]."""
    sq_err = 0.0
    active = torch.zeros(sae.d_sae, dtype=torch.bool)
    l0 = 0.0
    for i in range(0, len(acts), batch_size):
        x = acts[i:i + batch_size]
        f = sae.encode(x)
        sq_err += (x - sae.decode(f)).pow(2).sum().item()
        active |= (f > 0).any(0)
        l0 += (f > 0).sum().item()
    total = (acts - acts.mean(0)).pow(2).sum().item()
    return {"variance_explained": 1 - sq_err / total, "l0": l0 / len(acts),
            "dead_latents": int((~active).sum()), "d_sae": sae.d_sae}


@torch.no_grad()
def loss_recovered(graph: Graph, node: str, sae: SAE, ds: Dataset, loss_fn: LossFn, rows: Tensor,
                   batch_size: int = 16) -> dict[str, float]:
    """The model's mean loss on `rows` clean, with node `node` replaced by the SAE's
    reconstruction, and with it mean-ablated (its mean over the rows); `loss_recovered` =
    (ablated - with SAE) / (ablated - clean), 1 when the SAE loses nothing."""
    mean = site_activations(graph, ds, node, rows, batch_size).mean(0)  # [d_in]
    ablated = _constant(graph, node, mean)
    with_sae = replaced(graph, node, sae)
    totals = {"clean": 0.0, "sae": 0.0, "mean_ablated": 0.0}
    for i in range(0, len(rows), batch_size):
        batch = ds.rows(rows[i:i + batch_size])
        for key, g in (("clean", graph), ("sae", with_sae), ("mean_ablated", ablated)):
            totals[key] += loss_fn(g(batch), batch).sum().item()
    out = {f"loss_{k}": v / len(rows) for k, v in totals.items()}
    gap = out["loss_mean_ablated"] - out["loss_clean"]
    out["loss_recovered"] = (out["loss_mean_ablated"] - out["loss_sae"]) / gap if gap else float("nan")
    return out


def _constant(graph: Graph, node: str, value: Tensor) -> Graph:
    from ...core.graph import Node
    from ...core.rewrites import replace_nodes

    original = graph.nodes[node]
    assert isinstance(original, Node)
    fn = original.fn
    return replace_nodes(graph, {node: [Node(node, lambda **kw: torch.zeros_like(fn(**kw)) + value,
                                        **original.ports)]})


def train_for_experiment(experiment: str, site: str, out: str | Path, *, d_sae: int = 512, k: int = 16,
                         steps: int = 3000, batch_size: int = 1024, lr: float = 1e-3,
                         train_rows: int = 256, eval_rows: int = 128, seed: int = 0,
                         command: Sequence[str] | None = None) -> dict[str, Any]:
    """Train a top-k SAE at `site` of the bundled experiment `experiment`'s model, measure it
    on held-out rows and save it (SAELens format) with `train_log.json` in `out`."""
    from ... import experiments

    torch.manual_seed(seed)
    exp = experiments.load(experiment)
    graph = exp.search_graph or exp.graph
    ds = exp.dataset
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    if train_rows + eval_rows > len(ds):
        raise ScrubError(f"{experiment} has {len(ds)} rows; train_rows + eval_rows = "
                         f"{train_rows + eval_rows} is more.")
    train, held = perm[:train_rows], perm[train_rows:train_rows + eval_rows]
    graph, node = site_graph(graph, site, ds.rows(held[:4]))
    start = time.time()
    acts = site_activations(graph, ds, node, train)
    meta = {"hook_name": site if site.startswith(("blocks.", "hook_")) else None,
            "model_name": experiment, "graph_node": node}
    log.info("training on %d activations of %s (%s), d_in %d", len(acts), site, node, acts.shape[1])
    sae, curve = train_topk(acts, d_sae, k, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            metadata=meta)
    train_s = time.time() - start
    held_acts = site_activations(graph, ds, node, held)
    numbers = {**reconstruction(sae, held_acts),
               **loss_recovered(graph, node, sae, ds, exp.loss_fn, held)}
    sae.save(out)
    record = {
        "command": " ".join(command) if command else None,
        "experiment": experiment, "site": site, "graph_node": node,
        "settings": {"d_sae": d_sae, "k": k, "steps": steps, "batch_size": batch_size, "lr": lr,
                     "train_rows": train_rows, "eval_rows": eval_rows, "seed": seed,
                     "train_tokens": len(acts)},
        "held_out": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in numbers.items()},
        "train_seconds": round(train_s, 1),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "curve": curve,
    }
    (Path(out) / "train_log.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m causal_scrubbing.experiments.sae.train EXP --site SITE --out DIR [--d-sae N] [--k K] ...`"""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m causal_scrubbing.experiments.sae.train",
                                description="Train a top-k SAE at a site of a bundled experiment's model.")
    p.add_argument("experiment")
    p.add_argument("--site", required=True, help="graph node (m0) or TransformerLens hook name")
    p.add_argument("--out", required=True, help="directory to write (SAELens format)")
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-rows", type=int, default=256)
    p.add_argument("--eval-rows", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    record = train_for_experiment(
        a.experiment, a.site, a.out, d_sae=a.d_sae, k=a.k, steps=a.steps, batch_size=a.batch_size,
        lr=a.lr, train_rows=a.train_rows, eval_rows=a.eval_rows, seed=a.seed,
        command=["python -m causal_scrubbing.experiments.sae.train", *argv])
    print(json.dumps(record["held_out"], indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
