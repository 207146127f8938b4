"""``--search fastest`` inside the run: the artifact walk (``compressor.run.fastest``) with real exports,
real ONNX Runtime gates and one bench of the frontier, each a resumable stage keyed on content.

Why the gates are keyed on the cut (base, removed layers, repair) and not on the artifact's files: the
scratch folder ``.search/`` is emptied when a run starts, so a resumed run knows a candidate's verdict from
its record without exporting it again; only the frontier bench needs the artifacts, and rebuilds a missing
one (the exporters are deterministic).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from compressor.run.context import RunContext
from compressor.run.fastest import (
    ArtifactCandidate,
    Cut,
    FastestResult,
    FastestSearch,
    GateOutcome,
    estimate_bytes,
    precision_name,
)
from compressor.run.stages import Input, Progress, Setting, Stage, input_digests, stage_key

if TYPE_CHECKING:
    from compressor.run.search import SearchResult
    from compressor.score.report import ScoreReport
    from compressor.sources.models import LoadedModel

SCRATCH = ".search"


def reference() -> tuple[str, None]:
    """The objective's denominator: the full model through the default exporter here, fp32 (Optimum in the
    card's lane, the builder in the current lane)."""
    from compressor.export.exporters import default_name

    return default_name(), None


def reference_id() -> str:
    return f"uncut-{reference()[0]}-fp32"


def space(ctx: RunContext) -> tuple[list[str], dict[str, list[Optional[str]]], list[str]]:
    """The exporters that build this architecture (``--exporter`` narrows them to one), each one's
    precisions (``--precisions`` narrows them), most precise first, and why the others are left out. Called
    before any work too (``prepare``): an empty space is bad input."""
    from compressor.errors import AvssError, BadInput
    from compressor.export.exporters import EXPORTERS

    c, base = ctx.cfg, ctx.base
    names = [c.exporter] if c.exporter else list(EXPORTERS)
    exporters, precisions, refused = [], {}, []
    for name in names:
        exp = EXPORTERS.find(name)
        missing = exp.missing()
        if missing is not None:  # not installable in this lane (named by --exporter, the run config refused it)
            refused.append(f"{name}: {missing}")
            continue
        wanted = [p for p in exp.search_precisions if c.precisions is None or precision_name(p) in c.precisions]
        if ctx.profile.gate.target == "quantized":  # the profile gates a quantized artifact: fp32 cannot ship
            wanted = [p for p in wanted if p is not None]
        try:
            exp.check_model(base.config, base.adapter.family, None)
        except AvssError as exc:
            refused.append(f"{name}: {exc.problem}")
            continue
        if wanted:
            exporters.append(name)
            precisions[name] = wanted
    if not exporters:
        why = "; ".join(refused) or f"no exporter builds {', '.join(c.precisions or [])}"
        raise BadInput(f"--search fastest has nothing to search: {why}",
                       "use --search (the largest cut) with an exporter that builds this model, or widen --precisions")
    return exporters, precisions, refused


