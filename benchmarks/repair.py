"""Does repair make cuts pass? Retention per task for each cut size and repair on the built-in SmolLM2.

Regenerates docs/REPAIR.md and docs/results/repair.json from scratch, on CPU:

    python benchmarks/repair.py                                   # the table in docs/REPAIR.md
    python benchmarks/repair.py --quick --out out/repair-quick    # smoke run (tiny budgets)

Why it is built this way:
- one base model, one score report per scorer (the profile's calibration), the same cut for every
  repair of a size (layer 0 protected throughout, which the linear patch needs), so the rows differ
  only by the repair;
- each cut is cut and repaired in memory with ``compressor.repair.methods.repair_cut`` (the function
  ``avss prune/repair/run --repair`` call), saved, reloaded as a user would load it and evaluated with
  ``compressor.verify.api.verify`` (base results come from the verify cache);
- repair time and the process's peak RSS while repairing are measured per cut (one process, so the
  peak includes the resident base model; the machine is shared, so times are indicative).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import revision  # noqa: E402
from compressor import library_versions  # noqa: E402
from compressor.export.peak_rss import PeakRSS  # noqa: E402

START = time.perf_counter()
STARTED = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
# scorer | repair | cut sizes | calibration source of the repair [| options: loss=, minutes=, samples=, lr=, steps=]
# Sized to run in about a quarter of an hour next to benchmarks/scorers.py (make results: about an hour in all):
# the plain cuts' retention is on docs/RESULTS.md (the same cuts: neither scorer removes layer 0), the trained
# repairs are compared at equal wall-clock minutes (HEAL) on one 7-layer cut.
HEAL = 2.0
DEFAULT_PLAN = [
    "block-influence|linear|4,7|builtin:python-docs",
    "patch-residual|linear|1,2,4,7|builtin:python-docs",
    "patch-residual-greedy|linear|4,7|builtin:python-docs",
    f"block-influence|linear+distill|7|builtin:python-docs|loss=hidden,minutes={HEAL:g},steps=1000",
    f"block-influence|linear+distill|7|builtin:python-docs|loss=kl,minutes={HEAL:g},steps=1000",
    f"block-influence|linear+lora|7|builtin:python-docs|loss=kl,minutes={HEAL:g},steps=1000",
    "block-influence|linear|7|builtin:mixed",
    "block-influence|linear|7|builtin:python-docs|samples=128",
]


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {msg}", file=sys.stderr, flush=True)


def parse_options(text: str) -> dict:
    """``loss=kl,minutes=3`` -> {"loss": "kl", "minutes": 3.0} (the row's settings beyond the defaults)."""
    out: dict = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, _, value = item.partition("=")
        if key not in ("loss", "minutes", "samples", "lr", "steps"):
            raise SystemExit(f"unknown plan option {key!r} (use loss, minutes, samples, lr, steps)")
        out[key] = value if key == "loss" else float(value) if key in ("minutes", "lr") else int(value)
    return out


def measure(args: argparse.Namespace) -> dict:
    from compressor.profiles import load_profile
    from compressor.prune.surgery import save_checkpoint
    from compressor.repair.methods import repair_cut
    from compressor.repair.settings import RepairSettings
    from compressor.score.api import score_layers
    from compressor.score.select import select_layers
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
    done = {(r["scorer_id"], r["k"], r["repair"], r["calibration"], r.get("options_text", "")) for r in rows}
    work = Path(tempfile.mkdtemp(prefix="avss-repair-bench-"))
    cals = {}
    pdata = load_calibration(CalibrationSpec(**profile.calibration.model_dump()), base.tokenizer, base.adapter.family)
    try:
        for plan in args.plan:
            scorer, method_r, cuts, cal_source, *rest = plan.split("|")
            opts_text = rest[0] if rest else ""
            opts = parse_options(opts_text)
            method, mode = (scorer.split(":") + [None])[:2]
            if scorer not in reports:  # scores always from the profile's own calibration: one cut per size
                t0 = time.perf_counter()
                reports[scorer] = score_layers(base, method, mode=mode, data=pdata)
                log(f"scored {scorer} in {time.perf_counter() - t0:.0f} s")
            rep = reports[scorer]
            samples = opts.get("samples", profile.calibration.samples)
            if (cal_source, samples) not in cals:
                spec = CalibrationSpec(**{**profile.calibration.model_dump(), "source": cal_source, "samples": samples})
                cals[cal_source, samples] = load_calibration(spec, base.tokenizer, base.adapter.family)
            cal = cals[cal_source, samples]
            for k in [int(x) for x in cuts.split(",")]:
                if (scorer, k, method_r, cal_source, opts_text) in done:
                    continue
                removed = select_layers(rep, num_layers=k, protect="first").removed
                settings = RepairSettings(method_r, heal_steps=opts.get("steps", args.heal_steps), heal_lr=opts.get("lr"),
                                          heal_loss=opts.get("loss", "hidden"), heal_minutes=opts.get("minutes"))
                log(f"{rep.label} k={k} {removed} repair={method_r} calibration={cal_source} {opts_text}")
                t0, c0 = time.perf_counter(), time.process_time()
                with PeakRSS() as rss:
                    slim, record, _ = repair_cut(base, removed, settings, cal.batches)
                secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                folder = work / "cand"
                save_checkpoint(slim.model, slim.tokenizer, folder, {"removed_layers": removed, "repair": record})
                del slim
                cand = load_model(str(folder))
                v = verify(base, cand, profile)
                shutil.rmtree(folder, ignore_errors=True)
                row = {"scorer": rep.label, "scorer_id": scorer, "k": k, "removed": removed, "repair": method_r,
                       "calibration": cal_source, "samples": samples, "options": opts, "options_text": opts_text,
                       "passed": v.passed,
                       "tasks": {t.name: {"metric": t.metric, "base": t.base, "candidate": t.candidate,
                                          "retention": t.retention, "threshold": t.threshold,
                                          "passed": t.passed} for t in v.tasks},
                       "repair_seconds": round(secs, 1), "repair_cpu_seconds": round(cpu, 1),
                       "repair_peak_rss_mb": round(rss.peak_mb),
                       "record": {kk: vv for kk, vv in record.items() if kk in ("linear", "distill", "lora")}}
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
            "settings": {"heal_steps": args.heal_steps, "plan": args.plan,
                         "calibration": profile.calibration.model_dump()},
            "machine": {"python": platform.python_version(), "cpu_threads": __import__("torch").get_num_threads(),
                        "cpu_count": os.cpu_count()},
            "started": STARTED, "commit": revision(), "command": "python " + " ".join(sys.argv),
            "versions": library_versions(), "seconds": round(time.perf_counter() - START)}


