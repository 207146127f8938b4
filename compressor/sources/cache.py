"""Where converted built-in models and cached results live (``$AVSS_CACHE``).

Why it is checked before any work: a cache path under a file, a file, a read-only or a pseudo
file system (``/proc``) used to surface as an "unexpected NotADirectoryError" after minutes of
scoring and pruning. ``check_cache`` tries the place for real (create it, write and remove a probe
file) and names the variable to fix; commands that do not use the cache (``--no-cache`` with local
models) never call it.
"""
from __future__ import annotations

import os
from pathlib import Path

from compressor.errors import BadInput

# file systems that are views of the kernel, not storage: a cache there is never what the user meant
_PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
           "pstore", "bpf", "configfs", "fusectl", "mqueue", "autofs", "binfmt_misc", "efivarfs", "nsfs"}
_CHECKED: set[str] = set()


def cache_location() -> tuple[Path, str]:
    """(the cache folder, the setting it comes from: AVSS_CACHE, XDG_CACHE_HOME or HOME)."""
    env = os.environ.get("AVSS_CACHE")
    if env:
        return Path(env).expanduser(), "AVSS_CACHE"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "avss-compressor", "XDG_CACHE_HOME"
    return Path(os.path.expanduser("~")) / ".cache" / "avss-compressor", "HOME"


def _fs_type(path: Path) -> str | None:
    """The file-system type of the mount holding ``path`` (Linux ``/proc/self/mounts``; else None)."""
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    best, kind = "", None
    p = str(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


def _problem(root: Path) -> str | None:
    """Why ``root`` cannot hold the cache, or None once it has been created and written to."""
    absolute = Path(os.path.abspath(root))
    probe = absolute
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            return f"{probe} is a symbolic link to {os.readlink(probe)}, which does not exist"
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return "it is a file" if probe == absolute else f"{probe} is a file, not a folder"
    kind = _fs_type(probe.resolve())
    if kind in _PSEUDO:
        return f"it is on a {kind} pseudo file system, which holds no files"
    try:
        absolute.mkdir(parents=True, exist_ok=True)
        test = absolute / f".write-test-{os.getpid()}"
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            test.unlink(missing_ok=True)
    except OSError as exc:
        return exc.strerror.lower() if exc.strerror else type(exc).__name__
    return None


def check_cache(alternative: str = "") -> Path:
    """The cache folder, created and known writable; ``BadInput`` (exit 2) naming the variable otherwise
    (``alternative``: the command's own way around it, e.g. "or pass --no-cache")."""
    root, source = cache_location()
    if str(root) in _CHECKED:
        return root
    problem = _problem(root)
    if problem is not None:
        where = {"AVSS_CACHE": f"AVSS_CACHE={root}", "XDG_CACHE_HOME": f"the cache folder {root} (from XDG_CACHE_HOME)",
                 "HOME": f"the cache folder {root} (from HOME)"}[source]
        raise BadInput(f"{where} cannot hold the cache: {problem}",
                       "set AVSS_CACHE to a folder you can write to (e.g. export AVSS_CACHE=$HOME/.cache/avss-compressor)"
                       + (f", {alternative}" if alternative else ""))
    _CHECKED.add(str(root))
    return root


def cache_dir() -> Path:
    return check_cache()
