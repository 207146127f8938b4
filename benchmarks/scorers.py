"""Which layer scorer keeps a real model alive, and where does the paper's 25 % / 90 % claim hold?

Regenerates docs/RESULTS.md, its plots and docs/results/results.json from scratch, on CPU:

    python benchmarks/scorers.py                  # full run (target: under 45 min alone on 2 cores) -> docs/
    python benchmarks/scorers.py --quick          # smoke run, a few minutes -> out/scorers-quick/
    python benchmarks/scorers.py --render-only    # re-render OUT/RESULTS.md from OUT/results/results.json

Three steps, so the document is testable without models (tests/test_results_doc.py):
measure (this file) -> results.json -> render (``_scorers_report.py``).

Why it is built this way:
- every scorer that needs data runs once, in a fresh subprocess that also measures its time and
  peak RSS (one process per measurement, as in ``scoring_overhead.py``) and saves the scores the cuts
  are made from, so no scorer runs twice; a plain forward pass over the same batches, in its own
  subprocess, is the reference;
- every cut is pruned into a temporary folder, reloaded as a user would load it, evaluated with
  ``compressor.verify.api.verify`` and deleted. verify caches results under ``$AVSS_CACHE/verify``
  by the model's content fingerprint, so the base model and a cut that two scorers agree on are
  evaluated once (also across runs of this script);
- the largest passing cut comes from ``compressor.run.search.search_method`` (gallop then bisect;
  tasks in profile order, stopping at the first failing task), the search ``avss run --search`` runs;
- ONNX Runtime latency depends on the number of layers only (every block has the same shape), so
  one cut per distinct size is exported and benchmarked; it stands for every scorer's cut of that size.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scorers_report import render  # noqa: E402

from _common import revision  # noqa: E402  (also sets HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM)
from compressor import library_versions  # noqa: E402
from compressor.export.peak_rss import PeakRSS  # noqa: E402

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ScorerPlan:
    id: str
    label: str
    method: str
    mode: str | None = None
    seed: int | None = None  # set for a scorer run under several seeds (random); None: it takes no seed
    objective: str | None = None  # SLEB's loss (nll when None)
    samples: int | None = None  # calibration samples when fewer than the profile's (stated on the page)

    @property
    def group(self) -> str:
        """One scorer's seeds are one scorer in the tables (mean and spread)."""
        return self.method if self.seed is not None else self.id


@dataclass(frozen=True)
class ModelPlan:
    key: str
    name: str
    spec: str
    profile: str
    cuts: tuple[int, ...]
    claim_cuts: tuple[int, ...]  # the grid cuts nearest the paper's "about 25 % of the layers"
    fallback_cut: int  # benchmarked (robust AVSS) when no cut passes the gate
    sleb_rounds: int  # SLEB's removals computed (its cuts up to this size are its own; it costs a round each)


SLEB_SAMPLES = 8
SCORERS = [
    ScorerPlan("avss-official", "AVSS (official)", "avss", "official"),
    ScorerPlan("avss-robust", "AVSS (robust)", "avss", "robust"),
    ScorerPlan("block-influence", "block influence", "block-influence"),
    ScorerPlan("relative-update", "relative update", "relative-update"),
    ScorerPlan("angular", "angular", "angular"),
    ScorerPlan("leave-one-out", "leave-one-out", "leave-one-out"),
    # SLEB runs the LM head once per candidate, round and batch (~1.5 s for 2,048 tokens here): 7 rounds on the
    # profile's 32 samples would take ~25 min each, so SLEB sees the first 8 of them (one batch)
    ScorerPlan("sleb", "SLEB", "sleb", samples=SLEB_SAMPLES),
    ScorerPlan("sleb-kl", "SLEB (kl)", "sleb", objective="kl", samples=SLEB_SAMPLES),
    ScorerPlan("patch-residual", "patch residual", "patch-residual"),
    ScorerPlan("patch-residual-greedy", "patch residual (greedy)", "patch-residual-greedy"),
    ScorerPlan("last-k", "last-k", "last-k"),
    *(ScorerPlan(f"random-{s}", f"random (seed {s})", "random", seed=s) for s in (0, 1)),
]
QUICK_SCORERS = ("avss-official", "avss-robust", "angular", "last-k", "random-0", "random-1")

