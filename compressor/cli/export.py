"""Export a full or slim model to ONNX through Optimum, then check ONNX Runtime against PyTorch (exit 3 if not)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli import options as o


def export(
    model: o.Model,
    out: Annotated[str, typer.Option("--out", help="Folder for model.onnx + model.onnx_data, config, tokenizer (atomic write).")],
    task: Annotated[str, typer.Option("--task", help="auto, text-generation-with-past (decoders, KV cache), text-classification, feature-extraction.")] = "auto",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where the model is traced (cuda never falls back to cpu).")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, or fp16 (with --device cuda only; with --exporter genai: the builder's graph for the CUDA provider).")] = "fp32",
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8 (dynamic: weights per channel, activations at run time), int8-weights or int4 (block-wise weight-only MatMulNBits): quantize the parity-checked fp32 graph. With --exporter genai: int4 or int8-weights (the builder's).")] = None,
    exporter: Annotated[str, typer.Option("--exporter", help="optimum (any supported model) or genai (ONNX Runtime GenAI's Model Builder: fused decoder graph for edge serving; Llama, Mistral, Qwen2/3, Gemma 3, Phi-3).")] = "optimum",
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    force: o.Force = False,
) -> None:
    from rich.table import Table

    from compressor.cli.output import note, warn
    from compressor.cli.output import out as stdout
    from compressor.export.convert import export_model
    from compressor.files import check_output_dir

    check_output_dir(out, force, note=note)  # also cleans what a killed export left beside it

    def started(stage: str) -> None:
        note(f"{stage} ...")

    def ended(stage: str, seconds: float) -> None:
        note(f"{stage}: {seconds:.1f} s")

    if exporter == "genai":
        return _genai(model, out, quantize, dtype, device, force, allow_pickle, trust_remote_code, started, ended)
    if exporter != "optimum":
        from compressor.errors import BadInput

        raise BadInput(f"unknown --exporter {exporter!r}", "use --exporter optimum or genai")
    note(f"exporting {model} to {out} (opset {opset}, {dtype}, {device})")
    res = export_model(model, out, task=task, opset=opset, device=device, dtype=dtype, force=force,
                       allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                       on_start=started, on_stage=ended, quantize=quantize)
    for w in res.warnings:
        warn(w)
    t = Table(title=f"parity: ONNX Runtime ({res.parity.provider}) vs PyTorch, {res.dtype}")
    for col in ("check", "result", "max abs diff", "tolerance", "detail"):
        t.add_column(col, justify="right" if col in ("max abs diff", "tolerance") else "left")
    for c in res.parity.checks:
        t.add_row(c.name, "pass" if c.passed else "FAIL",
                  "" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}",
                  "" if c.tolerance is None else f"{c.tolerance:.2e}", c.detail)
    stdout.print(t)
    if res.quantization:
        q = res.quantization["settings"]
        checks = ", ".join(f"{c['name']} {'pass' if c['passed'] else 'FAIL'}" for c in res.quantization["structural_checks"])
        note(f"quantized to {q['method']} with {q['tool']} ({checks}); gate it on tasks: "
             f"avss verify BASE {out} --profile FILE")
    size = sum(v for k, v in res.files.items() if k.startswith("model.onnx"))
    total = sum(res.timings.values())
    note(f"wrote {out}: {res.task}, {res.num_layers} layers, model {size / 2**20:.1f} MB, {total:.1f} s "
         f"(export.json records the parity results)")


def _genai(model, out, quantize, dtype, device, force, allow_pickle, trust_remote_code, started, ended) -> None:
    from rich.table import Table

    from compressor.cli.output import note, warn
    from compressor.cli.output import out as stdout
    from compressor.export.genai import check_target, export_genai

    check_target(dtype, device, quantize)
    note(f"building {model} with ONNX Runtime GenAI's Model Builder into {out} ({quantize or dtype}, {device})")
    rec = export_genai(model, out, quantize=quantize, dtype=dtype, device=device, force=force,
                       allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, on_start=started, on_stage=ended)
    for w in rec["warnings"]:
        warn(w)
    if rec["parity"]:
        t = Table(title=f"parity: the builder's graph in ONNX Runtime ({rec['parity']['provider']}) vs PyTorch fp32, "
                        f"{rec['dtype']} tolerance")
        for col in ("check", "result", "max abs diff", "tolerance", "detail"):
            t.add_column(col, justify="right" if col in ("max abs diff", "tolerance") else "left")
        for c in rec["parity"]["checks"]:
            t.add_row(c["name"], "pass" if c["passed"] else "FAIL",
                      "" if c["max_abs_diff"] is None else f"{c['max_abs_diff']:.2e}",
                      "" if c["tolerance"] is None else f"{c['tolerance']:.2e}", c["detail"])
        stdout.print(t)
    checks = ", ".join(f"{c['name']} {'pass' if c['passed'] else 'FAIL'}" for c in rec["structural_checks"])
    if quantize:
        note(f"{quantize} graph ({checks}); gate it on tasks: avss verify BASE {out} --profile FILE")
    size = sum(v for k, v in rec["files"].items() if k.startswith("model.onnx"))
    note(f"wrote {out}: GenAI ({rec['exporter']['package']}), {rec['num_layers']} layers, model {size / 2**20:.1f} MB, "
         f"{sum(rec['timings'].values()):.1f} s (export.json records the checks)")
