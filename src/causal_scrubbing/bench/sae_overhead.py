"""What an SAE rewrite costs the engine: the same hypothesis scrubbed on the model's graph and
on the graph with the SAE written in (`experiments.sae`), same rows and seed.

The head-level hypotheses (`K` of induction, `+ IO finders` of IOI) claim the same paths on
both graphs, so they compute the same numbers; the SAE graph adds the encode of every lane that
reads the stream after layer 0. Time is CPU time of this process (one thread), the median of
`repeats` runs, alternating the two graphs, so a busy machine slows both alike.

    python -m causal_scrubbing.bench.sae_overhead [--n 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _time(fn, repeats: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def measure(n: int = 256, repeats: int = 3) -> dict:
    """CPU seconds of `scrub` for each case, and the ratios to the model graph's."""
    from .. import models
    from ..experiments import load
    from ..scrubbing import scrub

    induction, ioi = load("induction-sae"), load("ioi-sae")
    plain = {"induction": models.load("induction").graph(), "ioi": load("ioi").graph}
    cases = {"induction": (induction, "K (head)", "K (50 latents)"),
             "ioi": (ioi, "+ IO finders (heads)", "+ IO latents (25)")}
    out = {}
    for key, (exp, head_h, latent_h) in cases.items():
        def run(graph, h, exp=exp):
            return scrub(graph, exp.hypotheses[h], exp.dataset, exp.loss_fn, n=n, seed=0,
                         baseline=exp.baseline)

        runs = {"model graph, head claim": lambda g=plain[key], h=head_h: run(g, h),
                "SAE graph, head claim": lambda g=exp.graph, h=head_h: run(g, h),
                "SAE graph, latent claim": lambda g=exp.graph, h=latent_h: run(g, h)}
        recovered = {k: fn().loss_recovered for k, fn in runs.items()}  # also warms up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):  # alternating, so that a busy machine slows all alike
            for k, fn in runs.items():
                times[k].append(_time(fn, 1)[0])
        cpu = {k: statistics.median(v) for k, v in times.items()}
        base = cpu["model graph, head claim"]
        out[key] = {"n": n, "cpu_s": cpu, "ratio": {k: v / base for k, v in cpu.items()},
                    "recovered": recovered}
    return out


def main() -> None:  # pragma: no cover
    p = argparse.ArgumentParser(prog="python -m causal_scrubbing.bench.sae_overhead")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps({"torch": torch.__version__, **measure(a.n, a.repeats)}, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
