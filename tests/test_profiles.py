"""Profile schema: shipped profiles load; errors name the file, the field and what was expected."""
from pathlib import Path

import pytest

from compressor.errors import BadInput
from compressor.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_profiles_load():
    for p in sorted((ROOT / "profiles").glob("*.yaml")):
        prof = load_profile(p)
        assert prof.name and prof.calibration.samples >= 1


@pytest.mark.parametrize("text,needle", [
    ("name: x\ncalibrashun: {}\n", "calibrashun: Extra inputs are not permitted"),
    ("name: x\ncalibration: {samples: 0}\n", "calibration.samples"),
    ("name: x\nmodel_kind: seq2seq\n", "model_kind"),
    ("description: no name\n", "field name"),
    ("- a list\n", "must be a YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: x\ntasks: [{name: a, kind: perplexity, data: builtin:python-docs, windw: 5}]\n", "tasks.0.windw: Extra inputs"),
    ("name: x\ntasks: [{name: a, kind: summarize, data: f.txt}]\n", "tasks.0"),
    ("name: x\ntasks: [{name: a, kind: zero-shot-classification, data: builtin:rt-sentiment}]\n", "tasks.0.labels: Field required"),
    ("name: x\ntasks: [{name: a, kind: perplexity, data: d.txt, window: 16, stride: 32}]\n", "stride (32) must not exceed window (16)"),
    ("name: x\ntasks: [{name: a, kind: perplexity, data: d.txt}, {name: a, kind: perplexity, data: e.txt}]\n", "task names must be unique"),
    ("name: x\ntasks: [{name: a, kind: classification, data: d.jsonl}]\n", "needs model_kind sequence-classification"),
    ("name: x\ngate: {min_retention: 0.9, aggregate: any}\n", "gate.aggregate"),
    ("name: x\ngate: {confidence: 0.3}\n", "gate.confidence"),
])
def test_profile_errors(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(BadInput) as e:
        load_profile(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_score_takes_calibration_from_a_profile(tiny, tmp_path, text_file, capsys):
    from compressor.cli.app import main

    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: t\ncalibration: {{source: {text_file}, samples: 3, seq_len: 24, batch_size: 2}}\n")
    with pytest.raises(SystemExit) as e:
        main(["score", str(tiny("llama")), "--profile", str(prof), "--out", str(tmp_path / "s.json")])
    assert e.value.code == 0
    import json

    cal = json.loads((tmp_path / "s.json").read_text())["calibration"]
    assert cal["source"] == str(text_file) and cal["samples"] == 3 and cal["seq_len"] == 24
    with pytest.raises(SystemExit) as e:
        main(["score", str(tiny("llama")), "--profile", str(prof), "--data", str(text_file)])
    assert e.value.code == 2
