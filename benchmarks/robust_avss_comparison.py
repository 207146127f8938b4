"""Which AVSS variant keeps the built-in model alive? Prints the table the README quotes.

For each variant: score SmolLM2-135M on the calibration split of builtin:python-docs, remove the
K lowest-scored layers (no protection), and measure perplexity on 2,048 held-out tokens (the
evaluation split, disjoint from calibration). Retention = base_ppl / pruned_ppl.

    python benchmarks/robust_avss_comparison.py [--k 7] [--samples 32] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import eval_batches, perplexity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--leave-one-out", action="store_true", help="also run leave-one-out (31 passes, slow)")
    args = ap.parse_args()

    from compressor.prune.surgery import remove_layers
    from compressor.score import methods
    from compressor.score.api import score_layers
    from compressor.score.passes import collect_stats
    from compressor.score.report import LayerScore, ScoreReport
    from compressor.score.select import select_layers
    from compressor.sources.data import CalibrationSpec, load_calibration
    from compressor.sources.models import load_model

    loaded = load_model(args.model)
    calib = load_calibration(CalibrationSpec(samples=args.samples, seq_len=args.seq_len), loaded.tokenizer)
    ev = eval_batches(loaded.tokenizer)
    base = perplexity(loaded, ev)
    print(f"base perplexity {base:.2f} on {ev.tokens} held-out tokens; calibration {calib.tokens} tokens")

    reports: dict[str, ScoreReport] = {}
    for method, mode in [("avss", "official"), ("avss", "robust"), ("block-influence", None), ("angular", None)]:
        r = score_layers(loaded, method, mode=mode, data=calib)
        reports[r.label] = r
    for method, seed in [("last-k", 0), ("random", 0), ("random", 1), ("random", 2)]:
        r = score_layers(loaded, method, seed=seed)
        if method == "random":
            r.method = f"random (seed {seed})"
        reports[r.method] = r
    if args.leave_one_out:
        r = score_layers(loaded, "leave-one-out", data=calib)
        reports[r.label] = r
    # ablations of the robust design, from the same kind of statistics
    for tau in (0.01, 0.1):
        rows = collect_stats(loaded, calib, frozenset({"stream"}), tau).results()
        out = methods.avss_robust(rows, tau)
        rep = ScoreReport({}, "avss", f"robust, tau={tau}", "", len(rows), out.layers, None, {}, "cpu", "float32", 0, "")
        reports[rep.label] = rep
    rows = collect_stats(loaded, calib, frozenset({"stream"})).results()
    for name, key in [("variance term only (robust)", "delta_variance"), ("relative update norm", "relative_update"),
                      ("inverse sparsity only (robust)", "delta_sparsity")]:
        vals = [1.0 / r[key] if key == "delta_sparsity" else r[key] for r in rows]
        rep = ScoreReport({}, name, None, "", len(rows), [LayerScore(i, v) for i, v in enumerate(vals)], None, {}, "cpu", "float32", 0, "")
        reports[name] = rep

    print(f"\n| scorer | layers removed (K={args.k}) | perplexity | retention |\n|---|---|---|---|")
    for label, rep in reports.items():
        sel = select_layers(rep, num_layers=args.k)
        m = load_model(args.model)
        remove_layers(m.model, sel.removed)
        ppl = perplexity(m, ev)
        print(f"| {label} | {', '.join(map(str, sel.removed))} | {ppl:,.2f} | {base / ppl:.3f} |", flush=True)


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/robust-avss-comparison.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("robust-avss-comparison", "AVSS variants on the built-in SmolLM2", enabled=_full):
        main()
