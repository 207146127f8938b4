"""Retention and the gate: pure functions over per-example records, no torch."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Sequence, cast

from compressor.verify.kinds.base import kind as task_kind

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    class GatedTask(Protocol):
        """What the gate reads and sets of a task's result (``compressor.verify.report.TaskResult``, whose module
        imports this one)."""

        passed: bool | None

        @property
        def verdict_value(self) -> float | None: ...
        @property
        def threshold(self) -> float: ...
        @property
        def own_threshold(self) -> bool: ...
        @property
        def failure(self) -> str | None: ...


def retention(higher_is_better: bool, base: float, cand: float) -> float:
    """candidate / base for higher-is-better metrics; base / candidate for lower-is-better ones such as
    perplexity (a perplexity that doubles halves the retention). Exactly 1.0 when both are equal."""
    if base == cand:
        return 1.0
    if not higher_is_better:
        return base / cand if cand > 0 else 0.0
    if base <= 0:
        raise ValueError("retention is undefined when the base scores <= 0 (the caller refuses such a task)")
    return cand / base


def task_passes(value: float, own_threshold: float | None, floor: float, aggregate: str) -> bool | None:
    """Whether one task passes on its own; None when it does not gate on its own.

    The rule, one place for the verdict, report.md, junit.xml and the exit code:
    - ``all``: every task must reach its own ``min_retention`` if it has one, else the gate's.
    - ``mean``: the mean of the gated values must reach the gate's ``min_retention``, *and* a task
      with its own ``min_retention`` must still reach it (task thresholds win); a task without one
      only counts towards the mean.
    The gated value is the retention, or its bootstrap lower bound with ``confidence``.
    """
    if aggregate == "mean" and own_threshold is None:
        return None
    return value >= (own_threshold if own_threshold is not None else floor)


def task_verdict(t: GatedTask, floor: float, aggregate: str) -> bool | None:
    """Set and return one task's ``passed`` (see ``task_passes``): False for a task without a score,
    None for one that does not gate."""
    value = t.verdict_value
    t.passed = (False if t.failure else None if value is None
                else task_passes(value, t.threshold if t.own_threshold else None, floor, aggregate))
    return t.passed


def judge(tasks: Sequence[GatedTask], floor: float, aggregate: str) -> tuple[bool, float]:
    """Each task's ``passed`` and the verdict, from the numbers alone: ``verify`` decides with it, and
    ``avss run`` re-decides a resumed verify with it (a record never carries a verdict of its own).

    A task that failed without a score (``failure``: non-finite outputs) fails and weighs 0 in the
    aggregate; a task whose retention is undefined (base scores 0) does not gate. Raises ``ValueError``
    when no task gates at all (the caller says why)."""
    for t in tasks:
        task_verdict(t, floor, aggregate)
    gating = [t for t in tasks if t.verdict_value is not None]
    if not gating:
        raise ValueError("no task gates")
    values = cast("list[float]", [t.verdict_value for t in gating])  # gating: the tasks with a value
    return aggregate_verdict(values, [t.passed for t in gating], floor, aggregate)


def aggregate_verdict(values: list[float], passed: list[bool | None], floor: float, aggregate: str) -> tuple[bool, float]:
    """(gate passed, aggregate value): see ``task_passes`` for the rule."""
    if not values:
        return False, 0.0
    if aggregate == "mean":
        agg = sum(values) / len(values)
        return agg >= floor and not any(p is False for p in passed), agg
    return not any(p is False for p in passed), min(values)


def bootstrap_lower(kind: str, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]],
                    confidence: float, samples: int, seed: int) -> float:
    """One-sided lower bound of retention from a paired bootstrap over examples (windows for perplexity)."""
    fn = task_kind(kind).metrics
    hib = task_kind(kind).higher_is_better(metric)
    rng = random.Random(seed)
    n = len(base)
    values = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        b = fn([base[i] for i in idx])[metric]
        c = fn([cand[i] for i in idx])[metric]
        values.append(retention(hib, b, c))
    values.sort()
    k = int((1.0 - confidence) * samples)
    return values[min(max(k, 0), samples - 1)]