# every scorer of the registry at 1, 2, 4 and 7 of 30 layers (7: the paper's "about 25 %"), so `make results`
# (this and benchmarks/repair.py) fits about an hour alone on 2 cores
SMOLLM2 = ModelPlan("smollm2", "SmolLM2-135M-Instruct", "builtin:smollm2-135m", "profiles/default.yaml",
                    (1, 2, 4, 7), (7,), 7, 7)
MINILM = ModelPlan("minilm", "MiniLM-L6 sentiment classifier", "builtin:minilm-l6-rt-sentiment",
                   "profiles/sentiment-encoder.yaml", (1, 2), (1, 2), 2, 3)

# --quick: smaller tasks and calibration, so the smoke run takes minutes (never written to docs/)
QUICK_LIMITS = {"perplexity": 512, "multiple-choice": 12, "zero-shot-classification": 40, "classification": 200}
QUICK_CALIBRATION_SAMPLES = 8
QUICK_CUTS = {"smollm2": (1, 7), "minilm": (1,)}


# ------------------------------------------------------------------------------ scoring child

def in_rounds(scorer: Any) -> bool:
    """Its cuts come from removal rounds, one block each, up to ``max_remove`` (SLEB, greedy patch residual)."""
    return "max_remove" in scorer.own_options


def _forward_kwargs(loaded: Any, batch: dict[str, Any]) -> dict[str, Any]:
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if loaded.adapter.family == "decoder":
        kw["use_cache"] = False
    return kw


def run_child(job_file: str) -> None:
    """One measurement in a fresh process: load, warm up on one batch, then time either a plain
    forward over the calibration batches or ``score_layers`` (whose report is saved); one JSON line."""
    import gc

    import torch

    from compressor.score.api import score_layers
    from compressor.score.methods import get_scorer
    from compressor.sources.data import CalibrationSpec, load_calibration
    from compressor.sources.models import load_model

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    scorer = None if job["method"] == "forward" else get_scorer(job["method"])
    torch.set_num_threads(job["threads"])
    loaded = load_model(job["model"])
    data = load_calibration(CalibrationSpec(**job["calibration"]), loaded.tokenizer, loaded.adapter.family)
    with torch.inference_mode():
        loaded.model(**_forward_kwargs(loaded, data.batches[0]))  # lazy init and thread pools, not timed
    gc.collect()

    def progress(done: int, total: int) -> None:
        if scorer is not None and scorer.multi_pass and (done % 5 == 0 or done == total):
            what = "round x batch steps" if in_rounds(scorer) else "layers skipped"
            print(f"    {job['label']}: {done}/{total} {what}", file=sys.stderr, flush=True)

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        if job["method"] == "forward":
            with torch.inference_mode():
                for b in data.batches:
                    loaded.model(**_forward_kwargs(loaded, b))
        else:
            report = score_layers(loaded, job["method"], mode=job["mode"], data=data, seed=job["seed"],
                                  progress=progress, **job.get("options", {}))
        seconds = time.perf_counter() - t0
    if job["method"] != "forward":
        report.save(job["out"])
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss.peak_mb, "baseline_rss_mb": rss.baseline_mb,
                      "increment_mb": rss.increment_mb, "tokens": data.tokens, "batches": len(data.batches),
                      "threads": torch.get_num_threads()}), flush=True)


def spawn(job: dict[str, Any], work: Path) -> dict[str, Any]:
    job_file = work / f"job-{job['label'].replace(' ', '_')}.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--child", str(job_file)], stdout=subprocess.PIPE, text=True,
                          env=env, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"measurement {job['label']!r} failed (exit {proc.returncode}); its stderr is above")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------- evaluation

def save_cut(base: Any, removed: list[int], folder: Path) -> None:
    """Prune a deep copy of ``base`` into ``folder``: the base model stays whole for the next cut."""
    from compressor.prune.surgery import prune_model
    from compressor.sources.models import LoadedModel

    clone = LoadedModel(base.spec, base.path, copy.deepcopy(base.model), base.tokenizer, base.adapter,
                        base.device, base.dtype)
    prune_model(clone, removed, folder, force=True)


