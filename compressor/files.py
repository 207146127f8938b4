"""Atomic writes, in one place: a crash or Ctrl-C never leaves a half-written file or folder.

Temporary files and folders are created with ``os.open``/``os.mkdir`` and the usual modes, so the
kernel applies the process umask *at that moment*: nothing here reads or changes the umask (which
would be process-wide and racy).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from compressor.errors import BadInput


def atomic_write_text(path: Path, text: str) -> None:
    """Write next to the target, then rename."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, like any new file
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure to PNG in memory, close it, then write it atomically."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def check_output_dir(out: str | Path, force: bool) -> Path:
    """An existing output folder is replaced only with ``--force``."""
    out = Path(out)
    if out.exists() and not force:
        raise BadInput(f"output {out} already exists", "pass --force to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a folder", "choose another --out")
    return out


def staging_dir(out: Path) -> Path:
    """A temporary folder beside ``out`` (same file system, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)  # 0777 & ~umask: the published folder is as readable as any new folder
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``, replacing an old one."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) held for the block; released if the process dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def build_once(target: Path, is_complete: Callable[[Path], bool], build_into: Callable[[Path], None]) -> Path:
    """Build a shared cache folder exactly once, even with several processes at the same time.

    Why: two CI jobs sharing one ``$AVSS_CACHE`` used to build the same built-in model side by side
    and replace each other's folder mid-read. Here the first process builds into a staging folder and
    renames it into place under a lock; the others wait for the lock and then use the finished folder.
    """
    target = Path(target)
    if is_complete(target):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # built by another process while we waited
            return target
        tmp = staging_dir(target)
        try:
            build_into(tmp)
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
