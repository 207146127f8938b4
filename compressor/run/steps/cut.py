"""Cut the chosen layers out: ``prune`` (the plain cut) and ``repair`` (the cut with the run's repair),
and the throwaway cut of each ``--search`` candidate."""
from __future__ import annotations

import copy
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.prune.provenance import cut_provenance
from compressor.run.context import RunContext
from compressor.run.pipeline import Results, Step
from compressor.run.search import Candidate
from compressor.run.stages import Input, Progress, Setting, Stage

if TYPE_CHECKING:
    from compressor.prune.surgery import PruneResult
    from compressor.score.report import ScoreReport


def cut_into(ctx: RunContext, removed: list[int], folder: Path, provenance: dict[str, Any], repaired: bool,
             label: str = "repair") -> PruneResult:
    """Cut ``removed`` into ``folder``; with ``repaired`` also apply the run's repair (the base is untouched).
    Returns the prune result (its ``repair`` record says what the repair did)."""
    from compressor.prune.surgery import prune_model
    from compressor.repair.api import prune_and_repair
    from compressor.sources.models import LoadedModel

    base = ctx.base
    res: PruneResult
    if repaired and ctx.repair.enabled and removed:  # nothing removed (the uncut model --search fastest may
        # ship): nothing to repair, the copy below is exact
        bars: dict[str, Progress | None] = {}

        def progress(step: str, done: int, total: int, loss: float | None) -> None:
            if step not in bars:
                bars[step] = ctx.ev.start(label, step)
            bar = bars[step]
            if bar:
                bar(done, total)
            if loss is not None and (done % 10 == 0 or done == total):
                ctx.ev.note(f"{label}: {step} step {done}/{total}, loss {loss:.4f}")

        res = prune_and_repair(base, removed, folder, ctx.repair, ctx.calibration_batches(), force=True,
                               provenance=provenance, progress=progress)
    elif base.streamed:  # the plain cut, shard by shard from the checkpoint (nothing in memory to copy)
        from compressor.repair.settings import RepairSettings

        res = prune_and_repair(base, removed, folder, RepairSettings(), None, force=True, provenance=provenance)
    else:
        clone = LoadedModel(base.spec, base.path, copy.deepcopy(base.model), base.tokenizer, base.adapter,
                            base.device, base.dtype)
        res = prune_model(clone, removed, folder, force=True, provenance=provenance)
        del clone
    for w in res.warnings:
        ctx.ev.warn(w)
    return res


CHOSEN = "chosen"  # .search/chosen: the chosen candidate's repaired checkpoint, for the repair step


def candidate_folder(ctx: RunContext, method: str, k: int) -> Path:
    return ctx.out / ".search" / f"{method}-k{k}"


def candidate_stage(ctx: RunContext, method: str, k: int, removed: list[int], rep: ScoreReport) -> Stage:
    """One ``--search`` candidate: cut, verify (stop at the first failing task). A repaired candidate that
    passes is kept (the search keeps only the best so far), so the run's repair step need not train it again."""

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.verify.api import Deferred

        folder = candidate_folder(ctx, method, k)
        cut_into(ctx, removed, folder, cut_provenance(rep, None, run=run_settings(ctx)), repaired=True,
                 label="search")
        keep = False
        try:
            # the base stays: the next candidate is cut from it (peak: base + candidate)
            v = ctx.verify(Deferred(lambda: ctx.load_candidate(folder)), f"search {method} k={k}",
                           stop_at_failure=True)
            keep = v.passed and ctx.repair.enabled
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
        gated = {t.name: (t.verdict_value, t.threshold) for t in v.tasks if t.verdict_value is not None}
        cand = Candidate(method, k, removed, v.passed, v.complete, {n: r for n, (r, _) in gated.items()},
                         {n: th for n, (_, th) in gated.items()})
        state = "pass" if cand.passed else "FAIL"
        return {"candidate": asdict(cand)}, f"{method} k={k}: {state}, worst retention {cand.worst:.3f}"

    inputs: dict[str, Input] = {"base": ctx.base_input(), "removed": Setting(removed), **ctx.gate_inputs,
                                **ctx.repair_inputs()}
    return Stage(f"search-{method}-k{k}", f"search {method}: {k} layers removed", inputs, (), work)


