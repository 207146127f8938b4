"""Benchmark ONNX models with ONNX Runtime: latency and memory, full vs slim (the first is the reference)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from compressor import defaults
from compressor.cli import options as o

if TYPE_CHECKING:
    from rich.table import Table

    from compressor.export.bench_report import BenchReport, Percentiles


def bench(
    onnx_dirs: Annotated[list[str], typer.Argument(help="Export folders (model.onnx + config.json) or .onnx files; the first is the reference.")],
    provider: o.Provider = defaults.PROVIDER,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per run.")] = defaults.BENCH["batch_size"],
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prompt tokens per sequence (random ids).")] = defaults.BENCH["prompt_len"],
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Decode steps per generation (decoders).")] = defaults.BENCH["new_tokens"],
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed generations before timing.")] = defaults.BENCH["warmup"],
    runs: Annotated[int, typer.Option("--runs", help="Timed generations per model and round.")] = defaults.BENCH["runs"],
    rounds: Annotated[int, typer.Option("--rounds", help="Measure the models alternately this many times, each in a fresh process, and pool the samples.")] = defaults.BENCH["rounds"],
    threads: Annotated[Optional[int], typer.Option("--threads", help="intra_op_num_threads (default: the physical cores).")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the results here (atomic write).")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Latency box plots, PNG (default with --json: the --json path with .png).")] = None,
    force: o.Force = False,
) -> None:
    import time

    from compressor.cli.output import note, out
    from compressor.export.bench import BenchOptions, bench_models
    from compressor.export.bench_output import output_paths, save_plot, write_json

    options = BenchOptions(provider=provider, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                           warmup=warmup, runs=runs, rounds=rounds, threads=threads)
    json_path, plot_path = output_paths(json_out, plot, force)
    started = time.perf_counter()
    report = bench_models(onnx_dirs, options,
                          progress=lambda msg: note(f"[{time.perf_counter() - started:6.1f} s] {msg}"))
    for n in report.notes:
        note(n)
    for m in report.models:  # say what timed each figure: a raw session, or the runtime that serves a GenAI folder
        note(f"{m.path}: timed with {m.runtime}")
    out.print(_models_table(report))
    if report.ratios:
        out.print(_ratios_table(report))
    if json_path is not None:
        note(f"wrote {write_json(report, json_path)}")
    if plot_path is not None:
        note(f"wrote {save_plot(report, plot_path)}")


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _pct(p: "Percentiles | None", keys: tuple[str, ...]) -> list[str]:
    return ["-" if p is None else f"{getattr(p, k):.3g}" for k in keys]


def _models_table(report: "BenchReport") -> "Table":
    from rich.table import Table

    s = report.settings
    decoder = report.models[0].kind == "decoder"
    t = Table(title=f"avss bench: {report.provider}, batch {s['batch_size']}, prompt {s['prompt_len']}"
                    + (f", {s['new_tokens']} new tokens" if decoder else "")
                    + f", {s['threads']} threads, {s['runs']} runs x {s['rounds']} rounds")
    cols = ["model", "provider", "layers", "params", "size MB", "session s"]
    cols += (["prefill p50", "p90", "decode p50", "p90", "p99", "tok/s"] if decoder
             else ["batch p50", "p90", "p99", "seq/s"])
    cols += ["RSS peak", "device peak"]
    t.caption = "times in ms (decode: per token), memory in MB"
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "provider") else "right",
                     overflow="fold" if c == "model" else "ellipsis")
    for m in report.models:
        row = [m.path, m.provider.removesuffix("ExecutionProvider"), _num(m.layers, "d"), f"{m.params:,}",
               f"{m.file_mb:.1f}", f"{m.session_create_s:.2f}"]
        if decoder:
            row += _pct(m.prefill_ms, ("p50", "p90")) + _pct(m.decode_ms_per_token, ("p50", "p90", "p99"))
            row.append(_num(m.tokens_per_s, ".1f"))
        else:
            row += _pct(m.batch_ms, ("p50", "p90", "p99")) + [_num(m.sequences_per_s, ".1f")]
        row += [f"{m.rss_peak_mb:.0f}", _num(m.device_mem_peak_mb, ".0f")]
        t.add_row(*row)
    return t


def _ratios_table(report: "BenchReport") -> "Table":
    from rich.table import Table

    decoder = report.models[0].kind == "decoder"
    t = Table(title=f"vs {report.models[0].path} (model / reference; ideal = kept layers / all layers; "
                    "vs ideal = latency ratio / ideal, 1.0 is a perfect match)")
    cols = ["model", "ideal (layers)", "params", "file"]
    cols += (["decode", "decode vs ideal", "speedup", "prefill", "prefill vs ideal"] if decoder
             else ["batch", "batch vs ideal"])
    cols += ["RSS peak", "model RSS", "device mem"]
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right", overflow="fold" if c == "model" else "ellipsis")
    for r in report.ratios:
        row = [r.model, _num(r.layer_ratio), _num(r.param_ratio), _num(r.file_ratio)]
        if decoder:
            row += [_num(r.decode_ratio), _num(r.decode_vs_ideal), _num(r.decode_speedup), _num(r.prefill_ratio),
                    _num(r.prefill_vs_ideal)]
        else:
            row += [_num(r.batch_ratio), _num(r.batch_vs_ideal)]
        row += [_num(r.rss_peak_ratio), _num(r.model_rss_ratio), _num(r.device_mem_ratio)]
        t.add_row(*row)
    return t
