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
    import os, sys, time
    from pathlib import Path
    from compressor.files import build_once

    target, log = Path(sys.argv[1]), Path(sys.argv[2])

    def other_is_waiting():
        # the kernel lists a process blocked on a flock as "N: -> FLOCK ..." on the lock file's inode
        inode = os.stat(target.parent / f".{target.name}.lock").st_ino
        return any("->" in line and line.split()[-3].endswith(f":{inode}")
                   for line in Path("/proc/locks").read_text().splitlines())

    def build(tmp):
        with log.open("a") as fh:
            fh.write("build\\n")
        deadline = time.monotonic() + 60
        while not other_is_waiting():  # finish only once the other process waits on the lock: no race window
            assert time.monotonic() < deadline, "the other process never waited on the lock"
            time.sleep(0.01)
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

    import pytest

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path / "m", lambda t: (t / "config.json").exists(), boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock"]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_replace_rolls_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    import pytest

    from compressor import files

    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    tmp = files.staging_dir(out)
    (tmp / "weights").write_text("new")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(OSError):
        files.replace_dir(tmp, out)
    monkeypatch.setattr(files.os, "replace", real)
    assert (out / "weights").read_text() == "old"  # rolled back: --out never vanishes
    assert not [p.name for p in tmp_path.iterdir() if ".old-" in p.name]


def test_leftovers_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    from compressor.files import clean_leftovers

    dead = dead_pid()
    out = tmp_path / "slim"
    out.mkdir()
    mine = tmp_path / f".slim.tmp-{dead}-0123abcd"  # a killed prune's staging folder
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"x" * 100)
    live = tmp_path / f".slim.tmp-{os.getpid()}-89abcdef"  # a live process's: never touched
    live.mkdir()
    others = [tmp_path / ".slim.tmp-2024", tmp_path / f".notes.tmp-{dead}-0123abcd", tmp_path / "slim.tmp-1"]
    for p in others:
        p.write_text("user file")
    lines = clean_leftovers(out)
    assert not mine.exists() and live.exists() and all(p.exists() for p in others)
    assert len(lines) == 1 and mine.name in lines[0]


def test_a_replace_killed_between_its_renames_is_rolled_back_on_the_next_start(tmp_path):
    from compressor.files import check_output_dir

    dead = dead_pid()
    out = tmp_path / "slim"
    hidden = tmp_path / f".slim.old-{dead}"  # `--force` moved the old copy aside, then was killed
    hidden.mkdir()
    (hidden / "config.json").write_text("{}")
    notes = []
    import pytest

    from compressor.errors import BadInput

    with pytest.raises(BadInput, match="already exists"):  # the restored copy exists again: --force is needed
        check_output_dir(out, force=False, note=notes.append)
    assert (out / "config.json").exists() and not hidden.exists()
    assert "restored slim" in notes[0]


def test_folder_lock_names_the_live_holder_and_takes_over_a_dead_one(tmp_path):
    import pytest

    from compressor.errors import BadInput
    from compressor.files import FolderLock

    lock = tmp_path / "lock"
    hold = textwrap.dedent(f"""
        import sys, time
        from compressor.files import FolderLock
        FolderLock({str(lock)!r}, "x").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(BadInput) as e:
            FolderLock(lock, "run folder X").acquire()
        assert f"pid {p.pid}" in str(e.value) and "run folder X is in use" in str(e.value)
    finally:
        p.kill()  # kill -9: the kernel drops its flock, its pid stays in the file
        p.wait()
    with FolderLock(lock, "run folder X") as taken:
        assert taken.previous["pid"] == p.pid
    with FolderLock(lock, "run folder X") as again:  # a clean release leaves no holder to report
        assert again.previous is None


def test_temp_folders_of_dead_processes_are_cleaned(tmp_path, monkeypatch):
    import tempfile

    from compressor.files import clean_temp, make_temp_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = dead_pid()
    stale = tmp_path / f"avss-bench-{dead}-xyz"
    stale.mkdir()
    mine = make_temp_dir("avss-bench")
    other = tmp_path / "avss-benchmarks-of-the-user"
    other.mkdir()
    assert clean_temp("avss-bench") == 1
    assert not stale.exists() and mine.exists() and other.exists()
