"""Scorer registry: every scorer maps per-layer statistics to one importance score per layer.

Convention everywhere: **higher score = more important**; the ranking lists layers least important
first; layer indices are 0-based in the original numbering.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from compressor.errors import BadInput, RuntimeFailure
from compressor.score.report import LayerScore

AVSS_MODES = ("robust", "official")
SPARSITY_EPS = 1e-12  # official mode: AVSS = variance / max(sparsity, eps)


@dataclass(frozen=True)
class Scorer:
    name: str
    description: str
    groups: frozenset[str]  # statistics groups the pass must collect; empty: no forward pass
    needs_data: bool = True
    multi_pass: bool = False  # leave-one-out: one extra pass per layer
    modes: tuple[str, ...] = ()
    nested_cuts: bool = True  # the k+1 cut contains the k cut (ranking order); False: contiguous blocks
    reads_last_state: bool = False  # its statistics read the last block's output (--last-state applies)


@dataclass
class ScoreOutcome:
    layers: list[LayerScore]
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in [
        Scorer("avss", "Activation Variance-Sparsity Score (arXiv 2411.02117): variance / sparsity; "
               "mode 'official' = the official code's quantities, 'robust' = the same idea on the block's "
               "padding-masked effect on the RMS-normalised residual stream",
               frozenset(), modes=AVSS_MODES, reads_last_state=True),
        Scorer("block-influence", "ShortGPT block influence: 1 - mean cos(h_in, h_out) over real tokens",
               frozenset({"stream"}), reads_last_state=True),
        Scorer("angular", "Gromov et al. angular distance arccos(cos(h_l, h_l+n))/pi on the last real token; "
               "prune removes the contiguous block with the smallest distance", frozenset({"last_token"}),
               nested_cuts=False, reads_last_state=True),
        Scorer("leave-one-out", "loss increase when the block is skipped (causal LM: next-token NLL; "
               "classifier: KL of the logits; bare encoder: 1 - cos of the final hidden state)",
               frozenset(), multi_pass=True),
        Scorer("sleb", "SLEB (Song et al., ICML 2024): greedy iterative removal; each round skips every remaining "
               "block in turn and removes the one whose absence costs least on the calibration loss (nll, or kl "
               "to the full model); the ranking is the removal order", frozenset(), multi_pass=True),
        Scorer("last-k", "positional baseline: the k layers before the final one are least important",
               frozenset(), needs_data=False),
        Scorer("random", "seeded random scores (a floor every real scorer must beat)", frozenset(), needs_data=False),
    ]
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise BadInput(f"unknown method {name!r}", f"use one of: {', '.join(SCORERS)}")
    return SCORERS[name]


def stat_groups(name: str, mode: str | None) -> frozenset[str]:
    if name == "avss":
        return frozenset({"official"}) if mode == "official" else frozenset({"stream"})
    return get_scorer(name).groups


LAST_STATES = ("block", "final-norm")


def last_state_scorers() -> list[str]:
    return [s.name for s in SCORERS.values() if s.reads_last_state]


def names_text(names: list[str]) -> str:
    """"a, b and c", streaming scorers first (the order the README and messages use)."""
    names = sorted(names, key=lambda n: (n == "avss", list(SCORERS).index(n)))
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def check_options(name: str, objective: str | None, max_remove: int | None, last_state: str | None) -> None:
    """Options that belong to one scorer are refused with any other (a typo never silently does nothing)."""
    if name != "sleb" and (objective is not None or max_remove is not None):
        flag = "--objective" if objective is not None else "--max-remove"
        raise BadInput(f"{flag} only applies to --method sleb (got --method {name})", f"drop {flag}")
    if last_state is not None:
        if last_state not in LAST_STATES:
            raise BadInput(f"unknown --last-state {last_state!r}", "use block (default) or final-norm")
        if not get_scorer(name).reads_last_state:
            raise BadInput(f"--last-state only applies to {names_text(last_state_scorers())} (got --method {name})",
                           "drop --last-state")


def check_mode(name: str, mode: str | None) -> str | None:
    """AVSS needs a mode (default robust); other methods must not be given one."""
    if name == "avss":
        mode = mode or "robust"
        if mode not in AVSS_MODES:
            raise BadInput(f"unknown --avss-mode {mode!r}", "use --avss-mode robust or --avss-mode official")
        return mode
    if mode is not None:
        raise BadInput(f"--avss-mode only applies to --method avss (got --method {name})", "drop --avss-mode")
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


def _add_normalised(layers: list[LayerScore]) -> None:
    total = sum(l.score for l in layers)
    for l in layers:
        l.stats["navss"] = l.score / total if total > 0 else 0.0


def check_finite(outcome: ScoreOutcome, label: str) -> None:
    bad = [l.index for l in outcome.layers if not math.isfinite(l.score)]
    if bad:
        raise RuntimeFailure(f"{label} produced non-finite scores for layers {bad}",
                             "use --dtype float32, or check the model's weights for NaN/inf")


Compute = Callable[..., ScoreOutcome]