class Evaluator:
    """Cut -> temporary folder -> reload -> verify, memoised per removed set within the run."""

    def __init__(self, base: Any, profile: Any, work: Path, key: str):
        self.base, self.profile, self.work, self.key = base, profile, work, key
        self.results: dict[tuple[int, ...], dict[str, dict[str, Any]]] = {}
        self.base_values: dict[str, float] = {}
        self.n_tasks: dict[str, int] = {}
        self.computed = self.cached = 0
        self.warnings: list[str] = []

    @contextlib.contextmanager
    def _candidate(self, removed: list[int]) -> Iterator[Any]:
        from compressor.sources.models import load_model

        folder = Path(tempfile.mkdtemp(prefix=f"{self.key}-cut-", dir=self.work))
        try:
            save_cut(self.base, removed, folder / "model")
            yield load_model(str(folder / "model"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _verify(self, cand: Any, tasks: list[Any]) -> list[dict[str, Any]]:
        from compressor.verify.api import verify

        rep = verify(self.base, cand, self.profile.model_copy(update={"tasks": tasks}))
        self.warnings += [w for w in rep.warnings if w not in self.warnings]
        out = []
        for t in rep.tasks:
            self.base_values[t.name], self.n_tasks[t.name] = t.base, t.n
            if t.cached.get("candidate"):
                self.cached += 1
            else:
                self.computed += 1
            out.append({"name": t.name, "metric": t.metric, "candidate": t.candidate, "retention": t.gated_value,
                        "agreement": t.agreement, "threshold": t.threshold, "passed": t.passed})
        return out

    def tasks(self, removed: list[int], stop_at_first_fail: bool = False) -> dict[str, dict[str, Any]]:
        """Task results of this cut: every task, or (search) tasks in profile order up to the first failure."""
        have = self.results.setdefault(tuple(removed), {})

        def pending() -> list[Any]:
            missing = [t for t in self.profile.tasks if t.name not in have]
            if not stop_at_first_fail:
                return missing
            return [] if any(not r["passed"] for r in have.values()) else missing[:1]

        todo = pending()
        if not todo:
            return have
        t0 = time.perf_counter()
        with self._candidate(removed) as cand:
            while todo:
                for r in self._verify(cand, todo):
                    have[r["name"]] = r
                todo = pending()
        summary = ", ".join(f"{n} {r['retention']:.3f}" for n, r in have.items())
        log(f"{self.key}: removed {removed} -> {summary} ({time.perf_counter() - t0:.1f} s)")
        return have


def gate_passed(profile: Any, res: dict[str, dict[str, Any]]) -> bool:
    return len(res) == len(profile.tasks) and all(r["passed"] for r in res.values())


# ---------------------------------------------------------------------------------- one model

def shrink_for_quick(profile: Any) -> Any:
    tasks = [t.model_copy(update={"limit": min(t.limit or 10**9, QUICK_LIMITS[t.kind])}) for t in profile.tasks]
    cal = profile.calibration.model_copy(update={"samples": QUICK_CALIBRATION_SAMPLES})
    return profile.model_copy(update={"tasks": tasks, "calibration": cal})


def classifier_record(path: str) -> dict[str, Any] | None:
    f = Path(path) / "training.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def bench_cuts(plan: ModelPlan, base: Any, cuts: dict[int, dict[str, Any]], work: Path, quick: bool) -> dict[str, Any]:
    """Export the full model and one cut per distinct size to ONNX, then benchmark them together."""
    from compressor.export.bench import BenchOptions, bench_models
    from compressor.export.convert import export_model

    folders = [work / f"{plan.key}-onnx-full"]
    log(f"{plan.key}: exporting the full model to ONNX")
    export_model(base, folders[0], force=True)
    for k, cut in sorted(cuts.items()):
        pruned = work / f"{plan.key}-pruned-k{k}"
        save_cut(base, cut["removed"], pruned)
        log(f"{plan.key}: exporting the {k}-layer cut {cut['removed']} to ONNX")
        folders.append(work / f"{plan.key}-onnx-k{k}")
        export_model(str(pruned), folders[-1], force=True)
        shutil.rmtree(pruned, ignore_errors=True)
    opts = BenchOptions(provider="cpu", threads=os.cpu_count() or 1, warmup=1 if quick else 2,
                        runs=2 if quick else 5, rounds=1 if quick else 2, new_tokens=8 if quick else 32)
    try:
        rep = bench_models([str(f) for f in folders], opts, progress=lambda m: log(f"{plan.key}: {m}"))
    finally:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
    d = rep.to_dict()
    models, ratios = d["models"], [None] + d["ratios"]
    decoder = models[0]["kind"] == "decoder"
    rows = []
    for (_k, cut), m, r in zip([(0, None), *sorted(cuts.items())], models, ratios):
        lat = m["decode_ms_per_token"] if decoder else m["batch_ms"]
        rows.append({
            "layers": m["layers"], "removed": cut["removed"] if cut else [], "scorers": cut["scorers"] if cut else [],
            "fallback": bool(cut and cut.get("fallback")), "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"],
            "prefill_ms_p50": m["prefill_ms"]["p50"] if decoder else None, "rss_peak_mb": m["rss_peak_mb"],
            "model_rss_mb": m["model_rss_mb"], "file_mb": m["file_mb"], "params": m["params"],
            "layer_ratio": r["layer_ratio"] if r else 1.0,
            "latency_ratio": (r["decode_ratio"] if decoder else r["batch_ratio"]) if r else 1.0,
            "rss_peak_ratio": r["rss_peak_ratio"] if r else 1.0,
            "model_rss_ratio": r["model_rss_ratio"] if r else 1.0,
        })
    s = rep.settings
    return {"kind": "decoder" if decoder else "encoder", "provider": rep.provider, "rows": rows,
            "settings": {k: s[k] for k in ("batch_size", "prompt_len", "new_tokens", "warmup", "runs", "rounds",
                                           "threads")}}


def measure_model(plan: ModelPlan, scorers: list[ScorerPlan], quick: bool, work: Path) -> dict[str, Any]:
    from compressor.profiles import load_profile
    from compressor.run.search import Candidate, search_method
    from compressor.score.api import score_layers
    from compressor.score.methods import get_scorer
    from compressor.score.report import ScoreReport
    from compressor.score.select import select_layers
    from compressor.sources.builtins import resolve_builtin_model
    from compressor.sources.models import load_model

    secs: dict[str, float] = {}
    t = time.perf_counter()
    profile = load_profile(ROOT / plan.profile)
    if quick:
        profile = shrink_for_quick(profile)
    if profile.gate.aggregate != "all":
        raise SystemExit(f"{plan.profile}: this benchmark gates every task (gate.aggregate: all)")
    model_dir = Path(resolve_builtin_model(plan.spec))  # built or converted once into $AVSS_CACHE
    secs["prepare"] = time.perf_counter() - t
    log(f"{plan.key}: {plan.spec} ready in {secs['prepare']:.1f} s ({model_dir})")
    base = load_model(plan.spec)
    L = base.num_layers
    if base.adapter.no_fold or base.adapter.mlp_out is None:  # scorers that solve the linear patch need it exact
        scorers = [sc for sc in scorers if not get_scorer(sc.method).needs_patch]
    if base.adapter.family != "decoder":  # an objective of nll (the default) needs next-token labels: a classifier
        # is scored by the kl objective only (the scorer refuses nll there)
        scorers = [sc for sc in scorers
                   if "objective" not in get_scorer(sc.method).own_options or (sc.objective or "nll") != "nll"]
    threads = os.cpu_count() or 1
    calib = profile.calibration.model_dump()

    # 1. scoring: one fresh process per data-driven scorer, plus the plain forward it is compared with
    t = time.perf_counter()
    job = {"model": plan.spec, "calibration": calib, "threads": threads, "mode": None, "seed": 0}
    log(f"{plan.key}: plain forward over the calibration batches (reference for scoring cost)")
    speed = {"forward": spawn({**job, "method": "forward", "label": f"{plan.key}-forward"}, work)}
    reports: dict[str, Any] = {}
    for sc in scorers:
        if get_scorer(sc.method).needs_data:
            log(f"{plan.key}: scoring with {sc.label}")
            out = work / f"{plan.key}-{sc.id}.json"
            opts: dict[str, Any] = {}
            if in_rounds(get_scorer(sc.method)):
                opts["max_remove"] = min(plan.sleb_rounds, L - 1)
            if sc.objective:
                opts["objective"] = sc.objective
            cjob = {**job, "calibration": {**calib, "samples": min(sc.samples, calib["samples"])}} if sc.samples else job
            speed[sc.id] = spawn({**cjob, "method": sc.method, "mode": sc.mode, "label": f"{plan.key}-{sc.id}",
                                  "out": str(out), "options": opts}, work)
            reports[sc.id] = ScoreReport.load(out)
        else:
            reports[sc.id] = score_layers(base, sc.method, seed=sc.seed or 0)
    secs["scoring"] = time.perf_counter() - t

    # 2. the grid: every scorer x cut size, every task
    t = time.perf_counter()
    ev = Evaluator(base, profile, work, plan.key)
    grid: dict[str, dict[str, Any]] = {}
    for sc in scorers:
        for k in plan.cuts:
            removed = select_layers(reports[sc.id], num_layers=k).removed
            res = ev.tasks(removed)
            grid.setdefault(sc.id, {})[str(k)] = {"removed": removed, "passed": gate_passed(profile, res),
                                                  "tasks": {n: res[n] for n in (x.name for x in profile.tasks)}}
    secs["grid"] = time.perf_counter() - t

    # 3. the largest passing cut per scorer (same verify cache: grid cuts cost nothing here)
    t = time.perf_counter()
    max_remove = min(L // 2, L - 1, max(plan.cuts) if quick else L)
    search: dict[str, Any] = {}
    for sc in scorers:
        def check(k: int, rep: Any = reports[sc.id], sid: str = sc.id) -> Any:
            removed = select_layers(rep, num_layers=k).removed
            res = ev.tasks(removed, stop_at_first_fail=True)
            done = [x.name for x in profile.tasks if x.name in res]
            return Candidate(sid, k, removed, gate_passed(profile, res), len(done) == len(profile.tasks),
                             {n: res[n]["retention"] for n in done}, {n: res[n]["threshold"] for n in done})

        scorer = get_scorer(sc.method)
        limit = min(max_remove, plan.sleb_rounds) if in_rounds(scorer) else max_remove
        best, cands = search_method(sc.id, check, limit, nested=scorer.nested_cuts)
        search[sc.id] = {"best": best, "candidates": [asdict(c) for c in sorted(cands, key=lambda c: c.k)]}
        log(f"{plan.key}: {sc.label}: largest passing cut {best} layer(s)")
    secs["search"] = time.perf_counter() - t

    # 4. ONNX Runtime: the full model and every passing cut (one per size), else the fallback cut
    t = time.perf_counter()
    cuts: dict[int, dict[str, Any]] = {}
    for sc in scorers:
        k = search[sc.id]["best"]
        if k:
            removed = select_layers(reports[sc.id], num_layers=k).removed
            cuts.setdefault(k, {"removed": removed, "scorers": []})["scorers"].append(sc.id)
    if not cuts:
        removed = select_layers(reports["avss-robust"], num_layers=plan.fallback_cut).removed
        cuts[plan.fallback_cut] = {"removed": removed, "scorers": ["avss-robust"], "fallback": True}
    onnx = bench_cuts(plan, base, cuts, work, quick)
    secs["onnx"] = time.perf_counter() - t

    tasks = [{"name": x.name, "kind": x.kind, "metric": x.metric, "data": x.data_spec().source,
              "split": x.data_spec().split, "limit": x.limit, "few_shot": getattr(x, "few_shot", None),
              "base": ev.base_values[x.name], "n": ev.n_tasks[x.name],
              "threshold": x.min_retention or profile.gate.min_retention} for x in profile.tasks]
    return {
        "key": plan.key, "name": plan.name, "spec": plan.spec, "num_layers": L,
        "parameters": int(sum(p.numel() for p in base.model.parameters())),
        "classifier": classifier_record(str(model_dir)),
        "profile": {"path": plan.profile, "name": profile.name, "gate": profile.gate.min_retention,
                    "calibration": calib, "tasks": tasks},
        "cuts": list(plan.cuts), "claim_cuts": list(plan.claim_cuts), "max_remove": max_remove,
        "scorers": [{"id": sc.id, "label": sc.label, "group": sc.group, "method": sc.method, "mode": sc.mode,
                     "seed": sc.seed, "objective": sc.objective, "samples": sc.samples,
                     "passes": _passes(get_scorer(sc.method)),
                     "ranking": reports[sc.id].ranking, "warnings": reports[sc.id].warnings} for sc in scorers],
        "grid": grid, "search": search, "speed": {"threads": threads, **speed}, "onnx": onnx,
        "evaluations": {"cuts": len(ev.results), "computed": ev.computed, "cached": ev.cached},
        "verify_warnings": ev.warnings,
        "seconds": {k: round(v, 1) for k, v in secs.items()},
    }


def _passes(scorer: Any) -> str:
    """Passes over the calibration data, as the tables state them."""
    if scorer.multi_pass:
        return "iterative" if in_rounds(scorer) else "L + 1"
    return "1" if scorer.needs_data else "0"


# ----------------------------------------------------------------------------------------- main

def machine() -> dict[str, Any]:
    import psutil

    cpu, info = platform.processor(), Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((l.split(":", 1)[1].strip() for l in info.read_text().splitlines() if l.startswith("model name")), cpu)
    return {"cpu_count": os.cpu_count(), "cpu_count_physical": psutil.cpu_count(logical=False), "cpu": cpu,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: cuts {1, 7} / {1}, fewer scorers and seeds, smaller tasks; default --out out/scorers-quick")
    ap.add_argument("--out", help="folder for RESULTS.md and results/ (default: docs, or out/scorers-quick with --quick)")
    ap.add_argument("--render-only", action="store_true", help="re-render RESULTS.md from OUT/results/results.json")
    ap.add_argument("--minilm", choices=("full", "small"),
                    help="MiniLM classifier: full (10.7k training snippets; default) or small (2,000; default with --quick)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child)
        return
    out = Path(args.out or ("out/scorers-quick" if args.quick else "docs"))
    results_file = out / "results" / "results.json"
    if args.render_only:
        render(json.loads(results_file.read_text(encoding="utf-8")), out)
        log(f"rendered {out / 'RESULTS.md'} from {results_file}")
        return

    from compressor.files import atomic_write_text

    minilm = args.minilm or ("small" if args.quick else "full")
    plans = [SMOLLM2, MINILM if minilm == "full" else replace(MINILM, spec=MINILM.spec + "-small")]
    if args.quick:
        plans = [replace(p, cuts=QUICK_CUTS[p.key], claim_cuts=QUICK_CUTS[p.key][-1:]) for p in plans]
    scorers = [s for s in SCORERS if not args.quick or s.id in QUICK_SCORERS]
    results: dict[str, Any] = {
        "schema_version": 1,
        "command": "python benchmarks/scorers.py" + (" --quick" if args.quick else "")
                   + (f" --minilm {minilm}" if args.minilm else ""),
        "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": revision(),
        "machine": machine(), "versions": library_versions(), "gate": None, "models": [],
    }
    from compressor.sources.cache import cache_dir

    verify_cache = cache_dir() / "verify"
    results["verify_cache_entries_at_start"] = len(list(verify_cache.glob("*.json"))) if verify_cache.is_dir() else 0
    log(f"writing to {out}; models {[p.spec for p in plans]}; scorers {[s.id for s in scorers]}; "
        f"{results['verify_cache_entries_at_start']} results in {verify_cache}")
    with tempfile.TemporaryDirectory(prefix="avss-scorers-") as tmp:
        for plan in plans:
            results["models"].append(measure_model(plan, scorers, args.quick, Path(tmp)))
    results["gate"] = results["models"][0]["profile"]["gate"]
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - START, 1)
    atomic_write_text(results_file, json.dumps(results, indent=2, allow_nan=False) + "\n")
    render(results, out)
    log(f"done in {results['total_seconds'] / 60:.1f} min: {out / 'RESULTS.md'}, {results_file}")


if __name__ == "__main__":
    main()
