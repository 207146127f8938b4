"""``avss run --search fastest`` against the exhaustive sweep of the same space, on the built-in SmolLM2.

    python benchmarks/fastest_search.py [--out out/fastest] [--repair linear] [--methods m1,m2]

1. the search: ``avss run builtin:smollm2-135m --profile profiles/default.yaml --search fastest --repair R``
   into ``OUT/search`` (resumes when run again; its wall is the sum of its stages' seconds);
2. the sweep: the same configuration with ``search_sweep: true`` (every candidate gated, no rule, no stop,
   every passing one benched) into ``OUT/sweep``; both share the verify cache, as two runs of one user do;
3. if the two choose different artifacts, both and the reference are benched together five times (the
   medians decide, within 5 %; every pair is printed, so the machine's noise is visible), so the comparison
   is never across two bench runs;
4. ``avss verify`` of the search's shipped artifact on its own, which must pass.

Prints the comparison and the issue's goals: the chosen artifact passes and decodes at <= 0.50x the full
fp32 Optimum export (stretch 0.40x); the search <= 30 min from a cold verify cache; the search's answer no
slower than the sweep's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (offline environment defaults)

MODEL, PROFILE = "builtin:smollm2-135m", "profiles/default.yaml"


def avss(*args: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "compressor", *args])
    return code, time.perf_counter() - t0


def run_folder(out: Path, repair: str, methods: str | None, sweep: bool) -> dict:
    import yaml

    cfg = {"model": MODEL, "profile": PROFILE, "out": str(out), "search": "fastest", "repair": repair,
           "search_sweep": sweep}
    if methods:
        cfg["methods"] = methods.split(",")
    out.parent.mkdir(parents=True, exist_ok=True)
    conf = out.parent / f"{out.name}.yaml"
    conf.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, wall = avss("run", "--config", str(conf))
    if code not in (0, 1):
        raise SystemExit(f"avss run ({out.name}) failed with exit {code}")
    return read_folder(out, code, wall)


def read_folder(out: Path, code: int, wall: float | None) -> dict:
    r = json.loads((out / "run.json").read_text(encoding="utf-8"))
    s = json.loads((out / "search.json").read_text(encoding="utf-8"))
    staged = sum(st["seconds"] for st in r["stages"])
    return {"run": r, "search": s, "exit": r["exit_code"], "wall_s": wall, "out": out, "stages_s": staged,
            "search_s": sum(st["seconds"] for st in r["stages"] if st["name"].startswith(("search", "score-")))}


def counts(search: dict) -> dict:
    """The walk's counts, from its candidates (a cut several scorers proposed and PyTorch failed counts once,
    whichever version of the tool wrote search.json)."""
    from compressor.run.fastest import ArtifactCandidate, Cut, FastestSearch

    def prec(p: str) -> str | None:
        return None if p == "fp32" else p

    cands = [ArtifactCandidate(Cut(c["cut"]["method"], c["cut"]["k"], tuple(c["cut"]["removed"])), c["exporter"],
                               prec(c["precision"]), c["rank"], c["estimate"], c["status"]) for c in search["candidates"]]
    walk = FastestSearch(cands, search["exporters"], {e: [prec(p) for p in ps] for e, ps in search["precisions"].items()},
                         pytorch_failed=search["pytorch_failed"])
    return walk.counts()


def shipped(out: Path, chosen: dict) -> Path:
    return out / ("onnx" if chosen["precision"] == "fp32" else f"onnx-{chosen['precision']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/fastest")
    ap.add_argument("--repair", default="linear")
    ap.add_argument("--methods", default=None)
    ap.add_argument("--search-run", default=None, help="an existing `--search fastest` run folder to compare "
                    "(its run.json and search.json are read; it is not run again)")
    ap.add_argument("--sweep-run", default=None, help="an existing sweep run folder (`search_sweep: true`), read as is")
    ap.add_argument("--no-page", action="store_true", help="do not write docs/results/fastest-search.md")
    args = ap.parse_args()
    out = Path(args.out)
    with _common.ResultsPage("fastest-search", "--search fastest against the exhaustive sweep (SmolLM2-135M)",
                             enabled=not args.no_page):
        search = (read_folder(Path(args.search_run), 0, None) if args.search_run
                  else run_folder(out / "search", args.repair, args.methods, sweep=False))
        sweep = (read_folder(Path(args.sweep_run), 0, None) if args.sweep_run
                 else run_folder(out / "sweep", args.repair, args.methods, sweep=True))
        rows = []
        for name, res in (("search", search), ("sweep", sweep)):
            s, n = res["search"], counts(res["search"])
            c, ref = s["chosen"] or {}, s["reference"] or {}
            ratio = c.get("decode_ms") / ref["decode_ms"] if c.get("decode_ms") and ref.get("decode_ms") else None
            rows.append((name, n["space"], n["gated"], n["pass"], n["skipped"] + n["skipped_pytorch"], c.get("id"),
                         ratio, res["search_s"] / 60, res["stages_s"] / 60))
        print(f"model {MODEL}, profile {PROFILE}, --repair {args.repair}, scorers "
              f"{', '.join(search['run']['config']['methods'])}")
        print(f"\n{'':8} {'space':>5} {'gated':>5} {'pass':>4} {'skipped':>7}  {'chosen':40} {'decode x full':>13} "
              f"{'search min':>10} {'run min':>7}")
        for name, space, gated, npass, skipped, cid, ratio, smin, rmin in rows:
            r = f"{ratio:.3f}" if ratio is not None else "n/a"
            print(f"{name:8} {space:5d} {gated:5d} {npass:4d} {skipped:7d}  {str(cid):40} {r:>13} {smin:10.1f} {rmin:7.1f}")
        print("\n(decode x full: the chosen artifact's decode ms/token over the full model's through Optimum fp32, "
              "both from that run's frontier bench; minutes: the search's stages, and the whole run's)")
        print("\nthe search's candidates (estimate order):")
        for c in search["search"]["candidates"]:
            if c["status"] != "untried":
                why = f" ({c['rule']}: {c['because']})" if c["status"] == "skipped" else ""
                worst = min(c["retention"].values()) if c["retention"] else float("nan")
                dec = f"{c['decode_ms']:.2f} ms/token" if c["decode_ms"] is not None else ""
                print(f"  {c['id']:42} {c['status']}{why} worst {worst:.3f} {dec}")
        s_id, w_id = search["search"]["chosen"]["id"], sweep["search"]["chosen"]["id"]
        verdict_same = s_id == w_id
        if not verdict_same:  # one bench run for the two answers and the reference
            from compressor.export.bench import BenchOptions, bench_models

            folders = [str(search["out"] / "onnx-base"), str(shipped(search["out"], search["search"]["chosen"])),
                       str(shipped(sweep["out"], sweep["search"]["chosen"]))]
            import statistics

            pairs = []  # five one-round benches of the three folders: the spread shows the machine's noise
            for _ in range(5):
                dec = [m.decode_ms_per_token.p50 for m in bench_models(folders, BenchOptions(rounds=1)).models]
                pairs.append((dec[1] / dec[0], dec[2] / dec[0]))
            s_med, w_med = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
            print(f"\nthe two answers benched together 5 times (each: full, search's, sweep's; decode x full): "
                  f"search {s_id} median {s_med:.3f}x, sweep {w_id} median {w_med:.3f}x")
            print("  per bench: " + ", ".join(f"{a:.3f} vs {b:.3f}" for a, b in pairs))
            wins = sum(a <= b for a, b in pairs)
            print(f"  the search's answer was the faster one in {wins} of 5")
            not_slower = s_med <= w_med * 1.05
        else:
            print(f"\nthe search and the sweep choose the same artifact: {s_id}")
            not_slower = True
        art = shipped(search["out"], search["search"]["chosen"])
        code, _ = avss("verify", MODEL, str(art), "--profile", PROFILE, "--report-dir", str(out / "verify-report"))
        print(f"`avss verify {MODEL} {art} --profile {PROFILE}` on its own: exit {code}")
        ratio = rows[0][6]
        print("\ngoals:")
        print(f"  chosen passes and decodes <= 0.50x full (stretch 0.40x): {search['exit'] == 0 and code == 0} "
              f"and {ratio:.3f}x" if ratio else "  no ratio")
        print(f"  search <= 30 min: {rows[0][8]:.1f} min for the whole run ({rows[0][7]:.1f} min in the search's "
              "stages); cold only on a first run (the verify cache is shared)")
        print(f"  not slower than the sweep's answer: {not_slower} (search gated {rows[0][2]}, sweep {rows[1][2]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
