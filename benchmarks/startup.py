"""Start-up: `avss --help` against `optimum-cli --help`, paired, and what `avss --help` imports.

Why paired: the machine is shared, so each round runs both commands back to back (order alternating)
and the ratio is taken per round; the page shows every pair and the median ratio. The import list is
the evidence for the rule "`avss --help` imports no torch and no implementation it does not show".
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "onnxruntime", "optimum", "numpy")


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def imports() -> tuple[list[str], float]:
    """The modules `avss --help` leaves loaded (heavy ones named), and the import of the app in ms."""
    code = ("import sys, time; t = time.perf_counter(); import compressor.cli.app; ms = (time.perf_counter() - t) * 1e3; "
            "print(ms); print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()
    return out[1].split(), float(out[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    avss = [os.path.join(bin_dir, "avss"), "--help"]
    optimum = shutil.which("optimum-cli", path=bin_dir)
    if optimum is None:
        print("optimum-cli is not installed in this environment: no reference to compare with")
        return 1
    ref = [optimum, "--help"]
    wall(avss), wall(ref)  # warm the page cache for both
    pairs = []
    for i in range(args.rounds):
        if i % 2:
            b, a = wall(ref), wall(avss)
        else:
            a, b = wall(avss), wall(ref)
        pairs.append((a, b))
    print(f"## `avss --help` against `optimum-cli --help` ({args.rounds} paired rounds, order alternating)\n")
    print("| round | avss (s) | optimum-cli (s) | ratio |")
    print("|---|---|---|---|")
    for i, (a, b) in enumerate(pairs, 1):
        print(f"| {i} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    ratio = statistics.median(a / b for a, b in pairs)
    print(f"\nmedian ratio: **{ratio:.2f}x** (median avss {statistics.median(a for a, _ in pairs):.3f} s, "
          f"optimum-cli {statistics.median(b for _, b in pairs):.3f} s)\n")
    mods, ms = imports()
    ours = [m for m in mods if m.startswith("compressor")]
    heavy = sorted({m.split(".")[0] for m in mods if m.split(".")[0] in HEAVY})
    print("## What `avss --help` imports\n")
    print(f"importing `compressor.cli.app`: {ms:.0f} ms in this process; heavy libraries loaded: "
          f"{', '.join(heavy) or 'none'}")
    print(f"\n{len(ours)} of our modules: {', '.join(ours)}")
    return 1 if heavy else 0


if __name__ == "__main__":
    from _common import ResultsPage

    with ResultsPage("startup", "Start-up: avss --help against optimum-cli --help"):
        raise SystemExit(main())
