"""Error types, each with its exit code; ``exit_code_for`` and ``error_line_for`` are the one mapping from how
a command ended to its code and its stderr line (``compressor.cli.app`` and ``run.json`` both call them).

Every user-facing error carries a *fix*: the message a user reads must say what to do next.
"""
from __future__ import annotations

import errno

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


def as_avss_error(exc: BaseException) -> AvssError | None:
    """The user-facing error an exception stands for: itself, or a disk error (full, read-only,
    permission) however deep a library wrapped it; None for anything else (a bug: exit 3)."""
    if isinstance(exc, AvssError):
        return exc
    disk = os_error_in(exc)
    return describe_os_error(disk) if disk is not None else None


def exit_code_for(exc: BaseException) -> int:
    """The one mapping from how a command ended to its exit code (the CLI's and run.json's)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    known = as_avss_error(exc)
    return known.exit_code if known is not None else EXIT_RUNTIME


def error_line_for(exc: BaseException) -> str:
    """The one stderr line for an exception (``run.json``'s ``error`` says the same)."""
    known = as_avss_error(exc)
    if known is not None:
        return known.line()
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first}; re-run with --debug for the traceback and report it"



def compute_error(exc: BaseException, what: str, memory_fix: str) -> AvssError | None:
    """What a failed computation means for the user, or None for a bug (re-raise it: "unexpected …;
    report it"). Only a real out-of-memory error gets ``memory_fix`` ("lower the batch size"); a kernel
    that refuses the dtype (``not implemented for 'Half'``) is a ``--dtype`` the device cannot run."""
    import re
    import sys

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    half = re.search(r"not implemented for '(Half|BFloat16)'", str(exc))
    if half:
        dtype = {"Half": "float16", "BFloat16": "bfloat16"}[half[1]]
        return BadInput(f"{what}: this device has no {dtype} kernel for one of the model's operations ({first})",
                        "use --dtype float32")
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    msg = str(exc).lower()
    if (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError) \
            or "can't allocate memory" in msg or "out of memory" in msg:
        return RuntimeFailure(f"{what} ran out of memory ({first})", memory_fix)
    return None


def describe_os_error(exc: OSError) -> BadInput | RuntimeFailure | None:
    """The file-system errors a user can act on, as our one-line error (exit 2 or 3); else None."""
    where = exc.filename or "a file"
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", -1):
        return RuntimeFailure(f"no space left on the device while writing {where}",
                              "free some space there (or choose --out / TMPDIR on a larger disk) and re-run")
    if exc.errno == errno.EROFS:
        return BadInput(f"cannot write {where}: read-only file system", "choose an output folder on a writable disk")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BadInput(f"cannot write {where}: permission denied",
                        "choose a folder you can write to, or fix its permissions")
    return None


# how libraries that do not raise OSError word a disk error: Rust's std::io (tokenizers, safetensors) says
# "No space left on device (os error 28)" in a plain Exception
_DISK_WORDS = ((errno.ENOSPC, ("no space left on device", "os error 28")),
               (getattr(errno, "EDQUOT", errno.ENOSPC), ("disk quota exceeded", "os error 122")),
               (errno.EROFS, ("read-only file system", "os error 30")))


def os_error_in(exc: BaseException) -> OSError | None:
    """The first disk error in an exception's cause/context chain (libraries wrap disk errors, and some
    raise them as a plain Exception whose message is the system's: that becomes an OSError here)."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            return None
        if isinstance(seen, OSError) and describe_os_error(seen) is not None:
            return seen
        text = str(seen).lower()
        for code, words in _DISK_WORDS:
            if any(w in text for w in words):
                return OSError(code, str(seen).splitlines()[0] if str(seen) else os_strerror(code))
        seen = seen.__cause__ or seen.__context__
    return None


def os_strerror(code: int) -> str:
    import os

    return os.strerror(code)
