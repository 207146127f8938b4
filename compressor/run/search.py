"""``--search``: the largest cut that still passes the profile's gate, per scorer.

Strategy (documented in the README): with one scorer's ranking the cuts are nested (the k+1 cut
contains the k cut), so retention is expected to fall as k grows. We gallop (k = 1, 2, 4, 8, ...
up to ``max_remove``) until a cut fails, then bisect between the last pass and the first fail:
about 2*log2(L) verifications instead of L. Each candidate runs the profile's tasks in file order
and stops at the first failing task when the gate needs every task to pass (``aggregate: all``),
so put the cheapest, most sensitive task first. Base-model results come from the verify cache.
If retention is not monotone in k, the answer is a passing cut, not necessarily the largest.

Scorers whose cuts are not nested (``angular`` removes the best *contiguous* block of each size, so
the 3-layer block need not contain the 2-layer one) break bisection's assumption: for them the
search scans k = 1, 2, 3, ... and stops at the first failing k, so its answer is the largest k such
that every smaller cut of that scorer passes too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

STRATEGY = ("gallop (1, 2, 4, ...) then bisect (linear scan for scorers whose cuts are not nested); tasks in "
            "profile order, stop at the first failing task")


@dataclass
class Candidate:
    method: str
    k: int
    removed: list[int]
    passed: bool
    complete: bool  # every task evaluated (else it stopped at the first failure)
    retention: dict[str, float]  # task -> gated retention
    thresholds: dict[str, float]

    @property
    def worst(self) -> float:
        return min(self.retention.values()) if self.retention else 0.0


@dataclass
class SearchResult:
    strategy: str
    max_remove: int
    candidates: list[Candidate] = field(default_factory=list)
    best: dict[str, int] = field(default_factory=dict)  # method -> largest passing k (0: none)

    @property
    def chosen(self) -> Candidate | None:
        passing = [c for c in self.candidates if c.passed]
        if not passing:
            return None
        return max(passing, key=lambda c: (c.k, c.worst))

    def fallback(self) -> Candidate:
        """No cut passes: the least bad one-layer cut (reported, exported, benchmarked, exit 1)."""
        ones = [c for c in self.candidates if c.k == 1] or self.candidates
        if not ones:
            raise ValueError("the search tried no cut (the caller checks max_remove >= 1 first)")
        return max(ones, key=lambda c: c.worst)

    def markdown(self) -> str:
        """The report's search section (``report.md``), with its figure."""
        return to_markdown(self) + "\n![retention against layers removed](search.png)\n"

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        return {"objective": "largest", "strategy": self.strategy, "max_remove": self.max_remove, "best": self.best,
                "chosen": asdict(chosen) if chosen else None,
                "candidates": [asdict(c) for c in sorted(self.candidates, key=lambda c: (c.method, c.k))]}


def search_limits(num_layers: int, protect: str, max_remove: int | None) -> int:
    """The largest cut ``--search`` may try, checked against --protect before anything runs."""
    from compressor.errors import BadInput
    from compressor.score.select import parse_protect

    L = num_layers
    removable = L - len(parse_protect(protect, L))
    limit = min(L - 1, removable)
    if limit < 1:
        raise BadInput(f"--search has no layer to remove: the model has {L} layer(s) and --protect {protect} "
                       f"keeps {L - removable}", "protect fewer layers (--protect none), or use a deeper model")
    if max_remove is not None and max_remove > limit:
        raise BadInput(f"--max-remove {max_remove} is more than the {limit} layer(s) this {L}-layer model can "
                       f"lose with --protect {protect}", f"pass --max-remove {limit} or less, or protect fewer")
    return max_remove or max(1, min(L // 2, limit))


def longest_free_run(num_layers: int, protected: list[int]) -> int:
    """The longest run of consecutive unprotected layers (the largest contiguous block a cut can take)."""
    best = run = 0
    for i in range(num_layers):
        run = 0 if i in protected else run + 1
        best = max(best, run)
    return best


def search_method(method: str, check: Callable[[int], Candidate], max_remove: int,
                  nested: bool = True) -> tuple[int, list[Candidate]]:
    """Gallop then bisect over k in [1, max_remove] (``nested=False``: scan upwards to the first
    failure); returns (largest passing k or 0, candidates)."""
    seen: dict[int, Candidate] = {}

    def ok(k: int) -> bool:
        if k not in seen:
            seen[k] = check(k)
        return seen[k].passed

    if not nested:
        last = 0
        for k in range(1, max_remove + 1):
            if not ok(k):
                break
            last = k
        return last, list(seen.values())

    last_pass, first_fail, k = 0, None, 1
    while k <= max_remove:
        if ok(k):
            last_pass = k
            k *= 2
        else:
            first_fail = k
            break
    if first_fail is None:
        if last_pass < max_remove and ok(max_remove):
            return max_remove, list(seen.values())
        first_fail = max_remove if last_pass < max_remove else max_remove + 1
    while first_fail - last_pass > 1:
        mid = (last_pass + first_fail) // 2
        if ok(mid):
            last_pass = mid
        else:
            first_fail = mid
    return last_pass, list(seen.values())


def save_curve(result: SearchResult, path: str | Path, title: str) -> Path:
    """Retention per task against layers removed, one line per scorer, the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressor.files import atomic_write_figure

    tasks: list[str] = []
    for c in result.candidates:
        tasks += [t for t in c.retention if t not in tasks]
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(tasks))
    fig, axes = plt.subplots(1, n, figsize=(max(6.5, 4.2 * n), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in dict.fromkeys(c.method for c in result.candidates):
            pts = sorted((c.k, c.retention[task]) for c in result.candidates if c.method == method and task in c.retention)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        thr = next((c.thresholds[task] for c in result.candidates if task in c.thresholds), None)
        if thr is not None:
            ax.axhline(thr, linestyle="--", color="grey", linewidth=1, label=f"threshold {thr:.2f}")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("layers removed")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("retention")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return atomic_write_figure(fig, Path(path))


def to_markdown(result: SearchResult) -> str:
    lines = ["", "## Search: the largest cut that passes", "", f"Strategy: {result.strategy}.", "",
             "| scorer | layers removed | removed (0-based) | result | retention per task |", "|---|---|---|---|---|"]
    for c in sorted(result.candidates, key=lambda c: (c.method, c.k)):
        rets = ", ".join(f"{t} {v:.3f}" for t, v in c.retention.items())
        state = "pass" if c.passed else "FAIL" + ("" if c.complete else " (stopped at first failing task)")
        lines.append(f"| {c.method} | {c.k} | {c.removed} | {state} | {rets} |")
    chosen = result.chosen
    lines += ["", (f"Chosen: **{chosen.method}, {chosen.k} layers removed** {chosen.removed}." if chosen
                   else "**No cut passes the gate.** The artifacts are for the least bad one-layer cut.")]
    for method, k in result.best.items():
        lines.append(f"- {method}: largest passing cut {k} layer(s)")
    return "\n".join(lines) + "\n"
