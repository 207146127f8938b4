"""Atomic writes, in one place: a crash or Ctrl-C never leaves a half-written file or folder.

Temporary files and folders are created with ``os.open``/``os.mkdir`` and the usual modes, so the
kernel applies the process umask *at that moment*: nothing here reads or changes the umask (which
would be process-wide and racy).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from compressor.errors import BadInput, RuntimeFailure
from compressor.errors import describe_os_error as describe_os_error  # re-exported
from compressor.errors import os_error_in as os_error_in  # re-exported

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

# ``.NAME.tmp-PID-XXXXXXXX`` (staging) and ``.NAME.old-PID`` (an old copy being replaced): the pid says
# whether the process that made it is still alive, so a leftover is removed only when its owner is gone
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:(?P<kind>tmp)-(?P<pid>\d+)-[0-9a-f]{8}|(?P<okind>old)-(?P<opid>\d+))$")


def _tmp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a pid we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(p: Path) -> None:
    """Remove a file, a link or a folder tree (a link is removed, never followed)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def clean_leftovers(target: Path, any_owner: bool = False) -> list[str]:
    """Remove what killed processes left beside ``target``: its staging entries and hidden old copies.

    Only entries named for ``target`` by this module (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) whose
    process is gone are touched; ``any_owner`` (a caller holding the folder's lock) also takes those of
    live pids and the pid-less names of older versions. A hidden old copy is *restored* when the target
    itself is missing (a replace killed between its two renames), else removed. Returns one line per action.
    """
    target = Path(target)
    parent, name = target.parent, target.name
    if not parent.is_dir():
        return []
    done: list[str] = []
    olds: list[Path] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _LEFTOVER.match(p.name)
        legacy = any_owner and p.name.startswith(f".{name}.tmp-") and m is None
        if not legacy and (m is None or m["name"] != name):
            continue
        if m is not None and not any_owner:
            pid = int(m["pid"] or m["opid"])
            if pid == os.getpid() or pid_alive(pid):
                continue
        if m is not None and m["okind"]:
            olds.append(p)
            continue
        remove_path(p)
        done.append(f"removed {p.name}, left by an interrupted process")
    for old in olds:
        if not target.exists() and not target.is_symlink():
            os.replace(old, target)
            done.append(f"restored {name} from {old.name} (a replace was interrupted between its two renames)")
        else:
            remove_path(old)
            done.append(f"removed {old.name}, an old copy left by an interrupted replace")
    return done


