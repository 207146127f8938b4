"""Print gpu_check.sh's one summary table from the files it wrote (stdlib only)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _fmt(q: dict | None) -> str:
    return "-" if not q else f"{q['p50']:.2f} / {q['p90']:.2f} / {q['p99']:.2f}"


def main(out: Path) -> int:
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
    env = (out / "env.log").read_text(errors="replace").strip() if (out / "env.log").exists() else ""
    print("\n# GPU check summary\n")
    print("\n".join(f"    {l}" for l in env.splitlines()))
    print("\n| step | exit | seconds | result |\n|---|---|---|---|")
    failed = 0
    for name, rc, secs in rows:
        failed += rc != "0"
        detail = ""
        if name == "score":
            s = _load(out / "scores.json")
            if s:
                detail = f"{s.get('label', s.get('method'))}, lowest 7: {s.get('ranking', [])[:7]}"
        elif name.startswith("export"):
            folder = {"export-fp32": "onnx-full", "export-fp16": "onnx-full-fp16", "export-slim": "onnx-slim"}[name]
            e = _load(out / folder / "export.json")
            if e:
                p = e["parity"]
                detail = (f"{e['dtype']}, {e['num_layers']} layers, parity {'pass' if p['passed'] else 'FAIL'} on "
                          f"{p['provider']}, max abs diff {p['max_abs_diff']:.2e}")
        elif name.startswith("bench"):
            b = _load(out / ("bench.json" if name == "bench" else "bench-fp16.json"))
            if b:
                detail = f"provider {b.get('provider')}"
        if rc != "0" and not detail:
            log = (out / f"{name}.log").read_text(errors="replace").strip().splitlines() if (out / f"{name}.log").exists() else []
            detail = (log[-1] if log else "no output")[:160]
        print(f"| {name} | {rc} | {secs} | {detail} |")
    for fname in ("bench.json", "bench-fp16.json"):
        b = _load(out / fname)
        if not b:
            continue
        print(f"\n{fname}: provider {b['provider']}\n")
        print("| model | layers | prefill ms p50/p90/p99 | decode ms/token p50/p90/p99 | tokens/s | RSS peak MB | device MB peak |")
        print("|---|---|---|---|---|---|---|")
        for m in b["models"]:
            dev = m.get("device_mem_peak_mb")
            print(f"| {m['path']} | {m['layers']} | {_fmt(m.get('prefill_ms'))} | {_fmt(m.get('decode_ms_per_token'))} | "
                  f"{m.get('tokens_per_s') or 0:.1f} | {m.get('rss_peak_mb') or 0:.0f} | {'-' if dev is None else f'{dev:.0f}'} |")
        for r in b.get("ratios", []):
            print("\nratios: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check-out")))
