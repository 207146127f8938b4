"""Our import names never collide with a user's files: every command runs from a folder that holds
decoy export.py, compressor.py, optimum.py and onnxruntime.py modules that fail loudly if imported."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DECOY = "raise SystemExit('DECOY {name} WAS IMPORTED')\n"


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
def test_every_command_ignores_decoy_modules_in_the_working_directory(tiny, tmp_path):
    import pydoc_data.topics as t

    work = tmp_path / "project"
    work.mkdir()
    for name in ("export", "compressor", "optimum", "onnxruntime"):
        (work / f"{name}.py").write_text(DECOY.format(name=name))
    text = work / "text.txt"
    text.write_text("\n\n".join(t.topics[k] for k in sorted(t.topics)[40:44]), encoding="utf-8")
    prof = {"name": "decoy", "calibration": {"source": str(text), "samples": 2, "seq_len": 32, "batch_size": 2},
            "tasks": [{"name": "ppl", "kind": "perplexity", "data": str(text), "limit": 64, "window": 64, "stride": 64}],
            "gate": {"min_retention": 0.1}, "eval": {"batch_size": 2, "max_length": 64}}
    (work / "p.yaml").write_text(yaml.safe_dump(prof), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    from compressor.compat import optimum_missing

    # the lane's default exporter: Optimum takes any head size, the current lane's GenAI builder needs 16
    arch = "llama" if optimum_missing() is None else "llama-gqa16"
    model = str(tiny(arch))
    layers = json.loads((tiny(arch) / "config.json").read_text())["num_hidden_layers"]
    # the console script, as a user starts it
    r = subprocess.run([str(Path(sys.executable).with_name("avss")), "--help"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "DECOY" not in r.stdout + r.stderr, r.stderr
    # then every command in one process (one torch import), started like the console script: the
    # driver's own folder, not the working directory, is sys.path[0]
    # (`avss run` calls the same library functions as these, in one process)
    commands = [
        ["score", model, "--data", "text.txt", "--samples", "2", "--seq-len", "16", "--out", "s.json"],
        ["prune", model, "--scores", "s.json", "--num-layers", "1", "--out", "slim"],
        ["verify", model, "slim", "--profile", "p.yaml", "--report-dir", "rep"],
        ["export", "slim", "--out", "onnx-slim"],
        ["bench", "onnx-slim", "--prompt-len", "8", "--new-tokens", "2", "--runs", "1", "--warmup", "0",
         "--json", "bench.json"],
    ]
    driver = tmp_path / "driver" / "avss_driver.py"
    driver.parent.mkdir()
    driver.write_text(DRIVER)
    r = subprocess.run([sys.executable, str(driver), json.dumps(commands)], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)
    assert "DECOY" not in r.stdout + r.stderr, r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    assert [l for l in r.stdout.splitlines() if l in ("ok",) or l.startswith("FAILED")] == ["ok"] * len(commands)
    assert (work / "onnx-slim" / "model.onnx").is_file() and (work / "rep" / "report.json").is_file()
    assert json.loads((work / "bench.json").read_text())["models"][0]["layers"] == layers - 1  # the worker really ran


DRIVER = r"""
import json, sys
from compressor.cli.app import main

for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            print("FAILED", argv[0], exc.code, flush=True)
            sys.exit(1)
    print("\nok", flush=True)
"""
