"""``run``: the declared steps (``run/steps``) assembled into one resumable artifact folder.

Each step is the same library calls the single commands make; ``pipeline.order`` derives their order
from what they consume, ``stages.stage_key`` each stage's resume key from its inputs' content, and
``RUN_ENTRIES`` the folder's entries from what the steps declare. A failed gate is a result, not an
error: every artifact is still written and ``RunResult.exit_code`` is 1.
"""
from __future__ import annotations

from typing import Any, Optional

from compressor.errors import EXIT_GATE_FAILED, EXIT_OK, Terminated, error_line_for, exit_code_for
from compressor.run import pipeline
from compressor.run.config import RunConfig
from compressor.run.context import RUN_FILE, Events, RunContext, RunResult, Silent, StageInfo
from compressor.run.steps import bench, cut, export, score, verify
from compressor.run.steps.verify import gated_verdict, rejudge, verdict_result

# declaration order breaks ties in the derived order (and is how the run reports its stages)
STEPS: tuple[pipeline.Step, ...] = (*score.STEPS, *cut.STEPS, *verify.STEPS, *export.STEPS, *bench.STEPS)
# every top-level entry a run may write (a test checks it against a real run): the only names whose
# leftovers a run cleans, so a file of the user's is never touched
RUN_ENTRIES = (RUN_FILE, *pipeline.entries(STEPS))
RUN_FOLDERS = ("search", "reports")  # folders of our own whose hidden leftovers are cleaned too
RUN_SCRATCH = (".search",)  # removed whole when a run starts (search candidates are cut there)

__all__ = ["RUN_ENTRIES", "RUN_FOLDERS", "RUN_SCRATCH", "STEPS", "Events", "RunResult", "StageInfo", "gated_verdict",
           "rejudge", "run_pipeline", "verdict_result"]


def summarize(result: RunResult, cfg: RunConfig, results: dict[str, Any]) -> None:
    """What run.json shows of the steps' results so far (it is written however the run ends)."""
    if results.get("report") is not None:
        result.removed, result.method_label = list(results["removed"]), results["report"].label
    if results.get("search") is not None:
        result.search = results["search"].to_dict()
    result.repair = results.get("repair")
    v = results.get("verdict")
    if v is not None:
        result.passed, result.verdict, result.tasks = v["passed"], v["verdict"], v["tasks"]
    if results.get("onnx") is not None:
        from compressor.export.exporters import get_exporter

        result.parity, result.exporter = results.get("parity"), get_exporter(cfg.exporter).name
    result.artifacts = [results[a] for a in ("artifact-onnx", "artifact-quantized") if results.get(a) is not None]
    result.bench = results.get("bench")


def conclude(ctx: RunContext) -> None:
    """How the run ended, from the verdicts computed (or re-judged on resume) by the verify steps; the CLI
    exits with exactly ``exit_code``."""
    r = ctx.result
    r.passed = gated_verdict(ctx.profile.gate.target, bool(r.passed), r.artifacts)
    r.exit_code = EXIT_OK if r.passed else EXIT_GATE_FAILED
    r.status = "passed" if r.passed else "gate failed"


def conclude_error(ctx: RunContext, exc: BaseException) -> None:
    """A run that raised: the same exit code and line the process ends with (``errors.exit_code_for``)."""
    r = ctx.result
    r.exit_code = exit_code_for(exc)
    if isinstance(exc, KeyboardInterrupt):
        r.status = "interrupted"
        r.error = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
    else:
        r.status, r.error = "error", error_line_for(exc)


def run_pipeline(cfg: RunConfig, *, force: bool = False, events: Optional[Events] = None) -> RunResult:
    """Run every step into ``cfg.out``; ``run.json`` is written however the run ends."""
    from compressor.run.prepare import check_model_settings, claim, load_base, prepare

    ctx = RunContext(cfg, force, events or Silent(), (RUN_ENTRIES, RUN_FOLDERS, RUN_SCRATCH))
    try:
        prepare(ctx)  # bad input fails before anything is written
        load_base(ctx)
        check_model_settings(ctx)
        claim(ctx)
        ctx.started = True  # from here run.json says "running", then how the run ended
        ctx.write_run_json()
        pipeline.execute(ctx, STEPS, lambda results: summarize(ctx.result, ctx.cfg, results))  # the search may
        # choose the exporter and precision, so the run's configuration is read as it is then
        conclude(ctx)
        return ctx.result
    except BaseException as exc:  # how the run ended, in run.json: the same code and line as the process exit
        conclude_error(ctx, exc)
        raise
    finally:
        try:
            # only once stages started in a folder this run locked: bad input refused before that leaves
            # the previous run's run.json (which still describes the folder's artifacts) as it was
            if ctx.started:
                ctx.write_run_json()
        finally:
            ctx.store.release()
