"""Faults in `avss export` / `avss bench`: kill -9 leftovers, an orphaned worker, disk errors named as such."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import error_lines, run

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _wait_for(check, timeout=180, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}: {proc.communicate()[1]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.optimum
def test_export_killed_with_9_leaves_staging_that_the_next_export_removes(tiny, tmp_path, capsys):
    out = tmp_path / "onnx"
    p = subprocess.Popen([sys.executable, "-m", "compressor", "export", str(tiny("llama")), "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    staged = _wait_for(lambda: list(tmp_path.glob(".onnx.tmp-*")), proc=p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert staged[0].exists() and not out.exists()  # what kill -9 leaves: a staging folder, no output
    code, _, err = run(["export", str(tiny("llama")), "--out", str(out)], capsys)
    assert code == 0, err
    assert f"removed {staged[0].name}, left by an interrupted process" in err
    assert not list(tmp_path.glob(".onnx.tmp-*")) and (out / "model.onnx").is_file()


@pytest.mark.optimum
def test_bench_worker_dies_with_its_parent_and_its_temp_folder_is_cleaned(tiny_onnx, capsys, tmp_path, monkeypatch):
    import psutil

    # an own temp folder: a benchmark in a parallel test worker would also clean up a dead process's folders
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = str(tiny_onnx("llama"))
    p = subprocess.Popen([sys.executable, "-m", "compressor", "bench", model, "--prompt-len", "8", "--new-tokens", "4",
                          "--runs", "100000", "--warmup", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**ENV, "TMPDIR": str(tmp_path)})

    def worker():
        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        return next((c for c in kids if "_bench_worker" in " ".join(c.cmdline())), None)

    w = _wait_for(worker, proc=p)
    p.send_signal(signal.SIGKILL)  # the parent dies without any cleanup
    p.wait()
    try:
        w.wait(timeout=10)  # the worker notices and exits: it must not spin on the CPUs as an orphan
    except psutil.TimeoutExpired:
        w.kill()
        raise AssertionError("the benchmark worker outlived its parent") from None
    left = list(Path(tempfile.gettempdir()).glob(f"avss-bench-{p.pid}-*"))
    assert left  # kill -9 leaves its temp folders ...
    code, _, err = run(["bench", model, "--prompt-len", "8", "--new-tokens", "2", "--runs", "1", "--warmup", "0"], capsys)
    assert code == 0, err
    assert not any(d.exists() for d in left)  # ... and the next benchmark removes them


@pytest.mark.optimum
def test_a_full_disk_during_export_is_named_not_blamed_on_the_pins(tiny, tmp_path, capsys, monkeypatch):
    import optimum.exporters.onnx as ox

    def full(*a, **kw):
        try:
            raise OSError(28, "No space left on device", str(tmp_path / "x" / "model.onnx"))
        except OSError as exc:
            raise RuntimeError("Exporting failed") from exc  # libraries wrap the disk error

    monkeypatch.setattr(ox, "onnx_export_from_model", full)
    code, _, err = run(["export", str(tiny("llama")), "--out", str(tmp_path / "onnx")], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert "no space left on the device while writing" in line and "pins" not in line
    assert not list(tmp_path.glob(".onnx.tmp-*")) and not (tmp_path / "onnx").exists()


@pytest.mark.optimum
def test_a_model_that_is_nan_in_pytorch_is_blamed_on_its_weights_not_the_export(tiny, tmp_path, capsys):
    import torch

    from compressor.sources.models import load_model

    m = load_model(str(tiny("llama")))
    with torch.no_grad():
        for p in m.model.model.layers[1].parameters():
            p.fill_(float("nan"))
    m.model.save_pretrained(str(tmp_path / "nan"))
    m.tokenizer.save_pretrained(str(tmp_path / "nan"))
    code, _, err = run(["export", str(tmp_path / "nan"), "--out", str(tmp_path / "onnx")], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "gives NaN/inf logits in PyTorch itself, so no export can match it" in line
    assert "its weights are broken" in line and "layer_idx" not in line
    assert not (tmp_path / "onnx").exists()
