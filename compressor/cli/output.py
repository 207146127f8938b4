"""The one output sink: data to stdout, diagnostics (progress, notes, warnings) to stderr."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    out: Console
    err: Console


def __getattr__(name: str) -> Console:
    """``out`` and ``err``, made on first use: rich's console costs ~30 ms to import, which ``avss --help``
    and every argument error would pay for nothing."""
    if name not in ("out", "err"):
        raise AttributeError(name)
    from rich.console import Console

    # tables are data: when piped, do not squeeze them into 80 columns
    made = (Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160) if name == "out"
            else Console(stderr=True, soft_wrap=True))
    globals()[name] = made
    return made


def _err() -> Console:
    return __getattr__("err") if "err" not in globals() else globals()["err"]


def note(msg: str) -> None:
    from rich.markup import escape

    _err().print(escape(msg), highlight=False)


def warn(msg: str) -> None:
    from rich.markup import escape

    _err().print(f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False)


def error(msg: str) -> None:
    from rich.markup import escape

    _err().print(f"[red]error:[/red] {escape(msg)}", highlight=False)


class SinkHandler(logging.Handler):
    """Routes the library's ``avss`` logger (``compressor.diagnostics``) into this sink."""

    def emit(self, record: logging.LogRecord) -> None:
        (warn if record.levelno >= logging.WARNING else note)(record.getMessage())


def route_library_diagnostics() -> None:
    from compressor.diagnostics import LOGGER

    if not any(isinstance(h, SinkHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(SinkHandler())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yields a ``(done, total)`` callback that drives a rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_err(), transient=False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update
