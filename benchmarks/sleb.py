"""SLEB against block influence on the built-in SmolLM2: the gate's tasks at each cut size, and the cost.

    python benchmarks/sleb.py [--samples 8] [--rounds 7] [--cuts 1,2,4,7] [--objective nll]

Both scorers see the same calibration batches (the default profile's source and sequence length,
``--samples`` sequences: SLEB costs a round of candidate passes per removed layer, so this run uses
fewer sequences than the profile's 32 to stay within a session on 2 CPU cores). Each cut is made
with ``prune_model``, reloaded and gated by ``verify`` on ``profiles/default.yaml`` (every task).
Prints worst-task retention per cut, SLEB's time against a plain forward pass over the same batches,
and the goals of the SLEB issue (7 layers: SLEB >= block influence + 0.05; cost <= 10x a forward).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402,F401  (offline environment defaults)

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cuts", default="1,2,4,7")
    ap.add_argument("--objective", default="nll", choices=["nll", "kl"])
    ap.add_argument("--out", default="out/sleb", help="keeps SLEB's scores, so a rerun skips the scoring")
    args = ap.parse_args()
    cuts = [int(k) for k in args.cuts.split(",")]

    import torch
    from scorers import save_cut

    from compressor.profiles import load_profile
    from compressor.score.api import score_layers
    from compressor.score.select import select_layers
    from compressor.sources.data import CalibrationSpec, load_calibration
    from compressor.sources.models import load_model
    from compressor.verify.api import verify

    profile = load_profile(ROOT / "profiles" / "default.yaml")
    base = load_model("builtin:smollm2-135m")
    cal = profile.calibration.model_copy(update={"samples": args.samples})
    data = load_calibration(CalibrationSpec(**cal.model_dump()), base.tokenizer, base.adapter.family)
    print(f"calibration: {data.tokens} tokens in {len(data.batches)} batches", file=sys.stderr, flush=True)
    with torch.inference_mode():
        t = time.perf_counter()
        for b in data.batches:
            base.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
        forward = time.perf_counter() - t
    reports = {"block influence": score_layers(base, "block-influence", data=data)}

    def progress(done: int, total: int) -> None:
        print(f"  sleb: {done}/{total} round x batch steps, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    from compressor.score.report import ScoreReport

    saved = Path(args.out) / f"sleb-{args.objective}-{args.samples}x{cal.seq_len}-{args.rounds}.json"
    t0 = time.perf_counter()
    if saved.exists():  # a rerun evaluates the same order without paying for SLEB again
        reports["SLEB"] = ScoreReport.load(saved)
    else:
        reports["SLEB"] = score_layers(base, "sleb", data=data, objective=args.objective, max_remove=args.rounds,
                                       progress=progress)
        saved.parent.mkdir(parents=True, exist_ok=True)
        reports["SLEB"].save(saved)
    sleb = reports["SLEB"].extra["sleb"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in cuts:
            for name, rep in reports.items():
                removed = select_layers(rep, num_layers=k).removed
                folder = Path(tmp) / f"{name.replace(' ', '-')}-{k}"
                save_cut(base, removed, folder)  # a pruned copy: the base stays whole for the next cut
                res = verify(base, load_model(str(folder)), profile)
                rows.append((k, name, removed, {t.name: t.retention for t in res.tasks}))
                print(f"  {name} k={k} {removed}: " + ", ".join(f"{t.name} {t.retention:.3f}" for t in res.tasks),
                      file=sys.stderr, flush=True)
    names = [t.name for t in profile.tasks]
    print(f"\nSmolLM2-135M, profiles/default.yaml, calibration {data.tokens} tokens ({args.samples} x "
          f"{cal.seq_len}); SLEB objective {args.objective}\n")
    print("| layers removed | scorer | removed (0-based) | " + " | ".join(names) + " | worst |")
    print("|---|---|---|" + "---|" * len(names) + "---|")
    worst = {}
    for k, name, removed, ret in rows:
        worst[(k, name)] = min(ret.values())
        print(f"| {k} | {name} | {removed} | " + " | ".join(f"{ret[n]:.3f}" for n in names) +
              f" | **{worst[(k, name)]:.3f}** |")
    print(f"\nSLEB removal order {sleb['order']}; calibration loss after each removal "
          f"{[round(v, 3) for v in sleb['loss_after']]} (full model {sleb['base_loss']:.3f})")
    print(f"cost: SLEB {sleb['seconds']:.0f} s for {args.rounds} rounds = {sleb['seconds'] / forward:.1f}x a plain "
          f"forward pass over the same batches ({forward:.1f} s); block influence "
          f"{reports['block influence'].seconds:.1f} s = {reports['block influence'].seconds / forward:.2f}x")
    k = max(cuts)
    gain = worst[(k, "SLEB")] - worst[(k, "block influence")]
    print(f"goal at {k} layers: SLEB worst-task {worst[(k, 'SLEB')]:.3f} vs block influence "
          f"{worst[(k, 'block influence')]:.3f} ({gain:+.3f}; goal +0.05: {'met' if gain >= 0.05 else 'not met'}); "
          f"cost {sleb['seconds'] / forward:.1f}x (goal <= 10x: {'met' if sleb['seconds'] / forward <= 10 else 'not met'})")
    return 0


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/sleb.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("sleb", "SLEB against block influence", enabled=_full):
        raise SystemExit(main())
