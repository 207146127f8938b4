"""``avss run``'s display: one progress view (stage, bar, time) on stderr and the summary tables on stdout."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from compressor.run.context import RunResult


class RunView:
    """Implements ``compressor.run.api.Events`` with a rich Progress: one line per stage."""

    def __init__(self, console: Console):
        # In a CI log (not a terminal) a live display prints nothing until the end: write plain lines.
        self.live = bool(console.is_terminal)
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False, disable=not self.live)
        self.current: dict[str, TaskID] = {}

    def __enter__(self) -> "RunView":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _finish(self, tid: TaskID, description: str | None = None) -> None:
        task = next(t for t in self.progress.tasks if t.id == tid)
        total = task.total or 1
        if description is None:
            self.progress.update(tid, total=total, completed=total)
        else:
            self.progress.update(tid, total=total, completed=total, description=description)

    def start(self, stage: str, label: str) -> Optional[Callable[[int, int], None]]:
        old = self.current.get(stage)
        if old is not None:  # a sub-step of the same stage (e.g. each verify task): finish the previous bar
            self._finish(old)
        if not self.live:
            self.console.print(f"[bold]{escape(stage)}[/bold] {escape(label)} ...", highlight=False)
        tid = self.progress.add_task(f"[bold]{escape(stage)}[/bold] {escape(label)}", total=None)
        self.current[stage] = tid

        def update(done: int, total: int) -> None:
            self.progress.update(tid, completed=done, total=total)

        return update

    def end(self, stage: str, status: str, seconds: float, detail: str) -> None:
        tid = self.current.pop(stage, None)
        for other in list(self.current):  # stages run one after another: close sub-step bars left open
            self._finish(self.current.pop(other))
        text = f"[bold]{escape(stage)}[/bold] {status}: {escape(detail)}"
        if not self.live:
            self.console.print(f"{text} ({seconds:.1f} s)", highlight=False)
        if tid is None:
            tid = self.progress.add_task(text, total=1, completed=1)
        self._finish(tid, text)

    def note(self, msg: str) -> None:
        self.console.print(escape(msg), highlight=False)

    def warn(self, msg: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def print_summary(result: RunResult) -> None:
    from rich.table import Table

    from compressor.cli.output import out
    from compressor.verify.report import result_word

    shipped = (f", shipped: {result.exporter} {result.config.get('quantize') or 'fp32'}" if result.exporter else "")
    t = Table(title=f"avss run: {result.config['model']} -> {result.out} ({result.method_label}, "
                    f"removed {len(result.removed)}: {result.removed}{shipped})")
    for col in ("stage", "status", "time (s)", "result"):
        t.add_column(col, justify="right" if col == "time (s)" else "left")
    for s in result.stages:
        t.add_row(s.name, s.status, f"{s.seconds:.1f}", s.detail)
    out.print(t)
    search = result.search or {}
    chosen, ref = search.get("chosen"), search.get("reference") or {}
    if search.get("objective") == "fastest" and chosen:
        speed = (f", decode {chosen['decode_ms'] / ref['decode_ms']:.2f}x the full model through Optimum fp32"
                 if chosen.get("decode_ms") and ref.get("decode_ms") else "")
        n = search.get("counts") or {}
        out.print(f"search fastest: chose {chosen['id']} by {search.get('chosen_by')}{speed}; {n.get('gated')} of "
                  f"{n.get('space')} candidates gated on the artifact (search.json, pareto.png)")
    if result.tasks:
        v = Table(title=f"verify: {result.verdict}")
        for col in ("task", "metric", "base", "candidate", "retention", "threshold", "result"):
            v.add_column(col, justify="left" if col in ("task", "metric", "result") else "right")
        for r in result.tasks:
            v.add_row(r["name"], r["metric"], f"{r['base']:.4g}", _g(r["candidate"]), _f(r["retention"]),
                      f"{r['threshold']:.2f}", result_word(r["passed"], "[red]FAIL[/red]", r["retention"], r.get("failure")))
        out.print(v)
    for a in result.artifacts:
        v = Table(title=f"verify {a['artifact']}/ in ONNX Runtime ({a['runtime']}): {a['verdict']}")
        for col in ("task", "metric", "candidate", "retention", "threshold", "result", "vs PyTorch slim", "agreement"):
            v.add_column(col, justify="left" if col in ("task", "metric", "result") else "right")
        for r in a["tasks"]:
            vs = r.get("vs_slim") or {}
            v.add_row(r["name"], r["metric"], _g(r["candidate"]), _f(r["retention"]), f"{r['threshold']:.2f}",
                      result_word(r["passed"], "[red]FAIL[/red]", r["retention"], r.get("failure")),
                      "n/a" if vs.get("retention") is None else f"{vs['retention']:.3f}",
                      "n/a" if vs.get("agreement") is None else f"{vs['agreement']:.3f}")
        out.print(v)
    if result.bench:
        b = Table(title=f"bench: ONNX Runtime, {result.bench['provider']}")
        for col in ("model", "layers", "size (MB)", "prefill p50 (ms)", "decode p50 (ms/token)", "tokens/s",
                    "RSS peak (MB)"):
            b.add_column(col, justify="left" if col == "model" else "right")
        for m in result.bench["models"]:
            pre = (m.get("prefill_ms") or m.get("batch_ms") or {}).get("p50")
            dec = (m.get("decode_ms_per_token") or {}).get("p50")
            tps = m.get("tokens_per_s")
            b.add_row(m["path"], str(m["layers"]), f"{m['file_mb']:.1f}", "-" if pre is None else f"{pre:.1f}",
                      "-" if dec is None else f"{dec:.2f}", "-" if tps is None else f"{tps:.1f}",
                      f"{m['rss_peak_mb']:.0f}")
        lines = []
        for r in result.bench.get("ratios", []):
            dr = r.get("decode_ratio") or r.get("batch_ratio")
            if dr is not None:
                lines.append(f"{r['model']} / full: latency {dr:.3f} vs ideal {r['layer_ratio']:.3f} (kept layers), "
                             f"{r['param_ratio']:.3f} (kept params); size {_f(r['file_ratio'])}; memory "
                             f"{r['rss_peak_ratio']:.3f}")
        b.caption = "\n".join(lines) or None
        out.print(b)
