"""Export a full or slim model to ONNX with a registered exporter, then check ONNX Runtime against PyTorch (exit 3 if not)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli import options as o
from compressor.export.exporters import help_text

EXPORTER_HELP = help_text()


def export(
    model: o.Model,
    out: Annotated[str, typer.Option("--out", help="Folder for model.onnx + model.onnx_data, config, tokenizer (atomic write).")],
    task: Annotated[str, typer.Option("--task", help="auto, text-generation-with-past (decoders, KV cache), text-classification, feature-extraction.")] = "auto",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where the model is traced (cuda never falls back to cpu).")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, or fp16 (with --device cuda only; with --exporter genai: the builder's graph for the CUDA provider).")] = "fp32",
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8 (dynamic: weights per channel, activations at run time), int8-weights or int4 (block-wise weight-only MatMulNBits): quantize the parity-checked fp32 graph. With --exporter genai: int4, int8-weights or int4-mixed (the builder's; int4-mixed: k-quant int4 with the LM head and the most sensitive layers in int8).")] = None,
    exporter: Annotated[Optional[str], typer.Option("--exporter", help=EXPORTER_HELP + " Default: optimum in the card's lane, genai in the current lane (`avss --version` says which).")] = None,
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="RAM the export may use, e.g. 24GB or 24GiB (default: what is free now): an export whose estimated peak (about 2.4x the fp32 weights; streamed: about 3x its largest block or embedding in fp32) cannot fit is refused before it starts.")] = None,
    stream: Annotated[Optional[bool], typer.Option("--stream/--no-stream", help="With --exporter genai: write the builder's graph one block at a time from the safetensors shards (the same files; memory: one block or embedding at a time). Default: only when the whole-model export would not fit.")] = None,
    fuse_gate_up: Annotated[bool, typer.Option("--fuse-gate-up", help="With --exporter genai and --quantize: each MLP's gate and up projections as one quantized MatMul and a Split (the builder's fuse_mlp_gate_up; builder 0.18.0, the current lane's: refused in the card's lane).")] = False,
    force: o.Force = False,
) -> None:
    from rich.table import Table

    from compressor.cli.output import note, warn
    from compressor.cli.output import out as stdout
    from compressor.export.convert import check_export_spec
    from compressor.export.exporters import get_exporter
    from compressor.files import check_output_dir
    from compressor.sources.memory import parse_size

    limit = parse_size(max_memory) if max_memory is not None else None
    chosen = get_exporter(exporter)
    chosen.check_flags(dtype=dtype, device=device, quantize=quantize, fuse_gate_up=fuse_gate_up)
    chosen.check_stream(stream)
    streamed = check_export_spec(model, limit, trust_remote_code, stream, chosen.streams)  # before the folder is touched
    check_output_dir(out, force, note=note)  # also cleans what a killed export left beside it

    def started(stage: str) -> None:
        note(f"{stage} ...")

    def ended(stage: str, seconds: float) -> None:
        note(f"{stage}: {seconds:.1f} s")

    note(f"exporting {model} to {out} with {chosen.name} (opset {opset}, {quantize or dtype}, {device}"
         f"{', streamed: one block at a time' if streamed else ''})")
    res = chosen.export(model, out, task=task, opset=opset, device=device, dtype=dtype, quantize=quantize, force=force,
                        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, stream=streamed,
                        fuse_gate_up=fuse_gate_up, on_start=started,
                        on_stage=ended)
    for w in res.warnings:
        warn(w)
    if res.parity:
        p = res.parity
        t = Table(title=f"parity: ONNX Runtime ({p['provider']}) vs PyTorch, {p['dtype']}")
        for col in ("check", "result", "max abs diff", "tolerance", "detail"):
            t.add_column(col, justify="right" if col in ("max abs diff", "tolerance") else "left")
        for c in p["checks"]:
            t.add_row(c["name"], "pass" if c["passed"] else "FAIL",
                      "" if c["max_abs_diff"] is None else f"{c['max_abs_diff']:.2e}",
                      "" if c["tolerance"] is None else f"{c['tolerance']:.2e}", c["detail"])
        stdout.print(t)
    if quantize:
        checks = ", ".join(f"{c['name']} {'pass' if c['passed'] else 'FAIL'}" for c in res.structural_checks)
        note(f"quantized to {quantize} ({checks}); gate it on tasks: avss verify BASE {out} --profile FILE")
    note(f"wrote {out}: {res.what}, {res.num_layers} layers, model {res.model_bytes / 2**20:.1f} MB, "
         f"{sum(res.timings.values()):.1f} s (export.json records the checks)")
