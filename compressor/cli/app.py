"""The ``avss`` Typer app and the single place where errors become exit codes."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
from types import FrameType

import typer

from compressor import __version__
from compressor.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated

app = typer.Typer(
    name="avss",
    help="Score transformer layers (AVSS faithful + robust, baselines), prune the least important, "
    "verify, export to ONNX, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help and usage errors, as optimum-cli's argparse: rich's help renderer imports markdown and
    # traceback machinery (~80 ms), which every `--help` and mistyped flag would pay
    rich_markup_mode=None,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    """The version, the lane, the versions that decide results and which exporters run here (no heavy import)."""
    if value:
        from compressor import compat
        from compressor.export.exporters import EXPORTERS, default_name

        typer.echo(f"avss-compressor {__version__}")
        typer.echo(f"lane: {compat.lane()} (" + ("transformers 4.x, Optimum" if compat.lane() == "card" else
                                                "transformers 5.x, no Optimum") + ")")
        typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in compat.versions().items()))
        for name, exp in EXPORTERS.items():
            why = exp.missing()
            mark = " (default)" if name == default_name() and why is None else ""
            typer.echo(f"exporter {name}: " + ("available" + mark if why is None else f"unavailable: {why}"))
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also AVSS_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug or os.environ.get("AVSS_DEBUG", "") not in ("", "0")


def _register() -> None:
    from compressor.cli import bench as _bench
    from compressor.cli import export as _export
    from compressor.cli import prune as _prune
    from compressor.cli import repair as _repair
    from compressor.cli import run as _run
    from compressor.cli import score as _score
    from compressor.cli import verify as _verify

    app.command("score", help=_score.__doc__)(_score.score)
    app.command("prune", help=_prune.__doc__)(_prune.prune)
    app.command("repair", help=_repair.__doc__)(_repair.repair)
    app.command("verify", help=_verify.__doc__)(_verify.verify)
    app.command("export", help=_export.__doc__)(_export.export)
    app.command("bench", help=_bench.__doc__)(_bench.bench)
    app.command("run", help=_run.__doc__)(_run.run)


_register()


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _interrupted_line(command: str | None, exc: KeyboardInterrupt) -> str:
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
    if command == "run":
        return (f"avss run {how}; nothing half-written was kept and run.json says so (re-run the same "
                "`avss run` command to resume from the last finished stage)")
    return f"avss {command or ''} {how}; nothing half-written was kept (re-run the command)".replace("  ", " ")


def _command(argv: list[str] | None) -> str | None:
    """The subcommand named on the command line (the root has only flags)."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise Terminated()


def search_objective(argv: list[str]) -> list[str]:
    """``avss run --search fastest``: a Typer option cannot take an optional value, so a word after
    ``--search`` (``fastest``, ``largest``) is passed on as ``--search-objective WORD``; ``--search`` alone
    (or before another option) stays the largest cut. A word that names no objective is refused by the run's
    configuration with the choices."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--search" and i + 1 < len(argv) and re.fullmatch(r"[a-z][a-z-]*", argv[i + 1]):
            out += ["--search-objective", argv[i + 1]]
            i += 2
            continue
        if a.startswith("--search="):
            a = "--search-objective=" + a.split("=", 1)[1]
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and maps every failure to one stderr line and an exit code.

    Usage errors (unknown flag, missing argument) are reported by Typer itself with exit code 2.
    """
    from compressor.cli.output import error, route_library_diagnostics

    route_library_diagnostics()
    _state["debug"] = os.environ.get("AVSS_DEBUG", "") not in ("", "0")
    argv = search_objective(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        app(args=argv, prog_name="avss")
    except SystemExit as exc:
        intr = _interruption(exc) if exc.code == EXIT_INTERRUPTED else None  # Typer: Ctrl-C -> silent exit 130
        if intr is not None:
            error(_interrupted_line(command, intr))
            sys.exit(EXIT_TERMINATED if isinstance(intr, Terminated) else EXIT_INTERRUPTED)
        raise
    except KeyboardInterrupt as exc:
        error(_interrupted_line(command, exc))
        sys.exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, one exit code
        from compressor.errors import error_line_for, exit_code_for

        if _state["debug"]:
            import traceback

            traceback.print_exc()
        error(error_line_for(exc))
        sys.exit(exit_code_for(exc))
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
