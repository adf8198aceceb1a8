"""Scale check: scrub a 9-node hypothesis on Pythia-410M- and Llama-3.2-1B-shaped models.

Causal scrubbing on a real-sized model costs a few forward passes per hypothesis (one per
distinct dataset the hypothesis induces) plus the import. This script measures that on the
machine it runs on: it builds a Hugging Face model of each shape with random weights (no
download: the config alone fixes every shape, so time and memory are those of the real
model), imports it with `models.from_hf`, and scrubs a hypothesis with a root and 8 heads'
direct paths (4 heads `SameFeature`, 4 `Exact`) on 64 reference rows of 32 tokens. Each model
runs in its own process, so each peak resident memory (`ru_maxrss`) is that model's alone.

    python examples/scale_check.py                    # both models, one after the other
    python examples/scale_check.py --model pythia-410m

Prints one line of timings and memory per model (see docs/performance.md, "Large models on
this machine", for the numbers measured there).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings

SHAPES = {
    # EleutherAI/pythia-410m's config: parallel attention + MLP, rotary on 1/4 of each head
    "pythia-410m": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(
        vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=2048, rotary_pct=0.25,
        use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False)),
    # meta-llama/Llama-3.2-1B's config: GQA (32 query heads, 8 key/value heads), llama3 rotary
    "llama-3.2-1b": ("LlamaForCausalLM", "LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192})),
}
ROWS, SEQ = 64, 32


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB


def run_one(name: str) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers

    import causal_scrubbing as cs
    from causal_scrubbing import models

    torch.manual_seed(0)
    model_cls, config_cls, kw = SHAPES[name]
    out: dict = {"model": name, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    hf = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw)).eval()
    out["build_s"] = time.perf_counter() - t0
    out["params_M"] = sum(p.numel() for p in hf.parameters()) / 1e6
    t0 = time.perf_counter()
    model = models.from_hf(hf)  # with the logit check on 2 rows
    out["import_s"] = time.perf_counter() - t0
    del hf
    gc.collect()
    out["peak_after_import_GB"] = peak_gb()

    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.d_vocab, (ROWS, SEQ + 1), generator=g)  # [rows, seq + 1]
    data = cs.Dataset({"tokens": tokens[:, :-1], "next": tokens[:, 1:],
                       "first": tokens[:, 0] % 4, "last": tokens[:, -2] % 4})

    def loss(logits, ref):  # [rows] mean next-token loss
        return F.cross_entropy(logits.transpose(1, 2), ref["next"], reduction="none").mean(1)

    last = cfg.n_layers - 1
    heads = [f"a{layer}.h{h}" for layer in (last, last - 1) for h in range(4)]  # 8 heads
    children = [cs.InterpNode(head, cs.SameFeature("first") if i % 2 == 0 else cs.Exact(),
                              paths=cs.direct(head)) for i, head in enumerate(heads)]
    hypothesis = cs.InterpNode("out", cs.Exact(), children=children)
    graph = model.graph()
    with torch.no_grad():
        t0 = time.perf_counter()
        model(data["tokens"])
        out["forward_s"] = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: loss recovered is not meaningful
        t0 = time.perf_counter()
        result = cs.scrub(graph, hypothesis, data, loss, seed=0)
        out["scrub_s"] = time.perf_counter() - t0
    out["scrubbed_loss"] = float(result.loss)
    out["peak_GB"] = peak_gb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), help="one model (default: each, in turn)")
    args = parser.parse_args()
    if args.model:
        print(json.dumps(run_one(args.model)), flush=True)
        return
    for name in SHAPES:  # a fresh process each, so that each peak memory is that model's
        subprocess.run([sys.executable, __file__, "--model", name], check=False, env=os.environ)


if __name__ == "__main__":
    main()
