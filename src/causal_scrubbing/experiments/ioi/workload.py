"""The benchmark's IOI-shaped workload: the IOI hypothesis on a random-weight GPT-2-sized model.

This is not the IOI task (that is `causal_scrubbing.experiments.ioi`, which needs GPT-2's
weights). It keeps the *shape* of the IOI experiment at GPT-2 small's size (12 layers x 12
heads, d_model 768, MLPs, GELU, a 50,257-token vocabulary) and a context of 64, with **random
weights**, so that the engine can be measured on a realistically sized model
(`causal-scrub bench`, tests/test_performance.py) and tutorial 3 can show the hypothesis
format in seconds. With random weights the heads playing each role are arbitrary and the
numbers mean nothing about GPT-2.

Sequences are 64 tokens of fixed template filler with three name slots: ABBA order puts the
indirect object (IO) first, BABA puts the subject (S) first; the subject repeats in the third
slot and the model is scored on predicting IO at the last position (cross-entropy). Features:
`io`, `s`, `order` (0 = ABBA, 1 = BABA) and `template`. The hypothesis (`circuit`, 9
interpretation nodes) follows the published head classes; `name movers only` claims just the
name movers' direct output.

Everything here is frozen: the benchmark's numbers are compared across versions, so the
dataset, the weights (seeded) and the hypotheses must not change.

Example:
    >>> from causal_scrubbing.experiments.ioi import workload
    >>> exp = workload.random_workload(n_layers=6, n_heads=8, d_model=64, d_vocab=500, n=64)
    >>> sorted(exp.hypotheses)
    ['circuit', 'name movers only']
    >>> len(exp.hypotheses["circuit"].walk())  # interpretation nodes
    9
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.data import Dataset
from ...core.hypothesis import InterpNode
from ...core.names import head_name
from ...core.paths import chains
from ...core.samplers import Exact, SameFeature
from ...models import Config, Transformer
from .. import Experiment

#: Heads in each IOI role, as (layer, head) chosen in the layers GPT-2 small uses for them
#: (scaled to the model's depth); with random weights the choice is arbitrary.
ROLES_12 = {
    "name mover": [(9, 9), (9, 6), (10, 0)],
    "negative name mover": [(10, 7), (11, 10)],
    "backup name mover": [(10, 10), (11, 2)],
    "s-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)],
    "induction": [(5, 5), (6, 9)],
    "duplicate token": [(0, 1), (3, 0)],
    "previous token": [(2, 2), (4, 11)],
}

N_NAMES = 100  # name tokens are the first N_NAMES ids after the filler's


def roles(n_layers: int, n_heads: int) -> dict[str, list[str]]:
    """`ROLES_12` mapped onto a model with `n_layers` x `n_heads`: layers scaled, heads taken
    modulo `n_heads` and moved to the next free head of the layer if another role has it."""
    used: dict[int, set[int]] = {}
    out: dict[str, list[str]] = {}
    for role, heads in ROLES_12.items():
        out[role] = []
        for layer, h in heads:
            layer = min(n_layers - 1, layer * n_layers // 12)
            taken = used.setdefault(layer, set())
            if len(taken) == n_heads:
                raise ValueError(f"A {n_layers}-layer, {n_heads}-head model has too few heads in "
                                 f"layer {layer} for the IOI roles; use more heads or layers.")
            h %= n_heads
            while h in taken:
                h = (h + 1) % n_heads
            taken.add(h)
            out[role].append(head_name(layer, h))
    return out


def dataset(n: int, n_ctx: int = 64, d_vocab: int = 50257, n_templates: int = 4,
            seed: int = 0) -> Dataset:
    """`n` IOI-style sequences [n, n_ctx] with features io, s, order, template."""
    gen = torch.Generator().manual_seed(seed)
    n_filler = d_vocab - N_NAMES
    filler = torch.randint(0, n_filler, (n_templates, n_ctx), generator=gen)  # per template
    slots = torch.stack([torch.randperm(n_ctx - 4, generator=gen)[:3].sort().values + 1
                         for _ in range(n_templates)])  # [n_templates, 3] slot positions
    template = torch.randint(0, n_templates, (n,), generator=gen)
    order = torch.randint(0, 2, (n,), generator=gen)
    io = n_filler + torch.randint(0, N_NAMES, (n,), generator=gen)
    s = n_filler + (io - n_filler + torch.randint(1, N_NAMES, (n,), generator=gen)) % N_NAMES
    tokens = filler[template].clone()  # [n, n_ctx]
    first = torch.where(order == 0, io, s)  # ABBA: IO first; BABA: S first
    second = torch.where(order == 0, s, io)
    rows = torch.arange(n)
    tokens[rows, slots[template, 0]] = first
    tokens[rows, slots[template, 1]] = second
    tokens[rows, slots[template, 2]] = s
    return Dataset({"tokens": tokens, "io": io, "s": s, "order": order, "template": template})


def loss_fn(logits: Tensor, ref: Dataset) -> Tensor:
    """Cross-entropy of the indirect object at the last position [n]."""
    return F.cross_entropy(logits, ref["io"], reduction="none")


def model(n_layers: int = 12, n_heads: int = 12, d_model: int = 768, d_vocab: int = 50257,
          n_ctx: int = 64, seed: int = 0) -> Transformer:
    """A GPT-2-shaped transformer with random weights, read at the last position."""
    torch.manual_seed(seed)
    cfg = Config(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                 d_mlp=4 * d_model, d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu",
                 head="classifier", classifier_pos=n_ctx - 1)
    return Transformer(cfg).eval()


def hypotheses(role_heads: dict[str, list[str]]) -> dict[str, InterpNode]:
    """The IOI circuit as an interpretation tree (9 nodes), and its name movers alone."""

    nm, sinh = role_heads["name mover"], role_heads["s-inhibition"]
    last = lambda role: (role_heads[role], None)  # the final step claims the whole head

    def circuit() -> InterpNode:
        return InterpNode("logits", Exact(), children=[
            InterpNode("name movers", SameFeature("io"), paths=chains(last("name mover")), children=[
                InterpNode("s-inhibition", SameFeature("s"), paths=chains((nm, "q"), last("s-inhibition")),
                           children=[
                    InterpNode("induction", SameFeature("s"),
                               paths=chains((nm, "q"), (sinh, "v"), last("induction")), children=[
                        InterpNode("previous token", SameFeature("s"),
                                   paths=chains((nm, "q"), (sinh, "v"), (role_heads["induction"], "k"),
                                                last("previous token")))]),
                    InterpNode("duplicate token", SameFeature("s"),
                               paths=chains((nm, "q"), (sinh, "v"), last("duplicate token")))]),
                InterpNode("io embedding", SameFeature("io"), paths=chains((nm, "v"), (["embed"], None)))]),
            InterpNode("negative name movers", SameFeature("io"), paths=chains(last("negative name mover"))),
            InterpNode("backup name movers", SameFeature("io"), paths=chains(last("backup name mover"))),
        ])

    return {
        "circuit": circuit(),
        "name movers only": InterpNode("logits", Exact(), children=[
            InterpNode("name movers", SameFeature("io"), paths=chains(last("name mover")))]),
    }


def random_workload(n_layers: int = 12, n_heads: int = 12, d_model: int = 768,
                    d_vocab: int = 50257, n_ctx: int = 64, n: int = 2000, seed: int = 0) -> Experiment:
    """The IOI-shaped workload on a random-weight GPT-2-shaped model (default: GPT-2 small's
    shape), as the benchmark runs it; `causal_scrubbing.experiments.ioi.random_workload`."""
    m = model(n_layers, n_heads, d_model, d_vocab, n_ctx, seed)
    return Experiment(
        name="ioi random workload",
        description="IOI-shaped hypothesis on a random-weight GPT-2-small-shaped model (benchmark)",
        graph=m.graph(), dataset=dataset(n, n_ctx, d_vocab, seed=seed), loss_fn=loss_fn,
        hypotheses=hypotheses(roles(n_layers, n_heads)),
        descriptions={"circuit": "name movers, S-inhibition, induction, duplicate and previous-token "
                                 "heads, negative and backup name movers",
                      "name movers only": "only the name movers' output claimed"},
        default_n=64,
    )
