"""Gate a slim model: evaluate base and candidate on a profile's tasks; exit 0 pass, 1 fail."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from compressor import defaults
from compressor.cli import options as o

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from compressor.sources.settings import LoadSettings


@o.grouped(load=o.LOAD.without("device_map", "offload_folder"))
def verify(
    base: Annotated[str, typer.Argument(help="The original model (builtin:, folder, Hub id, or an ONNX export folder).")],
    candidate: Annotated[str, typer.Argument(help="The slim model to check (a checkpoint, or an ONNX export folder: evaluated in ONNX Runtime).")],
    profile: Annotated[str, typer.Option("--profile", help="Task profile YAML, e.g. profiles/default.yaml.")],
    min_retention: o.MinRetention = None,
    report_dir: Annotated[str, typer.Option("--report-dir", help="Where report.json, report.md and junit.xml go (rewritten each run).")] = "avss-report",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every result instead of reusing cached ones.")] = False,
    provider: o.Provider = defaults.PROVIDER,
    load: LoadSettings = None,  # type: ignore[assignment]
    allow_different_tokenizers: Annotated[bool, typer.Option("--allow-different-tokenizers", help="Accept a candidate whose tokenizer differs from the base's: accuracy tasks only; never perplexity.")] = False,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from compressor.cli import common
    from compressor.cli.output import err, note, out, warn
    from compressor.errors import GateFailed
    from compressor.files import check_report_dir
    from compressor.profiles import load_profile
    from compressor.sources.cache import check_cache
    from compressor.verify.api import Deferred, check_gate, check_task_data, stream_choice
    from compressor.verify.api import verify as run_verify
    from compressor.verify.report import fmt_agreement, result_word, write_reports

    prof = load_profile(profile)
    check_gate(prof, min_retention)  # no tasks, or a threshold out of range: before anything loads
    task_data = check_task_data(prof)  # a missing or malformed data file fails before minutes of model loading
    load = load.streaming(stream_choice(prof, load.stream))  # and so does --stream with a task that needs the whole model
    check_report_dir(report_dir)  # and so does a report folder that cannot be written
    if not no_cache:
        check_cache("or pass --no-cache")
    for spec in (base, candidate):  # a candidate folder that is not there fails before the base loads
        common.check_eval_spec(spec)
    # one model at a time: the base's results first, then it is freed, then the candidate loads
    loaded_base = Deferred(lambda: common.load_for_eval(base, load, provider))
    loaded_cand = Deferred(lambda: common.load_for_eval(candidate, load, provider))

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as prog:
        def stage(name: str) -> Callable[[int, int], None]:
            tid = prog.add_task(f"evaluating {name}", total=None)
            return lambda done, total: prog.update(tid, completed=done, total=total)

        report = run_verify(loaded_base, loaded_cand, prof, profile_path=profile, min_retention=min_retention,
                            use_cache=not no_cache, progress=stage, task_data=task_data,
                            allow_different_tokenizers=allow_different_tokenizers)
    paths = write_reports(report, report_dir)
    t = Table(title=f"avss verify: profile {prof.name}, {candidate} vs {base}")
    for col in ("task", "metric", "base", "candidate", "retention", "threshold", "result", "agreement", "n"):
        t.add_column(col, justify="left" if col in ("task", "metric", "result") else "right")
    for r in report.tasks:
        ret = ("n/a" if r.retention is None else f"{r.retention:.3f}") + (
            f" (≥{r.retention_lower:.3f})" if r.retention_lower is not None else "")
        t.add_row(r.name, r.metric, f"{r.base:.4g}", "n/a" if r.candidate is None else f"{r.candidate:.4g}", ret,
                  f"{r.threshold:.2f}", result_word(r.passed, "[red]FAIL[/red]", r.retention, r.failure),
                  fmt_agreement(r.agreement), str(r.n))
    out.print(t)
    for w in report.warnings:
        warn(w)
    cached = sum(v for r in report.tasks for v in r.cached.values())
    note(f"{cached} of {2 * len(report.tasks)} task results came from the cache; reports: "
         + ", ".join(str(p) for p in paths.values()))
    note(report.verdict_line())
    if not report.passed:
        raise GateFailed(f"retention gate failed ({report.verdict_line().removeprefix('FAIL: ')})",
                         f"see {paths['md']}")
