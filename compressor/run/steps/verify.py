"""Gate what the run made: ``verify`` (the PyTorch slim model) and ``verify-<artifact>`` (each ONNX
artifact as it ships, in ONNX Runtime, also compared with the slim model it came from).

Why verdicts are re-judged on resume (``rejudge``): a verdict is never read from a record alone; it is
derived again from the report's numbers under the gate, so an edited record cannot turn a fail into a pass.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compressor.errors import AvssError
from compressor.files import atomic_write_text
from compressor.run.context import RunContext
from compressor.run.pipeline import Results, Step
from compressor.run.stages import Files, Input, Progress, Setting, Stage, Stale

if TYPE_CHECKING:
    from compressor.profiles import Profile
    from compressor.sources.models import LoadedModel
    from compressor.verify.api import Deferred
    from compressor.verify.report import VerifyReport


def verdict_result(rep: VerifyReport) -> dict[str, Any]:
    """What a verify stage returns (and ``run.json`` shows): the verdict and each task's numbers."""
    return {"passed": rep.passed, "verdict": rep.verdict_line(),
            "tasks": [{"name": t.name, "metric": t.metric, "base": t.base, "candidate": t.candidate,
                       "retention": t.retention, "threshold": t.threshold, "passed": t.passed,
                       "agreement": t.agreement, "failure": t.failure, "ties": t.ties,
                       "failed_because": t.failed_because() if t.passed is False else None}
                      for t in rep.tasks]}


def gate_mismatch(rep: VerifyReport, profile: Profile, min_retention: float | None) -> str | None:
    """Where a report's gate differs from the run's own (its floor, aggregate, tasks and each task's
    threshold), or None: a report is judged only under the gate this run was configured with."""
    from compressor.verify.api import check_gate

    floor = check_gate(profile, min_retention)
    own = {t.name: t.min_retention for t in profile.tasks}
    if rep.min_retention != floor or rep.aggregate != profile.gate.aggregate:
        return (f"its gate is {rep.aggregate} at {rep.min_retention:g}, this run's is {profile.gate.aggregate} at "
                f"{floor:g}")
    names = [t.name for t in rep.tasks]
    if names != list(own)[:len(names)] or (rep.complete and len(names) != len(own)):
        return f"its tasks ({', '.join(names)}) are not this profile's ({', '.join(own)})"
    for t in rep.tasks:
        want = own[t.name] if own[t.name] is not None else floor
        if t.threshold != want or t.own_threshold != (own[t.name] is not None):
            return f"task {t.name} has threshold {t.threshold:g} there, {want:g} in this run"
    return None


