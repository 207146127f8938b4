"""Atomic writes, in one place: a crash or Ctrl-C never leaves a half-written file or folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from compressor.errors import BadInput

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write next to the target, then rename."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should be as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the published folder should not be private
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``, replacing an old one."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
