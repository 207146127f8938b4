"""An unusable $AVSS_CACHE is bad input (exit 2) found before any work; --no-cache never touches it."""
import contextlib
import os
import subprocess

import pytest

from helpers import error_lines, run, write_ppl_profile


def _read_only_mount():
    """A mount point that is read-only for real (``ro`` in /proc/self/mounts, not a pseudo file system)."""
    from compressor.sources.cache import _PSEUDO

    for line in open("/proc/self/mounts", encoding="utf-8"):
        dev, mnt, kind, opts = line.split()[:4]
        if "ro" in opts.split(",") and kind not in _PSEUDO and os.path.isdir(mnt):
            return mnt
    return None


@contextlib.contextmanager
def read_only_folder(path):
    """A folder nobody can write to: a read-only bind mount as root (root ignores permission bits), else mode 0555.
    Where root may not mount (a locked-down container), an existing read-only mount of the machine."""
    path.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True)
        if done.returncode != 0:
            mnt = _read_only_mount()
            if mnt is None:
                pytest.skip(f"as root, a read-only folder needs a bind mount, which failed here "
                            f"({done.stderr.decode().strip()}), and no read-only mount exists")
            yield type(path)(mnt)
            return
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


@contextlib.contextmanager
def bad_cache(kind, tmp_path):
    """(the AVSS_CACHE value, the words the error must use)."""
    if kind == "under a file":
        (tmp_path / "afile").write_text("x")
        yield str(tmp_path / "afile" / "cache"), f"{tmp_path / 'afile'} is a file, not a folder"
    elif kind == "a file":
        (tmp_path / "afile").write_text("x")
        yield str(tmp_path / "afile"), "it is a file"
    elif kind == "pseudo file system":
        yield "/proc/avss-cache", "it is on a proc pseudo file system"
    else:
        with read_only_folder(tmp_path / "ro") as folder:
            yield str(folder / "cache"), "read-only file system" if os.geteuid() == 0 else "permission denied"


KINDS = ["under a file", "a file", "pseudo file system", "read-only"]


@pytest.mark.parametrize("kind", KINDS)
def test_verify_refuses_an_unusable_cache_before_loading_models(kind, tiny, tmp_path, capsys, monkeypatch):
    model = str(tiny("llama"))
    profile = str(write_ppl_profile(tmp_path, 0.5))
    with bad_cache(kind, tmp_path) as (value, words):
        monkeypatch.setenv("AVSS_CACHE", value)
        code, _, err = run(["verify", model, model, "--profile", profile, "--report-dir", str(tmp_path / "r")], capsys)
        assert code == 2, err
        (line,) = error_lines(err)
        assert line.startswith(f"error: AVSS_CACHE={value} cannot hold the cache: ") and words in line, line
        assert "set AVSS_CACHE to a folder you can write to" in line and "or pass --no-cache" in line
        assert "loading" not in err and not (tmp_path / "r").exists()
        code, _, err = run(["verify", model, model, "--profile", profile, "--report-dir", str(tmp_path / "r"),
                            "--no-cache"], capsys)
        assert code == 0, err  # --no-cache does not touch it
        assert not os.path.exists(os.path.join(value, "verify"))


@pytest.mark.parametrize("kind", KINDS)
def test_run_refuses_an_unusable_cache_before_any_stage(kind, tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "art"
    with bad_cache(kind, tmp_path) as (value, words):
        monkeypatch.setenv("AVSS_CACHE", value)
        code, _, err = run(["run", str(tiny("llama")), "--profile", str(write_ppl_profile(tmp_path, 0.5)),
                            "--out", str(out), "--skip-export"], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"AVSS_CACHE={value} cannot hold the cache" in line and words in line, line
    assert not out.exists() and "loading" not in err


def test_a_usable_cache_is_created(tmp_path, monkeypatch):
    from compressor.sources.cache import check_cache

    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "a" / "b"))
    assert check_cache() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is gone
