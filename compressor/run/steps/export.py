"""Export what ships and what the bench compares it with, through the run's exporter (the registry
in ``compressor.export.exporters`` says what each builds): ``export`` (the slim model, fp32,
parity-checked), ``quantize``, ``export-base`` (the full model through Optimum fp32, the bench's
reference) and ``export-base-ship`` (the full model through the shipping exporter, when it has one)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from compressor.run.context import RunContext
from compressor.run.pipeline import Results, Step
from compressor.run.stages import Files, Input, Progress, Setting, Stage

if TYPE_CHECKING:  # pragma: no cover
    from compressor.export.exporters import Exporter
    from compressor.run.config import RunConfig
    from compressor.sources.models import LoadedModel


def streams(ctx: RunContext, exporter: Exporter | None = None) -> bool:
    """Whether this run writes ``exporter``'s artifacts one block at a time: it streams and the exporter can
    (the files are the same either way, so the stage keys do not name it)."""
    return bool(ctx.stream) and (exporter or ctx.exporter).streams


def _export_stage(ctx: RunContext, name: str, exporter: Exporter, source: Input, src: str | Path | LoadedModel,
                  dest: str, what: str, quantize: Optional[str] = None) -> Stage:
    """``src`` (a folder, a spec or the loaded model) through ``exporter`` into ``dest``; keyed on ``source``."""
    c = ctx.cfg
    device = c.device if exporter.traces_on_device else "cpu"
    stream = streams(ctx, exporter)

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        res = exporter.export(src, ctx.out / dest, quantize=quantize, opset=c.opset, device=device, force=True,
                              allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code, stream=stream)
        p, how = res.parity, " (streamed)" if stream else ""
        if p is None:
            checks = ", ".join(f"{x['name']} {'pass' if x['passed'] else 'FAIL'}" for x in res.structural_checks)
            return {"parity": None}, f"{exporter.name}{how} {quantize}: {checks} ({dest}/)"
        state = "pass" if p["passed"] else "FAIL"
        return {"parity": p}, f"{exporter.name}{how}: parity {state}, max abs diff {p['max_abs_diff']:.1e}"

    inputs: dict[str, Input] = {"model": source, "exporter": Setting(exporter.name), "opset": Setting(c.opset),
                                "device": Setting(device), "quantize": Setting(quantize)}
    return Stage(name, f"exporting {what} with {exporter.name} ({quantize or 'fp32'}, + checks)", inputs, (dest,),
                 work)


def export(ctx: RunContext, given: Results) -> Results:
    slim: Path = given["slim"]
    res = ctx.run_stage(_export_stage(ctx, "export", ctx.exporter, Files(slim), slim, "onnx", "the slim model"))
    return {"onnx": ctx.out / "onnx", "parity": res["parity"]}


def _ships_quantized_only(ctx: RunContext) -> bool:
    """A streamed run of an exporter that quantizes from the checkpoint: its fp32 slim graph is not written."""
    return streams(ctx) and bool(ctx.cfg.quantize) and ctx.exporter.quantize_source == "checkpoint"


def _without_slim(ctx: RunContext, given: Results) -> Optional[str]:
    """Why a step after the slim export cannot run when that export was skipped (a run that ships only the
    quantized artifact goes on without it)."""
    if given.get("onnx") is None and not _ships_quantized_only(ctx):
        return "the slim model was not exported (see the export step)"
    return None


def _export_skip(ctx: RunContext, given: Results) -> Optional[str]:
    if ctx.cfg.skip_export:
        return "--skip-export"
    broken = [t["name"] for t in given["verdict"]["tasks"] if t.get("failure")]
    if broken:  # a model with NaN outputs has no export that could match it
        return f"the slim model gives non-finite outputs ({', '.join(broken)}): nothing to export"
    if _ships_quantized_only(ctx):
        return (f"a streamed run ships the {ctx.cfg.quantize} artifact, built from the slim checkpoint and gated on "
                "tasks: the fp32 slim graph (4 bytes a weight) is not written")
    return None


def quantize(ctx: RunContext, given: Results) -> Results:
    c = ctx.cfg
    q = c.quantize
    assert q is not None  # the step is active only with --quantize
    dest = ctx.out / f"onnx-{q}"
    source = Files(given["slim"]) if ctx.exporter.quantize_source == "checkpoint" else Files(given["onnx"])

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        rec = ctx.exporter.quantize(given["slim"], given["onnx"], dest, q, provider=c.provider,
                                    allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code,
                                    stream=streams(ctx))
        mb = sum(v for k, v in rec["files"].items() if k.startswith("model.onnx")) / 2**20
        checks = ", ".join(f"{x['name']} {'pass' if x['passed'] else 'FAIL'}" for x in rec["structural_checks"])
        how = " (streamed)" if streams(ctx) else ""
        return {"quantization": rec["quantization"]}, f"{ctx.exporter.name}{how} {q}: {mb:.1f} MB, {checks} ({dest.name}/)"

    inputs: dict[str, Input] = {"source": source, "quantize": Setting(ctx.exporter.quantize_inputs(q)),
                                "provider": Setting(c.provider)}
    ctx.run_stage(Stage("quantize", f"quantizing with {ctx.exporter.name} ({q})", inputs, (dest.name,), work))
    return {"quantized": dest}


def export_base(ctx: RunContext, given: Results) -> Results:
    from compressor.export.exporters import get_exporter

    # the in-memory base is exported as it is when it is fp32 and still held (verify frees it), else the
    # exporter loads it as fp32 from its spec
    held = ctx.base_held()
    src = held if held is not None and held.dtype == "float32" and not held.streamed else ctx.cfg.model
    ctx.run_stage(_export_stage(ctx, "export-base", get_exporter(None), ctx.base_input(), src, "onnx-base",
                                "the full model (bench reference)"))
    return {"onnx-base": ctx.out / "onnx-base"}


def _reference_skip(ctx: RunContext, given: Results) -> Optional[str]:
    """Why the run needs no full-model export for the bench (the same for every reference)."""
    if ctx.cfg.skip_bench:
        return "--skip-bench (only the benchmark needs the full model in ONNX)"
    if ctx.cfg.skip_export:
        return "--skip-export"
    return _without_slim(ctx, given)


def _base_skip(ctx: RunContext, given: Results) -> Optional[str]:
    from compressor.export.exporters import get_exporter

    why = _reference_skip(ctx, given)
    if why:
        return why
    reference = get_exporter(None)
    if ctx.stream and not reference.streams and ctx.exporter.bench_reference:
        return (f"a streamed run: {reference.name}'s fp32 export needs the whole model in memory; the bench compares "
                f"with {ctx.exporter.bench_reference}/ (the full model through {ctx.exporter.name}, streamed)")
    return None


def export_base_ship(ctx: RunContext, given: Results) -> Results:
    """The full model through the shipping exporter at the shipped precision: the bench's fair reference."""
    dest = ctx.exporter.bench_reference
    assert dest is not None  # the step is active only for exporters that have one
    ctx.run_stage(_export_stage(ctx, _ship_name(ctx.cfg), ctx.exporter, ctx.base_input(), Path(ctx.base_identity().path), dest,
                                "the full model (bench reference)", ctx.cfg.quantize))
    return {"base-ship": ctx.out / dest}


