"""Export what ships and what the bench compares it with, through the run's exporter (the registry
in ``compressor.export.exporters`` says what each builds): ``export`` (the slim model, fp32,
parity-checked), ``quantize``, ``export-base`` (the full model through Optimum fp32, the bench's
reference) and ``export-base-ship`` (the full model through the shipping exporter, when it has one)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from compressor.run.context import RunContext
from compressor.run.pipeline import Results, Step
from compressor.run.stages import Files, Input, Setting, Stage


def _export_stage(ctx: RunContext, name: str, exporter: Any, source: Input, src: Any, dest: str, what: str,
                  quantize: Optional[str] = None) -> Stage:
    """``src`` (a folder, a spec or the loaded model) through ``exporter`` into ``dest``; keyed on ``source``."""
    c = ctx.cfg
    device = c.device if exporter.traces_on_device else "cpu"

    def work(cb: Any) -> tuple[dict[str, Any], str]:
        res = exporter.export(src, ctx.out / dest, quantize=quantize, opset=c.opset, device=device, force=True,
                              allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
        p = res.parity
        if p is None:
            checks = ", ".join(f"{x['name']} {'pass' if x['passed'] else 'FAIL'}" for x in res.structural_checks)
            return {"parity": None}, f"{exporter.name} {quantize}: {checks} ({dest}/)"
        state = "pass" if p["passed"] else "FAIL"
        return {"parity": p}, f"{exporter.name}: parity {state}, max abs diff {p['max_abs_diff']:.1e}"

    inputs: dict[str, Input] = {"model": source, "exporter": Setting(exporter.name), "opset": Setting(c.opset),
                                "device": Setting(device), "quantize": Setting(quantize)}
    return Stage(name, f"exporting {what} with {exporter.name} ({quantize or 'fp32'}, + checks)", inputs, (dest,),
                 work)


def export(ctx: RunContext, given: Results) -> Results:
    slim: Path = given["slim"]
    res = ctx.run_stage(_export_stage(ctx, "export", ctx.exporter, Files(slim), slim, "onnx", "the slim model"))
    return {"onnx": ctx.out / "onnx", "parity": res["parity"]}


def _export_skip(ctx: RunContext, given: Results) -> Optional[str]:
    if ctx.cfg.skip_export:
        return "--skip-export"
    broken = [t["name"] for t in given["verdict"]["tasks"] if t.get("failure")]
    if broken:  # a model with NaN outputs has no export that could match it
        return f"the slim model gives non-finite outputs ({', '.join(broken)}): nothing to export"
    return None


def quantize(ctx: RunContext, given: Results) -> Results:
    c = ctx.cfg
    q = c.quantize
    assert q is not None  # the step is active only with --quantize
    dest = ctx.out / f"onnx-{q}"
    source = Files(given["slim"]) if ctx.exporter.quantize_source == "checkpoint" else Files(given["onnx"])

    def work(cb: Any) -> tuple[dict[str, Any], str]:
        rec = ctx.exporter.quantize(given["slim"], given["onnx"], dest, q, provider=c.provider,
                                    allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
        mb = sum(v for k, v in rec["files"].items() if k.startswith("model.onnx")) / 2**20
        checks = ", ".join(f"{x['name']} {'pass' if x['passed'] else 'FAIL'}" for x in rec["structural_checks"])
        return {"quantization": rec["quantization"]}, f"{ctx.exporter.name} {q}: {mb:.1f} MB, {checks} ({dest.name}/)"

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


def export_base_ship(ctx: RunContext, given: Results) -> Results:
    """The full model through the shipping exporter at the shipped precision: the bench's fair reference."""
    dest = ctx.exporter.bench_reference
    assert dest is not None  # the step is active only for exporters that have one
    ctx.run_stage(_export_stage(ctx, _ship_name(ctx.cfg), ctx.exporter, ctx.base_input(), Path(ctx.base_identity().path), dest,
                                "the full model (bench reference)", ctx.cfg.quantize))
    return {"base-ship": ctx.out / dest}


def _ship_name(cfg: Any) -> str:
    from compressor.export.exporters import get_exporter

    return f"export-base-{get_exporter(cfg.exporter).name}"


def _ship_skip(ctx: RunContext, given: Results) -> Optional[str]:
    if ctx.cfg.skip_bench:
        return "--skip-bench"
    return None if ctx.exporter.bench_reference else f"{ctx.exporter.name} is the reference exporter (onnx-base/)"


def _skip_bench(why: str) -> Any:
    return lambda ctx, given: why if ctx.cfg.skip_bench else None


def _reference_entries() -> tuple[str, ...]:
    from compressor.export.exporters import EXPORTERS

    return tuple(e.bench_reference for e in EXPORTERS.values() if e.bench_reference)


def _quantized_entries() -> tuple[str, ...]:
    from compressor.export.exporters import EXPORTERS

    return tuple(dict.fromkeys(f"onnx-{q}" for e in EXPORTERS.values() for q in e.precisions if q))


def _has_reference(cfg: Any) -> bool:
    from compressor.export.exporters import get_exporter

    return get_exporter(cfg.exporter).bench_reference is not None


STEPS = (
    Step("export", ("slim", "verdict"), ("onnx", "parity"), ("onnx",), export, skip=_export_skip),
    Step("quantize", ("slim", "onnx"), ("quantized",), _quantized_entries(), quantize,
         active=lambda c: bool(c.quantize) or c.search == "fastest",
         skip=lambda ctx, given: None if ctx.cfg.quantize else "the search chose an fp32 artifact"),
    Step("export-base", ("onnx",), ("onnx-base",), ("onnx-base",), export_base,
         skip=_skip_bench("--skip-bench (only the benchmark needs the full model in ONNX)")),
    Step("export-base-ship", ("onnx",), ("base-ship",), _reference_entries(), export_base_ship,
         active=lambda c: _has_reference(c) or c.search == "fastest", skip=_ship_skip, title=_ship_name),
)