def shape(ctx: RunContext) -> tuple[int, int]:
    """(parameters per block, LM head parameters) for the estimate, from the base's config."""
    base = ctx.base
    cfg = base.config
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    head = hidden * vocab
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    blocks = base.num_parameters - head * (1 if tied else 2)
    return max(1, blocks // max(1, base.num_layers)), head


def candidates(ctx: RunContext, cuts: SearchResult, reports: dict[str, ScoreReport], exporters: list[str],
               precisions: dict[str, list[Optional[str]]]) -> FastestSearch:
    """The space: k = 0 and each scorer's passing ladder (k = 1..best; a cut two scorers propose is one
    candidate), times the exporters and their precisions."""
    from compressor.score import methods
    from compressor.score.select import select_layers

    L = ctx.base.num_layers
    block, head = shape(ctx)
    seen: dict[tuple[int, ...], Cut] = {(): Cut("uncut", 0, ())}
    for method, best in cuts.best.items():
        nested = methods.get_scorer(method).nested_cuts
        verified = {c.k for c in cuts.candidates if c.method == method and c.passed}
        for k in range(1, best + 1):
            if not nested and k not in verified:
                continue
            removed = tuple(sorted(select_layers(reports[method], num_layers=k, protect=ctx.protect).removed))
            seen.setdefault(removed, Cut(method, k, removed))
    failed: list[dict[str, Any]] = [{"method": c.method, "k": c.k, "removed": c.removed} for c in cuts.candidates
                                    if not c.passed]
    if ctx.cfg.search_sweep:  # the sweep checks the pytorch rule too: the cuts that failed in PyTorch are exported
        for f in failed:
            seen.setdefault(tuple(sorted(f["removed"])), Cut(f["method"], f["k"], tuple(sorted(f["removed"]))))
        failed = []
    out = [ArtifactCandidate(cut, e, p, rank, estimate_bytes(L - len(cut.removed), block, head, p))
           for cut in seen.values() for e in exporters for rank, p in enumerate(precisions[e])]
    return FastestSearch(out, exporters, precisions, pytorch_failed=failed, sweep=ctx.cfg.search_sweep)


# --- building artifacts --------------------------------------------------------------------------
def cut_folder(ctx: RunContext, cut: Cut, reports: dict[str, ScoreReport]) -> Path:
    """The cut's checkpoint (the base's own folder for k = 0): the PyTorch search's kept candidate, else
    cut (and repaired) again from the base, which gives the same weights."""
    from compressor.prune.provenance import cut_provenance
    from compressor.run.steps.cut import candidate_folder, cut_into, run_settings

    if not cut.removed:
        return Path(ctx.base_identity().path)
    folder = candidate_folder(ctx, cut.method, cut.k)
    if not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        rep = reports[cut.method]
        cut_into(ctx, list(cut.removed), folder, cut_provenance(rep, None, run=run_settings(ctx)), repaired=True,
                 label="search")
    return folder


def artifact_folder(ctx: RunContext, cand_id: str) -> Path:
    return ctx.out / SCRATCH / "artifacts" / cand_id


def build(ctx: RunContext, cut: Cut, exporter_name: str, precision: Optional[str], dest: Path,
          reports: dict[str, ScoreReport]) -> int:
    """Export ``cut`` through the exporter at the precision into ``dest``; returns the graph's bytes. A
    quantized Optimum graph starts from the fp32 graph, which is kept for the next precision."""
    from compressor.export.exporters import get_exporter

    c = ctx.cfg
    exp = get_exporter(exporter_name)
    src = cut_folder(ctx, cut, reports)
    kw = dict(allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
    if precision is None:
        exp.export(src, dest, opset=c.opset, force=True, **kw)
    elif exp.quantize_source == "checkpoint":
        exp.quantize(src, src, dest, precision, provider=c.provider, **kw)
    else:
        graph = artifact_folder(ctx, f"{cut.name}-{exporter_name}-fp32")
        if not (graph / "model.onnx").is_file():
            shutil.rmtree(graph, ignore_errors=True)
            exp.export(src, graph, opset=c.opset, force=True, **kw)
        exp.quantize(src, graph, dest, precision, provider=c.provider, **kw)
    return sum(f.stat().st_size for f in dest.iterdir() if f.name.startswith("model.onnx"))


def gate_stage(ctx: RunContext, cand: ArtifactCandidate, reports: dict[str, ScoreReport]) -> Stage:
    """Export one candidate and judge it on the artifact (ONNX Runtime, stop at the first failing task).
    A passing artifact stays in ``.search/artifacts/`` for the frontier bench."""
    from compressor.export.exporters import get_exporter

    c = ctx.cfg
    exp = get_exporter(cand.exporter)

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.export.ort_model import load_onnx_model
        from compressor.verify.api import Deferred, Identity

        dest = artifact_folder(ctx, cand.id)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = build(ctx, cand.cut, cand.exporter, cand.precision, dest, reports)
        seen: dict[str, str] = {}

        def load() -> LoadedModel:
            loaded: LoadedModel = load_onnx_model(str(dest), provider=c.provider)
            seen["runtime"] = Identity.of(loaded).device
            return loaded

        v = ctx.verify(Deferred(load), f"search {cand.id}", stop_at_failure=True)
        if not v.passed:
            shutil.rmtree(dest, ignore_errors=True)
        gated = {t.name: (t.verdict_value, t.threshold) for t in v.tasks if t.verdict_value is not None}
        out: dict[str, Any] = {"passed": v.passed, "complete": v.complete, "size_bytes": size,
                               "runtime": seen.get("runtime", ""), "retention": {n: r for n, (r, _) in gated.items()},
                               "thresholds": {n: th for n, (_, th) in gated.items()}}
        worst = min(out["retention"].values(), default=0.0)
        return {"gate": out}, f"{cand.id}: {'pass' if v.passed else 'FAIL'}, worst retention {worst:.3f}"

    inputs: dict[str, Input] = {"base": ctx.base_input(), "removed": Setting(list(cand.cut.removed)),
                                "exporter": Setting(cand.exporter), "opset": Setting(c.opset),
                                "precision": Setting(exp.quantize_inputs(cand.precision) if cand.precision else None),
                                "provider": Setting(c.provider), **ctx.gate_inputs}
    if cand.cut.removed:
        inputs.update(ctx.repair_inputs())
    return Stage(f"search-{cand.id}", f"search: {cand.id} (export + gate in ONNX Runtime)", inputs, (), work)


def reference_folder(ctx: RunContext, walk: FastestSearch) -> Path:
    """The full model through the reference exporter, fp32: the passing uncut candidate's folder when there is one."""
    uncut = Cut("uncut", 0, ())
    cand = walk.find(uncut, *reference())
    if cand is not None and cand.status == "pass" and (artifact_folder(ctx, cand.id) / "model.onnx").is_file():
        return artifact_folder(ctx, cand.id)
    folder = artifact_folder(ctx, f"reference-{reference_id()}")
    if not (folder / "model.onnx").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        build(ctx, uncut, *reference(), folder, {})
    return folder


def bench_stage(ctx: RunContext, walk: FastestSearch, keys: dict[str, str], reports: dict[str, ScoreReport]) -> Stage:
    """The frontier and the reference in one bench run (alternating rounds, same prompt, tokens, threads)."""
    c = ctx.cfg
    front = walk.frontier()

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.export.bench import bench_models

        folders = [reference_folder(ctx, walk)]
        for cand in front:
            folder = artifact_folder(ctx, cand.id)
            if not (folder / "model.onnx").is_file():  # gated by an earlier run: the scratch was emptied since
                shutil.rmtree(folder, ignore_errors=True)
                build(ctx, cand.cut, cand.exporter, cand.precision, folder, reports)
            folders.append(folder)
        rep = bench_models([str(f) for f in folders], c.bench.options(c.provider), progress=ctx.ev.note)
        rows = []
        for m in rep.models:
            rows.append({"decode_ms": m.decode_ms_per_token.p50 if m.decode_ms_per_token else None,
                         "prefill_ms": m.prefill_ms.p50 if m.prefill_ms else None, "peak_rss_mb": m.rss_peak_mb,
                         "file_mb": m.file_mb, "runtime": m.runtime})
        out = {"reference": {"id": reference_id(), **rows[0]},
               "frontier": {cand.id: row for cand, row in zip(front, rows[1:])},
               "settings": rep.to_dict()["settings"], "provider": rep.provider}
        best = min(out["frontier"].items(), key=lambda kv: kv[1]["decode_ms"] or float("inf"))
        ratio = (best[1]["decode_ms"] or 0) / (rows[0]["decode_ms"] or 1)
        return {"bench": out}, f"{len(front)} passing candidates benched; fastest {best[0]}: decode {ratio:.2f}x of full"

    inputs: dict[str, Input] = {"candidates": Setting([keys[cand.id] for cand in front]),
                                "provider": Setting(c.provider), "bench": Setting(c.bench.model_dump(mode="json"))}
    return Stage("search-bench", f"benchmarking the {len(front)} passing candidates on the frontier", inputs, (), work)


def search_fastest(ctx: RunContext, cuts: SearchResult, reports: dict[str, ScoreReport]) -> FastestResult:
    """Walk the space, bench the frontier, choose; the run then ships the chosen (cut, exporter, precision)."""
    exporters, precisions, refused = space(ctx)
    for r in refused:
        ctx.ev.note(f"search: left out of the space ({r})")
    walk = candidates(ctx, cuts, reports, exporters, precisions)
    keys: dict[str, str] = {}

    def gate(cand: ArtifactCandidate) -> GateOutcome:
        stage = gate_stage(ctx, cand, reports)
        keys[cand.id] = stage_key(stage.name, input_digests(stage))
        g = ctx.run_stage(stage)["gate"]
        return GateOutcome(g["passed"], g["retention"], g["thresholds"], g["complete"], g["size_bytes"],
                           g["runtime"])

    walk.walk(gate)
    result = FastestResult(cuts, walk)
    if walk.frontier() and ctx.cfg.skip_bench:
        walk.choose_by_estimate()
        ctx.ev.warn("--skip-bench: the search chose by its estimate (bytes read per token), not by measured speed")
    elif walk.frontier():
        b = ctx.run_stage(bench_stage(ctx, walk, keys, reports))["bench"]
        walk.reference, walk.bench = b["reference"], {"settings": b["settings"], "provider": b["provider"]}
        for cand in walk.frontier():
            row = b["frontier"].get(cand.id) or {}
            cand.decode_ms, cand.prefill_ms = row.get("decode_ms"), row.get("prefill_ms")
            cand.peak_rss_mb, cand.runtime = row.get("peak_rss_mb"), row.get("runtime") or cand.runtime
        walk.choose()
    return result


def ship(ctx: RunContext, cand: ArtifactCandidate) -> None:
    """What the run's export, quantize and bench steps build from here on: the chosen exporter and precision
    (``run.json``'s config records them)."""
    from compressor.export.exporters import get_exporter

    ctx.cfg = ctx.cfg.model_copy(update={"exporter": cand.exporter, "quantize": cand.precision})
    ctx.exporter = get_exporter(cand.exporter)
    ctx.result.config = ctx.cfg.model_dump(mode="json")


def write(ctx: RunContext, result: FastestResult, title: str) -> None:
    from compressor.files import atomic_write_text
    from compressor.run.fastest import save_pareto
    from compressor.run.search import save_curve

    atomic_write_text(ctx.out / "search.json", json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    save_curve(result.cuts, ctx.out / "search.png", f"{title}: retention vs layers removed (PyTorch)")
    save_pareto(result, ctx.out / "pareto.png", f"{title}: decode time vs retention per artifact")
