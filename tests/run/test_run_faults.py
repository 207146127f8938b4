"""Faults in `avss run`: folders it does not own, the lock, SIGTERM, and bad input found before any work."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers import error_lines, run

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--num-layers", "1", "--skip-bench"]


def _decoys(folder: Path) -> list[Path]:
    """Files a user keeps in a project: hidden temp-looking names included, at every depth."""
    made = [folder / ".notes.tmp-2024", folder / ".git" / "objects" / ".pack.tmp-1", folder / "build" / ".cache.tmp-abc" / "x",
            folder / ".model.tmp-2024", folder / "mydata" / ".run.json.tmp-9"]
    for p in made:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the user's")
    return made


def test_a_folder_that_is_not_a_run_folder_is_refused_and_left_alone(tiny, tmp_path, ppl_profile, capsys, monkeypatch):
    project = tmp_path / "project"
    decoys = _decoys(project)
    for out in (str(project), "."):
        monkeypatch.chdir(project)
        code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", out, *FAST], capsys)
        assert code == 2, err
        (line,) = error_lines(err)
        assert "is not empty and is not an avss run folder" in line and "choose a new or empty folder" in line
    assert all(p.read_text() == "the user's" for p in decoys)
    assert not (project / ".avss-run").exists() and not (project / "run.json").exists()


def test_a_run_cleans_only_its_own_leftovers(tmp_path):
    from compressor.run.api import RUN_ENTRIES, RUN_FOLDERS, RUN_SCRATCH
    from compressor.run.stages import StageStore

    out = tmp_path / "art"
    (out / ".avss-run").mkdir(parents=True)
    ours = [out / ".model.tmp-123-0123abcd", out / ".onnx.tmp-dead", out / ".cut.old-77", out / ".run.json.tmp-5-89abcdef",
            out / ".search", out / ".avss-run" / ".verify.json.tmp-5-89abcdef", out / "search" / ".scores-avss.json.tmp-1",
            out / "reports" / "onnx" / ".report.json.tmp-5-89abcdef"]
    for p in ours:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if p.name in (".search", ".model.tmp-123-0123abcd") else p.write_text("half")
    (out / "model").mkdir()  # the finished model: an old copy beside it is removed, not restored over it
    decoys = [out / ".notes.tmp-2024", out / "mine" / ".x.tmp-1", out / "model" / ".keep.tmp-1", out / "model-notes.tmp-3"]
    for p in decoys:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the user's")
    store = StageStore(out)
    notes = store.claim(RUN_ENTRIES, RUN_FOLDERS, RUN_SCRATCH)
    store.release()
    assert not [p for p in ours if p.exists()]
    assert all(p.read_text() == "the user's" for p in decoys)
    assert len(notes) == len(ours)


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    """argv and folder of a finished run (everything but the bench), shared by the lock and SIGTERM tests."""
    from compressor.cli.app import main
    from helpers import write_ppl_profile

    folder = tmp_path_factory.mktemp("finished")
    out = folder / "art"
    argv = ["run", str(tiny("llama")), "--profile", str(write_ppl_profile(folder, 0.5)), "--out", str(out),
            "--num-layers", "1"]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--skip-bench"])
    assert e.value.code == 0
    return argv, out


@pytest.mark.optimum
def test_a_second_run_on_the_same_folder_stops_at_once(finished_run, capsys):
    argv, out = finished_run
    argv = argv + ["--skip-bench"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    hold = textwrap.dedent(f"""
        import time
        from compressor.files import FolderLock
        FolderLock({str(out / '.avss-run' / 'lock')!r}, "x").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    other = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        code, _, err = run(argv, capsys)
    finally:
        other.kill()
        other.wait()
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"is in use by another avss run (pid {other.pid}" in line and "choose another --out" in line
    assert "loading" not in err and "loaded" not in err  # refused before the model loads, not after
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "lock"} == before
    code, _, err = run(argv, capsys)  # the holder was killed: its lock is taken over, with a note
    assert code == 0 and f"took over the run folder's lock from pid {other.pid}" in err, err
    record = (out / "run.json").read_bytes()
    code, _, err = run(argv + ["--protect", "0,99"], capsys)  # refused before any stage: run.json untouched
    assert code == 2 and (out / "run.json").read_bytes() == record, err


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.optimum
def test_sigterm_stops_the_run_cleanly_and_the_bench_worker_with_it(finished_run):
    """A real `avss run` in a subprocess, terminated (as by `timeout`, `docker stop`, CI) while benchmarking."""
    import psutil

    argv, out = finished_run  # everything but the bench ran, in-process
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    slow = ["--bench-prompt-len", "8", "--bench-new-tokens", "4", "--bench-runs", "100000", "--bench-warmup", "0",
            "--bench-rounds", "1"]
    p = subprocess.Popen([sys.executable, "-m", "compressor", *argv, *slow], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    worker = None
    deadline = time.time() + 240
    while worker is None and time.time() < deadline and p.poll() is None:
        worker = next((c for c in _children(p.pid) if "_bench_worker" in " ".join(c.cmdline())), None)
        time.sleep(0.1)
    assert worker is not None, p.communicate()[1]
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # never the previous run's verdict
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    (line,) = error_lines(err)
    assert "avss run terminated (SIGTERM)" in line and "resume" in line
    r = json.loads((out / "run.json").read_text())
    assert r["status"] == "interrupted" and r["exit_code"] == 143 and r["error"] == "terminated (SIGTERM)"
    worker.wait(timeout=10) if psutil.pid_exists(worker.pid) else None
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    assert not list(out.glob(".*.tmp-*"))
    import tempfile

    assert not list(Path(tempfile.gettempdir()).glob(f"avss-bench-{p.pid}-*"))


def _config(tmp_path, **fields) -> str:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(fields), encoding="utf-8")
    return str(f)


