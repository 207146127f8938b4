"""``--stream`` from the command line: the same scores and the same checkpoint as in memory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import error_lines, run


def _scores(path):
    return [layer["score"] for layer in json.loads(path.read_text())["layers"]]


def test_score_stream_equals_in_memory(tiny, text_file, tmp_path, capsys):
    common = ["score", str(tiny("qwen2")), "--method", "avss", "--data", str(text_file), "--samples", "6",
              "--seq-len", "48", "--batch-size", "3"]
    code, _, err = run([*common, "--no-stream", "--out", str(tmp_path / "a.json")], capsys)
    assert code == 0, err
    code, _, err = run([*common, "--stream", "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0, err
    assert "streamed" in err  # the loader says the model is streamed
    assert _scores(tmp_path / "a.json") == _scores(tmp_path / "b.json")


@pytest.mark.parametrize("argv, needle", [
    (["score", "{m}", "--method", "sleb", "--stream"], "--method sleb runs the whole model many times"),
    (["prune", "{m}", "--method", "leave-one-out", "--num-layers", "1", "--stream", "--out", "{o}"],
     "--method leave-one-out runs the whole model many times"),
    (["prune", "{m}", "--method", "avss", "--num-layers", "1", "--repair", "linear+distill", "--stream", "--out", "{o}"],
     "--repair distill trains on the whole model"),
])
def test_stream_refusals_are_one_line_before_loading(tiny, tmp_path, capsys, argv, needle):
    argv = [a.format(m=tiny("llama"), o=tmp_path / "out") for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2 and len(error_lines(err)) == 1 and needle in err, err
    assert "Traceback" not in err and "loading" not in err  # refused before the model loads
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repair", ["none", "linear"])
def test_prune_stream_writes_the_in_memory_checkpoint(tiny, text_file, tmp_path, capsys, repair):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    common = ["prune", str(tiny("llama")), "--method", "block-influence", "--num-layers", "2", "--repair", repair,
              "--data", str(text_file), "--samples", "6", "--seq-len", "48", "--batch-size", "3"]
    code, _, err = run([*common, "--no-stream", "--out", str(tmp_path / "mem")], capsys)
    assert code == 0, err
    code, _, err = run([*common, "--stream", "--out", str(tmp_path / "str")], capsys)
    assert code == 0, err
    a, b = load_file(str(tmp_path / "mem" / "model.safetensors")), load_file(str(tmp_path / "str" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = json.loads((tmp_path / "mem" / "compression.json").read_text())
    cb = json.loads((tmp_path / "str" / "compression.json").read_text())
    assert ca["removed_layers"] == cb["removed_layers"] and ca["parameters_after"] == cb["parameters_after"]
    if repair == "linear":
        assert cb["repair"]["streamed"] is True
        assert cb["repair"]["linear"]["spans"] == ca["repair"]["linear"]["spans"]
    m = AutoModelForCausalLM.from_pretrained(str(tmp_path / "str"))
    assert m.config.num_hidden_layers == 2


def test_verify_stream_equals_in_memory_and_refuses_whole_model_tasks(tiny, tmp_path, capsys):
    from helpers import write_ppl_profile

    base = str(tiny("llama"))
    code, _, err = run(["prune", base, "--method", "block-influence", "--num-layers", "1", "--profile",
                        str(write_ppl_profile(tmp_path, 0.01)), "--out", str(tmp_path / "slim")], capsys)
    assert code == 0, err
    profile = str(write_ppl_profile(tmp_path, 0.01))
    reports = {}
    for flag in ("--no-stream", "--stream"):
        code, _, err = run(["verify", base, str(tmp_path / "slim"), "--profile", profile, flag, "--no-cache",
                            "--report-dir", str(tmp_path / flag)], capsys)
        assert code == 0, err
        reports[flag] = json.loads((tmp_path / flag / "report.json").read_text())
    assert "streamed" in err
    a, b = (r["tasks"][0] for r in reports.values())
    assert a["base"] == pytest.approx(b["base"], rel=1e-6) and a["candidate"] == pytest.approx(b["candidate"], rel=1e-6)
    default = Path(__file__).resolve().parents[2] / "profiles" / "default.yaml"  # multiple-choice and more
    code, _, err = run(["verify", base, str(tmp_path / "slim"), "--profile", str(default), "--stream",
                        "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "needs the whole model" in err, err
    assert "loading" not in err
