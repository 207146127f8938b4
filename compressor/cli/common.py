"""Glue shared by CLI shells: flags -> library calls. No torch at import time."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from rich.progress import TaskID

    from compressor.repair.settings import Progress as RepairProgress
    from compressor.score.report import ScoreReport
    from compressor.sources.models import LoadedModel
    from compressor.sources.settings import LoadSettings


def check_eval_spec(model: str) -> None:
    """What can be checked of a model to evaluate without loading it (a folder that is not there)."""
    from compressor.export.ort_model import is_onnx_export
    from compressor.sources.models import resolve_model_path

    if not is_onnx_export(model):
        resolve_model_path(model)


def load_for_eval(model: str, load: LoadSettings, provider: str) -> LoadedModel:
    """A model to evaluate: an ONNX export folder runs in ONNX Runtime (what ships is what is gated),
    anything else loads as for every other command (``load``: the command's ``LoadSettings``)."""
    from compressor.cli.output import note
    from compressor.export.ort_model import is_onnx_export

    loaded: LoadedModel
    if not is_onnx_export(model):
        loaded = load.load(model, with_head=load.stream is not False)
        return loaded
    from compressor.export.ort_model import load_onnx_model

    if load.stream:
        from compressor.errors import BadInput

        raise BadInput(f"--stream reads a checkpoint's shards, and {model} is an ONNX export", "drop --stream")

    note(f"loading {model} (ONNX export) in ONNX Runtime, provider {provider} ...")
    loaded = load_onnx_model(model, provider=provider, trust_remote_code=load.trust_remote_code)
    note(f"loaded {loaded.config.model_type} with {loaded.num_layers} layers ({loaded.dtype}, {loaded.device})")
    return loaded


def print_scores(report: ScoreReport) -> None:
    from rich.table import Table

    from compressor.cli.output import out
    from compressor.score.report import HEADERS, _stat_keys, to_table_rows

    removed = set(report.default_selection.get("removed", []))
    table = Table(title=f"{report.model.get('spec')}: layer scores, method {report.label}")
    for col in ["layer", "score", "rank", *[HEADERS.get(k, k) for k in _stat_keys(report)], "default cut"]:
        table.add_column(col, justify="right" if col != "default cut" else "left")
    for row in to_table_rows(report, removed):
        table.add_row(*row)
    out.print(table)


def repair_progress() -> AbstractContextManager[RepairProgress]:
    """A progress display for a repair on stderr: one bar per step (linear patch, distill), the loss shown."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from compressor.cli.output import err

    @contextlib.contextmanager
    def bars() -> Iterator[RepairProgress]:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=False) as prog:
            tasks: dict[str, TaskID] = {}

            def update(label: str, done: int, total: int, loss: Optional[float]) -> None:
                if label not in tasks:
                    tasks[label] = prog.add_task(f"repair: {label}", total=total)
                desc = f"repair: {label}" + (f" (loss {loss:.4f})" if loss is not None else "")
                prog.update(tasks[label], completed=done, total=total, description=desc)
            yield update

    return bars()


def print_repair(record: dict[str, Any]) -> None:
    """The repair's evidence, as the registry renders it: tables on stdout (data), lines on stderr."""
    from rich.table import Table

    from compressor.cli.output import note, out
    from compressor.repair.methods import evidence

    for ev in evidence(record):
        if ev.columns:
            t = Table(title=ev.title)
            for header, justify in ev.columns:
                t.add_column(header, justify="left" if justify == "left" else "right")
            for row in ev.rows:
                t.add_row(*row)
            out.print(t)
        if ev.line:
            note(ev.line)
