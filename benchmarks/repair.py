"""Does repair make cuts pass? Retention per task for each cut size and repair on the built-in SmolLM2.

Regenerates docs/REPAIR.md and docs/results/repair.json from scratch, on CPU:

    python benchmarks/repair.py                                   # the table in docs/REPAIR.md
    python benchmarks/repair.py --quick --out out/repair-quick    # smoke run (tiny budgets)

Why it is built this way:
- one base model, one score report per scorer (the profile's calibration), the same cut for every
  repair of a size (layer 0 protected throughout, which the linear patch needs), so the rows differ
  only by the repair;
- each cut is cut and repaired in memory with ``compressor.repair.api.repair_cut`` (the function
  ``avss prune/repair/run --repair`` call), saved, reloaded as a user would load it and evaluated with
  ``compressor.verify.api.verify`` (base results come from the verify cache);
- repair time and the process's peak RSS while repairing are measured per cut (one process, so the
  peak includes the resident base model; the machine is shared, so times are indicative).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakRSS  # noqa: E402
from compressor import library_versions  # noqa: E402

START = time.perf_counter()
# scorer | repair | cut sizes | calibration source of the repair
DEFAULT_PLAN = [
    "block-influence|none|1,2,4|builtin:python-docs",
    "block-influence|linear|1,2,4,7,10|builtin:python-docs",
    "block-influence|linear+distill|7|builtin:python-docs",
    "angular|linear|4,7|builtin:python-docs",
    "block-influence|linear|7|builtin:mixed",
    "block-influence|distill|7|builtin:python-docs",
    "block-influence|linear+distill|4|builtin:python-docs",
]


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {msg}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict:
    from compressor.profiles import load_profile
    from compressor.prune.select import select_layers
    from compressor.prune.surgery import save_checkpoint
    from compressor.repair.api import RepairSettings, repair_cut
    from compressor.score.api import score_layers
    from compressor.sources.data import CalibrationSpec, load_calibration
    from compressor.sources.models import load_model
    from compressor.verify.api import verify

    profile = load_profile(args.profile)
    base = load_model(args.model)
    L = base.num_layers
    rows, reports = [], {}
    partial = Path(args.out) / "results" / "repair.partial.json"
    if args.resume and partial.is_file():  # rows measured by an interrupted run with the same code
        rows = json.loads(partial.read_text(encoding="utf-8"))
        log(f"resuming: {len(rows)} rows from {partial}")
    done = {(r["scorer_id"], r["k"], r["repair"], r["calibration"]) for r in rows if "scorer_id" in r}
    work = Path(tempfile.mkdtemp(prefix="avss-repair-bench-"))
    cals = {}
    try:
        for plan in args.plan:
            scorer, method_r, cuts, cal_source = plan.split("|")
            method, mode = (scorer.split(":") + [None])[:2]
            if scorer not in reports:  # scores always from the profile's own calibration: one cut per size
                pdata = load_calibration(CalibrationSpec(**profile.calibration.model_dump()), base.tokenizer,
                                         base.adapter.family)
                reports[scorer] = score_layers(base, method, mode=mode, data=pdata)
            rep = reports[scorer]
            if cal_source not in cals:
                spec = CalibrationSpec(**{**profile.calibration.model_dump(), "source": cal_source})
                cals[cal_source] = load_calibration(spec, base.tokenizer, base.adapter.family)
            cal = cals[cal_source]
            for k in [int(x) for x in cuts.split(",")]:
                if (scorer, k, method_r, cal_source) in done:
                    continue
                removed = select_layers(rep, num_layers=k, protect="first").removed
                settings = RepairSettings(method_r, heal_steps=args.heal_steps, heal_lr=args.heal_lr)
                log(f"{rep.label} k={k} {removed} repair={method_r} calibration={cal_source}")
                t0 = time.perf_counter()
                with PeakRSS() as rss:
                    slim, record, _ = repair_cut(base, removed, settings, cal.batches)
                secs = time.perf_counter() - t0
                folder = work / "cand"
                save_checkpoint(slim.model, slim.tokenizer, folder, {"removed_layers": removed, "repair": record})
                del slim
                cand = load_model(str(folder))
                v = verify(base, cand, profile)
                shutil.rmtree(folder, ignore_errors=True)
                row = {"scorer": rep.label, "scorer_id": scorer, "k": k, "removed": removed, "repair": method_r,
                       "calibration": cal_source, "passed": v.passed,
                       "tasks": {t.name: {"metric": t.metric, "base": t.base, "candidate": t.candidate,
                                          "retention": t.retention, "threshold": t.threshold,
                                          "passed": t.passed} for t in v.tasks},
                       "repair_seconds": round(secs, 1), "repair_peak_rss_mb": round(rss.peak_mb),
                       "record": {kk: vv for kk, vv in record.items() if kk in ("linear", "distill")}}
                worst = min(t["retention"] for t in row["tasks"].values())
                log(f"  -> worst retention {worst:.3f} ({'pass' if v.passed else 'fail'}), repair {secs:.0f} s")
                rows.append(row)
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prof = Path(args.profile).resolve()
    shown = str(prof.relative_to(ROOT)) if prof.is_relative_to(ROOT) else str(prof)
    return {"model": args.model, "profile": shown, "num_layers": L, "rows": rows,
            "settings": {"heal_steps": args.heal_steps, "heal_lr": args.heal_lr, "plan": args.plan},
            "machine": {"python": platform.python_version(), "cpu_threads": __import__("torch").get_num_threads()},
            "versions": library_versions(), "seconds": round(time.perf_counter() - START)}


def render(res: dict) -> str:
    rows = res["rows"]
    tasks = list(rows[0]["tasks"]) if rows else []
    out = ["# Repair after removal: does it make cuts pass?", "",
           f"Generated by `python benchmarks/repair.py` ({res['seconds']} s on this machine); do not edit by hand. "
           f"Model `{res['model']}` ({res['num_layers']} layers), profile `{res['profile']}`; the same cut for every "
           "repair of a size (layer 0 protected); distill budget "
           f"{res['settings']['heal_steps']} steps at lr {res['settings']['heal_lr']:g}.", "",
           "Retention per task (base / candidate for perplexity, candidate / base otherwise); **bold** = passes "
           "its threshold.", ""]
    head = ["scorer", "calibration", "layers removed", "repair", *tasks, "worst", "gate", "repair time (s)", "peak RSS (MB)"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for t in tasks:
            x = r["tasks"][t]
            v = f"{x['retention']:.3f}"
            cells.append(f"**{v}**" if x["passed"] else v)
        worst = min(x["retention"] for x in r["tasks"].values())
        out.append("| " + " | ".join([r["scorer"], r["calibration"].removeprefix("builtin:"), str(r["k"]), r["repair"],
                                      *cells, f"{worst:.3f}", "pass" if r["passed"] else "fail",
                                      f"{r['repair_seconds']:.0f}", str(r["repair_peak_rss_mb"])]) + " |")
    out += ["", "## Largest passing cut per scorer, calibration and repair (among the sizes measured)", "",
            "| scorer | calibration | repair | largest passing cut | worst retention at 7 layers |", "|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scorer"], r["calibration"], r["repair"]), []).append(r)
    for (sc, cal, rp), rs in groups.items():
        best = max([r["k"] for r in rs if r["passed"]] or [0])
        at7 = [min(x["retention"] for x in r["tasks"].values()) for r in rs if r["k"] == 7]
        out.append(f"| {sc} | {cal.removeprefix('builtin:')} | {rp} | {best or 'none'} | "
                   f"{f'{at7[0]:.3f}' if at7 else 'n/a'} |")
    spans = [(r, sp) for r in rows if r["record"].get("linear") for sp in r["record"]["linear"]["spans"]]
    if spans:
        out += ["", "## Linear patch fit", "",
                "Relative residual error ‖pred − target‖²/‖target‖² with target = (span output) − (rest of the fold "
                "block), before (no patch: pred = M) and after (pred = M·T). Where the fold block's MLP output M is "
                "very large (SmolLM2's massive activations around layer 11) the ratio is small for any prediction, so "
                "compare before with after, not spans with each other.", "",
                "| scorer | calibration | layers removed | span | folded into | error before | after |", "|---|---|---|---|---|---|---|"]
        for r, sp in spans:
            if r["repair"] == "linear":
                out.append(f"| {r['scorer']} | {r['calibration'].removeprefix('builtin:')} | {r['k']} | {sp['removed']} | "
                           f"{sp['fold_point']} | {sp['error_before']:.3f} | {sp['error_after']:.3f} |")
    dist = [r for r in rows if r["record"].get("distill")]
    if dist:
        out += ["", "## Distillation", "", "| scorer | layers removed | repair | steps | held-out KL before | after | time (s) |",
                "|---|---|---|---|---|---|---|"]
        for r in dist:
            d = r["record"]["distill"]
            out.append(f"| {r['scorer']} | {r['k']} | {r['repair']} | {d['steps']}/{d['budget_steps']} | "
                       f"{d['heldout_kl_before']:.3f} | {d['heldout_kl_after']:.3f} | {d['seconds']:.0f} |")
    out += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "default.yaml"))
    ap.add_argument("--plan", action="append", default=None,
                    help="scorer|repair|cuts|calibration, repeatable (default: the plan in docs/REPAIR.md)")
    ap.add_argument("--heal-steps", type=int, default=30)
    ap.add_argument("--heal-lr", type=float, default=3e-4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run (repair.partial.json)")
    ap.add_argument("--render-only", action="store_true", help="re-render OUT/REPAIR.md from OUT/results/repair.json")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    a = ap.parse_args()
    a.plan = a.plan or DEFAULT_PLAN
    if a.quick:
        a.plan, a.heal_steps = ["block-influence|linear|1|builtin:python-docs", "block-influence|linear+distill|1|builtin:python-docs"], 2
    out = Path(a.out)
    if a.render_only:
        (out / "REPAIR.md").write_text(render(json.loads((out / "results" / "repair.json").read_text())), encoding="utf-8")
        return
    res = measure(a)
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "repair.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (out / "REPAIR.md").write_text(render(res), encoding="utf-8")
    (out / "results" / "repair.partial.json").unlink(missing_ok=True)
    log(f"wrote {out / 'REPAIR.md'}")


if __name__ == "__main__":
    main()
