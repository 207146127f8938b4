"""Damaged weight files are bad input (exit 2) naming the file and the fix, for every command that reads
them: truncated or overwritten safetensors, an index naming a missing shard, damaged ONNX files."""
import json
import os
import shutil

import pytest

from helpers import error_lines, run, write_ppl_profile


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _truncate(f):
    os.truncate(f, f.stat().st_size // 2)


def _overwrite_length(f):
    with f.open("r+b") as fh:
        fh.write(b"\xff" * 8)


def _break_header(f):
    with f.open("r+b") as fh:
        fh.seek(8)
        fh.write(b"}}}}")


DAMAGE = {"truncated": (_truncate, "(truncated)"), "length overwritten": (_overwrite_length, "header length field"),
          "header not JSON": (_break_header, "header is not valid JSON")}


def _argv(command, model, tmp_path):
    if command == "score":
        return ["score", str(model)]
    if command == "export":
        return ["export", str(model), "--out", str(tmp_path / "onnx")]
    profile = str(write_ppl_profile(tmp_path, 0.5))
    if command == "verify":
        return ["verify", str(model), str(model), "--profile", profile, "--report-dir", str(tmp_path / "reports")]
    return ["run", str(model), "--profile", profile, "--out", str(tmp_path / "art"), "--skip-export"]


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["score", "verify", "export", "run"])
def test_a_damaged_safetensors_file_is_bad_input_naming_it(command, damage, tiny, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny("llama"), model)
    how, words = DAMAGE[damage]
    how(model / "model.safetensors")
    code, _, err = run(_argv(command, model, tmp_path), capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"the weights file {model / 'model.safetensors'} is damaged" in line and words in line, line
    assert line.endswith("re-download or re-save the model (save_pretrained)") and "Traceback" not in err
    assert not any((tmp_path / name).exists() for name in ("onnx", "reports", "art"))


def test_an_index_naming_a_missing_shard_is_bad_input(tiny, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(tiny("llama"))).save_pretrained(str(model), max_shard_size="2MB")
    for f in tiny("llama").glob("tok*"):
        shutil.copy2(f, model / f.name)
    shards = sorted(model.glob("model-*.safetensors"))
    assert len(shards) > 1
    code, _, err = run(["score", str(model), "--method", "last-k"], capsys)  # the intact sharded model loads
    assert code == 0, err
    shards[-1].unlink()
    code, _, err = run(["score", str(model)], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"model.safetensors.index.json names shard {shards[-1].name}, which is not in {model}" in line
    (model / "model.safetensors.index.json").write_text("{not json")
    code, _, err = run(["score", str(model)], capsys)
    assert code == 2 and "is damaged: it is not a shard index" in err, err


def test_an_intact_file_has_no_problem(tiny):
    from compressor.sources.integrity import safetensors_problem

    assert safetensors_problem(tiny("llama") / "model.safetensors") is None


@pytest.mark.optimum
@pytest.mark.parametrize("damage", ["data truncated", "data missing", "graph overwritten"])
def test_a_damaged_onnx_export_is_bad_input_naming_the_file(damage, tiny_onnx, tiny, tmp_path, capsys):
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_onnx("llama"), folder)
    data, graph = folder / "model.onnx_data", folder / "model.onnx"
    if damage == "data truncated":
        _truncate(data)
    elif damage == "data missing":
        data.unlink()
    else:
        with graph.open("r+b") as fh:
            fh.write(b"\xff" * 16)
    profile = str(write_ppl_profile(tmp_path, 0.5))
    for argv in (["verify", str(tiny("llama")), str(folder), "--profile", profile, "--report-dir", str(tmp_path / "r")],
                 ["bench", str(folder)]):
        code, _, err = run(argv, capsys)
        assert code == 2, err
        (line,) = error_lines(err)
        named = graph if damage == "graph overwritten" else data
        assert str(named) in line and ("damaged" in line or "missing" in line), line
        assert line.endswith("re-export it with `avss export`") and "Traceback" not in err
    assert json.loads((folder / "config.json").read_text())  # nothing else was touched


def test_a_damaged_config_is_named_as_damaged(tiny, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny("llama"), model)
    (model / "config.json").write_text("{bad")
    code, _, err = run(["score", str(model)], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"the config file {model / 'config.json'} is damaged: it is not valid JSON" in line
    assert line.endswith("re-download or re-save the model (save_pretrained)")
