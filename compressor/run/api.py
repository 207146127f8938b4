"""``run``: score -> select -> prune -> verify -> export (+ parity) -> bench, into one artifact folder.

The stages are the same library calls the single commands make; this module declares each one
(its inputs, its outputs, its work: ``stages.py`` derives the resume key from the inputs' content),
orders them and writes ``run.json``. A failed gate is a result, not an
error: every artifact is still written and ``RunResult.exit_code`` is 1.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from compressor import library_versions
from compressor.errors import EXIT_GATE_FAILED, EXIT_OK, AvssError, BadInput, Terminated, error_line_for, exit_code_for
from compressor.files import atomic_write_text
from compressor.run.config import RunConfig
from compressor.run.search import STRATEGY, Candidate, SearchResult, save_curve, search_method
from compressor.run.stages import Data, Files, Input, Model, Setting, Stage, StageStore, Stale, input_digests, stage_key

RUN_FILE = "run.json"
RUN_SCHEMA = 1
# every top-level entry a run writes (a test checks it against a real run): the only names whose
# leftovers a run cleans, so a file of the user's is never touched
RUN_ENTRIES = (RUN_FILE, "scores.json", "scores.png", "search.json", "search.png", "search", ".search", "model",
               "cut", "report.json", "report.md", "junit.xml", "onnx", "onnx-base", "onnx-int8", "onnx-int8-weights",
               "onnx-int4", "onnx-base-genai",
               "reports", "bench.json", "bench.png")
RUN_FOLDERS = ("search", "reports")  # folders of our own whose hidden leftovers are cleaned too
RUN_SCRATCH = (".search",)  # removed whole when a run starts (search candidates are cut there)


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
    repair: Optional[dict[str, Any]] = None
    parity: Optional[dict[str, Any]] = None
    exporter: str = ""  # which exporter wrote onnx/ (and the quantized artifact): optimum or genai
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # the gate per shipped artifact
    bench: Optional[dict[str, Any]] = None
    exit_code: int = EXIT_OK
    status: str = "running"
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Run:
    def __init__(self, cfg: RunConfig, force: bool, events: Events):
        self.cfg, self.ev = cfg, events
        self.out = Path(cfg.out)
        self.store = StageStore(self.out, force)
        self.result = RunResult(str(self.out), cfg.model_dump(mode="json"))
        self.base: Any = None
        self.search_result: SearchResult | None = None

    # --- the one stage runner ----------------------------------------------------------------
    def run_stage(self, stage: Stage) -> dict[str, Any]:
        """Resume ``stage`` if its content key and its outputs are unchanged, else run it."""
        digests = input_digests(stage)
        key = stage_key(stage.name, digests)
        rec = self.store.done(stage.name, key)
        why = ""
        if rec is not None:
            try:
                result = stage.recheck(rec.result) if stage.recheck else rec.result
            except Stale as exc:
                why = str(exc)
            else:
                detail = result.get("detail", "")
                self.ev.end(stage.name, "resumed", 0.0, detail)
                self.result.stages.append(StageInfo(stage.name, "resumed", 0.0, detail))
                return result
        why = why or self.store.why_rerun(stage.name, key, digests)
        if why:
            self.ev.note(f"{stage.name}: running again ({why})")
        t0 = time.perf_counter()
        res, detail = stage.work(self.ev.start(stage.name, stage.label))
        res = {**res, "detail": detail}
        rec = self.store.save(stage, key, digests, t0, res)
        self.ev.end(stage.name, "ran", rec.seconds, detail)
        self.result.stages.append(StageInfo(stage.name, "ran", rec.seconds, detail))
        return res

    def _skip(self, name: str, why: str) -> None:
        self.store.forget(name)
        self.ev.end(name, "skipped", 0.0, why)
        self.result.stages.append(StageInfo(name, "skipped", 0.0, why))

    def write_run_json(self) -> None:
        d = {"schema_version": RUN_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "versions": library_versions(), **self.result.to_dict()}
        atomic_write_text(self.out / RUN_FILE, json.dumps(d, indent=2, allow_nan=False, default=str) + "\n")

    # --- inputs shared by several stages -----------------------------------------------------
    def prepare(self) -> None:
        """Everything that can be checked without a model is checked here, before any stage runs."""
        from compressor.profiles import load_profile
        from compressor.score import methods
        from compressor.sources.cache import check_cache
        from compressor.sources.data import read_documents
        from compressor.verify.api import task_data_digest

        c = self.cfg
        if self.store.check():  # an existing run folder: lock it now, so a second run stops at once
            self.claim()
        check_cache()  # verify's results are cached: an unusable $AVSS_CACHE fails now, not after pruning
        if not c.skip_export:
            from compressor.export.convert import check_opset

            check_opset(c.opset)
        self.profile = load_profile(c.profile)
        target = self.profile.gate.target
        if target in ("onnx", "quantized") and c.skip_export:
            raise BadInput(f"profile {self.profile.name!r} gates the {target} artifact (gate.target: {target}), but "
                           "--skip-export writes none", "drop --skip-export, or set gate.target: pytorch")
        if target == "quantized" and not c.quantize:
            raise BadInput(f"profile {self.profile.name!r} gates the quantized artifact (gate.target: quantized)",
                           "pass --quantize int8 (or int4), or set gate.target: all")
        used = c.search_methods if c.search else [c.method]
        for m in used:
            methods.get_scorer(m)
            methods.check_mode(m, c.avss_mode if methods.get_scorer(m).modes else None)
        if c.objective is not None and not set(methods.option_scorers("objective")) & set(used):
            raise BadInput(f"--objective only applies to --method {methods.names_text(methods.option_scorers('objective'))} "
                           "(none of this run's scorers)", "drop --objective")
        if c.last_state is not None and not set(methods.last_state_scorers()) & set(used):
            raise BadInput(f"--last-state only applies to {methods.names_text(methods.last_state_scorers())} (none of this "
                           "run's scorers)", "drop --last-state")
        cal = self.profile.calibration
        self.calibration = Data(lambda: read_documents(cal.source, cal.text_field, "calibration"))
        self.repair = c.repair_settings()
        self.protect = c.protect
        self.task_data = Data(lambda: task_data_digest(self.profile))
        self.task_data.digest()  # a missing or malformed task file fails now, not after pruning
        self.calibration.digest()  # and so does a missing calibration file
        # settings by value, data by content: file paths are left out (a moved checkout still resumes),
        # what they point at is in the ``tasks`` and ``calibration_data`` digests
        gate = self.profile.model_dump(mode="json", exclude={"calibration", "description"})
        for t in gate["tasks"]:
            t.pop("data", None)
        self.calibration_settings = Setting(self.profile.calibration.model_dump(mode="json", exclude={"source"}))
        self.gate_inputs: dict[str, Input] = {
            "profile": Setting(gate), "tasks": self.task_data, "calibration_data": self.calibration,
            "min_retention": Setting(c.min_retention), "load": Setting({"device": c.device, "dtype": c.dtype})}

    def load_base(self) -> None:
        from compressor.sources.models import load_model

        c = self.cfg
        self.ev.note(f"loading {c.model} ...")
        self.base = load_model(c.model, device=c.device, dtype=c.dtype, allow_pickle=c.allow_pickle,
                               trust_remote_code=c.trust_remote_code)
        self.ev.note(f"loaded {self.base.config.model_type} with {self.base.num_layers} layers on "
                     f"{self.base.device} ({self.base.dtype})")
        if self.repair.method != "none":
            from compressor.repair.api import check_repair, protect_for

            check_repair(self.repair, self.base.adapter)  # refused before any stage runs
            self.protect = protect_for(self.repair, c.protect)
            if self.protect != c.protect:
                self.ev.note(f"--repair {self.repair.method} keeps layer 0 (the patch folds into the block before "
                             f"each removed span): protecting {self.protect}")

    def check_model_settings(self) -> None:
        """What needs the model's config but no compute: checked before any stage runs."""
        from compressor.files import check_free_space
        from compressor.prune.select import parse_protect

        c = self.cfg
        parse_protect(self.protect, self.base.num_layers)  # also a --protect from --config
        if c.exporter == "genai" and not c.skip_export:  # an architecture the builder cannot build: now
            from compressor.export.genai import builder_version, check_supported

            builder_version()
            check_supported(self.base.config, self.base.adapter.family, c.quantize)
        if c.search:
            self.search_limits()
        if not (c.skip_export or c.skip_bench):
            from compressor.export.bench import check_positions

            check_positions(c.bench.prompt_len, c.bench.new_tokens, self.base.config,
                            self.base.adapter.family == "decoder", "--bench-prompt-len")
        check_free_space(self.out, self.disk_need(), f"the artifacts of this run ({self.cfg.out})")

    def disk_need(self) -> int:
        """About how many bytes the run writes (full-size bounds): a checkpoint per model/, cut/ and search
        candidate, an export per ONNX folder, and a quantized copy (under half the fp32 graph)."""
        from compressor.export.convert import export_bytes

        c, b = self.cfg, self.base
        need = b.weight_bytes * (1 + (self.repair.method != "none") + c.search)
        if not c.skip_export:
            need += export_bytes(b.num_parameters) * (1 + (not c.skip_bench)) + 2 * b.num_parameters * bool(c.quantize)
        return need

    def claim(self) -> None:
        """Lock the run folder and clean its leftovers (``run.json`` is left alone until stages start)."""
        if getattr(self, "claimed", False):
            return
        for line in self.store.claim(RUN_ENTRIES, RUN_FOLDERS, RUN_SCRATCH):
            self.ev.note(line)
        self.claimed = True

    # --- stage declarations ------------------------------------------------------------------
    def score_stage(self, method: str, scores_path: Path, name: str = "score") -> Stage:
        from compressor.score import methods

        c = self.cfg
        mode = methods.check_mode(method, c.avss_mode if methods.get_scorer(method).modes else None)
        needs_data = methods.get_scorer(method).needs_data
        rel = scores_path.relative_to(self.out).as_posix()

        def work(cb):
            from compressor.score.api import score_layers
            from compressor.sources.data import CalibrationSpec, load_calibration

            data = None
            if needs_data:
                spec = CalibrationSpec(**self.profile.calibration.model_dump())
                data = load_calibration(spec, self.base.tokenizer, self.base.adapter.family)
            report = score_layers(self.base, method, mode=mode, data=data, seed=c.seed, progress=cb, **opts)
            for w in report.warnings:
                self.ev.warn(w)
            report.save(scores_path)
            return {}, f"{report.label}: lowest {report.ranking[:5]}"

        opts = self.scorer_options(method)
        inputs: dict[str, Input] = {"model": Model(self.base), "method": Setting([method, mode, c.seed]),
                                    "device": Setting(c.device), "options": Setting(opts)}
        if needs_data:
            inputs.update(calibration=self.calibration_settings,
                          calibration_data=self.calibration)
        label = f"{method} ({mode})" if mode else method
        return Stage(name, f"scoring layers: {label}", inputs, (rel,), work)

    def scorer_options(self, method: str) -> dict[str, Any]:
        """A scorer's own settings (part of its stage key): SLEB's loss, protection and rounds (as many as
        this run's cut, or its search, needs); the last-state convention of the stream scorers."""
        from compressor.prune.select import count_for_ratio, parse_protect
        from compressor.score import methods

        c, L = self.cfg, self.base.num_layers
        scorer = methods.get_scorer(method)
        rounds = 0
        if "max_remove" in scorer.own_options:  # as many rounds as this run's cut, or its search, needs
            rounds = self.search_limits() if c.search else (c.num_layers or count_for_ratio(c.ratio or 0.25, L))
        return scorer.run_options(last_state=c.last_state, objective=c.objective,
                                  protect=parse_protect(self.protect, L), rounds=rounds)

    def score(self, method: str, scores_path: Path, name: str = "score") -> Any:
        from compressor.score.report import ScoreReport

        self.run_stage(self.score_stage(method, scores_path, name))
        return ScoreReport.load(scores_path)

    def repair_inputs(self) -> dict[str, Input]:
        """What a repaired cut depends on besides the base and the cut (nothing without a repair)."""
        if self.repair.method == "none":
            return {"repair": Setting("none")}
        return {"repair": Setting(self.repair.to_dict()), "calibration": self.calibration_settings,
                "calibration_data": self.calibration}

    def _calibration_batches(self) -> Any:
        from compressor.sources.data import CalibrationSpec, load_calibration

        if getattr(self, "_calib", None) is None:
            spec = CalibrationSpec(**self.profile.calibration.model_dump())
            self._calib = load_calibration(spec, self.base.tokenizer, self.base.adapter.family)
        return self._calib

    def _prune_to(self, removed: list[int], folder: Path, provenance: dict[str, Any], repaired: bool = False,
                  label: str = "repair") -> None:
        """Cut ``removed`` into ``folder``; with ``repaired`` also apply the run's repair (base untouched)."""
        from compressor.prune.surgery import prune_model
        from compressor.repair.api import prune_and_repair
        from compressor.sources.models import LoadedModel

        if repaired and self.repair.method != "none":
            def progress(step: str, done: int, total: int, loss: float | None) -> None:
                cb = self._repair_bars.get(step)
                if cb is None:
                    cb = self._repair_bars[step] = self.ev.start(label, f"{step}")
                if cb:
                    cb(done, total)
                if loss is not None and (done % 10 == 0 or done == total):
                    self.ev.note(f"{label}: {step} step {done}/{total}, loss {loss:.4f}")

            self._repair_bars: dict[str, Any] = {}
            res = prune_and_repair(self.base, removed, folder, self.repair, self._calibration_batches(), force=True,
                                   provenance=provenance, progress=progress)
        else:
            clone = LoadedModel(self.base.spec, self.base.path, copy.deepcopy(self.base.model), self.base.tokenizer,
                                self.base.adapter, self.base.device, self.base.dtype)
            res = prune_model(clone, removed, folder, force=True, provenance=provenance)
            del clone
        for w in res.warnings:
            self.ev.warn(w)
        self.last_repair = res.repair

    def _load_candidate(self, folder: Path) -> Any:
        from compressor.sources.models import load_model

        return load_model(str(folder), device=self.cfg.device, dtype=self.cfg.dtype)

    def _verify(self, cand: Any, label: str, stop_at_failure: bool = False) -> Any:
        from compressor.verify.api import verify

        def progress(name: str):
            return self.ev.start("verify", f"{label}: {name}")

        return verify(self.base, cand, self.profile, profile_path=self.cfg.profile,
                      min_retention=self.cfg.min_retention, progress=progress, stop_at_failure=stop_at_failure)

    def candidate_stage(self, method: str, k: int, removed: list[int], rep: Any) -> Stage:
        """One ``--search`` candidate: cut, verify (stop at the first failing task), discard the cut."""

        def work(cb):
            folder = self.out / ".search" / f"{method}-k{k}"
            self._prune_to(removed, folder, {"method": rep.method, "mode": rep.mode, "label": rep.label},
                           repaired=True, label="search")
            try:
                v = self._verify(self._load_candidate(folder), f"search {method} k={k}", stop_at_failure=True)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            gated = [t for t in v.tasks if t.verdict_value is not None]
            cand = Candidate(method, k, removed, v.passed, v.complete, {t.name: t.verdict_value for t in gated},
                             {t.name: t.threshold for t in gated})
            state = "pass" if cand.passed else "FAIL"
            return {"candidate": asdict(cand)}, f"{method} k={k}: {state}, worst retention {cand.worst:.3f}"

        inputs: dict[str, Input] = {"base": Model(self.base), "removed": Setting(removed), **self.gate_inputs,
                                    **self.repair_inputs()}
        return Stage(f"search-{method}-k{k}", f"search {method}: {k} layers removed", inputs, (), work)

    def search_limits(self) -> int:
        """The largest cut ``--search`` may try, checked against --protect before anything runs."""
        from compressor.prune.select import parse_protect

        c, L = self.cfg, self.base.num_layers
        removable = L - len(parse_protect(self.protect, L))
        limit = min(L - 1, removable)
        if limit < 1:
            raise BadInput(f"--search has no layer to remove: the model has {L} layer(s) and --protect {self.protect} "
                           f"keeps {L - removable}", "protect fewer layers (--protect none), or use a deeper model")
        if c.max_remove is not None and c.max_remove > limit:
            raise BadInput(f"--max-remove {c.max_remove} is more than the {limit} layer(s) this {L}-layer model can "
                           f"lose with --protect {self.protect}", f"pass --max-remove {limit} or less, or protect fewer")
        return c.max_remove or max(1, min(L // 2, limit))

    def run_search(self) -> tuple[Any, list[int]]:
        """Returns (ScoreReport of the chosen scorer, removed layers)."""
        from compressor.prune.select import parse_protect, select_layers
        from compressor.score import methods

        c = self.cfg
        max_remove = self.search_limits()
        result = SearchResult(STRATEGY, max_remove)
        reports: dict[str, Any] = {}
        prot = parse_protect(self.protect, self.base.num_layers)
        seen: dict[tuple[int, ...], Candidate] = {}
        for method in c.search_methods:
            scores_path = self.out / "search" / f"scores-{method}.json"
            rep = reports[method] = self.score(method, scores_path, f"score-{method}")
            nested = methods.get_scorer(method).nested_cuts
            limit = max_remove if nested else min(max_remove, longest_free_run(self.base.num_layers, prot))

            def check(k: int, rep=rep, method=method) -> Candidate:
                removed = select_layers(rep, num_layers=k, protect=self.protect).removed
                hit = seen.get(tuple(sorted(removed)))
                if hit is not None:  # the verdict depends on the cut, not on which scorer proposed it
                    self.ev.note(f"search {method} k={k}: the same cut as {hit.method} k={hit.k}; its verdict is "
                                 "reused (no second cut, repair and verify)")
                    return dataclasses.replace(hit, method=method, k=k)
                res = self.run_stage(self.candidate_stage(method, k, removed, rep))
                seen[tuple(sorted(removed))] = cand = Candidate(**res["candidate"])
                return cand

            best, cands = search_method(method, check, limit, nested=nested)
            result.best[method] = best
            result.candidates += cands
        shutil.rmtree(self.out / ".search", ignore_errors=True)
        chosen = result.chosen
        if chosen is None:
            chosen = result.fallback()
            self.ev.warn(f"no cut passes the gate with any scorer (largest tried: {max_remove} layers); the "
                         f"artifacts are for the least bad one-layer cut ({chosen.method}, layer {chosen.removed})")
        self.result.search = result.to_dict()
        atomic_write_text(self.out / "search.json", json.dumps(self.result.search, indent=2, allow_nan=False) + "\n")
        save_curve(result, self.out / "search.png", f"{c.model}: retention vs layers removed ({self.profile.name})")
        self.search_result = result
        shutil.copy2(self.out / "search" / f"scores-{chosen.method}.json", self.out / "scores.json")
        return reports[chosen.method], chosen.removed

    def select_stage(self, report: Any, removed: list[int]) -> Stage:
        from compressor.score.report import save_plot

        def work(cb):
            save_plot(report, set(removed), self.out / "scores.png")
            return {"removed": removed}, f"remove {len(removed)} of {report.num_layers}: {removed}"

        return Stage("select", "selecting layers", {"scores": Setting(_score_content(report)),
                                                    "removed": Setting(removed)}, ("scores.png",), work)

    def _provenance(self, report: Any) -> dict[str, Any]:
        c = self.cfg
        return {"method": report.method, "mode": report.mode, "label": report.label,
                "run": {"model": c.model, "protect": self.protect, "device": c.device, "dtype": c.dtype,
                        "search": c.search}}

    def _cut_stage(self, name: str, label: str, report: Any, removed: list[int], dest: str, repaired: bool) -> Stage:
        """prune (the plain cut) and repair (cut + repair) write the same kind of checkpoint."""
        prov = self._provenance(report)

        def work(cb):
            full = {**prov, "ranking": report.ranking, "calibration": report.calibration,
                    "scores": [{"index": l.index, "score": l.score} for l in report.layers]}
            self._prune_to(removed, self.out / dest, full, repaired=repaired)
            detail = f"{report.num_layers} -> {report.num_layers - len(removed)} layers ({dest}/)"
            if not repaired:
                return {}, detail
            rec = self.last_repair or {}
            from compressor.repair.api import describe

            return {"repair": rec}, f"{describe(rec)} ({dest}/)"

        inputs: dict[str, Input] = {"base": Model(self.base), "removed": Setting(removed),
                                    "scores": Setting(_score_content(report)), "provenance": Setting(prov)}
        if repaired:
            inputs.update(self.repair_inputs())
        return Stage(name, label, inputs, (dest,), work)

    def prune_stage(self, report: Any, removed: list[int]) -> Stage:
        # with a repair, the plain cut is kept beside the repaired model/ for comparison
        dest = "model" if self.repair.method == "none" else "cut"
        return self._cut_stage("prune", "pruning", report, removed, dest, repaired=False)

    def repair_stage(self, report: Any, removed: list[int]) -> Stage:
        return self._cut_stage("repair", f"repairing the cut: {self.repair.method}", report, removed, "model",
                               repaired=True)

    def verify_stage(self) -> Stage:
        from compressor.run.search import to_markdown

        search_md = to_markdown(self.search_result) if self.search_result is not None else None

        def work(cb):
            from compressor.verify.report import write_reports

            rep = self._verify(self._load_candidate(self.out / "model"), "verify")
            write_reports(rep, self.out)
            if search_md is not None:
                md = self.out / "report.md"
                atomic_write_text(md, md.read_text(encoding="utf-8") + search_md
                                  + "\n![retention against layers removed](search.png)\n")
            return verdict_result(rep), rep.verdict_line()

        inputs: dict[str, Input] = {"base": Model(self.base), "candidate": Files(self.out / "model"),
                                    "search": Setting(search_md), **self.gate_inputs}
        return Stage("verify", "verifying", inputs, ("report.json", "report.md", "junit.xml"), work,
                     recheck=rejudge(self.out / "report.json"))

    def export_stage(self, name: str, dest: str, source: Input) -> Stage:
        c = self.cfg
        if c.exporter == "genai" and name != "export-base":  # export-base stays Optimum fp32: the bench reference
            return self.genai_stage(name, dest, None if name == "export" else c.quantize)

        def work(cb):
            from compressor.export.convert import export_model

            if name == "export":
                src: Any = str(self.out / "model")
            else:  # the in-memory base is reused when it is already fp32 (else reload it as fp32)
                src = self.base if self.base.dtype == "float32" else c.model
            res = export_model(src, self.out / dest, opset=c.opset, device=c.device, force=True,
                               allow_pickle=c.allow_pickle, trust_remote_code=c.trust_remote_code)
            p = res.parity
            return {"parity": p.to_dict()}, f"parity {'pass' if p.passed else 'FAIL'}, max abs diff {p.max_abs_diff:.1e}"

        inputs: dict[str, Input] = {"model": source, "opset": Setting(c.opset), "device": Setting(c.device)}
        what = "the slim model" if name == "export" else "the full model (bench reference)"
        return Stage(name, f"exporting {what} to ONNX (+ parity check)", inputs, (dest,), work)

    def genai_stage(self, name: str, dest: str, quantize: Optional[str]) -> Stage:
        """The Model Builder's graph of the slim model (``export``: fp32, parity-checked; ``quantize``: int4 or
        int8-weights)
        or of the full model (``export-base-genai``: at the precision of what ships, for the bench)."""
        c = self.cfg
        src = self.out / "model" if name != "export-base-genai" else Path(self.base.path)

        def work(cb):
            from compressor.export.genai import export_genai

            rec = export_genai(str(src), self.out / dest, quantize=quantize, force=True, allow_pickle=c.allow_pickle,
                               trust_remote_code=c.trust_remote_code)
            p = rec["parity"]
            if p is None:
                checks = ", ".join(f"{x['name']} {'pass' if x['passed'] else 'FAIL'}" for x in rec["structural_checks"])
                return {"parity": None, "quantization": rec["quantization"]}, f"genai {quantize}: {checks} ({dest}/)"
            return {"parity": p}, f"genai: parity {'pass' if p['passed'] else 'FAIL'}, max abs diff {p['max_abs_diff']:.1e}"

        source: Input = Files(src) if name != "export-base-genai" else Model(self.base)
        inputs: dict[str, Input] = {"model": source, "exporter": Setting("genai"), "quantize": Setting(quantize)}
        what = "the full model (bench reference)" if name == "export-base-genai" else "the slim model"
        return Stage(name, f"building {what} with ONNX Runtime GenAI ({quantize or 'fp32'})", inputs, (dest,), work)

    def quantize_stage(self, dest: str) -> Stage:
        from compressor.export.quantize import settings

        c = self.cfg
        if c.exporter == "genai":
            return self.genai_stage("quantize", dest, c.quantize)

        def work(cb):
            from compressor.export.quantize import quantize_export

            rec = quantize_export(self.out / "onnx", self.out / dest, c.quantize, force=True, provider=c.provider)
            mb = sum(v for k, v in rec["files"].items() if k.startswith("model.onnx")) / 2**20
            return {"quantization": rec["quantization"]}, f"{c.quantize}: {mb:.1f} MB ({dest}/)"

        inputs: dict[str, Input] = {"onnx": Files(self.out / "onnx"), "quantize": Setting(settings(c.quantize)),
                                    "provider": Setting(c.provider)}
        return Stage("quantize", f"quantizing the ONNX export ({c.quantize})", inputs, (dest,), work)

    def artifact_verify_stage(self, dest: str, kind: str) -> Stage:
        """Gate an ONNX artifact as it ships (in ONNX Runtime): against the full model, and compared
        with the PyTorch slim checkpoint it was exported from (both evaluations from the verify cache)."""
        c = self.cfg
        reports = f"reports/{dest}"

        def work(cb):
            from compressor.export.ort_model import load_onnx_model
            from compressor.verify.api import verify
            from compressor.verify.report import fmt_agreement, write_reports

            art = load_onnx_model(str(self.out / dest), provider=c.provider)
            rep = self._verify(art, f"verify {dest}")
            write_reports(rep, self.out / reports)
            vs = {}
            md = [f"#### {dest}/ against the PyTorch slim model it was exported from (`model/`)", "",
                  "| task | metric | PyTorch slim | this artifact | retention | agreement |", "|---|---|---|---|---|---|"]
            try:  # how far the artifact is from what it was exported from (both sides from the verify cache)
                slim = self._load_candidate(self.out / "model")
                for t in verify(slim, art, self.profile, min_retention=c.min_retention).tasks:
                    vs[t.name] = {"retention": t.retention, "agreement": t.agreement}
                    md.append(f"| {t.name} | {t.metric} | {t.base:.4g} | {_num(t.candidate)} | "
                              f"{'n/a' if t.retention is None else f'{t.retention:.3f}'} | {fmt_agreement(t.agreement)} |")
            except AvssError as exc:  # e.g. the slim model scores 0 on a task: no ratio to report
                self.ev.warn(f"{dest}: no comparison with the PyTorch slim model ({exc.problem})")
                md.append(f"| (no comparison: {exc.problem}) | | | | | |")
            report_md = self.out / reports / "report.md"
            atomic_write_text(report_md, report_md.read_text(encoding="utf-8") + "\n" + "\n".join(md) + "\n")
            res = verdict_result(rep)
            for t in res["tasks"]:
                t["vs_slim"] = vs.get(t["name"])
            return {"artifact": dest, "kind": kind, **res, "runtime": art.device}, f"{dest}: {rep.verdict_line()}"

        inputs: dict[str, Input] = {"base": Model(self.base), "artifact": Files(self.out / dest),
                                    "slim": Files(self.out / "model"), "provider": Setting(c.provider),
                                    **self.gate_inputs}
        return Stage(f"verify-{dest}", f"verifying {dest}/ in ONNX Runtime", inputs, (reports,), work,
                     recheck=rejudge(self.out / reports / "report.json"))

    def bench_stage(self) -> Stage:
        c = self.cfg

        def work(cb):
            from compressor.export.bench import BenchOptions, bench_models, write_json
            from compressor.export.bench import save_plot as bench_plot

            opts = BenchOptions(provider=c.provider, batch_size=c.bench.batch_size, prompt_len=c.bench.prompt_len,
                                new_tokens=c.bench.new_tokens, warmup=c.bench.warmup, runs=c.bench.runs,
                                rounds=c.bench.rounds, threads=c.bench.threads)
            rep = bench_models([str(self.out / d) for d in folders], opts, progress=self.ev.note)
            write_json(rep, self.out / "bench.json")
            bench_plot(rep, self.out / "bench.png")
            d = rep.to_dict()
            r = (d.get("ratios") or [{}])[0]
            detail = f"provider {d['provider']}"
            if r.get("decode_ratio") is not None:
                detail += f", decode {r['decode_ratio']:.2f}x of full (ideal {r['layer_ratio']:.2f})"
            return {"bench": d}, detail

        folders = ["onnx-base", "onnx"] + ([f"onnx-{c.quantize}"] if c.quantize else [])
        if c.exporter == "genai":  # the full model through the same exporter and precision as what ships
            folders.append("onnx-base-genai")
        inputs: dict[str, Input] = {f"model-{i}": Files(self.out / d) for i, d in enumerate(folders)}
        inputs.update(provider=Setting(c.provider), bench=Setting(c.bench.model_dump(mode="json")))
        what = "full vs slim" + (f" vs slim {c.quantize}" if c.quantize else "")
        return Stage("bench", f"benchmarking {what} (ONNX Runtime)", inputs, ("bench.json", "bench.png"), work)

    # --- the pipeline ------------------------------------------------------------------------
    def run(self) -> RunResult:
        from compressor.prune.select import select_layers

        c = self.cfg
        self.prepare()  # bad input fails before anything is written
        self.load_base()
        self.check_model_settings()
        self.claim()
        self.started = True  # from here run.json says "running", then how the run ended
        self.write_run_json()
        if c.search:
            report, removed = self.run_search()
        else:
            report = self.score(c.method, self.out / "scores.json")
            removed = select_layers(report, ratio=c.ratio, num_layers=c.num_layers, protect=self.protect).removed
        self.result.removed, self.result.method_label = removed, report.label
        self.run_stage(self.select_stage(report, removed))
        if len(removed) > report.num_layers // 2:
            self.ev.warn(f"this removes {len(removed)} of {report.num_layers} layers, more than half of the model")
        self.run_stage(self.prune_stage(report, removed))
        if self.repair.method == "none":
            self._skip("repair", "--repair none")
        else:
            self.result.repair = self.run_stage(self.repair_stage(report, removed)).get("repair")
        vres = self.run_stage(self.verify_stage())
        self.result.passed, self.result.verdict, self.result.tasks = vres["passed"], vres["verdict"], vres["tasks"]
        broken = [t["name"] for t in vres["tasks"] if t.get("failure")]
        if c.skip_export or broken:  # a model with NaN outputs has no export that could match it
            why = "--skip-export" if c.skip_export else (f"the slim model gives non-finite outputs "
                                                         f"({', '.join(broken)}): nothing to export")
            later = ["export", "verify-onnx"]
            if c.quantize and broken:
                later += ["quantize", f"verify-onnx-{c.quantize}"]
            for name in later + ["export-base"] + (["export-base-genai"] if c.exporter == "genai" else []) + ["bench"]:
                self._skip(name, why)
        else:
            self.result.parity = self.run_stage(self.export_stage("export", "onnx", Files(self.out / "model")))["parity"]
            self.result.exporter = c.exporter
            self.result.artifacts.append(self.run_stage(self.artifact_verify_stage("onnx", "onnx")))
            if c.quantize:
                dest = f"onnx-{c.quantize}"
                self.run_stage(self.quantize_stage(dest))
                self.result.artifacts.append(self.run_stage(self.artifact_verify_stage(dest, "quantized")))
            if c.skip_bench:
                self._skip("export-base", "--skip-bench (only the benchmark needs the full model in ONNX)")
                if c.exporter == "genai":
                    self._skip("export-base-genai", "--skip-bench")
                self._skip("bench", "--skip-bench")
            else:
                self.run_stage(self.export_stage("export-base", "onnx-base", Model(self.base)))
                if c.exporter == "genai":
                    self.run_stage(self.export_stage("export-base-genai", "onnx-base-genai", Model(self.base)))
                self.result.bench = self.run_stage(self.bench_stage()).get("bench")
        self.conclude()
        return self.result

    # --- how the run ended: one place for run.json's status and exit code --------------------
    def conclude(self) -> None:
        """From the verdicts computed (or re-judged on resume) by the verify stages; the CLI exits with
        exactly ``exit_code``."""
        self.result.passed = gated_verdict(self.profile.gate.target, bool(self.result.passed), self.result.artifacts)
        self.result.exit_code = EXIT_OK if self.result.passed else EXIT_GATE_FAILED
        self.result.status = "passed" if self.result.passed else "gate failed"

    def conclude_error(self, exc: BaseException) -> None:
        """A run that raised: the same exit code and line the process ends with (``errors.exit_code_for``)."""
        self.result.exit_code = exit_code_for(exc)
        if isinstance(exc, KeyboardInterrupt):
            self.result.status = "interrupted"
            self.result.error = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        else:
            self.result.status, self.result.error = "error", error_line_for(exc)


def verdict_result(rep: Any) -> dict[str, Any]:
    """What a verify stage returns (and ``run.json`` shows): the verdict and each task's numbers."""
    return {"passed": rep.passed, "verdict": rep.verdict_line(),
            "tasks": [{"name": t.name, "metric": t.metric, "base": t.base, "candidate": t.candidate,
                       "retention": t.retention, "threshold": t.threshold, "passed": t.passed,
                       "agreement": t.agreement, "failure": t.failure, "ties": t.ties,
                       "failed_because": t.failed_because() if t.passed is False else None}
                      for t in rep.tasks]}


def rejudge(report_file: Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A resumed verify stage's result, re-derived from its report's numbers under its gate: a verdict is
    never taken from a record. A record or report whose verdict does not follow reruns the stage."""

    def recheck(recorded: dict[str, Any]) -> dict[str, Any]:
        from compressor.verify.report import VerifyReport

        try:
            rep = VerifyReport.from_dict(json.loads(report_file.read_text(encoding="utf-8")))
            passed, _ = rep.judged()
        except (OSError, ValueError) as exc:
            raise Stale(f"{report_file.name} cannot be re-judged ({exc})") from exc
        if passed != rep.passed or recorded.get("passed") is not passed:
            raise Stale(f"the recorded verdict does not follow from the numbers in {report_file.name}")
        derived = verdict_result(rep)
        for t, old in zip(derived["tasks"], recorded.get("tasks") or []):
            if isinstance(old, dict) and "vs_slim" in old:
                t["vs_slim"] = old["vs_slim"]
        return {**recorded, **derived}

    return recheck


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def gated_verdict(target: str, pytorch_passed: bool, artifacts: list[dict[str, Any]]) -> bool:
    """``gate.target`` decides which artifacts the verdict judges (default ``all``: every one the run wrote)."""
    verdicts: dict[str, list[bool]] = {"pytorch": [pytorch_passed]}
    for a in artifacts:
        verdicts.setdefault(a["kind"], []).append(a["passed"])
    chosen = [v for vs in verdicts.values() for v in vs] if target == "all" else verdicts.get(target, [])
    return bool(chosen) and all(chosen)


def _score_content(report: Any) -> dict[str, Any]:
    """What select and prune read from a score report (not its timing, which differs on every run)."""
    return {"label": report.label, "scores": [[l.index, l.score] for l in report.layers],
            "ranking": report.ranking, "calibration": report.calibration, "extra": report.extra}


def longest_free_run(num_layers: int, protected: list[int]) -> int:
    """The longest run of consecutive unprotected layers (the largest contiguous block a cut can take)."""
    best = run = 0
    for i in range(num_layers):
        run = 0 if i in protected else run + 1
        best = max(best, run)
    return best


def run_pipeline(cfg: RunConfig, *, force: bool = False, events: Optional[Events] = None) -> RunResult:
    """Run every stage into ``cfg.out``; ``run.json`` is written however the run ends."""
    r = _Run(cfg, force, events or _Silent())
    try:
        return r.run()
    except BaseException as exc:  # how the run ended, in run.json: the same code and line as the process exit
        r.conclude_error(exc)
        raise
    finally:
        try:
            # only once stages started in a folder this run locked: bad input refused before that leaves
            # the previous run's run.json (which still describes the folder's artifacts) as it was
            if getattr(r, "started", False):
                r.write_run_json()
        finally:
            r.store.release()
