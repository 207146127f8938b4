"""Scorer registry: every scorer maps per-layer statistics to one importance score per layer.

Convention everywhere: **higher score = more important**; the ranking lists layers least important
first; layer indices are 0-based in the original numbering.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from compressor.errors import BadInput, RuntimeFailure
from compressor.registry import Registry
from compressor.score.report import LayerScore, ScoreOutcome
from compressor.score.stats import ROBUST_TAU

if TYPE_CHECKING:  # pragma: no cover
    from compressor.score.stats import StatsCollector
    from compressor.sources.data import CalibrationData
    from compressor.sources.models import LoadedModel

AVSS_MODES = ("robust", "official")
SPARSITY_EPS = 1e-12  # official mode: AVSS = variance / max(sparsity, eps)


@dataclass
class ScoreInputs:
    """What a scorer's ``compute`` gets: the model, its calibration data (None when it needs none),
    its AVSS-style mode, and its own options (validated by ``check_options``)."""
    loaded: LoadedModel
    data: CalibrationData | None  # None for a scorer that needs none (``Scorer.needs_data``)
    mode: str | None = None
    seed: int = 0
    tau: float = ROBUST_TAU
    progress: Callable[[int, int], None] | None = None
    final_norm: bool = False  # --last-state final-norm
    objective: str | None = None
    max_remove: int | None = None
    protect: list[int] | None = None

    @property
    def num_layers(self) -> int:
        return int(self.loaded.num_layers)

    @property
    def calibration(self) -> CalibrationData:
        """``data`` for a scorer that needs it (``score_layers`` refuses to run one without)."""
        assert self.data is not None, "this scorer needs calibration data"
        return self.data


class Scorer:
    """One scorer: what it needs (data, statistics groups, passes), which options are its own, and how
    it computes one importance score per layer. Adding a scorer is one subclass with ``@register``."""
    name: ClassVar[str]
    description: ClassVar[str]
    groups: ClassVar[frozenset[str]] = frozenset()  # statistics groups the pass must collect
    needs_data: ClassVar[bool] = True
    multi_pass: ClassVar[bool] = False  # one extra pass per layer (or per removal round)
    pass_unit: ClassVar[str] = "batches"  # what its progress bar counts
    modes: ClassVar[tuple[str, ...]] = ()  # first = default
    nested_cuts: ClassVar[bool] = True  # the k+1 cut contains the k cut; False: contiguous blocks
    # with nested_cuts False: the report's extra key holding matrix[l][m], the cost of removing blocks l..m-1
    # (None: that block cannot be removed); the cut of k layers is the cheapest such block
    span_matrix: ClassVar[str | None] = None
    needs_patch: ClassVar[bool] = False  # it solves the linear patch: only where the fold is exact
    reads_last_state: ClassVar[bool] = False  # its statistics read the last block's output (--last-state)
    own_options: ClassVar[tuple[str, ...]] = ()  # options only it takes: objective, max_remove, protect
    # it needs only consecutive hidden states (or no model at all), so it runs one block at a time
    # (``--stream``); False: it needs the whole model in memory, for the reason ``whole_model`` gives
    streams: ClassVar[bool] = True
    whole_model: ClassVar[str] = "runs the whole model many times"

    def stat_groups(self, mode: str | None) -> frozenset[str]:
        return self.groups

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        raise NotImplementedError

    def stats(self, x: ScoreInputs) -> StatsCollector:
        from compressor.score.passes import collect_stats

        return collect_stats(x.loaded, x.calibration, self.stat_groups(x.mode), x.tau, x.progress, x.final_norm)

    def run_options(self, *, last_state: str | None, objective: str | None, protect: list[int],
                    rounds: int) -> dict[str, Any]:
        """Its settings in ``avss run`` (part of the score stage's key)."""
        return {"last_state": last_state} if self.reads_last_state and last_state is not None else {}


SCORERS: Registry[Scorer] = Registry("method")


def register(cls: type[Scorer]) -> type[Scorer]:
    """``@register``: a scorer class becomes a ``--method`` (into the registry as it is now)."""
    return SCORERS.register(cls)


@register
class AVSS(Scorer):
    name = "avss"
    description = ("Activation Variance-Sparsity Score (arXiv 2411.02117): variance / sparsity; mode 'official' = "
                   "the official code's quantities, 'robust' = the same idea on the block's padding-masked effect on "
                   "the RMS-normalised residual stream")
    modes = AVSS_MODES
    reads_last_state = True

    def stat_groups(self, mode: str | None) -> frozenset[str]:
        return frozenset({"official"}) if mode == "official" else frozenset({"stream"})

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        rows = self.stats(x).results()
        return avss_official(rows) if x.mode == "official" else avss_robust(rows, x.tau)


@register
class BlockInfluence(Scorer):
    name = "block-influence"
    description = "ShortGPT block influence: 1 - mean cos(h_in, h_out) over real tokens"
    groups = frozenset({"stream"})
    reads_last_state = True

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        return block_influence(self.stats(x).results())


@register
class RelativeUpdate(Scorer):
    """The relative update norm ||h_out - h_in|| / ||h_in|| per real token, averaged: how far the block
    moves the residual stream. The README's scorer comparison measured it as an ablation of robust
    AVSS's variance term; it reads the same statistics pass as block influence."""
    name = "relative-update"
    description = "relative update norm: mean ||h_out - h_in|| / ||h_in|| over real tokens"
    groups = frozenset({"stream"})
    reads_last_state = True

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        return ScoreOutcome([
            LayerScore(i, r["relative_update"], {"relative_update": r["relative_update"], "cosine": r["cosine"],
                                                 "tokens": int(r["tokens"])})
            for i, r in enumerate(self.stats(x).results())])


@register
class Angular(Scorer):
    name = "angular"
    description = ("Gromov et al. angular distance arccos(cos(h_l, h_l+n))/pi on the last real token; prune removes "
                   "the contiguous block with the smallest distance")
    groups = frozenset({"last_token"})
    nested_cuts = False
    span_matrix = "angular_distance_matrix"
    reads_last_state = True

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        return angular(self.stats(x).angular_matrix(), x.num_layers)


@register
class LeaveOneOut(Scorer):
    name = "leave-one-out"
    description = ("loss increase when the block is skipped (causal LM: next-token NLL; classifier: KL of the "
                   "logits; bare encoder: 1 - cos of the final hidden state)")
    multi_pass = True
    streams = False
    pass_unit = "skipping each layer"

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        from compressor.score.passes import leave_one_out_losses

        return leave_one_out(*leave_one_out_losses(x.loaded, x.calibration, x.progress))


@register
class SLEB(Scorer):
    name = "sleb"
    description = ("SLEB (Song et al., ICML 2024): greedy iterative removal; each round skips every remaining block "
                   "in turn and removes the one whose absence costs least on the calibration loss (nll, or kl to the "
                   "full model); the ranking is the removal order")
    multi_pass = True
    streams = False
    pass_unit = "removing one block per round"
    own_options = ("objective", "max_remove", "protect")

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        from compressor.score import sleb

        n = x.num_layers
        result = sleb.sleb_order(x.loaded, x.calibration, x.max_remove if x.max_remove is not None else n // 2,
                                 sorted(x.protect or []), x.objective or "nll", x.progress)
        return sleb.sleb_outcome(result, n)

    def run_options(self, *, last_state: str | None, objective: str | None, protect: list[int],
                    rounds: int) -> dict[str, Any]:
        return {"objective": objective or "nll", "protect": protect, "max_remove": rounds}


@register
class PatchResidual(Scorer):
    """ReplaceMe's own criterion made exact: the error the linear patch leaves, not how much a block
    changes the stream. One pass scores every contiguous span (``compressor.score.residual``)."""
    name = "patch-residual"
    description = ("post-patch residual (ReplaceMe's least squares): the contiguous span whose linear patch leaves "
                   "the smallest error in the residual stream leaving it; one pass scores every span in closed form")
    nested_cuts = False
    span_matrix = "span_cost_matrix"
    needs_patch = True
    pass_unit = "spans solved"
    streams = False
    whole_model = "keeps every block's output from one pass, to solve every span's patch"

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        from compressor.score.residual import span_residuals

        r = span_residuals(x.loaded, x.calibration, progress=x.progress)
        return residual_outcome(r, x.num_layers)


@register
class PatchResidualGreedy(Scorer):
    name = "patch-residual-greedy"
    description = ("greedy post-patch residual: SLEB-style rounds, each removing the block whose removal, with the "
                   "linear patch of the span it joins, leaves the cut's summed residual lowest; nested cuts")
    streams = False
    whole_model = PatchResidual.whole_model
    needs_patch = True
    pass_unit = "spans solved"
    own_options = ("max_remove", "protect")

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        from compressor.score.residual import greedy_order, span_residuals

        n = x.num_layers
        max_remove = x.max_remove if x.max_remove is not None else n // 2
        protect = sorted(set(x.protect or []) | {0})  # nothing precedes block 0 to fold a patch into
        from compressor.score.sleb import check_max_remove

        check_max_remove(max_remove, n, protect, " (layer 0 always is: the patch folds into the block before a span)")
        r = span_residuals(x.loaded, x.calibration, max_span=max_remove, progress=x.progress)
        order, costs = greedy_order(r["cost"], n, max_remove, protect)
        out = residual_outcome(r, n)
        rank = order + [l.index for l in sorted(out.layers, key=lambda l: (l.score, l.index)) if l.index not in order]
        for pos, b in enumerate(rank):
            layer = out.layers[b]
            layer.score = float(pos + 1)
            if b in order:
                layer.stats.update({"round": order.index(b) + 1, "cut_cost_after_removal": costs[order.index(b)]})
        out.extra["greedy"] = {"order": order, "cut_cost": costs, "max_remove": max_remove, "protect": protect}
        return out

    def run_options(self, *, last_state: str | None, objective: str | None, protect: list[int],
                    rounds: int) -> dict[str, Any]:
        return {"protect": protect, "max_remove": rounds}


@register
class LastK(Scorer):
    name = "last-k"
    description = "positional baseline: the k layers before the final one are least important"
    needs_data = False

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        return last_k(x.num_layers)


@register
class Random(Scorer):
    name = "random"
    description = "seeded random scores (a floor every real scorer must beat)"
    needs_data = False

    def compute(self, x: ScoreInputs) -> ScoreOutcome:
        out = random_scores(x.num_layers, x.seed)
        out.extra["seed"] = x.seed
        return out


def streaming_scorers() -> list[str]:
    return [n for n, s in SCORERS.items() if s.streams]


def get_scorer(name: str) -> Scorer:
    return SCORERS.find(name)


LAST_STATES = ("block", "final-norm")
_FLAGS = {"objective": "--objective", "max_remove": "--max-remove", "protect": "--protect"}


def last_state_scorers() -> list[str]:
    return [s.name for s in SCORERS.values() if s.reads_last_state]


def option_scorers(option: str) -> list[str]:
    return [s.name for s in SCORERS.values() if option in s.own_options]


def mode_scorers() -> list[str]:
    return [s.name for s in SCORERS.values() if s.modes]


def names_text(names: list[str]) -> str:
    """"a, b and c" in registration order, avss last (the order the README and messages use)."""
    names = sorted(names, key=lambda n: (n == "avss", list(SCORERS).index(n)))
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def check_options(name: str, objective: str | None, max_remove: int | None, last_state: str | None,
                  protect: str | Iterable[int] | None = None) -> None:
    """Options that belong to one scorer are refused with any other (a typo never silently does nothing)."""
    scorer = get_scorer(name)
    for option, value in (("objective", objective), ("max_remove", max_remove), ("protect", protect)):
        if value is not None and option not in scorer.own_options:
            flag = _FLAGS[option]
            raise BadInput(f"{flag} only applies to --method {names_text(option_scorers(option))} (got --method {name})",
                           f"drop {flag}")
    if last_state is not None:
        if last_state not in LAST_STATES:
            raise BadInput(f"unknown --last-state {last_state!r}", "use block (default) or final-norm")
        if not scorer.reads_last_state:
            raise BadInput(f"--last-state only applies to {names_text(last_state_scorers())} (got --method {name})",
                           "drop --last-state")


def check_mode(name: str, mode: str | None) -> str | None:
    """A scorer with modes gets one (its first is the default); other scorers must not be given one."""
    scorer = get_scorer(name)
    if scorer.modes:
        mode = mode or scorer.modes[0]
        if mode not in scorer.modes:
            raise BadInput(f"unknown --avss-mode {mode!r}", f"use {' or '.join('--avss-mode ' + m for m in scorer.modes)}")
        return mode
    if mode is not None:
        raise BadInput(f"--avss-mode only applies to --method {names_text(mode_scorers())} (got --method {name})",
                       "drop --avss-mode")
    return None


def avss_official(rows: list[dict[str, float]]) -> ScoreOutcome:
    """AVSS_i = Var_i / S_i exactly as the official code, plus a guard the official code lacks.

    Zero-sparsity rule: the official code divides by 0 and gets inf (the layer is ranked most
    important; 0/0 gives NaN). We divide by max(S, 1e-12) instead: the layer still ranks as very
    important, the order among such layers follows their variance, and every score is finite.
    Each such layer is flagged ``sparsity_zero`` and a warning names them.
    """
    layers, zero = [], []
    for i, r in enumerate(rows):
        var, sp = r["variance"], r["sparsity"]
        if sp <= 0.0:
            zero.append(i)
        score = var / max(sp, SPARSITY_EPS)
        layers.append(LayerScore(i, score, {"variance": var, "sparsity": sp, "sparsity_zero": sp <= 0.0}))
    _add_normalised(layers)
    warnings = []
    if zero:
        warnings.append(
            f"official AVSS: {len(zero)} of {len(rows)} layers had no element with |a| < 1e-5 (sparsity 0; "
            f"the official code would give inf/NaN): layers {zero}; scored as variance / 1e-12")
    return ScoreOutcome(layers, warnings)


def avss_robust(rows: list[dict[str, float]], tau: float) -> ScoreOutcome:
    """Robust AVSS on the block's effect on the unit-RMS residual stream, delta = h_out/rms - h_in/rms.

    Variance: Var_d(delta) per real token (scale-free; for unit-RMS vectors it is ~2(1 - cos)).
    Sparsity: share of delta's elements with |delta_d| < tau (the coordinates the block leaves alone),
    Laplace-smoothed so it is never 0. Score: variance / sparsity, as in the paper.
    """
    layers = []
    for i, r in enumerate(rows):
        score = r["delta_variance"] / r["delta_sparsity"]
        layers.append(LayerScore(i, score, {
            "delta_variance": r["delta_variance"], "delta_sparsity": r["delta_sparsity"], "tau": tau,
            "cosine": r["cosine"], "relative_update": r["relative_update"], "output_rms": r["output_rms"],
            "tokens": int(r["tokens"])}))
    _add_normalised(layers)
    return ScoreOutcome(layers)


def block_influence(rows: list[dict[str, float]]) -> ScoreOutcome:
    return ScoreOutcome([
        LayerScore(i, 1.0 - r["cosine"], {"cosine": r["cosine"], "relative_update": r["relative_update"],
                                           "tokens": int(r["tokens"])})
        for i, r in enumerate(rows)])


def angular(matrix: list[list[float]], n_layers: int) -> ScoreOutcome:
    layers = [LayerScore(i, matrix[i][i + 1], {"angular_distance": matrix[i][i + 1]}) for i in range(n_layers)]
    return ScoreOutcome(layers, extra={"angular_distance_matrix": matrix,
                                       "angular_note": "matrix[l][m]: distance between the states entering "
                                                       "blocks l and m (index L = after the last block)"})


def last_k(n_layers: int) -> ScoreOutcome:
    # least important: L-2, L-3, ..., 0; the final layer is most important (Gromov et al.'s baseline)
    scores = {n_layers - 1: float(n_layers)}
    for i in range(n_layers - 1):
        scores[i] = float(n_layers - 1 - i)
    return ScoreOutcome([LayerScore(i, scores[i], {}) for i in range(n_layers)])


def random_scores(n_layers: int, seed: int) -> ScoreOutcome:
    import random as _random

    rng = _random.Random(seed)
    return ScoreOutcome([LayerScore(i, rng.random(), {"seed": seed}) for i in range(n_layers)])


def leave_one_out(base: float, skipped: list[float], kind: str) -> ScoreOutcome:
    return ScoreOutcome([
        LayerScore(i, s - base, {"loss_increase": s - base, "loss_skipped": s, "loss_full": base, "loss_kind": kind})
        for i, s in enumerate(skipped)])


def residual_outcome(r: dict[str, Any], n_layers: int) -> ScoreOutcome:
    """Per layer: the cost of removing it alone (block 0, which no patch can replace, scores above all);
    the whole span matrix goes in the report for the contiguous cut."""
    single = [r["cost"][i][i + 1] for i in range(n_layers)]
    top = max((c for c in single if c is not None), default=0.0)
    layers = []
    for i, c in enumerate(single):
        stats: dict[str, Any] = {"span_cost": c, "error_after": r["error_after"][i][i + 1],
                                 "error_before": r["error_before"][i][i + 1], "tokens": r["tokens"]}
        if c is None:
            stats["unpatchable"] = True
        layers.append(LayerScore(i, float(c) if c is not None else 2.0 * top + 1.0, stats))
    return ScoreOutcome(layers, extra={
        "span_cost_matrix": r["cost"], "span_error_after_matrix": r["error_after"], "ridge": r["ridge"],
        "span_note": "matrix[l][m]: ||M T - Y||^2 / ||L||^2 after the linear patch of blocks l..m-1 (L: the "
                     "true stream leaving block m-1); None: no block before l to fold into, or longer than computed"})


def _add_normalised(layers: list[LayerScore]) -> None:
    total = sum(l.score for l in layers)
    for l in layers:
        l.stats["navss"] = l.score / total if total > 0 else 0.0


def check_finite(outcome: ScoreOutcome, label: str) -> None:
    bad = [l.index for l in outcome.layers if not math.isfinite(l.score)]
    if bad:
        raise RuntimeFailure(f"{label} produced non-finite scores for layers {bad}",
                             "use --dtype float32, or check the model's weights for NaN/inf")

