"""Sparse autoencoders (SAEs) in the graph: `x = sum of latent groups + decoder bias + error`.

An SAE maps an activation x [..., d_in] to sparse latents f = act(pre(x)) [..., d_sae] and back,
`decode(f) = f @ W_dec + b_dec`. With the *error* `e = x - decode(f)` the identity

    x = sum_g (f * mask_g) @ W_dec + b_dec + e

is exact for any partition of the latents into groups g. `sae_rewrite` writes it into a graph:
the *site* (a node's output, or a residual stream: the sum of the nodes that write to it)
becomes a sum node whose parts are one node per latent group (`{site}.{group}`), the decoder
bias (`{site}.bias`) and the error (`{site}.error`), each reading what the site read. A
hypothesis then claims a group of latents, or the error, as it claims any node: `through(...)`
with `SameFeature`, `Exact` or resampling. The rewrite is checked extensionally on a batch,
as every rewrite is. All parts form one node `Group`, so parts that read the same inputs (the
same lane) are computed by one encode.

Latent groups, not one node per latent: a hypothesis names the latents it claims
(`groups={"prev": [3, 17, 40]}`), the rest form one node (`rest`), so an SAE with thousands
of latents adds a handful of graph nodes. `groups="each"` gives one node per latent (small SAEs).

Files follow the SAELens directory format, read and written here without that dependency:
`cfg.json` (`architecture` standard / topk / jumprelu, `d_in`, `d_sae`, `k`,
`apply_b_dec_to_input`, `normalize_activations`, `metadata.hook_name`) and
`sae_weights.safetensors` (`W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in],
`b_dec` [d_in], and `threshold` [d_sae] for JumpReLU). `hook_site` maps TransformerLens hook
names (`blocks.0.hook_resid_post`, `blocks.1.hook_mlp_out`, ...) to this library's graph
nodes. See docs/sae.md.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> from causal_scrubbing.models import sae as sae_mod
    >>> g = cs.Graph([cs.Input("x"), cs.Node("h", lambda i: torch.tanh(i), i="x"),
    ...               cs.Node("out", lambda r: r.sum(-1), r="h")], output="out")
    >>> sae = sae_mod.SAE.random(d_in=4, d_sae=8, architecture="topk", k=2, seed=0)
    >>> batch = cs.Dataset({"x": torch.randn(5, 4)})
    >>> g2 = sae_mod.sae_rewrite(g, "h", sae, groups={"a": [0, 1]}, check_on=batch)
    >>> g2.ports("h")["parts"]
    ('h.a', 'h.rest', 'h.bias', 'h.error')
    >>> torch.allclose(g2(batch), g(batch), atol=1e-5)
    True
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.data import Dataset
from ..core.errors import CheckpointError, ScrubError, unknown_name
from ..core.graph import Graph, Group, Input, Node
from ..core.names import parse_head
from ..core.rewrites import RewriteError, check_equal, replace_nodes

#: SAE architectures read and written (SAELens `architecture` values).
ARCHITECTURES = ("standard", "topk", "jumprelu")
#: The SAELens file names.
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
#: The SAELens release whose directory layout `SAE.save` writes (`metadata.sae_lens_version`).
FORMAT_VERSION = "6.0.0"
#: Names a latent group may not take (they are the other parts of the site).
RESERVED = ("bias", "error")


class SAE(nn.Module):
    """A sparse autoencoder: `encode(x) = act((x - b_dec) @ W_enc + b_enc)` (the `- b_dec` only
    with `apply_b_dec_to_input`), `decode(f) = f @ W_dec + b_dec`.

    `act` is ReLU (`standard`), ReLU of the `k` largest pre-activations, all others zero
    (`topk`), or ReLU where the pre-activation exceeds `threshold` (`jumprelu`).

    Args:
        d_in, d_sae: input and latent widths.
        architecture: one of `ARCHITECTURES`.
        k: latents kept per activation (`topk` only).
        apply_b_dec_to_input: subtract `b_dec` before encoding (SAELens' default, True).
        metadata: SAELens `metadata` (`hook_name`, `model_name`, ...), kept on save.

    Example:
        >>> import torch
        >>> sae = SAE.random(d_in=6, d_sae=12, architecture="topk", k=3, seed=0)
        >>> x = torch.randn(2, 5, 6)
        >>> f = sae.encode(x)  # [2, 5, 12], at most 3 nonzero per position
        >>> tuple(f.shape), int((f != 0).sum(-1).max()) <= 3
        ((2, 5, 12), True)
    """

    threshold: Tensor

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = None,
                 apply_b_dec_to_input: bool = True, metadata: Mapping[str, Any] | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise CheckpointError(f"SAE architecture {architecture!r} is not supported; use one of "
                                  f"{ARCHITECTURES} (gated and other SAELens architectures are not read).")
        if architecture == "topk" and (k is None or not 0 < k <= d_sae):
            raise CheckpointError(f"A topk SAE needs k in 1..d_sae = {d_sae}; got k = {k}.")
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))

    @classmethod
    def random(cls, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = None,
               seed: int = 0, **kwargs) -> SAE:
        """An SAE with random weights (unit-norm decoder rows, encoder their transpose): the
        starting point of training, and a test fixture."""
        sae = cls(d_in, d_sae, architecture, k, **kwargs)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(d_sae, d_in, generator=g)
            sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
            if architecture == "jumprelu":
                sae.threshold.fill_(0.1)
        return sae

    @property
    def hook_name(self) -> str | None:
        return self.metadata.get("hook_name")

    def pre(self, x: Tensor) -> Tensor:
        """Pre-activations [..., d_sae] of x [..., d_in]."""
        if x.shape[-1] != self.d_in:
            raise ScrubError(f"The SAE reads vectors of width d_in = {self.d_in} but got a tensor "
                             f"of shape {tuple(x.shape)}; apply it at a site of that width.")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        """Latent activations [..., d_sae] from pre-activations [..., d_sae]."""
        if self.architecture == "topk":
            assert self.k is not None
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
        if self.architecture == "jumprelu":
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations f [..., d_sae] of x [..., d_in]."""
        return self.activation(self.pre(x))

    def decode(self, f: Tensor) -> Tensor:
        """The reconstruction [..., d_in] from latents f [..., d_sae]."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def config(self) -> dict[str, Any]:
        """The SAELens `cfg.json` contents."""
        cfg: dict[str, Any] = {
            "architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
            "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none", "reshape_activations": "none",
            # the layout this file follows (SAELens reads files without it as pre-6.0 ones)
            "metadata": {"sae_lens_version": FORMAT_VERSION, **self.metadata}}
        if self.architecture == "topk":
            cfg["k"] = self.k
        return cfg

    def save(self, path: str | Path) -> Path:
        """Write the SAELens directory `path` (`cfg.json`, `sae_weights.safetensors`)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(weights, str(path / WEIGHTS_FILE))
        (path / CFG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        k = f", k={self.k}" if self.architecture == "topk" else ""
        hook = f", hook_name={self.hook_name!r}" if self.hook_name else ""
        return f"SAE({self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}{hook})"


def load_sae(path: str | Path) -> SAE:
    """Read a SAELens SAE directory (`cfg.json`, `sae_weights.safetensors`); never runs code.

    Accepts the current layout (`metadata.hook_name`) and older ones (top-level `hook_name`,
    `activation_fn_str: "topk"` with `activation_fn_kwargs.k`, a JumpReLU `log_threshold`).

    Example:
        >>> import tempfile
        >>> sae = SAE.random(d_in=4, d_sae=8, architecture="jumprelu", seed=1)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = load_sae(sae.save(d))
        >>> back, torch.equal(back.threshold, sae.threshold)
        (SAE(jumprelu, d_in=4, d_sae=8), True)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights_file = path / CFG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"SAE file {f} is missing; an SAE directory holds {CFG_FILE} and "
                                  f"{WEIGHTS_FILE} (the SAELens format).")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"SAE config {cfg_file} is not valid JSON: {err}") from err
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"SAE weights {weights_file} are corrupted or not a safetensors "
                              f"file: {err}") from err
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k")
    if cfg.get("activation_fn_str") == "topk":  # older SAELens: topk as an activation function
        arch, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise CheckpointError(f"SAE {path}: normalize_activations = {norm!r} is not supported; fold "
                              "the scaling into the weights first (SAELens "
                              "fold_activation_norm_scaling_factor) and save with 'none'.")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise CheckpointError(f"SAE {path}: reshape_activations = {cfg['reshape_activations']!r} "
                              "(hook_z SAEs) is not supported; only SAEs on d_model-wide sites.")
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"SAE config {cfg_file} needs integer d_in and d_sae: {err}") from err
    metadata = dict(cfg.get("metadata") or cfg.get("meta") or {})
    for key in ("hook_name", "model_name", "hook_layer", "hook_head_index"):
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    sae = SAE(d_in, d_sae, arch, k, bool(cfg.get("apply_b_dec_to_input", True)), metadata)
    if arch == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    expected = {k: v.shape for k, v in sae.state_dict().items()}
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"SAE weights {weights_file} do not match a {arch} SAE: missing "
                              f"{sorted(missing)}, unexpected {sorted(unexpected)}.")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"SAE weights {weights_file}: {name} has shape "
                                  f"{tuple(tensors[name].shape)}, but d_in = {d_in} and d_sae = "
                                  f"{d_sae} need {tuple(shape)}.")
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(tensors[name].float())
    return sae.eval()


# ---- sites: TransformerLens hook names -> graph nodes -------------------------------------------

_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|"
                   r"hook_mlp_out)$")


def _layer_of(name: str) -> int | None:
    """The layer a residual writer belongs to (`a1.h3`, `a1`, `m1` -> 1), None for embeddings."""
    head = parse_head(name, strict=False)
    if head is not None:
        return int(head[1:].split(".h")[0])
    m = re.match(r"^[am](\d+)$", name)
    return int(m.group(1)) if m else None


def _residual_writers(graph: Graph) -> tuple[str, ...]:
    """The writers of the final residual stream: what the output's widest port sums."""
    ports = graph.ports(graph.output)
    if not ports:
        raise ScrubError("The graph's output node has no ports; it reads no residual stream.")
    return max(ports.values(), key=len)


def hook_site(graph: Graph, hook: str) -> str | tuple[str, ...]:
    """The graph site of a TransformerLens hook name, on a `Transformer.graph()`-style graph:
    a node name (`hook_embed` -> `embed`, `blocks.L.hook_mlp_out` -> `mL`), or the residual
    writers whose sum it is (`blocks.L.hook_resid_post`: every writer up to layer L's;
    `hook_resid_pre`, `hook_resid_mid`, and `hook_attn_out`: layer L's heads).

    Example:
        >>> import causal_scrubbing as cs
        >>> cfg = cs.models.Config(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16,
        ...                        d_vocab=5, n_ctx=6)
        >>> g = cs.models.Transformer(cfg).graph()
        >>> hook_site(g, "blocks.0.hook_resid_post")
        ('embed', 'pos_embed', 'a0.h0', 'a0.h1', 'm0')
        >>> hook_site(g, "blocks.1.hook_mlp_out"), hook_site(g, "blocks.1.hook_attn_out")
        ('m1', ('a1.h0', 'a1.h1'))
    """
    if hook in ("hook_embed", "hook_pos_embed"):
        name = hook[len("hook_"):]
        graph.check_node(name, f" (for the hook {hook!r})")
        return name
    m = _HOOK.match(hook)
    if m is None:
        raise ScrubError(f"{hook!r} is not a supported TransformerLens hook name; use "
                         "blocks.L.hook_resid_pre / hook_resid_mid / hook_resid_post / hook_attn_out / "
                         "hook_mlp_out, hook_embed or hook_pos_embed, or give a graph node name.")
    layer, kind = int(m.group(1)), m.group(2)
    writers = _residual_writers(graph)
    layers = [_layer_of(w) for w in writers]
    if layer not in layers:
        raise ScrubError(f"Hook {hook!r}: the graph has no layer {layer} (layers "
                         f"{sorted({x for x in layers if x is not None})}).")
    if kind == "hook_mlp_out":
        name = f"m{layer}"
        graph.check_node(name, f" (for the hook {hook!r}; attention-only models have no MLP)")
        return name
    if kind == "hook_attn_out":
        attn = tuple(w for w, x in zip(writers, layers) if x == layer and not w.startswith("m"))
        return attn[0] if len(attn) == 1 else attn
    if kind == "hook_resid_pre":
        return tuple(w for w, x in zip(writers, layers) if x is None or x < layer)
    if kind == "hook_resid_mid":
        return tuple(w for w, x in zip(writers, layers)
                     if x is None or x < layer or (x == layer and not w.startswith("m")))
    return tuple(w for w, x in zip(writers, layers) if x is None or x <= layer)


def site_name(site: str) -> str:
    """The graph node name a site gets: a node keeps its name; a residual hook becomes
    `resid_pre{L}`, `resid_mid{L}`, `resid_post{L}` or `attn_out{L}`.

    >>> site_name("blocks.0.hook_resid_post"), site_name("m1")
    ('resid_post0', 'm1')
    """
    m = _HOOK.match(site)
    if m is None:
        return site
    return f"{m.group(2)[len('hook_'):]}{m.group(1)}"


def residual_node(graph: Graph, writers: Sequence[str], name: str, *, check_on: Dataset) -> Graph:
    """Give the residual stream `sum(writers)` a node of its own: `name` (port `x` reading
    `writers`), read instead of those writers by every port that sums all of them (the run of
    writers in its upstream tuple becomes `name`). Checked on `check_on`.

    Example:
        >>> import torch, causal_scrubbing as cs
        >>> g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i + 1, i="x"),
        ...               cs.Node("b", lambda i: i * 2, i=["x", "a"]),
        ...               cs.Node("out", lambda r: r, r=["x", "a", "b"])], output="out")
        >>> g2 = residual_node(g, ("x", "a"), "r", check_on=cs.Dataset({"x": torch.ones(2)}))
        >>> g2.ports("b"), g2.ports("out")
        ({'i': ('r',)}, {'r': ('r', 'b')})
    """
    writers = tuple(writers)
    if not writers:
        raise RewriteError("A residual site needs at least one writer node.")
    for w in writers:
        graph.check_node(w, f" (a writer of the residual site {name!r})")
    if name in graph.nodes:
        raise RewriteError(f"Cannot add the residual node {name!r}: the graph already has a node of "
                           "that name; pass another name.")
    feeds = set(writers)
    for w in writers:
        feeds |= graph.upstream[w]
    n = len(writers)
    rewired: dict[str, Node] = {}
    for node_name, node in graph.nodes.items():
        if not isinstance(node, Node):
            continue
        ports = dict(node.ports)
        changed = False
        for port, ups in node.ports.items():
            starts = [i for i in range(len(ups) - n + 1) if ups[i:i + n] == writers]
            if starts:
                i = starts[0]
                ports[port] = (*ups[:i], name, *ups[i + n:])
                changed = True
            elif set(writers) <= set(ups) and node_name not in feeds:
                raise RewriteError(f"Port {node_name}.{port} reads every writer of the residual "
                                   f"site {name!r} but not as one run in that order; list the "
                                   "writers in the order the port sums them.")
        if changed:
            rewired[node_name] = Node(node_name, node.fn, **ports)
    if not rewired:
        raise RewriteError(f"No port of the graph sums the writers {writers} of the residual site "
                           f"{name!r}; it would have no reader.")
    site = Node(name, lambda x: x, x=writers)
    nodes: list[Input | Node] = []
    for node_name, node in graph.nodes.items():
        nodes.append(rewired.get(node_name, node))
        if node_name == writers[-1]:
            nodes.append(site)
    new = Graph(nodes, output=graph.output, module=graph.module, groups=graph.groups)
    return check_equal(graph, new, check_on, f"residual_node({name!r})")


def _latent_groups(sae: SAE, groups: Mapping[str, Sequence[int]] | str | None) -> dict[str, list[int]]:
    """Group name -> latent indices, covering every latent once (`rest` collects the others)."""
    if groups is None:
        return {"latents": list(range(sae.d_sae))}
    if groups == "each":
        return {f"f{i}": [i] for i in range(sae.d_sae)}
    if isinstance(groups, str):
        raise RewriteError(f"groups = {groups!r}: give a mapping name -> latent indices, 'each' "
                           "(one node per latent) or None (all latents in one node).")
    out: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for gname, idx in groups.items():
        if gname in RESERVED or gname == "rest" or not gname:
            raise RewriteError(f"Latent group name {gname!r} is reserved (the site's parts "
                               f"{RESERVED} and the remainder 'rest'); rename it.")
        ids = sorted({int(i) for i in idx})
        if not ids:
            raise RewriteError(f"Latent group {gname!r} is empty; give it at least one latent.")
        for i in ids:
            if not 0 <= i < sae.d_sae:
                raise RewriteError(f"Latent group {gname!r}: latent {i} is out of range "
                                   f"(the SAE has d_sae = {sae.d_sae}).")
            if i in seen:
                raise RewriteError(f"Latent {i} is in both groups {seen[i]!r} and {gname!r}; "
                                   "latent groups must not overlap.")
            seen[i] = gname
        out[gname] = ids
    rest = [i for i in range(sae.d_sae) if i not in seen]
    if rest:
        out["rest"] = rest
    return out


def sae_parts(sae: SAE, groups: Mapping[str, Sequence[int]] | str | None = None
              ) -> Callable[[Tensor], dict[str, Tensor]]:
    """x [..., d_in] -> {group: its latents' decoded sum, "bias": b_dec, "error": x minus the
    others}, each [..., d_in]; summed in that order they give x back (to float rounding, most
    often exactly). One encode for all parts.

    >>> sae = SAE.random(d_in=3, d_sae=6, architecture="standard", seed=0)
    >>> x = torch.randn(4, 3)
    >>> parts = sae_parts(sae, {"a": [0, 2]})(x)
    >>> list(parts), torch.allclose(sum(parts.values()), x, atol=1e-6)
    (['a', 'rest', 'bias', 'error'], True)
    """
    index = _latent_groups(sae, groups)
    ids = {g: torch.tensor(v) for g, v in index.items()}
    member = {g: torch.zeros(sae.d_sae, dtype=torch.bool).index_fill(0, v, True) for g, v in ids.items()}
    single = len(index) == 1

    def parts(x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if sae.architecture == "topk" and x.device.type == "cpu":
            # decode from the k active latents of each token (a sparse product: N * k * d_in
            # instead of N * d_sae * d_in), each group's entries kept by a mask
            assert sae.k is not None
            pre = sae.pre(x)  # [..., d_sae]
            top = pre.topk(sae.k, dim=-1)
            vals, idx = F.relu(top.values).reshape(-1, sae.k), top.indices.reshape(-1, sae.k)  # [N, k]
            n = vals.shape[0]
            crow = torch.arange(0, n * sae.k + 1, sae.k, device=x.device)
            for g in ids:
                v = vals if single else vals * member[g].to(x.device)[idx]
                with warnings.catch_warnings():  # "CSR support is in beta"
                    warnings.simplefilter("ignore", UserWarning)
                    sparse = torch.sparse_csr_tensor(crow, idx.reshape(-1), v.reshape(-1),
                                                     size=(n, sae.d_sae), check_invariants=False)
                    out[g] = (sparse @ sae.W_dec).reshape(x.shape)  # [..., d_in]
        else:
            f = sae.encode(x)  # [..., d_sae]
            for g, gi in ids.items():
                if single:
                    out[g] = f @ sae.W_dec  # [..., d_in]
                else:
                    gi = gi.to(f.device)
                    out[g] = f.index_select(-1, gi) @ sae.W_dec.index_select(0, gi)  # [..., d_in]
        out["bias"] = sae.b_dec.expand_as(x)
        # x minus the other parts summed in the order the site's port sums them, so that the
        # port's sum gives back x to the last bit wherever the subtraction is exact (Sterbenz:
        # the reconstruction within a factor two of x), not merely to float rounding
        recon = out[next(iter(ids))]
        for part in [*list(ids)[1:], "bias"]:
            recon = recon + out[part]
        out["error"] = x - recon
        return out

    return parts


def sae_rewrite(graph: Graph, site: str | Sequence[str], sae: SAE, *, check_on: Dataset,
                groups: Mapping[str, Sequence[int]] | str | None = None,
                name: str | None = None) -> Graph:
    """Write the SAE into `graph` at `site`: the site becomes a sum node (port `parts`) of one
    node per latent group (`{site}.{group}`), the decoder bias (`{site}.bias`) and the error
    (`{site}.error`), checked extensionally on `check_on` (`RewriteError` if the outputs differ).

    Args:
        site: a node name (its output is the SAE's input, e.g. `"m0"`), a tuple of residual
            writers (their sum, e.g. `("embed", "a0.h0", "a0.h1")`), or a TransformerLens hook
            name (`"blocks.0.hook_resid_post"`, see `hook_site`). A residual site first gets a
            node of its own (`residual_node`), named `name` or by `site_name`.
        groups: latent groups (name -> latent indices; the others form `rest`), `"each"` (one
            node per latent), or None (all latents in one node `latents`).

    The parts read what the site read and form one node `Group` (one encode computes them all
    when they read the same inputs). Paths through `site` still match; `through(site).then(
    f"{site}.{group}")` claims a group's latents, `f"{site}.error"` the error term.
    """
    if isinstance(site, str) and site not in graph.nodes and site.startswith(("blocks.", "hook_")):
        hook, site = site, hook_site(graph, site)
        name = name or (site if isinstance(site, str) else site_name(hook))
    if not isinstance(site, str):
        writers = tuple(site)
        if len(writers) == 1 and name is None:
            site = writers[0]
        else:
            name = name or "resid"
            graph = residual_node(graph, writers, name, check_on=check_on)
            site = name
    graph.check_node(site, " (the SAE site)")
    original = graph.nodes[site]
    if not isinstance(original, Node):
        raise RewriteError(f"Cannot put an SAE on input leaf {site!r}; use the node that reads it.")
    index = _latent_groups(sae, groups)
    names = [*index, *RESERVED]
    for part in names:
        if f"{site}.{part}" in graph.nodes:
            raise RewriteError(f"The graph already has a node {site}.{part}; is an SAE already "
                               f"written at {site!r}?")
    fn = original.fn
    split = sae_parts(sae, groups)

    def group_fn(**ports: Tensor) -> dict[str, Tensor]:
        parts = split(fn(**ports))
        return {f"{site}.{p}": v for p, v in parts.items()}

    part_nodes: list[Input | Node] = [
        Node(f"{site}.{p}", lambda _p=f"{site}.{p}", **ports: group_fn(**ports)[_p], **original.ports)
        for p in names]
    members = [n.name for n in part_nodes]
    sum_node = Node(site, _sum_parts, parts=members)
    new = replace_nodes(graph, {site: [*part_nodes, sum_node]})
    module = sae if graph.module is None else nn.ModuleList([graph.module, sae])  # .to(device) moves both
    groups_ = [*new.groups, Group(tuple(members), group_fn)]
    new = Graph(list(new.nodes.values()), new.output, module, groups_)
    return check_equal(graph, new, check_on, f"sae_rewrite({site!r})")


def _sum_parts(parts: Tensor) -> Tensor:
    return parts


def part_names(graph: Graph, site: str) -> list[str]:
    """The part nodes of the SAE at `site` (latent groups, then bias and error).

    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> g2 = sae_rewrite(g, "out", SAE.random(2, 4, "topk", k=1), check_on=cs.Dataset(
    ...     {"x": torch.randn(3, 2)}))
    >>> part_names(g2, "out")
    ['out.latents', 'out.bias', 'out.error']
    """
    graph.check_node(site, " (an SAE site)")
    parts = graph.ports(site).get("parts")
    if parts is None or not all(p.startswith(f"{site}.") for p in parts):
        raise unknown_name("SAE site", site, [n for n in graph.nodes if "parts" in graph.ports(n)])
    return list(parts)


def replaced(graph: Graph, site: str, sae: SAE, keep_error: bool = False) -> Graph:
    """`graph` with node `site`'s output replaced by its SAE reconstruction (the error term
    dropped), for the SAE's own reconstruction loss; `keep_error` adds the error back (the
    original function, to float rounding). Not a rewrite: the output changes.

    >>> import torch, causal_scrubbing as cs
    >>> g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
    >>> sae = SAE.random(2, 4, "topk", k=4)
    >>> x = torch.randn(3, 2)
    >>> torch.allclose(replaced(g, "out", sae)(cs.Dataset({"x": x})), sae(x))
    True
    """
    graph.check_node(site, " (the SAE site)")
    original = graph.nodes[site]
    if not isinstance(original, Node):
        raise RewriteError(f"Cannot replace input leaf {site!r}.")
    fn = original.fn

    def recon(**ports: Tensor) -> Tensor:
        x = fn(**ports)
        return x if keep_error else sae(x)

    return replace_nodes(graph, {site: [Node(site, recon, **original.ports)]})
