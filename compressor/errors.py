"""Error types mapped to exit codes in exactly one place (``compressor.cli.app``).

Every user-facing error carries a *fix*: the message a user reads must say what to do next.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3


class AvssError(Exception):
    """Base class: a problem we can explain in one line."""

    exit_code = EXIT_RUNTIME

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class BadInput(AvssError):
    """The user asked for something that cannot work (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class RuntimeFailure(AvssError):
    """The input looked fine but the work failed (exit 3)."""

    exit_code = EXIT_RUNTIME


class GateFailed(AvssError):
    """A retention gate did not pass (exit 1). Reserved for `verify` / `run`."""

    exit_code = EXIT_GATE_FAILED


EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, the shell convention
EXIT_TERMINATED = 143  # SIGTERM (timeout, docker stop, Kubernetes, CI cancellation): 128 + 15


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so every cleanup that handles Ctrl-C also runs."""
