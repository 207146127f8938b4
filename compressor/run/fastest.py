"""``--search fastest``: the fastest artifact that passes the gate, over cut x exporter x precision.

Why a search over artifacts: what ships is an exported graph at some precision, and on a given model a
quantized uncut graph may keep the profile where a deeper cut does not (or the reverse on 8 B models), so
the question "how many layers can go" is the wrong one. Every candidate that can be chosen is judged on
the artifact itself (ONNX Runtime, the profile's tasks, stop at the first failing task); speed is measured,
not guessed.

The space: each cut the PyTorch search passed (every scorer's ladder up to its largest passing k, with the
run's repair) plus k = 0 (the uncut model), times each exporter that builds the architecture, times each
exporter's precisions. Three rules prune it, each assuming retention never rises when the model loses more:

- **pytorch**: a cut that fails in fp32 PyTorch is exported at no precision (nor is any cut containing it);
- **cut**: a cut whose artifact fails at (exporter, precision) skips every cut containing it at that
  (exporter, precision); k = 0 is contained in every cut, so an uncut failure skips the whole precision;
- **precision**: a failure at a precision skips the same cut at every lower precision of that exporter.

Order: candidates are tried by an estimate of the bytes of weights read per decoded token (kept blocks and
the LM head at the candidate's bits), lowest first, each precision's uncut root first ("is this precision
reachable at all?"). The estimate cannot rank exporters (their kernels differ), so the walk stops only once
every exporter has ``PER_EXPORTER`` passing candidates (or has none left); those, the frontier, are then
benched in one run with alternating rounds, and the fastest measured decode wins. Every skipped candidate
is recorded with its rule and the candidate that caused it. ``sweep`` gates every candidate (no rule, no
stop; the cuts that failed in PyTorch are exported too): the benchmark's yardstick.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from compressor.run.search import SearchResult

PER_EXPORTER = 2  # passing candidates per exporter before the walk stops (the frontier the bench measures)
OBJECTIVES = ("largest", "fastest")
RULES = {
    "pytorch": "a cut that fails in fp32 PyTorch is exported at no precision, nor is any cut containing it",
    "cut": "a cut that fails at (exporter, precision) skips every cut containing it at that exporter and precision",
    "precision": "a failure at a precision skips the same cut at every lower precision of that exporter",
}
# bits per weight the estimate uses (block-wise scales included: 32 per block of 32 at 16 bits -> +0.5)
# int4-mixed: about a third of the body's weights (llama.cpp's mixed layers) and the LM head at 8.5 bits
BITS: dict[Optional[str], float] = {None: 32.0, "int8-weights": 8.5, "int4-mixed": 6.0, "int4": 4.5}


def precision_name(precision: Optional[str]) -> str:
    return precision or "fp32"


@dataclass(frozen=True)
class Cut:
    """A set of removed layers and who proposed it (the first scorer that did; k = 0 is ``uncut``)."""

    method: str
    k: int
    removed: tuple[int, ...]

    @property
    def name(self) -> str:
        return "uncut" if not self.removed else f"{self.method}-k{self.k}"

    def within(self, other: "Cut") -> bool:
        """Every layer this cut removes, ``other`` removes too (so ``other`` is expected to do no better)."""
        return set(self.removed) <= set(other.removed)


@dataclass
class ArtifactCandidate:
    cut: Cut
    exporter: str
    precision: Optional[str]
    rank: int  # 0: the exporter's most precise precision
    estimate: int  # bytes of weights read per decoded token
    status: str = "untried"  # untried | pass | fail | skipped
    rule: str = ""  # for a skipped one: the rule, and the candidate that decided it
    because: str = ""
    retention: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    complete: bool = False
    size_bytes: int = 0
    decode_ms: Optional[float] = None  # per token, from the frontier bench
    prefill_ms: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    runtime: str = ""

    @property
    def id(self) -> str:
        return f"{self.cut.name}-{self.exporter}-{precision_name(self.precision)}"

    @property
    def worst(self) -> float:
        return min(self.retention.values()) if self.retention else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cut"] = {"method": self.cut.method, "k": self.cut.k, "removed": list(self.cut.removed)}
        d["precision"] = precision_name(self.precision)
        return {"id": self.id, **d}


def estimate_bytes(kept_blocks: int, block_params: int, head_params: int, precision: Optional[str]) -> int:
    """Bytes of weights one decoded token reads: the kept blocks' and the LM head's at the precision's bits
    (the embedding's one row is left out). A proxy for decode time that ignores the exporter's kernels."""
    return int((kept_blocks * block_params + head_params) * BITS[precision] / 8)


@dataclass
class GateOutcome:
    passed: bool
    retention: dict[str, float]
    thresholds: dict[str, float]
    complete: bool
    size_bytes: int
    runtime: str = ""


@dataclass
class FastestSearch:
    """The walk over the space (pure: ``gate`` does the export and the verify); see the module docstring."""

    candidates: list[ArtifactCandidate]
    exporters: list[str]
    precisions: dict[str, list[Optional[str]]]  # exporter -> its precisions, most precise first
    pytorch_failed: list[dict[str, Any]] = field(default_factory=list)  # cuts not exported: (method, k, removed)
    sweep: bool = False
    order: list[str] = field(default_factory=list)  # ids in the order they were gated
    chosen_id: Optional[str] = None
    chosen_by: str = ""
    reference: Optional[dict[str, Any]] = None  # the bench's denominator: the full model, Optimum fp32
    bench: Optional[dict[str, Any]] = None

    def find(self, cut: Cut, exporter: str, precision: Optional[str]) -> Optional[ArtifactCandidate]:
        for c in self.candidates:
            if c.cut.removed == cut.removed and c.exporter == exporter and c.precision == precision:
                return c
        return None

    def _known_to_fail(self, failed: ArtifactCandidate) -> None:
        """Apply the cut and precision rules to what ``failed`` (failed or skipped) implies, each skipped
        candidate naming the nearest cause (breadth first)."""
        if self.sweep:
            return
        lower = self.precisions[failed.exporter][failed.rank:]
        implied = []
        for c in self.candidates:
            if c.status != "untried" or c is failed or c.exporter != failed.exporter:
                continue
            if c.precision == failed.precision and failed.cut.within(c.cut):
                rule = "cut"
            elif c.cut.removed == failed.cut.removed and c.precision in lower and c.rank > failed.rank:
                rule = "precision"
            else:
                continue
            c.status, c.rule, c.because = "skipped", rule, failed.id
            implied.append(c)
        for c in implied:
            self._known_to_fail(c)

    def _gate(self, c: ArtifactCandidate, gate: Callable[[ArtifactCandidate], GateOutcome]) -> None:
        out = gate(c)
        c.status = "pass" if out.passed else "fail"
        c.retention, c.thresholds, c.complete = out.retention, out.thresholds, out.complete
        c.size_bytes, c.runtime = out.size_bytes, out.runtime
        self.order.append(c.id)
        if not out.passed:
            self._known_to_fail(c)

    def settled(self, exporter: str) -> bool:
        """This exporter has its frontier (``PER_EXPORTER`` passing) or nothing left to try."""
        if self.sweep:
            return False
        mine = [c for c in self.candidates if c.exporter == exporter]
        return sum(c.status == "pass" for c in mine) >= PER_EXPORTER or not any(c.status == "untried" for c in mine)

    def enough(self) -> bool:
        return all(self.settled(e) for e in self.exporters)

    def walk(self, gate: Callable[[ArtifactCandidate], GateOutcome]) -> None:
        """Gate candidates, lowest estimate first (each precision's uncut root before its cuts)."""
        for c in sorted(self.candidates, key=lambda c: (c.estimate, -c.cut.k, c.exporter, c.rank)):
            if self.enough():
                break
            if c.status != "untried" or self.settled(c.exporter):
                continue
            root = self.find(Cut("uncut", 0, ()), c.exporter, c.precision)
            if root is not None and root.status == "untried" and root is not c:
                self._gate(root, gate)
            if c.status == "untried":
                self._gate(c, gate)

    def frontier(self) -> list[ArtifactCandidate]:
        """The passing candidates the bench measures: each exporter's ``PER_EXPORTER`` lowest estimates."""
        out: list[ArtifactCandidate] = []
        for e in self.exporters:
            passing = sorted((c for c in self.candidates if c.exporter == e and c.status == "pass"),
                             key=lambda c: (c.estimate, -c.worst))
            out += passing if self.sweep else passing[:PER_EXPORTER]
        return out

    def choose(self) -> Optional[ArtifactCandidate]:
        """The benched candidate with the lowest decode ms/token (ties: the smaller file)."""
        timed = [c for c in self.frontier() if c.decode_ms is not None]
        if not timed:
            return None
        best = min(timed, key=lambda c: (c.decode_ms, c.size_bytes))
        self.chosen_id, self.chosen_by = best.id, "measured decode ms/token (the frontier bench)"
        return best

    def choose_by_estimate(self) -> Optional[ArtifactCandidate]:
        """Without a bench (``--skip-bench``): the passing candidate with the lowest estimate (recorded)."""
        passing = [c for c in self.candidates if c.status == "pass"]
        if not passing:
            return None
        best = min(passing, key=lambda c: (c.estimate, -c.worst))
        self.chosen_id, self.chosen_by = best.id, "estimate (--skip-bench: nothing was benched)"
        return best

    @property
    def chosen(self) -> Optional[ArtifactCandidate]:
        return next((c for c in self.candidates if c.id == self.chosen_id), None)

    def fallback(self) -> ArtifactCandidate:
        """Nothing passes: the least bad gated candidate (reported, exported, benchmarked, exit 1)."""
        gated = [c for c in self.candidates if c.status == "fail"] or self.candidates
        return max(gated, key=lambda c: (c.worst, -c.estimate))

    def counts(self) -> dict[str, int]:
        """How many candidates the space holds and what became of them; a cut two scorers proposed (and
        PyTorch failed) counts once."""
        mine = {c.cut.removed for c in self.candidates}
        failed = {tuple(sorted(f["removed"])) for f in self.pytorch_failed} - mine
        out = {"space": len(self.candidates) + len(failed) * sum(len(p) for p in self.precisions.values())}
        for s in ("pass", "fail", "skipped", "untried"):
            out[s] = sum(c.status == s for c in self.candidates)
        out["gated"] = out["pass"] + out["fail"]
        out["skipped_pytorch"] = out["space"] - len(self.candidates)
        return out


@dataclass
class FastestResult:
    """What ``search.json`` holds for ``--search fastest``: the PyTorch cut search and the artifact walk."""

    cuts: SearchResult  # the PyTorch verdicts per scorer
    walk: FastestSearch

    @property
    def objective(self) -> str:
        return "fastest"

    def to_dict(self) -> dict[str, Any]:
        w = self.walk
        chosen = w.chosen
        return {"objective": "fastest", "strategy": "sweep (every candidate gated)" if w.sweep else
                f"estimate order, uncut root first, {PER_EXPORTER} passing per exporter, frontier benched",
                "rules": {} if w.sweep else RULES, "counts": w.counts(), "exporters": w.exporters,
                "precisions": {e: [precision_name(p) for p in ps] for e, ps in w.precisions.items()},
                "chosen": chosen.to_dict() if chosen else None, "chosen_by": w.chosen_by, "reference": w.reference, "bench": w.bench,
                "order": w.order, "pytorch_failed": w.pytorch_failed,
                "candidates": [c.to_dict() for c in sorted(w.candidates, key=lambda c: c.estimate)],
                "cuts": self.cuts.to_dict()}

    def markdown(self) -> str:
        from compressor.run.search import to_markdown

        w = self.walk
        n = w.counts()
        lines = ["", "## Search: the fastest artifact that passes", "",
                 f"{n['space']} candidates (cut x exporter x precision); {n['gated']} gated on the artifact "
                 f"({n['pass']} pass, {n['fail']} fail), {n['skipped']} skipped by a rule, "
                 f"{n['skipped_pytorch']} not exported because the cut fails in PyTorch, {n['untried']} not needed.",
                 "", "| candidate | removed | est. MB/token | result | retention per task | MB | decode ms/token |",
                 "|---|---|---|---|---|---|---|"]
        for c in sorted(w.candidates, key=lambda c: c.estimate):
            if c.status == "untried":
                continue
            rets = ", ".join(f"{t} {v:.3f}" for t, v in c.retention.items())
            state = {"pass": "pass", "fail": "FAIL", "skipped": f"skipped ({c.rule}: {c.because})"}[c.status]
            dec = f"{c.decode_ms:.2f}" if c.decode_ms is not None else ""
            size = f"{c.size_bytes / 2**20:.0f}" if c.size_bytes else ""
            lines.append(f"| {c.id} | {list(c.cut.removed)} | {c.estimate / 2**20:.0f} | {state} | {rets} | {size} | {dec} |")
        chosen = w.chosen
        if chosen is not None and w.reference and w.reference.get("decode_ms"):
            ratio = chosen.decode_ms / w.reference["decode_ms"] if chosen.decode_ms else float("nan")
            lines += ["", f"Chosen: **{chosen.id}** ({len(chosen.cut.removed)} layers removed, {chosen.exporter}, "
                          f"{precision_name(chosen.precision)}): decode {chosen.decode_ms:.2f} ms/token, "
                          f"{ratio:.2f}x the full model through Optimum fp32 ({w.reference['decode_ms']:.2f} ms/token, "
                          "same bench run)."]
        elif chosen is not None:
            lines += ["", f"Chosen: **{chosen.id}** by its {w.chosen_by}."]
        else:
            lines += ["", "**No artifact passes the gate.** The run's artifacts are for the least bad one."]
        lines += ["", "Rules (each assumes retention never rises when the model loses more):"]
        lines += [f"- {k}: {v}" for k, v in RULES.items()]
        lines += ["", "![decode time against retention per artifact](pareto.png)"]
        lines.append(to_markdown(self.cuts).replace("## Search: the largest cut that passes",
                                                    "### The PyTorch cut search (each scorer's ladder)")
                     .replace("Chosen: **", "Largest passing cut in PyTorch: **"))
        return "\n".join(lines) + "\n\n![retention against layers removed (PyTorch)](search.png)\n"


def save_pareto(result: FastestResult, path: str | Path, title: str) -> Path:
    """Decode ms/token (benched) or the estimate against the worst retention, every gated candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressor.files import atomic_write_figure

    w = result.walk
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"pass": "o", "fail": "x"}
    colors = {e: f"C{i}" for i, e in enumerate(w.exporters)}
    for c in w.candidates:
        if c.status not in markers:
            continue
        axes[0].scatter(c.estimate / 2**20, c.worst, marker=markers[c.status], color=colors[c.exporter], s=36)
        axes[0].annotate(f"{precision_name(c.precision)} k{c.cut.k}", (c.estimate / 2**20, c.worst), fontsize=6,
                         xytext=(3, 3), textcoords="offset points")
    thr = min((min(c.thresholds.values()) for c in w.candidates if c.thresholds), default=None)
    if thr is not None:
        axes[0].axhline(thr, linestyle="--", color="grey", linewidth=1)
    axes[0].set_xlabel("estimated MB of weights read per token")
    axes[0].set_ylabel("worst task retention (o pass, x fail)")
    axes[0].set_title("every gated candidate", fontsize=10)
    for e in w.exporters:
        axes[0].scatter([], [], color=colors[e], label=e)
    axes[0].legend(fontsize=8)
    benched = [c for c in w.frontier() if c.decode_ms is not None]
    ref = (w.reference or {}).get("decode_ms")
    for c in benched:
        x = c.decode_ms / ref if ref else c.decode_ms
        axes[1].scatter(x, c.worst, color=colors[c.exporter], s=48, marker="*" if c.id == w.chosen_id else "o")
        axes[1].annotate(c.id, (x, c.worst), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes[1].set_xlabel("decode time per token, x the full model (Optimum fp32)" if ref else "decode ms/token")
    axes[1].set_ylabel("worst task retention")
    axes[1].set_title("the benched frontier (* chosen)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return atomic_write_figure(fig, Path(path))
