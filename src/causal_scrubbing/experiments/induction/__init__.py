"""Redwood's induction-head hypotheses, on a 2-layer attention-only model trained here.

Model: Redwood's shape, 2 layers x 8 heads, d_model 256, Shortformer positions (added to query
and key inputs only), causal, pre-LayerNorm, untied unembedding, context 256, trained on the
King James Bible, Shakespeare and Milton with an annealed copying curriculum
(`induction.prepare`, `induction.train`; `checkpoints/induction.*`). Data: overlapping
256-token windows of the validation split. Behaviour: next-token loss at *good induction
candidates* (positions whose token occurred earlier in the sequence and is one for which
copying beats bigram statistics; `induction.data`), averaged over every candidate of the
dataset as in Redwood's code (a masked mean; nats per candidate token).

The 0% point is Redwood's: every input (q, k and v) of the induction heads resampled; 100% is
the unscrubbed model. Hypotheses (§c.3 of the method notes), with our heads in `ROLES`:

- `V`: the induction heads' values read only the token embedding (paths through layer 0
  into their v input are resampled);
- `Q`: the same for their queries (embedding and positional embedding kept);
- `K`: their keys read only the previous-token head (every other path into k resampled);
- `K prev-pos`: ... and only its attention to the previous position (attention-split rewrite);
- `naive`: V, Q and K prev-pos together;
- `refined`: Redwood's three refinements: keys may also read the previous-token head's
  attention to the two positions before that (a window of three tokens), its attention to
  the token itself, and the embeddings; queries and values may also read layer 0 at the
  current token: for the heads that attend mostly to the current token or its earlier copies
  (`ROLES["same-token"]`), the estimate "attention is the identity" (the head's write had it
  attended only to the current position, a function of the current token; what it leaves
  out is scrubbed), and for the other layer-0 heads their attention to the current position.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import ExtraNotInstalled
from ...core.graph import Graph, Group
from ...core.hypothesis import InterpNode
from ...core.names import head_name
from ...core.paths import Matcher, through, union
from ...core.rewrites import add_estimate, complement, split_attention
from ...core.samplers import Exact, Uniform
from ...models import Transformer, load
from .. import Experiment
from . import data as ind_data

#: Our heads in Redwood's roles (evidence: docs/induction.md, `induction.analysis`).
ROLES = {
    # Redwood's 1.5 and 1.6: every layer-1 head scores 0.55-0.93 on the induction score
    "induction": [f"a1.h{h}" for h in range(8)],
    # Redwood's 0.0: previous-token score 0.99 (no other layer-0 head above 0.21)
    "previous": ["a0.h2"],
    # layer-0 heads that attend mostly to the current token or its earlier copies (self plus
    # earlier copies 0.65-0.99): "attention is the identity" in the refined hypothesis
    "same-token": ["a0.h0", "a0.h3", "a0.h6"],
}

PUBLISHED = {"unscrubbed": 1.0, "baseline": 0.0, "V": 0.90, "Q": 0.51, "K": 0.83,
             "K prev-pos": 0.82, "naive": 0.36, "refined": 0.875}

DESCRIPTIONS = {
    "unscrubbed": "nothing scrubbed",
    "baseline": "all inputs of the induction heads resampled (the 0% point)",
    "V": "values read only the token embedding",
    "Q": "queries read only the embeddings",
    "K": "keys read only the previous-token head",
    "K prev-pos": "... only its attention to the previous position",
    "naive": "V + Q + K prev-pos",
    "refined": "naive, keys see a 3-token window, Q/V see layer 0 at the current token "
               "(attention as the identity for the same-token heads)",
}


def loss_fn(logits: Tensor, ref: Dataset) -> Tensor:
    """Next-token loss at a row's good induction candidates, summed and divided by the
    dataset's mean number of candidates per row [n]: its mean over rows is the masked mean
    over every candidate of the dataset (Redwood's loss), in nats per candidate token."""
    losses = F.cross_entropy(logits.transpose(1, 2), ref["next"], reduction="none")  # [n, seq]
    return (losses * ref["weight"]).sum(1)


@cache
def _tokenizer():
    return ind_data.tokenizer()


def format_inputs(ds: Dataset, row: int, width: int = 72) -> str:
    """A row's tokens decoded to text, its middle elided to fit `width` characters (for
    `causal-scrub show`); the token ids when the `tokenizers` package is not installed."""
    tokens = ds["tokens"][row].tolist()
    try:
        text = _tokenizer().decode(tokens).replace("\n", "\\n")
    except ExtraNotInstalled:
        return f"tokens = {tokens[:8]} ... ({len(tokens)} tokens)"
    if len(text) > width:
        half = (width - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return f'"{text}" ({len(tokens)} tokens)'


def dataset(stride: int = 16) -> Dataset:
    w = ind_data.windows(ind_data.load_tokens("val"), ind_data.SEQ + 1, stride)
    tokens, nxt = w[:, :-1], w[:, 1:]
    mask = (ind_data.candidates(tokens) & ind_data.good_candidates()[tokens]).float()
    weight = mask / mask.sum(1).mean()  # a candidate's weight: 1 / mean candidates per row
    return Dataset({"tokens": tokens, "next": nxt, "mask": mask, "weight": weight})


def previous_window(width: int):
    """Attention-weight mask: keys 1..width positions before the query."""
    def mask(n_q: int, n_k: int) -> Tensor:
        m = torch.zeros(n_q, n_k)
        for d in range(1, width + 1):
            m += torch.ones(n_q, n_k).tril(-d).triu(-d)
        return m
    mask.__name__ = f"previous_{width}"
    return mask


def current_position(n_q: int, n_k: int) -> Tensor:
    return torch.eye(n_q, n_k)


def graph_for(model: Transformer, check: Dataset, roles=ROLES) -> Graph:
    """The model graph with the attention splits the hypotheses need (each checked)."""
    g = model.graph()
    layer0: dict[str, tuple[int, Callable]] = {}  # part node -> (head, pattern weight)
    for h in range(model.cfg.n_heads):
        name = head_name(0, h)
        if name in roles["same-token"]:
            # "attention is the identity": the head's write as if it attended only to the
            # current position (`.identity`, a function of the current token), plus the rest
            g = add_estimate(g, name, model.head_identity_fn(0, h), check_on=check,
                             inputs={"x": g.ports(name)["v"]}, name="identity")
            continue
        if name in roles["previous"]:
            parts = {"prev": previous_window(1), "window": _window_rest(),
                     "self": current_position, "rest": _rest()}
        else:
            parts = {"self": current_position, "rest": complement(current_position)}
        g = split_attention(g, name, partial(model.head_fn, 0, h), parts, check_on=check)
        layer0.update({f"{name}.{part}": (h, w) for part, w in parts.items()})
    # all parts read the same sums: compute layer 0's patterns once for all of them
    return g.with_groups([Group(tuple(layer0), model.layer_heads_fn(0, layer0))])


def _window_rest():
    def mask(n_q, n_k):
        return previous_window(3)(n_q, n_k) - previous_window(1)(n_q, n_k)
    return mask


def _rest():
    def mask(n_q, n_k):
        return 1 - previous_window(3)(n_q, n_k) - current_position(n_q, n_k)
    return mask


def hypotheses(model: Transformer, roles=ROLES) -> dict[str, InterpNode]:
    ind, prev = roles["induction"], roles["previous"]
    layer0 = [head_name(0, h) for h in range(model.cfg.n_heads)]

    def head_paths(port: str, then: list[tuple[str, ...]]) -> Matcher:
        ms = []
        for h in ind:
            for chain in then:
                m = through(h, port=port)
                for step in chain:
                    m = m.then(step, direct=True)
                ms.append(m)
        return union(ms)

    def scrub(v=None, q=None, k=None) -> InterpNode:
        """Root keeps everything but the induction heads' inputs; each port keeps only the
        listed chains (None: the whole port is kept)."""
        kids = []
        for port, chains in (("v", v), ("q", q), ("k", k)):
            paths = (union([through(h, port=port) for h in ind]) if chains is None
                     else head_paths(port, chains))
            kids.append(InterpNode(f"{port}", Exact(), paths=paths))
        return InterpNode("logits", Exact(), other=Exact(), children=[
            InterpNode("induction heads", Exact(), paths=union([through(h) for h in ind]),
                       children=kids)])

    emb_v = [("embed",)]
    emb_q = [("embed",), ("pos_embed",)]
    # layer 0 at the current token: each head's attention to it, or, for the heads that
    # attend to earlier copies of the current token, the "attention is the identity" estimate
    self_parts = [(h, f"{h}.identity" if h in roles["same-token"] else f"{h}.self")
                  for h in layer0]
    return {
        "unscrubbed": InterpNode("logits", Exact()),
        "baseline": InterpNode("logits", Exact(), other=Exact(), children=[
            InterpNode("induction heads", Uniform(), paths=union([through(h) for h in ind]))]),
        "V": scrub(v=emb_v),
        "Q": scrub(q=emb_q),
        "K": scrub(k=[(p,) for p in prev]),
        "K prev-pos": scrub(k=[(p, f"{p}.prev") for p in prev]),
        "naive": scrub(v=emb_v, q=emb_q, k=[(p, f"{p}.prev") for p in prev]),
        "refined": scrub(v=emb_v + self_parts, q=emb_q + self_parts,
                         k=[(p, f"{p}.{part}") for p in prev for part in ("prev", "window", "self")]
                         + [("embed",), ("pos_embed",)]),
    }


#: Rows every attention split is checked on (the rewritten graph must give the model's output).
CHECK_ROWS = 32


@cache
def _shared(checkpoint: str) -> tuple[Dataset, dict[str, InterpNode]]:
    """What every build of `checkpoint` shares and no run moves (the dataset and the
    hypotheses), after checking every rewrite once on `CHECK_ROWS` rows. The model itself
    is not cached: see `build`."""
    model = load(checkpoint)
    ds = dataset()
    graph_for(model, ds.rows(torch.arange(CHECK_ROWS)))
    return ds, hypotheses(model)


def build(checkpoint: str = "induction") -> Experiment:
    """The induction experiment on the bundled checkpoint (or a checkpoint path).

    Each call loads its own copy of the model, so a run with `device=` moves that copy only
    and never the model of another `Experiment` (the dataset and hypotheses are built once).
    """
    ds, hyps = _shared(checkpoint)
    model = load(checkpoint)
    # The same rewrites as in `_shared`, on the same weights, already checked on CHECK_ROWS
    # rows there; a couple of rows re-check this copy.
    graph = graph_for(model, ds.rows(torch.arange(2)))
    return Experiment(
        name="induction",
        description="Redwood's induction-head hypotheses on our 2-layer attention-only model "
                    "(KJV, Shakespeare, Milton)",
        graph=graph, dataset=ds, loss_fn=loss_fn, hypotheses=dict(hyps),
        baseline=hyps["baseline"], published=dict(PUBLISHED), descriptions=dict(DESCRIPTIONS),
        default_n=2048, format_inputs=format_inputs, search_graph=model.graph(),
    )
