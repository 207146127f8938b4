"""Retention and the gate: pure functions over per-example records, no torch."""
from __future__ import annotations

import random
from typing import Any

from compressor.verify.tasks import LOWER_IS_BETTER, METRICS


def retention(metric: str, base: float, cand: float) -> float:
    """candidate / base for higher-is-better metrics; base / candidate for perplexity and loss
    (a perplexity that doubles halves the retention). Exactly 1.0 when both are equal."""
    if base == cand:
        return 1.0
    if metric in LOWER_IS_BETTER:
        return base / cand if cand > 0 else 0.0
    if base <= 0:
        return 1.0  # nothing to lose; reported as a warning by the caller
    return cand / base


def bootstrap_lower(kind: str, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]],
                    confidence: float, samples: int, seed: int) -> float:
    """One-sided lower bound of retention from a paired bootstrap over examples (windows for perplexity)."""
    fn = METRICS[kind]
    rng = random.Random(seed)
    n = len(base)
    values = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        b = fn([base[i] for i in idx])[metric]
        c = fn([cand[i] for i in idx])[metric]
        values.append(retention(metric, b, c))
    values.sort()
    k = int((1.0 - confidence) * samples)
    return values[min(max(k, 0), samples - 1)]
