"""The ``avss`` Typer app and the single place where errors become exit codes."""
from __future__ import annotations

import os
import sys

import typer

from compressor import __version__
from compressor.errors import EXIT_RUNTIME, AvssError

app = typer.Typer(
    name="avss",
    help="Score transformer layers (AVSS faithful + robust, baselines), prune the least important, "
    "verify, export to ONNX, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avss-compressor {__version__}")
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


_INTERRUPTED = ("interrupted; nothing half-written was kept (re-run the same `avss run` command to resume "
                "from the last finished stage)")


def _interrupted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and maps every failure to one stderr line and an exit code.

    Usage errors (unknown flag, missing argument) are reported by Typer itself with exit code 2.
    """
    from compressor.cli.output import error

    _state["debug"] = os.environ.get("AVSS_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, prog_name="avss")
    except SystemExit as exc:
        if exc.code == 130 and _interrupted(exc):  # Typer turns Ctrl-C into a silent exit 130
            error(_INTERRUPTED)
        raise
    except KeyboardInterrupt:
        error(_INTERRUPTED)
        sys.exit(130)
    except AvssError as exc:
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        error(exc.line())
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        error(f"unexpected {type(exc).__name__}: {first}; re-run with --debug for the traceback and report it")
        sys.exit(EXIT_RUNTIME)
