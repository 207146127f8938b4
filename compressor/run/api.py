"""``run``: score -> select -> prune -> verify -> export (+ parity) -> bench, into one artifact folder.

The stages are the same library calls the single commands make; this module only orders them,
keys them for resume (``stages.py``) and writes ``run.json``. A failed gate is a result, not an
error: every artifact is still written and ``RunResult.exit_code`` is 1.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from compressor import __version__, library_versions
from compressor.errors import EXIT_GATE_FAILED, EXIT_OK, AvssError, BadInput
from compressor.files import atomic_write_text, replace_dir, staging_dir
from compressor.run.config import RunConfig
from compressor.run.search import STRATEGY, Candidate, SearchResult, save_curve, search_method
from compressor.run.stages import StageStore, key_of

STAGES = ("score", "select", "prune", "verify", "export", "bench")
RUN_FILE = "run.json"
RUN_SCHEMA = 1


class Events(Protocol):
    """What a front end (the CLI's progress display) hears from a run."""

    def start(self, stage: str, label: str) -> Optional[Callable[[int, int], None]]: ...
    def end(self, stage: str, status: str, seconds: float, detail: str) -> None: ...
    def note(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...


class _Silent:
    def start(self, stage: str, label: str) -> None:
        return None

    def end(self, stage: str, status: str, seconds: float, detail: str) -> None:
        pass

    def note(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass


@dataclass
class StageInfo:
    name: str
    status: str  # ran | resumed | skipped
    seconds: float
    detail: str = ""


@dataclass
class RunResult:
    out: str
    config: dict[str, Any]
    stages: list[StageInfo] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    method_label: str = ""
    passed: Optional[bool] = None
    verdict: str = ""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    search: Optional[dict[str, Any]] = None
    parity: Optional[dict[str, Any]] = None
    bench: Optional[dict[str, Any]] = None
    exit_code: int = EXIT_OK
    status: str = "running"
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class _Run:
    def __init__(self, cfg: RunConfig, force: bool, events: Events):
        self.cfg, self.ev = cfg, events
        self.out = Path(cfg.out)
        self.store = StageStore(self.out, force)
        self.result = RunResult(str(self.out), cfg.model_dump(mode="json"))
        self.base: Any = None

    # --- bookkeeping -------------------------------------------------------------------------
    def _stage(self, name: str, key: str, label: str, work: Callable[[Callable | None], tuple[list[str], dict[str, Any], str]]) -> dict[str, Any]:
        """Run ``work`` unless a record with ``key`` exists; returns the stage's result dict."""
        rec = self.store.done(name, key)
        if rec is not None:
            detail = rec.result.get("detail", "")
            self.ev.end(name, "resumed", 0.0, detail)
            self.result.stages.append(StageInfo(name, "resumed", 0.0, detail))
            return rec.result
        t0 = time.perf_counter()
        cb = self.ev.start(name, label)
        outputs, res, detail = work(cb)
        res = {**res, "detail": detail}
        rec = self.store.save(name, key, outputs, t0, res)
        self.ev.end(name, "ran", rec.seconds, detail)
        self.result.stages.append(StageInfo(name, "ran", rec.seconds, detail))
        return res

    def _skip(self, name: str, why: str) -> None:
        self.store.forget(name)
        self.ev.end(name, "skipped", 0.0, why)
        self.result.stages.append(StageInfo(name, "skipped", 0.0, why))

    def write_run_json(self) -> None:
        d = {"schema_version": RUN_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "versions": library_versions(), **self.result.to_dict()}
        atomic_write_text(self.out / RUN_FILE, json.dumps(d, indent=2, allow_nan=False, default=str) + "\n")

    # --- the pipeline ------------------------------------------------------------------------
    def load_base(self) -> None:
        from compressor.sources.models import load_model
        from compressor.verify.api import fingerprint

        c = self.cfg
        self.ev.note(f"loading {c.model} ...")
        self.base = load_model(c.model, device=c.device, dtype=c.dtype, allow_pickle=c.allow_pickle,
                               trust_remote_code=c.trust_remote_code)
        self.base_fp = fingerprint(self.base)
        self.ev.note(f"loaded {self.base.config.model_type} with {self.base.num_layers} layers on "
                     f"{self.base.device} ({self.base.dtype})")

    def score(self, method: str, scores_path: Path, stage_name: str = "score") -> tuple[Any, str]:
        """Score with ``method`` into ``scores_path``; returns (ScoreReport, stage key)."""
        from compressor.score import methods
        from compressor.score.report import ScoreReport

        c = self.cfg
        mode = methods.check_mode(method, c.avss_mode if method == "avss" else None)
        calib = self.profile.calibration.model_dump(mode="json")
        key = key_of("score", self.base_fp, c.device, method, mode, calib, c.seed, __version__)
        rel = str(scores_path.relative_to(self.out))

        def work(cb):
            from compressor.score.api import score_layers
            from compressor.sources.data import CalibrationSpec, load_calibration

            data = None
            if methods.get_scorer(method).needs_data:
                spec = CalibrationSpec(**self.profile.calibration.model_dump())
                data = load_calibration(spec, self.base.tokenizer, self.base.adapter.family)
            report = score_layers(self.base, method, mode=mode, data=data, seed=c.seed, progress=cb)
            for w in report.warnings:
                self.ev.warn(w)
            report.save(scores_path)
            return [rel], {}, f"{report.label}: lowest {report.ranking[:5]}"

        label = f"{method} ({mode})" if mode else method
        self._stage(stage_name, key, f"scoring layers: {label}", work)
        return ScoreReport.load(scores_path), key

    def _prune_to(self, removed: list[int], folder: Path, provenance: dict[str, Any]) -> None:
        from compressor.prune.surgery import prune_model
        from compressor.sources.models import LoadedModel

        clone = LoadedModel(self.base.spec, self.base.path, copy.deepcopy(self.base.model), self.base.tokenizer,
                            self.base.adapter, self.base.device, self.base.dtype)
        res = prune_model(clone, removed, folder, force=True, provenance=provenance)
        for w in res.warnings:
            self.ev.warn(w)
        del clone

    def _load_candidate(self, folder: Path) -> Any:
        from compressor.sources.models import load_model

        return load_model(str(folder), device=self.cfg.device, dtype=self.cfg.dtype)

    def _verify(self, cand: Any, profile: Any, cb_label: str) -> Any:
        from compressor.verify.api import verify

        c = self.cfg

        def progress(name: str):
            return self.ev.start("verify", f"{cb_label}: {name}")

        return verify(self.base, cand, profile, profile_path=c.profile, min_retention=c.min_retention,
                      progress=progress)

    def run_search(self) -> tuple[Any, list[int], str]:
        """Returns (ScoreReport of the chosen scorer, removed layers, score key)."""
        from compressor.prune.select import select_layers

        c = self.cfg
        L = self.base.num_layers
        max_remove = min(c.max_remove or L // 2, L - 1)
        result = SearchResult(STRATEGY, max_remove)
        reports: dict[str, tuple[Any, str]] = {}
        work_dir = self.out / ".search"
        for method in c.methods:
            rep, skey = self.score(method, self.out / "search" / f"scores-{method}.json", f"score-{method}")
            reports[method] = (rep, skey)

            def check(k: int, rep=rep, skey=skey, method=method) -> Candidate:
                removed = select_layers(rep, num_layers=k, protect=c.protect).removed
                key = key_of("candidate", skey, removed, self.profile_hash, c.min_retention, c.dtype)

                def work(cb):
                    folder = work_dir / f"{method}-k{k}"
                    self._prune_to(removed, folder, {"method": rep.method, "mode": rep.mode, "label": rep.label})
                    try:
                        cand = self._check_candidate(method, k, removed, folder)
                    finally:
                        shutil.rmtree(folder, ignore_errors=True)
                    state = "pass" if cand.passed else "FAIL"
                    return [], {"candidate": asdict(cand)}, f"{method} k={k}: {state}, worst retention {cand.worst:.3f}"

                res = self._stage(f"search-{method}-k{k}", key, f"search {method}: {k} layers removed", work)
                return Candidate(**res["candidate"])

            best, cands = search_method(method, check, max_remove)
            result.best[method] = best
            result.candidates += cands
        shutil.rmtree(work_dir, ignore_errors=True)
        chosen = result.chosen
        if chosen is None:
            chosen = result.fallback()
            self.ev.warn(f"no cut passes the gate with any scorer (largest tried: {max_remove} layers); the "
                         f"artifacts are for the least bad one-layer cut ({chosen.method}, layer {chosen.removed})")
        self.result.search = result.to_dict()
        atomic_write_text(self.out / "search.json", json.dumps(self.result.search, indent=2, allow_nan=False) + "\n")
        save_curve(result, self.out / "search.png", f"{c.model}: retention vs layers removed ({self.profile.name})")
        self.search_result = result
        rep, skey = reports[chosen.method]
        shutil.copy2(self.out / "search" / f"scores-{chosen.method}.json", self.out / "scores.json")
        return rep, chosen.removed, skey

    def _check_candidate(self, method: str, k: int, removed: list[int], folder: Path) -> Candidate:
        """Tasks one at a time in profile order; with ``aggregate: all`` stop at the first failure."""
        prof = self.profile
        rets: dict[str, float] = {}
        thr: dict[str, float] = {}
        passed, complete = True, True
        cand = self._load_candidate(folder)  # once per candidate, not once per task
        for i, task in enumerate(prof.tasks):
            sub = prof.model_copy(update={"tasks": [task]})
            rep = self._verify(cand, sub, f"search {method} k={k}")
            t = rep.tasks[0]
            rets[t.name], thr[t.name] = t.gated_value, t.threshold
            if not t.passed and prof.gate.aggregate == "all":
                passed = False
                complete = i == len(prof.tasks) - 1
                break
        if prof.gate.aggregate == "mean":
            floor = self.cfg.min_retention or prof.gate.min_retention
            passed = sum(rets.values()) / len(rets) >= floor
        return Candidate(method, k, removed, passed, complete, rets, thr)

    def run(self) -> RunResult:
        from compressor.profiles import load_profile
        from compressor.prune.select import select_layers
        from compressor.score.report import save_plot

        c = self.cfg
        self.profile = load_profile(c.profile)  # bad input fails before anything is written
        self.profile_hash = _file_hash(c.profile)
        from compressor.score import methods

        for m in (c.methods if c.search else [c.method]):
            methods.get_scorer(m)
            methods.check_mode(m, c.avss_mode if m == "avss" else None)
        self.load_base()
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.store.clean_stale():
            self.ev.note(f"removed {stale}, left by an interrupted run")
        if c.search:
            report, removed, skey = self.run_search()
        else:
            report, skey = self.score(c.method, self.out / "scores.json")
            removed = select_layers(report, ratio=c.ratio, num_layers=c.num_layers, protect=c.protect).removed
        label = report.label
        self.result.removed, self.result.method_label = removed, label
        select_key = key_of("select", skey, removed)

        def select_work(cb):
            save_plot(report, set(removed), self.out / "scores.png")
            return ["scores.png"], {"removed": removed}, f"remove {len(removed)} of {report.num_layers}: {removed}"

        self._stage("select", select_key, "selecting layers", select_work)
        if len(removed) > report.num_layers // 2:
            self.ev.warn(f"this removes {len(removed)} of {report.num_layers} layers, more than half of the model")

        prune_key = key_of("prune", select_key)

        def prune_work(cb):
            prov = {"method": report.method, "mode": report.mode, "label": label, "ranking": report.ranking,
                    "scores": [{"index": l.index, "score": l.score} for l in report.layers],
                    "calibration": report.calibration, "run": c.model_dump(mode="json")}
            self._prune_to(removed, self.out / "model", prov)
            return ["model"], {}, f"{report.num_layers} -> {report.num_layers - len(removed)} layers"

        self._stage("prune", prune_key, "pruning", prune_work)

        verify_key = key_of("verify", prune_key, self.profile_hash, c.min_retention, c.device, c.dtype, __version__)

        def verify_work(cb):
            from compressor.verify.report import write_reports

            rep = self._verify(self._load_candidate(self.out / "model"), self.profile, "verify")
            write_reports(rep, self.out)
            if c.search:
                from compressor.run.search import to_markdown

                md = self.out / "report.md"
                atomic_write_text(md, md.read_text(encoding="utf-8") + to_markdown(self.search_result)
                                  + "\n![retention against layers removed](search.png)\n")
            res = {"passed": rep.passed, "verdict": rep.verdict_line(),
                   "tasks": [{"name": t.name, "metric": t.metric, "base": t.base, "candidate": t.candidate,
                              "retention": t.retention, "threshold": t.threshold, "passed": t.passed}
                             for t in rep.tasks]}
            return ["report.json", "report.md", "junit.xml"], res, rep.verdict_line()

        vres = self._stage("verify", verify_key, "verifying", verify_work)
        self.result.passed, self.result.verdict, self.result.tasks = vres["passed"], vres["verdict"], vres["tasks"]

        export_opts = (c.opset, c.device, "fp32")
        slim_export_key = key_of("export", prune_key, *export_opts, __version__)
        base_export_key = key_of("export-base", self.base_fp, *export_opts, __version__)
        if c.skip_export:
            self._skip("export", "--skip-export")
            self._skip("bench", "--skip-export (bench needs the ONNX models)")
        else:
            def export_work(cb):
                from export.convert import export_model

                res = export_model(str(self.out / "model"), self.out / "onnx", opset=c.opset, device=c.device,
                                   force=True)
                outs, info = ["onnx"], {"parity": res.parity.to_dict()}
                if not c.skip_bench:
                    base_rec = self.store.done("export-base", base_export_key)
                    if base_rec is None or not (self.out / "onnx-base").exists():
                        t0 = time.perf_counter()
                        # the in-memory base is reused when it is already fp32 (else reload it as fp32)
                        src = self.base if self.base.dtype == "float32" else c.model
                        b = export_model(src, self.out / "onnx-base", opset=c.opset, device=c.device, force=True,
                                         allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
                        self.store.save("export-base", base_export_key, ["onnx-base"], t0,
                                        {"parity": b.parity.to_dict()})
                    outs.append("onnx-base")
                p = res.parity
                return outs, info, f"parity {'pass' if p.passed else 'FAIL'}, max abs diff {p.max_abs_diff:.1e}"

            eres = self._stage("export", key_of(slim_export_key, base_export_key if not c.skip_bench else None),
                               "exporting to ONNX (+ parity check)", export_work)
            self.result.parity = eres.get("parity")
            if c.skip_bench:
                self._skip("bench", "--skip-bench")
            else:
                bench_key = key_of("bench", slim_export_key, base_export_key, c.provider, c.bench.model_dump())

                def bench_work(cb):
                    from export.bench import BenchOptions, bench_models, save_plot as bench_plot, write_json

                    opts = BenchOptions(provider=c.provider, batch_size=c.bench.batch_size,
                                        prompt_len=c.bench.prompt_len, new_tokens=c.bench.new_tokens,
                                        warmup=c.bench.warmup, runs=c.bench.runs, rounds=c.bench.rounds,
                                        threads=c.bench.threads)
                    rep = bench_models([str(self.out / "onnx-base"), str(self.out / "onnx")], opts,
                                       progress=self.ev.note)
                    write_json(rep, self.out / "bench.json")
                    bench_plot(rep, self.out / "bench.png")
                    d = rep.to_dict()
                    r = (d.get("ratios") or [{}])[0]
                    detail = f"provider {d['provider']}"
                    if r.get("decode_ratio") is not None:
                        detail += (f", decode {r['decode_ratio']:.2f}x of full (ideal {r['layer_ratio']:.2f})")
                    return ["bench.json", "bench.png"], {"bench": d}, detail

                bres = self._stage("bench", bench_key, "benchmarking full vs slim (ONNX Runtime)", bench_work)
                self.result.bench = bres.get("bench")
        self.result.exit_code = EXIT_OK if self.result.passed else EXIT_GATE_FAILED
        self.result.status = "passed" if self.result.passed else "gate failed"
        return self.result


def run_pipeline(cfg: RunConfig, *, force: bool = False, events: Optional[Events] = None) -> RunResult:
    """Run every stage into ``cfg.out``; ``run.json`` is written however the run ends."""
    r = _Run(cfg, force, events or _Silent())
    try:
        return r.run()
    except KeyboardInterrupt:
        r.result.status, r.result.exit_code, r.result.error = "interrupted", 130, "interrupted"
        raise
    except AvssError as exc:
        r.result.status, r.result.exit_code, r.result.error = "error", exc.exit_code, exc.line()
        raise
    except Exception as exc:
        r.result.status, r.result.exit_code, r.result.error = "error", 3, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if r.out.is_dir():
            r.write_run_json()