def _label(r: dict) -> str:
    """The repair as a user would ask for it: ``linear+distill (kl, 3 min)``."""
    o = r.get("options", {})
    extra = [o["loss"]] if "loss" in o else []
    if "minutes" in o:
        extra.append(f"{o['minutes']:g} min")
    if "steps" in o and "minutes" not in o:
        extra.append(f"{o['steps']} steps")
    return r["repair"] + (f" ({', '.join(extra)})" if extra else "")


def _worst(r: dict) -> float:
    return min(x["retention"] for x in r["tasks"].values())


def render(res: dict) -> str:
    rows = res["rows"]
    tasks = list(rows[0]["tasks"]) if rows else []
    cal = res["settings"].get("calibration", {})
    out = ["# Repair after removal: does it make cuts pass?", "",
           f"Generated by `{res.get('command', 'python benchmarks/repair.py')}` on {res.get('started', '?')} at commit "
           f"`{res.get('commit', '?')}` in {res['seconds'] / 60:.1f} min ({res['machine'].get('cpu_count', '?')} CPU "
           "cores); not edited by hand: rerun `make results` to regenerate it and `results/repair.json`.", "",
           f"- Model `{res['model']}` ({res['num_layers']} layers), profile `{res['profile']}` (a cut passes when every "
           "task keeps its threshold).",
           f"- Calibration for the scores and the repairs: {cal.get('samples', '?')} × {cal.get('seq_len', '?')} tokens of "
           "`builtin:python-docs` unless the row says otherwise; the same cut for every repair of a scorer and size "
           "(layer 0 protected: the linear patch folds into the block before each span).",
           f"- Trained repairs: the step budget is {res['settings']['heal_steps']} steps unless a wall-clock budget "
           "(minutes) is given; one calibration batch (8 × 256 tokens) per step, one batch in eight held out for early "
           "stopping; learning rate 3e-4 (distill) or 1e-3 (lora). Repair time is wall time on the shared 2-core "
           "machine and includes the linear patch (about 20 s).", "",
           "- Scope, to fit `make results` in about an hour on 2 cores: the cut sizes and repairs listed below. "
           "The plain cuts (`--repair none`) of the same scorers and sizes are on [RESULTS.md](RESULTS.md) (the same "
           "cuts: neither scorer removes layer 0); trained repairs are compared at equal wall-clock minutes on one "
           "7-layer cut.", "",
           "Retention per task (base / candidate for perplexity, candidate / base otherwise); **bold** = passes "
           "its threshold.", ""]
    head = ["scorer", "calibration", "layers removed", "repair", *tasks, "worst", "gate", "repair (min)",
            "peak RSS (MB)"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for t in tasks:
            x = r["tasks"][t]
            v = f"{x['retention']:.3f}"
            cells.append(f"**{v}**" if x["passed"] else v)
        calib = r["calibration"].removeprefix("builtin:") + (f" ×{r['samples']}" if r.get("samples") != cal.get("samples") else "")
        out.append("| " + " | ".join([r["scorer"], calib, str(r["k"]), _label(r),
                                      *cells, f"{_worst(r):.3f}", "pass" if r["passed"] else "fail",
                                      f"{r['repair_seconds'] / 60:.1f}", str(r["repair_peak_rss_mb"])]) + " |")
    out += ["", "## Largest passing cut per scorer, calibration and repair (among the sizes measured)", "",
            "| scorer | calibration | repair | sizes measured | largest passing cut | worst retention at 4 | at 7 |",
            "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scorer"], r["calibration"] + str(r.get("samples")), _label(r)), []).append(r)
    for (sc, _, rp), rs in groups.items():
        best = max([r["k"] for r in rs if r["passed"]] or [0])
        at = {k: [f"{_worst(r):.3f}" for r in rs if r["k"] == k] for k in (4, 7)}
        out.append(f"| {sc} | {rs[0]['calibration'].removeprefix('builtin:')} ×{rs[0].get('samples')} | {rp} | "
                   f"{', '.join(str(r['k']) for r in rs)} | {best or 'none'} | {at[4][0] if at[4] else 'n/a'} | "
                   f"{at[7][0] if at[7] else 'n/a'} |")
    spans = [(r, sp) for r in rows if r["record"].get("linear") and r["repair"] == "linear"
             for sp in r["record"]["linear"]["spans"]]
    if spans:
        out += ["", "## Linear patch fit", "",
                "Relative residual error ‖pred − target‖²/‖target‖² with target = (span output) − (rest of the fold "
                "block), before (no patch: pred = M) and after (pred = M·T). Where the fold block's MLP output M is "
                "very large (SmolLM2's massive activations around layer 11) the ratio is small for any prediction, so "
                "compare before with after, not spans with each other.", "",
                "| scorer | calibration | layers removed | span | folded into | error before | after |", "|---|---|---|---|---|---|---|"]
        seen = set()
        for r, sp in spans:
            key = (r["calibration"], r.get("samples"), tuple(sp["removed"]), sp["fold_point"])
            if key in seen:
                continue
            seen.add(key)
            out.append(f"| {r['scorer']} | {r['calibration'].removeprefix('builtin:')} ×{r.get('samples')} | {r['k']} | "
                       f"{sp['removed']} | {sp['fold_point']} | {sp['error_before']:.3f} | {sp['error_after']:.3f} |")
    trained = [(r, name) for r in rows for name in ("distill", "lora") if r["record"].get(name)]
    if trained:
        out += ["", "## Healing", "",
                "Held-out KL is the full-vocabulary next-token KL(full ‖ slim) on the held-out calibration batch, "
                "whatever the training loss.", "",
                "| scorer | layers removed | repair | loss | trains | steps | ended | held-out KL before | after | "
                "trainable parameters | time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r, name in trained:
            d = r["record"][name]
            ended = "early stop" if d["stopped_early"] else "time budget" if d.get("stopped_by_budget") else "step budget"
            out.append(f"| {r['scorer']} | {r['k']} | {_label(r)} | {d.get('objective', 'hidden')} | "
                       f"{'LoRA, every kept block' if d.get('trainable') == 'lora' else 'blocks next to each cut'} | "
                       f"{d['steps']}/{d['budget_steps']} | {ended} | {d['heldout_kl_before']:.3f} | "
                       f"{d['heldout_kl_after']:.3f} | {d['trainable_parameters']:,} | {d['seconds']:.0f} |")
    out += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "default.yaml"))
    ap.add_argument("--plan", action="append", default=None,
                    help="scorer|repair|cuts|calibration, repeatable (default: the plan in docs/REPAIR.md)")
    ap.add_argument("--heal-steps", type=int, default=30, help="step budget of trained rows without steps=")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run (repair.partial.json)")
    ap.add_argument("--render-only", action="store_true", help="re-render OUT/REPAIR.md from OUT/results/repair.json")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    a = ap.parse_args()
    a.plan = a.plan or DEFAULT_PLAN
    if a.quick:
        a.plan, a.heal_steps = ["block-influence|linear|1|builtin:python-docs",
                                "block-influence|linear+distill|1|builtin:python-docs|loss=kl",
                                "block-influence|linear+lora|1|builtin:python-docs|minutes=0.05"], 2
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
