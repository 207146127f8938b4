"""Atomic writes honour the umask of the moment; shared caches are built once under a lock."""
import os
import subprocess
import sys
import textwrap

from compressor.files import atomic_write_text, build_once, staging_dir


def test_modes_follow_the_umask_set_after_import(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
        private_dir = staging_dir(tmp_path / "private")
    finally:
        os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
        shared_dir = staging_dir(tmp_path / "shared")
    finally:
        os.umask(old)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    assert private_dir.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    assert shared_dir.stat().st_mode & 0o777 == 0o755


def test_importing_never_touches_the_umask():
    code = "import os; os.umask(0o027); import compressor.files; print(oct(os.umask(0)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0o27"


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from compressor.files import build_once

    target, log = Path(sys.argv[1]), Path(sys.argv[2])

    def build(tmp):
        with log.open("a") as fh:
            fh.write("build\\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one builds
        (tmp / "weights.bin").write_bytes(b"w" * 1000)
        (tmp / "config.json").write_text("{}")

    out = build_once(target, lambda t: (t / "config.json").exists(), build)
    assert (out / "weights.bin").stat().st_size == 1000
    print("ok")
""")


def test_two_processes_build_a_cache_folder_exactly_once(tmp_path):
    target, log = tmp_path / "models" / "m", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(log)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert all(r[0].strip() == "ok" for r in results)
    assert log.read_text().splitlines() == ["build"]  # the second process waited and reused it
    assert sorted(p.name for p in target.parent.iterdir()) == [".m.lock", "m"]  # no staging leftovers


def test_build_once_failure_leaves_no_folder(tmp_path):
    def boom(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    try:
        build_once(tmp_path / "m", lambda t: (t / "config.json").exists(), boom)
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock"]