def atomic_write_text(path: Path, text: str) -> None:
    """Write next to the target, then rename."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _tmp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, like any new file
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_figure(fig: Figure, path: Path) -> Path:
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


def check_output_dir(out: str | Path, force: bool, note: Callable[[str], None] | None = None) -> Path:
    """An existing output folder is replaced only with ``--force``; the place must be writable now.

    What killed processes left beside it is cleaned first (and an interrupted replace rolled back), so
    the ``--force`` rule applies to what is really there.
    """
    out = Path(out)
    check_target(out, "output")
    for line in clean_leftovers(out):
        if note:
            note(line)
    if out.exists() and not force:
        raise BadInput(f"output {out} already exists", "pass --force to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a folder", "choose another --out")
    check_writable(out)
    return out


def check_target(out: Path, what: str = "--out") -> None:
    """A path every output can name, before anything is written: the records, reports and model card
    hold it as UTF-8 text, so a byte that is not UTF-8 used to fail as an internal error halfway through
    a run; a dangling symlink would make ``mkdir`` fail with a confusing 'file exists'."""
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(out)).decode("utf-8", "backslashreplace")
        raise BadInput(f"{what} {shown} has a byte that is not UTF-8 text, which the records and reports written "
                       "there must name", "choose a path of UTF-8 characters (rename the folder)") from None
    if out.is_symlink() and not out.exists():
        raise BadInput(f"{what} {out} is a symbolic link to {os.readlink(out)}, which does not exist",
                       "create the link's target folder, remove the link, or choose another path")


def check_output_file(path: str | Path, what: str, force: bool) -> Path:
    """A file a command will write when it is done: checked before the work (a path under a file, a
    folder in its place or an unwritable place used to fail after the compute, as an internal error)."""
    f = Path(path)
    check_target(f, what)
    if f.is_dir():
        raise BadInput(f"{what} {f} is a folder", "give a file name")
    if f.exists() and not force:
        raise BadInput(f"output {f} already exists", "pass --force to replace it, or choose another name")
    folder = _nearest_existing(f.parent)  # a file is written beside itself and renamed: its folder must take it
    if not folder.is_dir():
        raise BadInput(f"cannot write {f}: {folder} is a file, not a folder", "choose a path whose folders are folders")
    check_writable(folder)
    return f


def check_report_dir(folder: str | Path, what: str = "--report-dir") -> Path:
    """A folder reports are (re)written into: it may exist, but must be a folder, and writable now."""
    out = Path(folder)
    check_target(out, what)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{what} {out} is a file, not a folder", f"choose a folder for {what}")
    check_writable(out)  # also: a file where one of its folders should be
    return out


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(out: Path) -> None:
    """Fail before any work when ``out`` (or the folder it will be created in) cannot be written."""
    anc = _nearest_existing(out.parent if not out.exists() else out)
    if not anc.is_dir() and anc != out.absolute():
        raise BadInput(f"cannot write {out}: {anc} is a file, not a folder", "choose a path whose folders are folders")
    if os.access(anc, os.W_OK | os.X_OK):
        return
    why = "permission denied"
    try:
        if os.statvfs(anc).f_flag & os.ST_RDONLY:
            why = "read-only file system"
    except OSError:  # pragma: no cover - statvfs is always there on Linux/macOS
        pass
    raise BadInput(f"cannot write {out}: {anc} is not writable ({why})", "choose an output folder you can write to")


def check_free_space(where: Path, need_bytes: int, what: str) -> None:
    """Refuse to start work whose outputs cannot fit: a full disk found after an hour of compute helps nobody."""
    anc = _nearest_existing(Path(where))
    free = shutil.disk_usage(anc).free
    if free < need_bytes:
        raise RuntimeFailure(f"not enough free space for {what} in {anc}: about {need_bytes / 2**20:,.0f} MB needed, "
                             f"{free / 2**20:,.0f} MB free", "free some space there, or choose --out on a larger disk")


def staging_dir(out: Path) -> Path:
    """A temporary folder beside ``out`` (same file system, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = out.parent / _tmp_name(out.name)
        try:
            os.mkdir(tmp, 0o777)  # 0777 & ~umask: the published folder is as readable as any new folder
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``, replacing an old one.

    Two renames (old aside, new in); a failure (or a signal) between them puts the old copy back, and
    one killed there is restored by ``clean_leftovers`` on the next start.
    """
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if old.exists() or old.is_symlink():
        remove_path(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    remove_path(old)


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


def make_temp_dir(prefix: str) -> Path:
    """A folder in the system temp dir named with our pid, so ``clean_temp`` can tell a dead owner's."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-"))


def clean_temp(prefix: str) -> int:
    """Remove temp folders ``make_temp_dir(prefix)`` made for processes that no longer run; returns how many."""
    import tempfile

    n = 0
    pat = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    for p in Path(tempfile.gettempdir()).glob(f"{prefix}-*"):
        m = pat.match(p.name)
        if m and int(m[1]) != os.getpid() and not pid_alive(int(m[1])):
            remove_path(p)
            n += 1
    return n


class FolderLock:
    """An exclusive, non-blocking lock on a folder (``flock`` on a file in it), naming its holder.

    Why non-blocking: a second ``avss run`` on the same folder must stop at once, naming the first,
    not wait for hours or (as before) delete the first run's live staging folders. The kernel releases
    an ``flock`` when its process dies, so a lock file left by a killed run is simply taken over;
    ``previous`` then names that dead process for the log.
    """

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self.fd: int | None = None
        self.previous: dict[str, Any] | None = None

    def acquire(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')}, started {holder.get('started', '?')}" if holder else "another process")
            raise BadInput(f"{self.what} is in use by another avss run ({who})",
                           "wait for it to finish, or choose another --out") from None
        prev = _read_holder(fd)
        if prev and prev.get("pid") != os.getpid() and not pid_alive(int(prev.get("pid") or 0)):
            self.previous = prev
        me = json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # a clean exit leaves no holder to report
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        d = json.loads(data) if data.strip() else None
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


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
