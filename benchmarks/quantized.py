"""Full fp32 vs slim fp32 vs slim int8 / int8-weights / int4, in ONNX Runtime on CPU: retention and speed in one run.

    python benchmarks/quantized.py [--out out/quantized] [--rounds 2]

1. ``avss run`` on the built-in SmolLM2 with the default profile and cut (25 %, robust AVSS) and
   ``--quantize int8``: the slim checkpoint, ``onnx/``, ``onnx-int8/``, each gated in ONNX Runtime
   (resumes when run again);
2. ``int8-weights`` and ``int4`` of the same ``onnx/`` (``quantize_export``), gated the same way;
3. one benchmark of the five models (fresh process per measurement, rounds alternated), so every
   ratio comes from the same run on the same noisy machine.

Prints the tables and the goals of the issue "Gate what ships": decode ≤ 0.45× the full model, size
on disk ≤ 0.35×, task retention within 0.02 of the fp32 slim model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402,F401  (offline environment defaults)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/quantized")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from compressor.export.bench import BenchOptions, bench_models, write_json
    from compressor.export.ort_model import load_onnx_model
    from compressor.export.quantize import quantize_export
    from compressor.profiles import load_profile
    from compressor.run.api import run_pipeline
    from compressor.run.config import RunConfig
    from compressor.sources.models import load_model
    from compressor.verify.api import verify

    out = Path(args.out)
    cfg = RunConfig(model="builtin:smollm2-135m", profile="profiles/default.yaml", out=str(out), quantize="int8",
                    skip_bench=True)
    res = run_pipeline(cfg)
    for method in ("int8-weights", "int4"):
        if not (out / f"onnx-{method}").exists():
            quantize_export(out / "onnx", out / f"onnx-{method}", method)
    profile = load_profile(cfg.profile)
    full = load_model(cfg.model)
    slim = load_model(str(out / "model"))
    rows = []
    for name in ("onnx", "onnx-int8", "onnx-int8-weights", "onnx-int4"):
        art = load_onnx_model(str(out / name))
        vs_full = verify(full, art, profile)
        vs_slim = verify(slim, art, profile)
        for a, b in zip(vs_full.tasks, vs_slim.tasks):
            rows.append((name, a.name, a.metric, a.candidate, a.retention, b.retention, b.agreement))
    print(f"\nverify against the full fp32 model ({res.method_label}, removed {len(res.removed)} of 30 layers)\n")
    print("| artifact | task | metric | value | retention vs full | retention vs slim fp32 | agreement vs slim |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4g} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.3f} |")
    folders = ["onnx-base", "onnx", "onnx-int8", "onnx-int8-weights", "onnx-int4"]
    if not (out / "onnx-base").exists():
        from compressor.export.convert import export_model

        export_model(cfg.model, out / "onnx-base")
    bench = bench_models([str(out / f) for f in folders], BenchOptions(provider="cpu", rounds=args.rounds,
                                                                        runs=args.runs, warmup=2),
                         progress=lambda m: print(m, file=sys.stderr))
    write_json(bench, out / "bench-quantized.json")
    print("\n| model | layers | size MB | prefill p50 ms | decode p50 ms/token | tokens/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for f, m in zip(folders, bench.models):
        print(f"| {f} | {m.layers} | {m.file_mb:.1f} | {m.prefill_ms.p50:.1f} | {m.decode_ms_per_token.p50:.2f} | "
              f"{m.tokens_per_s:.1f} | {m.rss_peak_mb:.0f} |")
    print("\n| vs full fp32 | decode | size | peak RSS | worst |retention - slim fp32| |")
    print("|---|---|---|---|---|")
    slim_ret = {r[1]: r[4] for r in rows if r[0] == "onnx"}
    for f, r in zip(folders[1:], bench.ratios):
        gap = max(abs(x[4] - slim_ret[x[1]]) for x in rows if x[0] == f)
        goal = "" if f == "onnx" else (" (goals: decode ≤ 0.45 " + ("met" if r.decode_ratio <= 0.45 else "NOT met")
                                       + ", size ≤ 0.35 " + ("met" if r.file_ratio <= 0.35 else "NOT met")
                                       + ", retention gap ≤ 0.02 " + ("met" if gap <= 0.02 else "NOT met") + ")")
        print(f"| {f} | {r.decode_ratio:.3f} | {r.file_ratio:.3f} | {r.rss_peak_ratio:.3f} | {gap:.3f} |{goal}")
    (out / "quantized-summary.json").write_text(json.dumps({"rows": rows, "bench": bench.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/quantized.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("quantized", "The artifacts that ship: fp32, int8, int8-weights, int4", enabled=_full):
        sys.exit(main())
