"""Write the induction SAE's key-latent attribution to `checkpoints/sae/induction-resid_post0/latents.json`.

`python -m causal_scrubbing.experiments.sae.select` runs `sae.key_attribution` (EAP-IG of the
induction loss to each latent, claimed at the induction heads' keys; 256 rows that
`causal-scrub run induction-sae` at its default 2,048 rows and seed 0 never uses as reference
rows) and writes every latent's score with the command, the settings and the seconds it took.
`causal-scrub run induction-sae` claims the latents in the order of these scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import ATTRIBUTION, LATENTS_FILE, SAE_DIR, key_attribution


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAE_DIR / "induction-resid_post0" / LATENTS_FILE)
    parser.add_argument("--n", type=int, default=ATTRIBUTION["n"])
    parser.add_argument("--steps", type=int, default=ATTRIBUTION["steps"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.process_time()
    att = key_attribution(n=args.n, steps=args.steps)
    record = {
        "command": "python -m causal_scrubbing.experiments.sae.select "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "EAP-IG attribution of the induction loss to each latent, claimed at the "
                "induction heads' keys (error resampled; searching.latents.latent_attribution)",
        "settings": {**ATTRIBUTION, "n": args.n, "steps": args.steps, "method": att.method,
                     "readers": [f"{v}.{p}" for v, p in att.readers], "error": att.error},
        "none_loss": att.none_loss, "all_loss": att.all_loss, "total": att.total,
        "cpu_seconds": round(time.process_time() - began, 1),
        "top50": att.top(50),
        "scores": [round(float(s), 7) for s in att.scores],
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{att}; wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