def rejudge(report_file: Path, ctx: RunContext) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A resumed verify stage's result, re-derived from its report's numbers under this run's gate (its
    --min-retention and its profile's thresholds, not the ones written in the report). A report judged
    under another gate, or a record whose verdict does not follow, reruns the stage."""

    def recheck(recorded: dict[str, Any]) -> dict[str, Any]:
        from compressor.verify.report import VerifyReport

        try:
            rep = VerifyReport.from_dict(json.loads(report_file.read_text(encoding="utf-8")))
            other = gate_mismatch(rep, ctx.profile, ctx.cfg.min_retention)
            passed, _ = rep.judged()
        except (OSError, ValueError) as exc:
            raise Stale(f"{report_file.name} cannot be re-judged ({exc})") from exc
        if other is not None:
            raise Stale(f"{report_file.name} was not judged under this run's gate: {other}")
        if passed != rep.passed or recorded.get("passed") is not passed:
            raise Stale(f"the recorded verdict does not follow from the numbers in {report_file.name}")
        derived = verdict_result(rep)
        for t, old in zip(derived["tasks"], recorded.get("tasks") or []):
            if isinstance(old, dict) and "vs_slim" in old:
                t["vs_slim"] = old["vs_slim"]
        return {**recorded, **derived}

    return recheck


def verify(ctx: RunContext, given: Results) -> Results:
    slim: Path = given["slim"]
    search_md = given["search"].markdown() if given.get("search") is not None else None

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.verify.api import Deferred
        from compressor.verify.report import write_reports

        # the last step that needs the base's weights: free them before the candidate loads
        rep = ctx.verify(Deferred(lambda: ctx.load_candidate(slim)), "verify", release_base=True)
        write_reports(rep, ctx.out)
        if search_md is not None:
            md = ctx.out / "report.md"
            atomic_write_text(md, md.read_text(encoding="utf-8") + search_md)
        return verdict_result(rep), rep.verdict_line()

    inputs: dict[str, Input] = {"base": ctx.base_input(), "candidate": Files(slim), "search": Setting(search_md),
                                **ctx.gate_inputs}
    return {"verdict": ctx.run_stage(Stage("verify", "verifying", inputs, ("report.json", "report.md", "junit.xml"),
                                           work, recheck=rejudge(ctx.out / "report.json", ctx)))}


def _vs_slim(ctx: RunContext, art: LoadedModel | Deferred, slim: Path, dest: str) -> tuple[dict[str, Any], list[str]]:
    """How far the artifact is from what it was exported from (both sides from the verify cache; each
    loaded only for a cache miss, one at a time)."""
    from compressor.verify.api import Deferred
    from compressor.verify.api import verify as verify_models
    from compressor.verify.report import fmt_agreement

    vs: dict[str, Any] = {}
    md = [f"#### {dest}/ against the PyTorch slim model it was exported from (`model/`)", "",
          "| task | metric | PyTorch slim | this artifact | retention | agreement |", "|---|---|---|---|---|---|"]
    try:
        for t in verify_models(Deferred(lambda: ctx.load_candidate(slim)), art, ctx.profile,
                               min_retention=ctx.cfg.min_retention).tasks:
            vs[t.name] = {"retention": t.retention, "agreement": t.agreement}
            cand = "n/a" if t.candidate is None else f"{t.candidate:.4g}"
            md.append(f"| {t.name} | {t.metric} | {t.base:.4g} | {cand} | "
                      f"{'n/a' if t.retention is None else f'{t.retention:.3f}'} | {fmt_agreement(t.agreement)} |")
    except AvssError as exc:  # e.g. the slim model scores 0 on a task: no ratio to report
        ctx.ev.warn(f"{dest}: no comparison with the PyTorch slim model ({exc.problem})")
        md.append(f"| (no comparison: {exc.problem}) | | | | | |")
    return vs, md


def artifact_stage(ctx: RunContext, artifact: Path, slim: Path, kind: str) -> Stage:
    """Gate an ONNX artifact as it ships (in ONNX Runtime) against the full model."""
    c, dest = ctx.cfg, artifact.name
    reports = f"reports/{dest}"

    def work(cb: Progress | None) -> tuple[dict[str, Any], str]:
        from compressor.export.ort_model import load_onnx_model
        from compressor.verify.api import Deferred, Identity
        from compressor.verify.report import write_reports

        seen: dict[str, Identity] = {}

        def load_art() -> LoadedModel:  # loaded after the base's results; its identity is kept for the comparison below
            loaded: LoadedModel = load_onnx_model(str(artifact), provider=c.provider)
            seen.setdefault("art", Identity.of(loaded))
            return loaded

        rep = ctx.verify(Deferred(load_art), f"verify {dest}", release_base=True)  # after verify: no step needs it
        write_reports(rep, ctx.out / reports)
        vs, md = _vs_slim(ctx, Deferred(load_art, seen["art"]), slim, dest)
        report_md = ctx.out / reports / "report.md"
        atomic_write_text(report_md, report_md.read_text(encoding="utf-8") + "\n" + "\n".join(md) + "\n")
        res = verdict_result(rep)
        for t in res["tasks"]:
            t["vs_slim"] = vs.get(t["name"])
        return {"artifact": dest, "kind": kind, **res, "runtime": seen["art"].device}, f"{dest}: {rep.verdict_line()}"

    inputs: dict[str, Input] = {"base": ctx.base_input(), "artifact": Files(artifact), "slim": Files(slim),
                                "provider": Setting(c.provider), **ctx.gate_inputs}
    return Stage(f"verify-{dest}", f"verifying {dest}/ in ONNX Runtime", inputs, (reports,), work,
                 recheck=rejudge(ctx.out / reports / "report.json", ctx))


def verify_onnx(ctx: RunContext, given: Results) -> Results:
    return {"artifact-onnx": ctx.run_stage(artifact_stage(ctx, given["onnx"], given["slim"], "onnx"))}


def verify_quantized(ctx: RunContext, given: Results) -> Results:
    return {"artifact-quantized": ctx.run_stage(artifact_stage(ctx, given["quantized"], given["slim"], "quantized"))}


def gated_verdict(target: str, pytorch_passed: bool, artifacts: list[dict[str, Any]]) -> bool:
    """``gate.target`` decides which artifacts the verdict judges (default ``all``: every one the run wrote)."""
    verdicts: dict[str, list[bool]] = {"pytorch": [pytorch_passed]}
    for a in artifacts:
        verdicts.setdefault(a["kind"], []).append(a["passed"])
    chosen = [v for vs in verdicts.values() for v in vs] if target == "all" else verdicts.get(target, [])
    return bool(chosen) and all(chosen)


STEPS = (
    Step("verify", ("slim", "search"), ("verdict",), ("report.json", "report.md", "junit.xml"), verify,
         optional=("search",)),
    Step("verify-onnx", ("slim", "onnx"), ("artifact-onnx",), ("reports",), verify_onnx),
    Step("verify-quantized", ("slim", "quantized"), ("artifact-quantized",), ("reports",), verify_quantized,
         active=lambda c: bool(c.quantize) or c.search == "fastest", title=lambda c: f"verify-onnx-{c.quantize or 'quantized'}"),
)