def _ship_name(cfg: RunConfig) -> str:
    from compressor.export.exporters import get_exporter

    return f"export-base-{get_exporter(cfg.exporter).name}"


def _ship_skip(ctx: RunContext, given: Results) -> Optional[str]:
    why = _reference_skip(ctx, given)
    if why:
        return why
    return None if ctx.exporter.bench_reference else f"{ctx.exporter.name} is the reference exporter (onnx-base/)"


def _reference_entries() -> tuple[str, ...]:
    from compressor.export.exporters import EXPORTERS

    return tuple(e.bench_reference for e in EXPORTERS.values() if e.bench_reference)


def _quantized_entries() -> tuple[str, ...]:
    from compressor.export.exporters import EXPORTERS

    return tuple(dict.fromkeys(f"onnx-{q}" for e in EXPORTERS.values() for q in e.precisions if q))


def _has_reference(cfg: RunConfig) -> bool:
    from compressor.export.exporters import get_exporter

    return get_exporter(cfg.exporter).bench_reference is not None


STEPS = (
    Step("export", ("slim", "verdict"), ("onnx", "parity"), ("onnx",), export, skip=_export_skip),
    # "onnx" orders the steps after the slim export; a streamed, quantized run does not write it
    Step("quantize", ("slim", "onnx"), ("quantized",), _quantized_entries(), quantize, optional=("onnx",),
         active=lambda c: bool(c.quantize) or c.search == "fastest",
         skip=lambda ctx, given: _without_slim(ctx, given) or (None if ctx.cfg.quantize
                                                                else "the search chose an fp32 artifact")),
    Step("export-base", ("onnx",), ("onnx-base",), ("onnx-base",), export_base, optional=("onnx",), skip=_base_skip),
    Step("export-base-ship", ("onnx",), ("base-ship",), _reference_entries(), export_base_ship, optional=("onnx",),
         active=lambda c: _has_reference(c) or c.search == "fastest", skip=_ship_skip, title=_ship_name),
)
