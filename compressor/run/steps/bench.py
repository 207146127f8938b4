"""``bench``: latency and memory of every exported model in ONNX Runtime, full against slim."""
from __future__ import annotations

from typing import Any

from compressor.run.context import RunContext
from compressor.run.pipeline import Results, Step
from compressor.run.stages import Files, Input, Progress, Setting, Stage


def bench(ctx: RunContext, given: Results) -> Results:
    c = ctx.cfg
    # full first, then slim, then what else ships: the bench's ratios are against the first (a streamed run has
    # no Optimum fp32 reference: the full model through the shipping exporter is the first)
    order = ("onnx-base", "onnx", "quantized", "base-ship") if given.get("onnx-base") is not None else (
        "base-ship", "onnx", "quantized")
    folders = [given[r] for r in order if given.get(r) is not None]

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.export.bench import bench_models
        from compressor.export.bench_output import save_plot as bench_plot
        from compressor.export.bench_output import write_json

        rep = bench_models([str(f) for f in folders], c.bench.options(c.provider), progress=ctx.ev.note)
        write_json(rep, ctx.out / "bench.json")
        bench_plot(rep, ctx.out / "bench.png")
        d = rep.to_dict()
        r = (d.get("ratios") or [{}])[0]
        detail = f"provider {d['provider']}"
        if r.get("decode_ratio") is not None:
            detail += f", decode {r['decode_ratio']:.2f}x of full (ideal {r['layer_ratio']:.2f})"
        return {"bench": d}, detail

    inputs: dict[str, Input] = {f"model-{i}": Files(f) for i, f in enumerate(folders)}
    inputs.update(provider=Setting(c.provider), bench=Setting(c.bench.model_dump(mode="json")))
    what = "full vs slim" + (f" vs slim {c.quantize}" if c.quantize else "")
    return {"bench": ctx.run_stage(Stage("bench", f"benchmarking {what} (ONNX Runtime)", inputs,
                                         ("bench.json", "bench.png"), work)).get("bench")}


def _skip(ctx: RunContext, given: Results) -> str | None:
    if ctx.cfg.skip_bench:
        return "--skip-bench"
    if ctx.cfg.skip_export:
        return "--skip-export"
    full = given.get("onnx-base") if given.get("onnx-base") is not None else given.get("base-ship")
    if full is None or given.get("onnx") is None and given.get("quantized") is None:
        return "no full and slim artifact to compare (their exports were skipped)"
    return None


STEPS = (
    Step("bench", ("onnx-base", "onnx", "quantized", "base-ship"), ("bench",), ("bench.json", "bench.png"), bench,
         optional=("onnx-base", "onnx", "quantized", "base-ship"), skip=_skip),
)