@pytest.mark.parametrize("case", ["opset", "protect-from-config", pytest.param("prompt-len", marks=pytest.mark.optimum),
                                  "calibration-file", pytest.param("full-disk", marks=pytest.mark.optimum),
                                  "read-only", "dangling-link", "every-layer", "ratio-of-nothing", "search-too-deep",
                                  "no-tasks", "nan-from-config", "inf-from-config", "non-utf8-out"])
def test_bad_input_is_found_before_any_work(case, tiny, tmp_path, ppl_profile, capsys, monkeypatch):
    out = tmp_path / "art"
    prof = ppl_profile(0.5)
    argv = ["run", str(tiny("llama")), "--profile", str(prof), "--out", str(out), "--num-layers", "1"]
    code_wanted, needle = 2, ""
    if case == "every-layer":  # used to be refused by the select stage, after scoring wrote its files
        argv[-1] = "4"
        needle = "cannot remove 4 of 4 layers: at least one layer must remain"
    elif case == "ratio-of-nothing":
        argv[-2:] = ["--ratio", "0.1"]
        needle = "--ratio 0.1 of 4 layers rounds to 0 layers"
    elif case == "search-too-deep":
        argv[-2:] = ["--search", "--max-remove", "4"]
        needle = "--max-remove 4 is more than the 3 layer(s) this 4-layer model can lose"
    elif case == "no-tasks":  # used to be refused at the verify stage, after score, select and prune wrote files
        d = yaml.safe_load(prof.read_text())
        d["tasks"] = []
        prof.write_text(yaml.safe_dump(d))
        needle = "profile 'tiny-ppl' has no tasks, so there is nothing to gate"
    elif case == "nan-from-config":
        argv += ["--config", _config(tmp_path, repair="linear", ridge=float("nan"))]
        needle = "ridge: Input should be a finite number"
    elif case == "inf-from-config":
        argv += ["--config", _config(tmp_path, repair="distill", heal_minutes=float("inf"))]
        needle = "heal_minutes: Input should be a finite number"
    elif case == "non-utf8-out":  # used to fail as an unexpected UnicodeEncodeError, leaving .avss-run behind
        out = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/art\xff"))
        argv[argv.index("--out") + 1] = str(out)
        needle = "has a byte that is not UTF-8 text"
    elif case == "opset":
        argv += ["--opset", "99"]
        needle = "--opset 99 is outside what this exporter supports; use --opset 14..23"
    elif case == "protect-from-config":
        argv += ["--config", _config(tmp_path, protect="0,99")]
        needle = "--protect layer 99 is out of range for a 4-layer model"
    elif case == "prompt-len":
        argv += ["--bench-prompt-len", "250", "--bench-new-tokens", "32"]
        needle = "the benchmark needs 250 prompt + 32 new tokens = 282 positions, but the model has 256"
    elif case == "calibration-file":
        d = yaml.safe_load(prof.read_text())
        d["calibration"]["source"] = str(tmp_path / "gone.txt")
        prof.write_text(yaml.safe_dump(d))
        needle = "gone.txt"
    elif case == "full-disk":
        import shutil
        from collections import namedtuple

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
        code_wanted, needle = 3, "not enough free space for the artifacts of this run"
    elif case == "read-only":
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
        needle = f"cannot write {out}: {tmp_path} is not writable"
    elif case == "dangling-link":
        out.symlink_to(tmp_path / "nowhere")
        needle = "is a symbolic link to"
    code, _, err = run(argv, capsys)
    assert code == code_wanted, err
    (line,) = error_lines(err)
    assert needle in line, line
    assert not out.exists() or out.is_symlink()  # nothing was written
    assert {p.name for p in tmp_path.iterdir()} <= {"art", "profile.yaml", "run.yaml", "text.txt"}, "a file was left"
    assert "unexpected" not in err and "Traceback" not in err
