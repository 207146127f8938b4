"""Score the layers and choose the cut: ``score`` (one scorer, a fixed cut), ``search`` (the largest
cut that passes, per scorer) and ``select`` (the plot of the chosen cut)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.files import atomic_write_text
from compressor.run.context import RunContext
from compressor.run.pipeline import Results, Step
from compressor.run.search import (
    STRATEGY,
    Candidate,
    SearchResult,
    longest_free_run,
    save_curve,
    search_limits,
    search_method,
)
from compressor.run.stages import Input, Progress, Setting, Stage

if TYPE_CHECKING:
    from compressor.score.report import ScoreReport


def scorer_options(ctx: RunContext, method: str) -> dict[str, Any]:
    """A scorer's own settings (part of its stage key): SLEB's loss, protection and rounds (as many as
    this run's cut, or its search, needs); the last-state convention of the stream scorers."""
    from compressor.score import methods
    from compressor.score.select import parse_protect

    c, L = ctx.cfg, ctx.base.num_layers
    scorer = methods.get_scorer(method)
    rounds = 0
    if "max_remove" in scorer.own_options:  # as many rounds as this run's cut, or its search, needs
        rounds = (search_limits(L, ctx.protect, c.max_remove) if c.search
                  else c.cut_size(L))
    return scorer.run_options(last_state=c.last_state, objective=c.objective, protect=parse_protect(ctx.protect, L),
                              rounds=rounds)


def score_stage(ctx: RunContext, method: str, scores_path: Path, name: str) -> Stage:
    from compressor.score import methods

    c = ctx.cfg
    scorer = methods.get_scorer(method)
    mode = methods.check_mode(method, c.avss_mode if scorer.modes else None)
    opts = scorer_options(ctx, method)

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.score.api import score_layers

        data = ctx.calibration_batches() if scorer.needs_data else None
        report = score_layers(ctx.base, method, mode=mode, data=data, seed=c.seed, progress=cb, **opts)
        for w in report.warnings:
            ctx.ev.warn(w)
        report.save(scores_path)
        return {}, f"{report.label}: lowest {report.ranking[:5]}"

    inputs: dict[str, Input] = {"model": ctx.base_input(), "method": Setting([method, mode, c.seed]),
                                "device": Setting(c.device), "options": Setting(opts)}
    if scorer.needs_data:
        inputs.update(calibration=ctx.calibration_settings, calibration_data=ctx.calibration)
    label = f"{method} ({mode})" if mode else method
    return Stage(name, f"scoring layers: {label}", inputs, (scores_path.relative_to(ctx.out).as_posix(),), work)


def score_with(ctx: RunContext, method: str, scores_path: Path, name: str) -> ScoreReport:
    from compressor.score.report import ScoreReport

    ctx.run_stage(score_stage(ctx, method, scores_path, name))
    return ScoreReport.load(scores_path)


def score(ctx: RunContext, given: Results) -> Results:
    from compressor.score.select import select_layers

    c = ctx.cfg
    report = score_with(ctx, c.method, ctx.out / "scores.json", "score")
    removed = select_layers(report, ratio=c.ratio, num_layers=c.num_layers, protect=ctx.protect).removed
    return {"report": report, "removed": removed}


def search(ctx: RunContext, given: Results) -> Results:
    """Every scorer's largest passing cut; the best one is the run's cut (the least bad if none passes)."""
    from compressor.run.steps.cut import CHOSEN, candidate_folder, candidate_stage
    from compressor.score import methods
    from compressor.score.select import parse_protect, select_layers

    c, L = ctx.cfg, ctx.base.num_layers
    max_remove = search_limits(L, ctx.protect, c.max_remove)
    result = SearchResult(STRATEGY, max_remove)
    reports: dict[str, ScoreReport] = {}
    seen: dict[tuple[int, ...], Candidate] = {}
    kept: Candidate | None = None
    for method in c.search_methods:
        rep = reports[method] = score_with(ctx, method, ctx.out / "search" / f"scores-{method}.json",
                                           f"score-{method}")
        nested = methods.get_scorer(method).nested_cuts
        limit = max_remove if nested else min(max_remove, longest_free_run(L, parse_protect(ctx.protect, L)))

        def check(k: int, rep: ScoreReport = rep, method: str = method) -> Candidate:
            nonlocal kept
            removed = select_layers(rep, num_layers=k, protect=ctx.protect).removed
            hit = seen.get(tuple(sorted(removed)))
            if hit is not None:  # the verdict depends on the cut, not on which scorer proposed it
                ctx.ev.note(f"search {method} k={k}: the same cut as {hit.method} k={hit.k}; its verdict is "
                            "reused (no second cut, repair and verify)")
                return dataclasses.replace(hit, method=method, k=k)
            res = ctx.run_stage(candidate_stage(ctx, method, k, removed, rep))
            seen[tuple(sorted(removed))] = cand = Candidate(**res["candidate"])
            folder = candidate_folder(ctx, method, k)
            if folder.is_dir() and c.search == "fastest":  # every passing cut may be exported: keep them all
                return cand
            if folder.is_dir():  # a passing repaired candidate: keep only the best so far (the one chosen)
                if kept is None or (cand.k, cand.worst) > (kept.k, kept.worst):
                    if kept is not None:
                        shutil.rmtree(candidate_folder(ctx, kept.method, kept.k), ignore_errors=True)
                    kept = cand
                else:
                    shutil.rmtree(folder, ignore_errors=True)
            return cand

        best, cands = search_method(method, check, limit, nested=nested)
        result.best[method] = best
        result.candidates += cands
    if c.search == "fastest":
        return _fastest(ctx, result, reports)
    chosen = result.chosen
    if kept is not None and chosen is not None and (kept.k, kept.worst, kept.removed) == (chosen.k, chosen.worst,
                                                                                           chosen.removed):
        candidate_folder(ctx, kept.method, kept.k).rename(ctx.out / ".search" / CHOSEN)
    else:
        shutil.rmtree(ctx.out / ".search", ignore_errors=True)
    if chosen is None:
        chosen = result.fallback()
        ctx.ev.warn(f"no cut passes the gate with any scorer (largest tried: {max_remove} layers); the "
                    f"artifacts are for the least bad one-layer cut ({chosen.method}, layer {chosen.removed})")
    atomic_write_text(ctx.out / "search.json", json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    save_curve(result, ctx.out / "search.png", f"{c.model}: retention vs layers removed ({ctx.profile.name})")
    shutil.copy2(ctx.out / "search" / f"scores-{chosen.method}.json", ctx.out / "scores.json")
    return {"report": reports[chosen.method], "removed": chosen.removed, "search": result}


def _fastest(ctx: RunContext, cuts: SearchResult, reports: dict[str, ScoreReport]) -> Results:
    """The artifact walk over the PyTorch search's passing cuts; the run then ships the chosen candidate."""
    from compressor.run.steps import fastest
    from compressor.run.steps.cut import CHOSEN, candidate_folder

    result = fastest.search_fastest(ctx, cuts, reports)
    chosen = result.walk.chosen
    if chosen is None:
        chosen = result.walk.fallback()
        ctx.ev.warn(f"no artifact passes the gate ({result.walk.counts()['gated']} gated); the run's artifacts are "
                    f"for the least bad one ({chosen.id}, worst retention {chosen.worst:.3f})")
    fastest.ship(ctx, chosen)
    scratch, folder = ctx.out / ".search", candidate_folder(ctx, chosen.cut.method, chosen.cut.k)
    if chosen.cut.removed and ctx.repair.enabled and folder.is_dir():  # its repaired checkpoint: the repair step
        folder.rename(scratch / CHOSEN)  # moves it into model/ (not trained twice)
    for p in scratch.iterdir() if scratch.is_dir() else []:
        if p.name != CHOSEN:
            shutil.rmtree(p, ignore_errors=True)
    if scratch.is_dir() and not any(scratch.iterdir()):
        scratch.rmdir()
    fastest.write(ctx, result, f"{ctx.cfg.model} ({ctx.profile.name})")
    method = chosen.cut.method if chosen.cut.removed else next(iter(reports))
    shutil.copy2(ctx.out / "search" / f"scores-{method}.json", ctx.out / "scores.json")
    return {"report": reports[method], "removed": list(chosen.cut.removed), "search": result}


def select(ctx: RunContext, given: Results) -> Results:
    from compressor.run.steps.cut import score_content
    from compressor.score.report import save_plot

    report, removed = given["report"], given["removed"]

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        save_plot(report, set(removed), ctx.out / "scores.png")
        return {"removed": removed}, f"remove {len(removed)} of {report.num_layers}: {removed}"

    ctx.run_stage(Stage("select", "selecting layers", {"scores": Setting(score_content(report)),
                                                       "removed": Setting(removed)}, ("scores.png",), work))
    if len(removed) > report.num_layers // 2:
        ctx.ev.warn(f"this removes {len(removed)} of {report.num_layers} layers, more than half of the model")
    return {}


STEPS = (
    Step("score", (), ("report", "removed"), ("scores.json",), score, active=lambda c: not c.search),
    Step("search", (), ("report", "removed", "search"), ("search.json", "search.png", "pareto.png", "search",
                                                          ".search", "scores.json"), search,
         active=lambda c: bool(c.search)),
    Step("select", ("report", "removed"), (), ("scores.png",), select),
)
