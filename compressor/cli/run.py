"""The whole job: score -> select -> prune -> verify -> export -> bench into one folder; resumable; exit 0 pass, 1 gate failed."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from compressor import defaults
from compressor.cli import options as o

Flag = Optional[bool]


@o.grouped(repair_knobs=o.REPAIR.values())
def run(
    model: Annotated[Optional[str], typer.Argument(help="builtin:smollm2-135m, a local model folder, or a Hub id (or `model:` in --config).")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Task profile YAML: calibration, tasks and gate.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="The artifact folder (re-running resumes it).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="Read these options from a YAML file; flags win.")] = None,
    save_config: Annotated[Optional[str], typer.Option("--save-config", help="Write the resolved configuration as YAML here.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Scorer for a fixed cut (default: avss).")] = None,
    avss_mode: o.AvssMode = None,
    objective: o.Objective = None,
    last_state: o.LastState = None,
    ratio: Annotated[Optional[float], typer.Option("--ratio", callback=o.finite("--ratio"), help=f"Remove round-half-up(ratio x layers) layers (default: {defaults.RATIO}).")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="Remove exactly this many layers.")] = None,
    search: Annotated[Flag, typer.Option("--search", help="Find the largest cut that passes the gate (see --methods). `--search fastest`: the fastest artifact that passes, over cut x exporter x precision, each candidate gated on the artifact itself (README: avss run --search fastest).", show_default=False)] = None,
    search_objective: Annotated[Optional[str], typer.Option("--search-objective", hidden=True, help="What `--search WORD` passes on: largest or fastest.")] = None,
    precisions: Annotated[Optional[str], typer.Option("--precisions", help="With --search fastest: the precisions tried, comma-separated (default: each exporter's: fp32,int8-weights,int4, and int4-mixed for genai).")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Scorers tried by --search, comma-separated (default: avss,block-influence; plus angular with a linear repair).")] = None,
    max_remove: Annotated[Optional[int], typer.Option("--max-remove", help="Largest cut --search tries (default: half the layers).")] = None,
    protect: Annotated[Optional[str], typer.Option("--protect", help="Never remove these: first,last | none | 0-based indices.")] = None,
    min_retention: o.MinRetention = None,
    repair: o.Repair = None,
    repair_knobs: dict[str, Any] = None,  # type: ignore[assignment]
    provider: Annotated[Optional[str], typer.Option("--provider", help="ONNX Runtime provider for the ONNX gate and the bench: auto, cpu or cuda (cuda never falls back).")] = None,
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8, int8-weights or int4 (with --exporter genai also int4-mixed): also write onnx-<q>/ (ONNX Runtime quantization), gate it and bench it.")] = None,
    exporter: Annotated[Optional[str], typer.Option("--exporter", help="optimum (default) or genai: ONNX Runtime GenAI's Model Builder writes onnx/ (and onnx-int4/ with --quantize int4); the bench adds the full model through the same exporter. With --search fastest: search this exporter only (default: every one that builds the model).")] = None,
    skip_export: Annotated[Flag, typer.Option("--skip-export", help="Stop after verify (no ONNX, no bench).", show_default=False)] = None,
    skip_bench: Annotated[Flag, typer.Option("--skip-bench", help="Export the slim model but do not benchmark.", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N or auto for score/verify/export (default: cpu).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="auto, float32, float16, bfloat16 for score/verify (default: auto).")] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default: 18).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for --method random (default: 0).")] = None,
    bench_prompt_len: Annotated[Optional[int], typer.Option("--bench-prompt-len", help=f"Bench prompt tokens (default: {defaults.BENCH['prompt_len']}).")] = None,
    bench_new_tokens: Annotated[Optional[int], typer.Option("--bench-new-tokens", help=f"Bench decode steps (default: {defaults.BENCH['new_tokens']}).")] = None,
    bench_runs: Annotated[Optional[int], typer.Option("--bench-runs", help=f"Timed bench generations (default: {defaults.BENCH['runs']}).")] = None,
    bench_warmup: Annotated[Optional[int], typer.Option("--bench-warmup", help=f"Untimed bench generations (default: {defaults.BENCH['warmup']}).")] = None,
    bench_rounds: Annotated[Optional[int], typer.Option("--bench-rounds", help=f"Alternate full and slim this many times (default: {defaults.BENCH['rounds']}).")] = None,
    bench_threads: Annotated[Optional[int], typer.Option("--bench-threads", help="Bench intra-op threads (default: physical cores).")] = None,
    allow_pickle: Annotated[Flag, typer.Option("--allow-pickle", help="Allow pickle (.bin) weights. They can run code: trusted sources only.", show_default=False)] = None,
    trust_remote_code: Annotated[Flag, typer.Option("--trust-remote-code", help="Allow custom model code from the checkpoint.", show_default=False)] = None,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Memory the run may use, e.g. 24GB or 24GiB (default: what is free now): a run whose largest step (the load, verify's one model, or the export: about 2.4x the fp32 weights) cannot fit is refused before it starts.")] = None,
    stream: Annotated[Optional[bool], typer.Option("--stream/--no-stream", help="Score, patch (linear), cut (shard by shard) and verify (perplexity tasks) one block at a time, the weights read from the shards (results identical). Default: only when the base would not fit whole and every step can stream. The export still needs the whole slim model.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute every stage instead of resuming finished ones.")] = False,
) -> None:
    from compressor.cli.output import err, note
    from compressor.cli.run_view import RunView, print_summary
    from compressor.errors import GateFailed
    from compressor.files import atomic_write_text
    from compressor.run.api import run_pipeline
    from compressor.run.config import load_run_config

    overrides = dict(model=model, profile=profile, out=out, method=method, avss_mode=avss_mode, ratio=ratio,
                     objective=objective, last_state=last_state,
                     num_layers=num_layers, search=search_objective or search, max_remove=max_remove, protect=protect,
                     min_retention=min_retention, repair=repair, **repair_knobs, provider=provider, quantize=quantize,
                     exporter=exporter, skip_export=skip_export, skip_bench=skip_bench,
                     device=device, dtype=dtype, opset=opset, seed=seed, allow_pickle=allow_pickle,
                     trust_remote_code=trust_remote_code, max_memory=max_memory, stream=stream, bench_prompt_len=bench_prompt_len,
                     bench_new_tokens=bench_new_tokens, bench_runs=bench_runs, bench_warmup=bench_warmup,
                     bench_rounds=bench_rounds, bench_threads=bench_threads,
                     methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
                     precisions=[p.strip() for p in precisions.split(",") if p.strip()] if precisions else None)
    cfg = load_run_config(config, overrides)
    if save_config:
        from pathlib import Path

        atomic_write_text(Path(save_config), cfg.to_yaml())
        note(f"wrote the resolved configuration to {save_config}")
    with RunView(err) as view:
        result = run_pipeline(cfg, force=force, events=view)
    print_summary(result)
    note(f"artifacts in {cfg.out}/ (run.json records the configuration, versions and timings)")
    if result.exit_code != 0:  # run_pipeline returns only passed (0) or gate failed (1); it raises the rest
        failed = [t["failed_because"] for t in result.tasks if t["passed"] is False]
        failed += [f"{a['artifact']}/ {t['failed_because']}" for a in result.artifacts for t in a["tasks"]
                   if t["passed"] is False]
        what = ("retention gate failed" if not cfg.search or (result.search or {}).get("chosen")
                else "no artifact passes the gate" if cfg.search == "fastest" else "no cut passes the gate")
        raise GateFailed(f"{what} ({', '.join(failed) or result.verdict}); every artifact was still written",
                         f"see {cfg.out}/report.md")
