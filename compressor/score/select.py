"""Which layers to remove, given scores. Pure Python: testable without torch.

Rules (0-based indices in the original numbering):
- ``num_layers=k``: the k lowest scores.
- ``ratio=r``: k = round-half-up(r * L) lowest scores (7.5 -> 8; Python's round() would give 8 here
  but 2 for 2.5, which surprises people).
- ``mass=m``: the paper's cumulative rule done right: sort ascending by normalised score, then
  take layers while the cumulative share stays <= m. ``mass_order="depth"`` reproduces the official
  code's bug (cumulative sum in layer order *before* sorting) for comparison only.
- contiguous scorers (``angular``, ``patch-residual``): the cheapest contiguous block [l, l+k) in the span
  matrix the scorer wrote (angular: the smallest angular distance between the states entering l and
  l+k, Gromov et al.; patch-residual: the smallest error left by the linear patch), never a scattered set.
Protected layers are never removed; ties break by layer index.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from compressor.score.report import ScoreReport


@dataclass
class Selection:
    removed: list[int]
    kept: list[int]
    rule: str
    num_layers: int
    ratio: float | None = None
    mass: float | None = None
    mass_order: str | None = None
    protect: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class CutSettings:
    """How many layers a cut removes (exactly one of ``ratio``, ``num_layers``, ``mass``) and which it never
    removes: one record, checked by ``check_cut_rule`` before any load and read by ``select_layers``."""

    ratio: float | None = None
    num_layers: int | None = None
    mass: float | None = None
    mass_order: str = "sorted"
    protect: str = "none"

    def check(self, total: int | None = None, protect: str | None = None) -> int | None:
        """``check_cut_rule`` for these settings (``protect``: the one a repair widened it to)."""
        return check_cut_rule(ratio=self.ratio, num_layers=self.num_layers, mass=self.mass,
                              mass_order=self.mass_order, total=total,
                              protect=self.protect if protect is None else protect)

    def select(self, report: ScoreReport, protect: str | None = None) -> "Selection":
        return select_layers(report, ratio=self.ratio, num_layers=self.num_layers, mass=self.mass,
                             mass_order=self.mass_order, protect=self.protect if protect is None else protect)


def parse_protect(value: str | Iterable[int] | None, num_layers: int) -> list[int]:
    """``"first,last"``, ``"none"``, ``"0,29"`` or a list of ints -> sorted layer indices."""
    if value is None:
        return []
    if not isinstance(value, str):
        items = [str(v) for v in value]
    else:
        if value.strip().lower() in ("", "none"):
            return []
        items = [v.strip() for v in value.split(",") if v.strip()]
    out = set()
    for item in items:
        if item == "first":
            out.add(0)
        elif item == "last":
            out.add(num_layers - 1)
        else:
            try:
                idx = int(item)
            except ValueError:
                raise BadInput(f"bad --protect value {item!r}", "use first, last, none or 0-based layer indices") from None
            if not 0 <= idx < num_layers:
                raise BadInput(f"--protect layer {idx} is out of range for a {num_layers}-layer model",
                               f"use indices 0..{num_layers - 1}")
            out.add(idx)
    return sorted(out)


def count_for_ratio(ratio: float, num_layers: int) -> int:
    return int(math.floor(ratio * num_layers + 0.5))


def _contiguous_scorer(method: str) -> str | None:
    """For scorers whose cuts are contiguous blocks (not nested rankings): the report's extra key with
    their span matrix (the registry says which)."""
    from compressor.score.methods import SCORERS

    if method in SCORERS and not SCORERS[method].nested_cuts:
        return SCORERS[method].span_matrix
    return None


def check_cut_rule(*, ratio: float | None = None, num_layers: int | None = None, mass: float | None = None,
                   mass_order: str = "sorted", protect: str | Iterable[int] | None = None,
                   total: int | None = None) -> int | None:
    """The cut rule's own ranges and, with ``total`` (the model's layer count, from its config), whether it
    fits the model and ``protect``: every caller asks before the first load or stage, and ``select_layers``
    asks again. Returns how many layers a ratio or count removes (None for ``mass``, which needs scores)."""
    if sum(x is not None for x in (ratio, num_layers, mass)) != 1:
        raise BadInput("give exactly one of --ratio, --num-layers, --mass", "e.g. --ratio 0.25 or --num-layers 7")
    if mass is not None:  # `not 0 < x < 1` also refuses NaN
        if not 0.0 < mass < 1.0:
            raise BadInput(f"--mass must be between 0 and 1 (got {mass})", "e.g. --mass 0.25")
        if mass_order not in ("sorted", "depth"):
            raise BadInput(f"unknown mass order {mass_order!r}", "use sorted (default) or depth (official code, buggy)")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise BadInput(f"--ratio must be between 0 and 1 (got {ratio})", "e.g. --ratio 0.25")
    if num_layers is not None and num_layers < 1:
        raise BadInput(f"--num-layers must be at least 1 (got {num_layers})", "pass a positive number of layers to remove")
    if total is None:
        return None
    prot = parse_protect(protect, total)
    if mass is not None:
        return None
    k = count_for_ratio(ratio, total) if ratio is not None else int(num_layers)  # type: ignore[arg-type]
    if k == 0:
        raise BadInput(f"--ratio {ratio} of {total} layers rounds to 0 layers", "raise --ratio or use --num-layers")
    _check_leaves_some(k, total)
    if k > total - len(prot):
        raise BadInput(f"cannot remove {k} layers: only {total - len(prot)} are not protected",
                       "remove fewer layers or protect fewer")
    return k


def select_layers(
    report: ScoreReport,
    *,
    ratio: float | None = None,
    num_layers: int | None = None,
    mass: float | None = None,
    mass_order: str = "sorted",
    protect: str | Iterable[int] | None = None,
) -> Selection:
    """Choose layers to remove from a ``ScoreReport`` (or anything with .layers/.num_layers/.method)."""
    L = int(report.num_layers)
    k = check_cut_rule(ratio=ratio, num_layers=num_layers, mass=mass, mass_order=mass_order, protect=protect, total=L)
    prot = parse_protect(protect, L)
    candidates = [i for i in range(L) if i not in prot]
    scores = {l.index: float(l.score) for l in report.layers}
    method = getattr(report, "method", "")
    contiguous = _contiguous_scorer(method)

    if mass is not None:
        if contiguous:
            raise BadInput(f"--mass does not apply to {method} scores (they remove a contiguous block)",
                           "use --num-layers or --ratio")
        if any(s < 0 for s in scores.values()):
            raise BadInput(f"--mass needs non-negative scores and {method} produced negative ones",
                           "use --num-layers or --ratio")
        total = sum(scores.values())
        if total <= 0:
            raise BadInput("--mass needs scores with a positive sum", "use --num-layers or --ratio")
        if mass_order == "depth":
            removed = _official_depth_cut(report, candidates, scores, mass)
        else:
            removed, cum = [], 0.0
            for i in sorted(candidates, key=lambda i: (scores[i], i)):
                cum += scores[i] / total
                if cum > mass + 1e-12:
                    break
                removed.append(i)
        if not removed:
            raise BadInput(f"--mass {mass} selects no layer (the least important one alone holds more)",
                           "raise --mass or use --num-layers")
        _check_leaves_some(len(removed), L)
        return _make(removed, L, "mass", mass=mass, mass_order=mass_order, protect=prot)

    assert k is not None  # a ratio or a count (check_cut_rule)
    rule = "ratio" if ratio is not None else "num-layers"
    if contiguous:
        matrix = (getattr(report, "extra", None) or {}).get(contiguous)
        if not matrix:  # never fall back to a scattered cut: these scores only mean something as blocks
            raise BadInput(f"these {method} scores carry no {contiguous}, which the contiguous-block "
                           f"cut needs", f"re-score with `avss score --method {method}` (this version writes it)")
        removed = _contiguous_block(matrix, L, k, set(prot))
        rule = f"{rule} (contiguous block)"
    else:
        removed = sorted(candidates, key=lambda i: (scores[i], i))[:k]
    return _make(removed, L, rule, ratio=ratio, protect=prot)


def _official_depth_cut(report: ScoreReport, candidates: list[int], scores: dict[int, float], mass: float) -> list[int]:
    """The official AVSS.py selection, bug for bug: shares normalised by the sum, ``cumsum`` in layer order
    (before any sort), keep the layers whose cumulative share is <= ``mass``.

    With official AVSS scores it also reproduces the official arithmetic of a zero sparsity: the score
    is variance / 0 = inf (0 / 0 = NaN), the sum is inf, so every finite layer's share is 0 and every
    inf layer's is NaN; pandas' cumsum skips NaN, so *exactly the finite layers* are selected (our
    scores' 1e-12 guard would give a different cut). Without a zero sparsity it is the plain rule."""
    stats = {l.index: l.stats for l in report.layers}
    raw: dict[int, float] = {}
    for i in candidates:
        st = stats.get(i) or {}
        if st.get("sparsity_zero"):
            raw[i] = math.inf if st.get("variance", 0.0) > 0 else math.nan
        else:
            raw[i] = scores[i]
    total = sum(v for v in raw.values() if not math.isnan(v))
    removed, cum = [], 0.0
    for i in candidates:  # layer order
        share = raw[i] / total if total else math.nan
        if math.isnan(share):  # pandas: cumsum skips NaN, the row's own value stays NaN (never <= mass)
            continue
        cum += share
        if cum <= mass + 1e-12:
            removed.append(i)
    return removed


def _contiguous_block(matrix: list[list[float]], L: int, k: int, protected: set[int]) -> list[int]:
    best = None
    for start in range(0, L - k + 1):
        block = range(start, start + k)
        if protected.intersection(block):
            continue
        d = matrix[start][start + k]
        if d is None:  # that block cannot be removed (e.g. no block before it to fold a patch into)
            continue
        if best is None or d < best[0]:
            best = (d, start)
    if best is None:
        raise BadInput(f"no contiguous block of {k} unprotected layers exists", "remove fewer layers or protect fewer")
    return list(range(best[1], best[1] + k))


def _check_leaves_some(k: int, L: int) -> None:
    if k >= L:
        raise BadInput(f"cannot remove {k} of {L} layers: at least one layer must remain",
                       f"remove at most {L - 1} layers")


def _make(removed: list[int], L: int, rule: str, **kw: Any) -> Selection:
    removed = sorted(removed)
    kept = [i for i in range(L) if i not in set(removed)]
    return Selection(removed=removed, kept=kept, rule=rule, num_layers=len(removed), **kw)
