"""The one output sink: data to stdout, diagnostics (progress, notes, warnings) to stderr."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape

# tables are data: when piped, do not squeeze them into 80 columns
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def note(msg: str) -> None:
    err.print(escape(msg), highlight=False)


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False)


def error(msg: str) -> None:
    err.print(f"[red]error:[/red] {escape(msg)}", highlight=False)


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
                  console=err, transient=False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update
