"""How much does layer scoring cost compared with a plain forward pass? Prints a Markdown table.

Measures, on the built-in SmolLM2-135M and the same calibration batches:

- ``forward``: the model's normal full forward (with the LM head) -- what a user would otherwise run;
- ``body``: the bare transformer (``model.base_model``) without hooks -- what scoring runs under its
  hooks, so ``scorer / body`` is the pure hook overhead;
- ``avss-robust``, ``avss-official``, ``block-influence``, ``angular``: ``score_layers`` end to end.

Goal (printed as met / not met, never asserted): scoring <= 1.15x the time and <= 1.2x the peak
memory of the full forward (peak RSS on CPU; ``torch.cuda.max_memory_allocated`` with ``--device cuda``).

Why it is built this way:
- every measurement runs in a fresh subprocess (``--child MODE``, one JSON line on stdout), so one
  mode's allocator state and peak RSS never leak into another's;
- torch threads are pinned (``--threads``) and one warm-up batch runs before measuring, so lazy
  initialisation and thread-pool start-up are not timed;
- peak RSS is sampled every 2 ms by a thread (torch releases the GIL inside kernels), and reported
  both absolute and as the increment over the post-warm-up baseline (= what the pass itself needs:
  activations, logits); ``ru_maxrss`` is the process-lifetime peak (loading included), for reference;
- the machine is noisy (2 shared cores): each child takes the median of ``--repeats`` passes, the
  mode order alternates between rounds (forward first, then reversed), and the table shows the
  median per mode over ``--rounds``; before each child the parent samples the machine's CPU use for
  0.5 s and warns if other processes were busy (their load distorts every time figure).

    AVSS_CACHE=/tmp/avss-cache python benchmarks/scoring_overhead.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402, F401  (sets HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM)
from compressor.export.peak_rss import PeakRSS  # noqa: E402

MODEL = "builtin:smollm2-135m"
BASELINES = ("forward", "body")
SCORERS = {  # mode -> (method, avss mode)
    "avss-robust": ("avss", "robust"),
    "avss-official": ("avss", "official"),
    "block-influence": ("block-influence", None),
    "angular": ("angular", None),
}
MODES = BASELINES + tuple(SCORERS)
GOAL_TIME, GOAL_MEM = 1.15, 1.2
MB = 1024 * 1024


# ----------------------------------------------------------------------------------------- child

def _run_child(args: argparse.Namespace) -> None:
    """Load, warm up, measure one mode; print one JSON line."""
    import dataclasses
    import gc
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from compressor.score.api import score_layers
    from compressor.sources.data import CalibrationSpec, load_calibration
    from compressor.sources.models import load_model

    mode = args.child
    loaded = load_model(args.model, device=args.device)
    data = load_calibration(CalibrationSpec(samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size),
                            loaded.tokenizer, "decoder")
    dev = loaded.model.get_input_embeddings().weight.device
    cuda = dev.type == "cuda"

    def plain(module, batches) -> None:
        with torch.inference_mode():
            for b in batches:
                module(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)

    if mode == "forward":
        def run(d):
            plain(loaded.model, d.batches)
    elif mode == "body":
        def run(d):
            plain(loaded.model.base_model, d.batches)
    else:
        method, avss_mode = SCORERS[mode]

        def run(d):
            score_layers(loaded, method, mode=avss_mode, data=d)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    run(dataclasses.replace(data, batches=data.batches[:1]))  # warm-up: first batch only
    sync()
    gc.collect()

    if cuda:
        cuda_base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    with PeakRSS() as rss:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run(data)
            sync()
            times.append(time.perf_counter() - t0)

    out = {
        "mode": mode,
        "seconds": statistics.median(times),
        "seconds_all": times,
        "peak_rss_mb": rss.peak_mb,
        "baseline_rss_mb": rss.baseline_mb,
        "pass_rss_increment_mb": rss.increment_mb,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "batches": len(data.batches),
        "tokens": data.tokens,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "dtype": loaded.dtype,
    }
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / MB
        out["cuda_increment_mb"] = (torch.cuda.max_memory_allocated(dev) - cuda_base) / MB
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------- parent

def _foreign_cpu_load() -> float:
    """Busy share of all CPUs over 0.5 s while no child of ours runs: other work on the machine."""
    import psutil

    return psutil.cpu_percent(interval=0.5) / 100.0


def _spawn(args: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--model", args.model,
           "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--device", args.device]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child {mode!r} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    keys = ["seconds", "peak_rss_mb", "pass_rss_increment_mb", "ru_maxrss_mb", "cuda_peak_mb", "cuda_increment_mb"]
    return {m: {k: statistics.median(r[k] for r in rs) for k in keys if k in rs[0]} for m, rs in runs.items()}


def _print_report(args: argparse.Namespace, runs: dict[str, list[dict]], med: dict[str, dict]) -> None:
    first = runs["forward"][0]
    cuda = "cuda_peak_mb" in first
    print(f"\nModel {args.model}, {first['batches']} batches ({args.samples} samples x {args.seq_len} tokens, "
          f"batch {args.batch_size}; {first['tokens']} tokens), device {first['device']} {first['dtype']}, "
          f"{first['threads']} torch threads; median of {args.repeats} passes per run, median of "
          f"{args.rounds} round(s) with alternating mode order.\n")
    fwd, body = med["forward"], med["body"]
    head = ["mode", "time s (median)", "time ratio vs forward", "time ratio vs body", "peak RSS MB",
            "ratio vs forward", "pass RSS increment MB", "ratio vs forward"]
    if cuda:
        head += ["CUDA peak MB", "ratio vs forward"]
    head += ["ru_maxrss MB (process lifetime)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in MODES:
        s = med[m]
        row = [m, f"{s['seconds']:.3f}", f"{_ratio(s['seconds'], fwd['seconds']):.3f}",
               f"{_ratio(s['seconds'], body['seconds']):.3f}", f"{s['peak_rss_mb']:.0f}",
               f"{_ratio(s['peak_rss_mb'], fwd['peak_rss_mb']):.3f}", f"{s['pass_rss_increment_mb']:.0f}",
               f"{_ratio(s['pass_rss_increment_mb'], fwd['pass_rss_increment_mb']):.3f}"]
        if cuda:
            row += [f"{s['cuda_peak_mb']:.0f}", f"{_ratio(s['cuda_peak_mb'], fwd['cuda_peak_mb']):.3f}"]
        row += [f"{s['ru_maxrss_mb']:.0f}"]
        print("| " + " | ".join(row) + " |")

    mem_key, mem_name = ("cuda_peak_mb", "CUDA peak allocated") if cuda else ("peak_rss_mb", "peak RSS")
    print(f"\nGoal (vs the FULL model forward, which is what a user would otherwise run): time <= {GOAL_TIME}x "
          f"and {mem_name} <= {GOAL_MEM}x. The 'vs body' column is the pure hook overhead, for reference.")
    for m in SCORERS:
        t = _ratio(med[m]["seconds"], fwd["seconds"])
        mem = _ratio(med[m][mem_key], fwd[mem_key])
        ok_t, ok_m = t <= GOAL_TIME, mem <= GOAL_MEM
        verdict = "MET" if ok_t and ok_m else "NOT MET"
        print(f"- {m}: {verdict} (time {t:.3f}x {'ok' if ok_t else 'over'}, {mem_name} {mem:.3f}x "
              f"{'ok' if ok_m else 'over'}; hook overhead vs body {_ratio(med[m]['seconds'], body['seconds']):.3f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every child (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="measured passes per child; the median is kept")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all modes, order alternating")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--quick", action="store_true", help="smoke run: samples 8, seq-len 128, 1 round, 1 repeat")
    ap.add_argument("--json", metavar="PATH", help="also save the raw numbers here")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.seq_len, args.rounds, args.repeats = 8, 128, 1, 1

    if args.child:
        _run_child(args)
        return

    t_start = time.perf_counter()
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for m in order:
            res = dict(foreign_cpu_load=_foreign_cpu_load())
            t0 = time.perf_counter()
            res.update(_spawn(args, m))
            runs[m].append(res)
            print(f"[round {r + 1}/{args.rounds}] {m:16s} {res['seconds']:.3f} s/pass, peak RSS "
                  f"{res['peak_rss_mb']:.0f} MB (child took {time.perf_counter() - t0:.1f} s; "
                  f"other CPU load before it {res['foreign_cpu_load']:.0%})",
                  file=sys.stderr, flush=True)
    med = _summarise(runs)
    _print_report(args, runs, med)
    busy = max(r["foreign_cpu_load"] for rs in runs.values() for r in rs)
    if busy > 0.2:
        print(f"\nWARNING: other processes kept up to {busy:.0%} of the CPUs busy between runs; "
              "the times above are unreliable -- rerun on an idle machine.")
    total = time.perf_counter() - t_start
    print(f"\nTotal wall time {total:.1f} s.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "child"}, "goal": {
                "time_ratio_max": GOAL_TIME, "memory_ratio_max": GOAL_MEM, "reference": "forward"},
                "median": med, "runs": runs, "wall_seconds": total}, fh, indent=2)


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/scoring-overhead.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("scoring-overhead", "Scoring time and memory against a plain forward pass", enabled=_full):
        main()
