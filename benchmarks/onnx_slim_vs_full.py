"""Does the slim ONNX model get the speed its cut promises? Prints the table the closing note quotes.

Scores the built-in SmolLM2-135M with block influence, removes 7 of 30 layers (the 23-layer slim
model of issue 4), exports full and slim through Optimum (each parity-checked), then benchmarks both
with ONNX Runtime on CPU, alternating full/slim in fresh processes for ``--rounds`` rounds.
Goal: slim/full decode latency within 10 % of the kept-layer share (decode_vs_ideal <= 1.10).

    python benchmarks/onnx_slim_vs_full.py [--rounds 3] [--runs 10] [--threads 2] [--work DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (offline environment defaults)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--remove", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="keep the exports here (default: a temporary folder)")
    args = ap.parse_args()

    from compressor.export.bench import BenchOptions, bench_models
    from compressor.export.convert import export_model
    from compressor.prune.surgery import prune_model
    from compressor.score.api import score_layers
    from compressor.score.select import select_layers
    from compressor.sources.data import CalibrationSpec, load_calibration
    from compressor.sources.models import load_model

    t0 = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avss-onnx-bench-"))
    base = load_model(args.model)
    data = load_calibration(CalibrationSpec(), base.tokenizer, base.adapter.family)
    report = score_layers(base, "block-influence", data=data)
    removed = select_layers(report, num_layers=args.remove).removed
    full_onnx, slim_onnx = work / "onnx-full", work / "onnx-slim"
    res_full = export_model(base, full_onnx, force=True)
    prune_model(base, removed, work / "slim", force=True, provenance={"method": report.method})
    res_slim = export_model(str(work / "slim"), slim_onnx, force=True)
    print(f"removed {removed}; parity max abs diff: full {res_full.parity.max_abs_diff:.2e}, "
          f"slim {res_slim.parity.max_abs_diff:.2e}", file=sys.stderr)
    opts = BenchOptions(provider="cpu", rounds=args.rounds, runs=args.runs, warmup=3, threads=args.threads)
    bench = bench_models([str(full_onnx), str(slim_onnx)], opts, progress=lambda m: print(m, file=sys.stderr))

    print(f"\nONNX Runtime {bench.provider}, batch 1, prompt {opts.prompt_len}, {opts.new_tokens} new tokens, "
          f"{bench.settings['threads']} threads, {args.rounds} rounds x {args.runs} runs, fresh process each\n")
    print("| model | layers | params | prefill ms p50 / p90 | decode ms/token p50 / p90 / p99 | tokens/s | "
          "session s | model RSS MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in zip(("full", "slim"), bench.models):
        print(f"| {name} | {m.layers} | {m.params:,} | {m.prefill_ms.p50:.1f} / {m.prefill_ms.p90:.1f} | "
              f"{m.decode_ms_per_token.p50:.2f} / {m.decode_ms_per_token.p90:.2f} / {m.decode_ms_per_token.p99:.2f} | "
              f"{m.tokens_per_s:.1f} | {m.session_create_s:.2f} | {m.model_rss_mb:.0f} | {m.rss_peak_mb:.0f} |")
    r = bench.ratios[0]
    print("\n| slim / full | measured | ideal (kept layers) | ideal (kept params) | measured / layer ideal |")
    print("|---|---|---|---|---|")
    print(f"| decode latency | {r.decode_ratio:.3f} | {r.layer_ratio:.3f} | {r.param_ratio:.3f} | {r.decode_vs_ideal:.3f} |")
    print(f"| prefill latency | {r.prefill_ratio:.3f} | {r.layer_ratio:.3f} | {r.param_ratio:.3f} | {r.prefill_vs_ideal:.3f} |")
    print(f"| peak RSS | {r.rss_peak_ratio:.3f} | | {r.param_ratio:.3f} | |")
    print(f"| model RSS | {r.model_rss_ratio:.3f} | | {r.param_ratio:.3f} | |")
    verdict = "met" if r.decode_vs_ideal <= 1.10 else "NOT met"
    print(f"\ngoal (decode within 10 % of the kept-layer share): {verdict} ({r.decode_vs_ideal:.3f}); "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/onnx-slim-vs-full.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("onnx-slim-vs-full", "The slim ONNX model's speed against the full one", enabled=_full):
        main()
