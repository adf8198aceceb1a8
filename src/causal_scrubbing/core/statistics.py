"""Statistics: loss recovered, its bootstrap interval, and per-subset numbers.

    loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_model)

The interval resamples reference rows with replacement; the three per-example losses are
resampled together, since they share rows.

Loss recovered is a ratio, and it means nothing when its denominator, L_baseline - L_model,
is about zero: a baseline no worse than the model leaves nothing to recover, and the
percentage and its interval then swing wildly ("382% [-304%, 310%]"). `recovery_defined`
decides this (the criterion is in its docstring); such a result is marked
`recovery_defined=False`, and `scrub` warns with `UndefinedRecoveryWarning`.

Example:
    >>> import torch
    >>> float(recovered(torch.tensor(2.0), torch.tensor(1.5), torch.tensor(1.0)))
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .draws import generator
from .results import ScrubResult

#: |d| at most this fraction of the larger loss counts as equal up to float noise.
RECOVERY_RTOL = 1e-6
#: |d| below this fraction of the larger loss counts as close ...
RECOVERY_CLOSE = 0.1
#: ... and, if also below this many standard errors of d, as coinciding within noise.
RECOVERY_Z = 1.96
#: An explained gap (baseline - model loss) below this fraction of the baseline loss is small.
SMALL_GAP = 0.2


def small_gap(baseline_loss: float, model_loss: float) -> bool:
    """Whether the model does only a little better than the baseline: the explained gap
    L_baseline - L_model is below `SMALL_GAP` of |L_baseline|. Loss recovered is defined
    then, but each of its percentage points is a small amount of loss.

    >>> small_gap(0.596, 0.506), small_gap(2.3, 0.01), small_gap(0.0, -5.0)
    (True, False, False)
    """
    return baseline_loss - model_loss < SMALL_GAP * abs(baseline_loss)


def recovery_defined(baseline: Tensor, model: Tensor) -> bool:
    """Whether loss recovered is defined for these per-example baseline and model losses [n].

    Its denominator is d = L_baseline - L_model = mean(baseline_i - model_i); let
    scale = max(|L_baseline|, |L_model|) and SE(d) = std(baseline_i - model_i) / sqrt(n), the
    paired standard error over reference rows. Recovery is *undefined* when the two losses
    coincide, that is when either

    - |d| <= 1e-6 * scale: they are equal up to float noise (this includes d = 0, and decides
      alone when n = 1), or
    - |d| < 0.1 * scale and |d| < 1.96 * SE(d): they are within 10% of each other and the
      paired 95% interval of d contains zero, so the baseline is not measurably worse than
      the model. The bootstrap interval of the ratio then spans infinity, and no percentage
      is meaningful.

    A baseline much worse than the model keeps recovery defined even at a small n (its
    interval is just wide).

    >>> recovery_defined(torch.tensor([2.0, 2.1, 1.9]), torch.tensor([0.1, 0.0, 0.2]))
    True
    >>> recovery_defined(torch.tensor([1.0, 3.0, 2.1]), torch.tensor([2.5, 1.5, 2.0]))
    False
    """
    b, m = baseline.double(), model.double()
    d = float((b - m).mean())
    scale = max(abs(float(b.mean())), abs(float(m.mean())))
    if d == 0 or abs(d) <= RECOVERY_RTOL * scale:
        return False
    n = len(b)
    if n > 1 and abs(d) < RECOVERY_CLOSE * scale:
        se = float((b - m).std()) / math.sqrt(n)
        if abs(d) < RECOVERY_Z * se:
            return False
    return True


def recovered(baseline: Tensor, scrubbed: Tensor, model: Tensor) -> Tensor:
    """(L_baseline - L_scrubbed) / (L_baseline - L_model), elementwise over leading axes."""
    return (baseline - scrubbed) / (baseline - model)


def bootstrap(per_example: Mapping[str, Tensor], gen: torch.Generator, n_resamples: int = 1000,
              block: int = 100) -> tuple[float, float, float]:
    """(ci_low, ci_high, se) of loss recovered, resampling reference rows with replacement."""
    s, m, b = per_example["scrubbed"], per_example["model"], per_example["baseline"]
    n = len(s)
    stats = []
    for start in range(0, n_resamples, block):
        k = min(block, n_resamples - start)
        idx = torch.randint(n, (k, n), generator=gen)  # [k, n]
        stats.append(recovered(b[idx].mean(1), s[idx].mean(1), m[idx].mean(1)))
    r = torch.cat(stats).double()
    r = r[torch.isfinite(r)]
    if len(r) < 2:
        return (math.nan, math.nan, math.nan)
    lo, hi = torch.quantile(r, torch.tensor([0.025, 0.975], dtype=r.dtype)).tolist()
    return (lo, hi, float(r.std()))


def summarize(name: str, per_example: dict[str, Tensor], *, seed: int, n_bootstrap: int = 1000,
              subsets: Mapping[str, Tensor] | None = None,
              settings: dict[str, Any] | None = None) -> ScrubResult:
    """Build a `ScrubResult` from per-example losses (`scrubbed`, `model`, `baseline`)."""
    s, m, b = (per_example[k].double() for k in ("scrubbed", "model", "baseline"))
    rec = float(recovered(b.mean(), s.mean(), m.mean()))
    lo, hi, se = bootstrap(per_example, generator(seed, "bootstrap"), n_bootstrap)
    subset_stats = {}
    for key, mask in (subsets or {}).items():
        mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
        k = int(mask.sum())
        subset_stats[key] = {
            "n": k,
            "scrubbed_loss": float(s[mask].mean()) if k else math.nan,
            "model_loss": float(m[mask].mean()) if k else math.nan,
            "baseline_loss": float(b[mask].mean()) if k else math.nan,
            "loss_recovered": float(recovered(b[mask].mean(), s[mask].mean(), m[mask].mean()))
            if k else math.nan,
            "recovery_defined": recovery_defined(b[mask], m[mask]) if k else False,
        }
    n = len(s)
    return ScrubResult(
        name=name, loss=float(s.mean()), model_loss=float(m.mean()), baseline_loss=float(b.mean()),
        loss_recovered=rec, ci=(lo, hi), recovered_se=se,
        loss_se=float(s.std() / math.sqrt(n)) if n > 1 else math.nan, n=n, seed=seed,
        per_example=per_example, subsets=subset_stats, settings=settings or {},
        recovery_defined=recovery_defined(b, m),
    )


