"""Optimum vs ONNX Runtime GenAI's Model Builder on the same slim model, in one run: export wall, and
why Optimum's int4 graph decodes slower than the builder's (ONNX Runtime's transformer optimizer tried).

    python benchmarks/exporters.py [--out out/exporters] [--rounds 2]

1. ``avss run`` on the built-in SmolLM2 with the default profile and cut (25 %, robust AVSS), up to the
   slim checkpoint (resumes when run again);
2. times, in this process, ``export_model`` (Optimum, with its parity check) and ``export_genai`` (fp32,
   with its parity check) on that same folder, then both exporters' int4;
3. the Optimum fp32 slim graph through ``onnxruntime.transformers.optimizer`` (fusions), its logits
   against the unfused graph, then int4 of the fused graph;
4. one benchmark of the full fp32 Optimum model and every slim artifact (fresh process per
   measurement, rounds alternated), so every ratio comes from the same run.

Prints the tables and the issue's goals: GenAI export wall <= 0.5x Optimum's; GenAI int4 decode
<= 0.25x the full fp32 Optimum export.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402,F401  (offline environment defaults)


def fused_copy(src: Path, dst: Path, config) -> dict:
    """``src`` (an Optimum export) through ONNX Runtime's transformer optimizer into ``dst`` (same layout);
    returns what it fused and how far its logits moved on a real prompt."""
    import numpy as np
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from compressor.export.layout import save_with_external_data
    from compressor.export.runtime import make_session

    heads, hidden = int(config.num_attention_heads), int(config.hidden_size)
    t0 = time.perf_counter()
    opt = optimize_model(str(src / "model.onnx"), model_type="gpt2", num_heads=heads, hidden_size=hidden,
                         opt_level=1)
    seconds = time.perf_counter() - t0
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, dst / f.name)
    save_with_external_data(opt.model, dst)
    ops: dict[str, int] = {}
    for n in onnx.load(str(dst / "model.onnx"), load_external_data=False).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    feed_ids = np.array([[1, 504, 3458, 314, 253, 2145, 30, 198]], np.int64)

    def logits(folder: Path):
        s = make_session(str(folder / "model.onnx"), "cpu").session
        feed = {"input_ids": feed_ids, "attention_mask": np.ones_like(feed_ids),
                "position_ids": np.arange(feed_ids.shape[1], dtype=np.int64)[None]}
        names = {i.name for i in s.get_inputs()}
        for i in s.get_inputs():
            if i.name.startswith("past_key_values"):
                feed[i.name] = np.zeros((1, int(config.num_key_value_heads), 0, hidden // heads), np.float32)
        return s.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]

    diff = float(np.abs(logits(src) - logits(dst)).max())
    return {"seconds": round(seconds, 1), "nodes": sum(ops.values()), "attention_fused": ops.get("Attention", 0)
            + ops.get("MultiHeadAttention", 0) + ops.get("GroupQueryAttention", 0),
            "skip_norm_fused": ops.get("SkipSimplifiedLayerNormalization", 0), "max_abs_logit_diff": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/exporters")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--exports-only", action="store_true", help="time the exports, skip the optimizer and the bench")
    args = ap.parse_args()

    from compressor.export.bench import BenchOptions, bench_models, write_json
    from compressor.export.convert import export_model
    from compressor.export.genai import export_genai
    from compressor.export.quantize import quantize_export
    from compressor.run.api import run_pipeline
    from compressor.run.config import RunConfig
    from compressor.sources.models import load_config

    out = Path(args.out)
    cfg = RunConfig(model="builtin:smollm2-135m", profile="profiles/default.yaml", out=str(out / "run"),
                    skip_export=True, skip_bench=True)
    res = run_pipeline(cfg)
    slim = out / "run" / "model"
    art = out / "artifacts"
    if art.exists():
        shutil.rmtree(art)
    art.mkdir(parents=True)
    walls: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        print(f"{name} ...", file=sys.stderr)
        t0 = time.perf_counter()
        fn()
        walls[name] = time.perf_counter() - t0

    timed("optimum fp32 (export + parity)", lambda: export_model(str(slim), art / "optimum"))
    timed("genai fp32 (build + parity)", lambda: export_genai(str(slim), art / "genai"))
    timed("optimum int4 (from the fp32 export)", lambda: quantize_export(art / "optimum", art / "optimum-int4", "int4"))
    timed("genai int4 (build)", lambda: export_genai(str(slim), art / "genai-int4", quantize="int4"))
    if not args.exports_only:
        fused = fused_copy(art / "optimum", art / "optimum-fused", load_config(str(slim), False))
        timed("optimum fused int4", lambda: quantize_export(art / "optimum-fused", art / "optimum-fused-int4", "int4"))
        timed("full: optimum fp32", lambda: export_model(cfg.model, art / "full-optimum"))
        timed("full: genai int4", lambda: export_genai(str(_full_folder(cfg.model)), art / "full-genai-int4",
                                                       quantize="int4"))

    print(f"\nslim model: {res.method_label}, removed {len(res.removed)} of 30 layers\n")
    print("| export (same slim model, this run) | wall s |")
    print("|---|---|")
    for k, v in walls.items():
        print(f"| {k} | {v:.1f} |")
    ratio = walls["genai fp32 (build + parity)"] / walls["optimum fp32 (export + parity)"]
    print(f"\nGenAI fp32 / Optimum fp32 export wall: {ratio:.3f} (goal <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
    if args.exports_only:
        return 0
    print(f"\noptimizer on the Optimum fp32 graph: {json.dumps(fused)}")

    folders = ["full-optimum", "optimum", "optimum-fused", "optimum-int4", "optimum-fused-int4", "genai", "genai-int4",
               "full-genai-int4"]
    bench = bench_models([str(art / f) for f in folders], BenchOptions(provider="cpu", rounds=args.rounds,
                                                                        runs=args.runs, warmup=2),
                         progress=lambda m: print(m, file=sys.stderr))
    write_json(bench, out / "bench-exporters.json")
    print("\n| model | layers | size MB | prefill p50 ms | decode p50 ms/token | decode vs full fp32 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    full = bench.models[0].decode_ms_per_token.p50
    for f, m in zip(folders, bench.models):
        print(f"| {f} | {m.layers} | {m.file_mb:.1f} | {m.prefill_ms.p50:.1f} | {m.decode_ms_per_token.p50:.2f} | "
              f"{m.decode_ms_per_token.p50 / full:.3f} | {m.rss_peak_mb:.0f} |")
    by = {f: m.decode_ms_per_token.p50 for f, m in zip(folders, bench.models)}
    g = by["genai-int4"] / full
    share = bench.models[1].layers / bench.models[0].layers
    same = by["genai-int4"] / by["full-genai-int4"]
    print(f"\nGenAI int4 slim decode / full fp32 Optimum: {g:.3f} (goal <= 0.25: {'met' if g <= 0.25 else 'NOT met'})")
    print(f"GenAI int4 slim / GenAI int4 full: {same:.3f} vs kept-layer share {share:.3f} -> {same / share:.3f}x "
          f"(goal <= 1.05x: {'met' if same / share <= 1.05 else 'NOT met'})")
    print(f"Optimum int4 / GenAI int4 decode: {by['optimum-int4'] / by['genai-int4']:.2f}x; "
          f"fused Optimum int4 / GenAI int4: {by['optimum-fused-int4'] / by['genai-int4']:.2f}x")
    (out / "exporters-summary.json").write_text(json.dumps({"walls": walls, "fused": fused, "bench": bench.to_dict()},
                                                           indent=2))
    return 0


def _full_folder(spec: str) -> Path:
    from compressor.sources.models import resolve_model_path

    return Path(resolve_model_path(spec)[0])


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/exporters.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("exporters", "Optimum against ONNX Runtime GenAI's Model Builder", enabled=_full):
        sys.exit(main())