def score_content(report: ScoreReport) -> dict[str, Any]:
    """What select and prune read from a score report (not its timing, which differs on every run)."""
    return {"label": report.label, "scores": [[l.index, l.score] for l in report.layers],
            "ranking": report.ranking, "calibration": report.calibration, "extra": report.extra}


def run_settings(ctx: RunContext) -> dict[str, Any]:
    """What ``compression.json`` records of the run that made a cut (its ``run`` provenance)."""
    c = ctx.cfg
    return {"model": c.model, "protect": ctx.protect, "device": c.device, "dtype": c.dtype, "search": c.search}


def _cut_stage(ctx: RunContext, name: str, label: str, report: ScoreReport, removed: list[int], dest: str,
               repaired: bool) -> Stage:
    """prune (the plain cut) and repair (cut + repair) write the same kind of checkpoint."""
    prov = cut_provenance(report, None, run=run_settings(ctx))

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.repair.methods import describe

        reused = _searched(ctx, removed) if repaired else None
        if reused is not None:  # the search already cut and repaired exactly this, in this run: move it
            shutil.rmtree(ctx.out / dest, ignore_errors=True)
            shutil.move(str(reused[0]), str(ctx.out / dest))
            shutil.rmtree(ctx.out / ".search", ignore_errors=True)
            return {"repair": reused[1]}, f"{describe(reused[1])} ({dest}/, the search's candidate, not repaired twice)"
        res = cut_into(ctx, removed, ctx.out / dest, prov, repaired=repaired)
        if not repaired:
            return {}, f"{report.num_layers} -> {report.num_layers - len(removed)} layers ({dest}/)"
        rec = res.repair or {}
        return {"repair": rec}, f"{describe(rec)} ({dest}/)"

    inputs: dict[str, Input] = {"base": ctx.base_input(), "removed": Setting(removed),
                                "scores": Setting(score_content(report)), "provenance": Setting(prov)}
    if repaired:
        inputs.update(ctx.repair_inputs())
    return Stage(name, label, inputs, (dest,), work)


def _searched(ctx: RunContext, removed: list[int]) -> tuple[Path, dict[str, Any]] | None:
    """The search's chosen candidate if it is this cut, repaired with this run's repair: (folder, record).
    ``.search`` is emptied when a run starts, so what is there was made by this run's candidate stages."""
    from compressor.prune.surgery import read_compression

    folder = ctx.out / ".search" / CHOSEN
    if not (folder / "config.json").is_file():
        return None
    try:
        comp = read_compression(str(folder))
    except Exception:  # noqa: BLE001 - a damaged scratch folder is simply not reused
        return None
    rec = comp.get("repair") or {}
    if sorted(comp.get("removed_layers", [])) != sorted(removed) or rec.get("method") != ctx.repair.method:
        return None
    return folder, rec


def prune(ctx: RunContext, given: Results) -> Results:
    # with a repair, the plain cut is kept beside the repaired model/ for comparison
    dest = "cut" if ctx.repair.enabled else "model"
    ctx.run_stage(_cut_stage(ctx, "prune", "pruning", given["report"], given["removed"], dest, repaired=False))
    return {"pruned": ctx.out / dest}


def repair(ctx: RunContext, given: Results) -> Results:
    res = ctx.run_stage(_cut_stage(ctx, "repair", f"repairing the cut: {ctx.repair.method}", given["report"],
                                   given["removed"], "model", repaired=True))
    return {"slim": ctx.out / "model", "repair": res.get("repair")}


STEPS = (
    Step("prune", ("report", "removed"), ("pruned",), ("model", "cut"), prune),
    # repair consumes the plain cut only for its place in the order (after it, as the run reports them)
    Step("repair", ("report", "removed", "pruned"), ("slim", "repair"), ("model",), repair,
         skip=lambda ctx, given: "--repair none" if not ctx.repair.enabled else None,
         passthrough={"slim": "pruned"}),
)
