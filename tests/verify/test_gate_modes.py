"""Every gate mode: the verdict, report.md, junit.xml and the exit code agree with one another."""
import json
import xml.etree.ElementTree as ET

import pytest

from compressor.verify.gate import aggregate_verdict, retention, task_passes
from helpers import run
from verify.conftest import write_profile


def test_rule_all_mean_and_task_thresholds():
    # all: each task at its own threshold, else the gate's
    assert task_passes(0.95, None, 0.9, "all") is True
    assert task_passes(0.95, 0.97, 0.9, "all") is False
    assert aggregate_verdict([0.95, 0.85], [True, False], 0.9, "all") == (False, 0.85)
    # mean: tasks without a threshold only count in the mean; a task threshold still wins
    assert task_passes(0.5, None, 0.9, "mean") is None
    assert aggregate_verdict([1.0, 0.85], [None, None], 0.9, "mean") == (True, pytest.approx(0.925))
    assert aggregate_verdict([1.0, 0.85], [None, False], 0.9, "mean")[0] is False
    assert aggregate_verdict([0.8, 0.85], [None, None], 0.9, "mean")[0] is False


def test_retention_is_undefined_for_a_zero_base():
    with pytest.raises(ValueError):
        retention(True, 0.0, 0.5)  # acc: higher is better
    assert retention(False, 10.0, 20.0) == 0.5  # perplexity: lower is better


def profile(files, gate, mc_threshold=None):
    mc = {"name": "mc", "kind": "multiple-choice", "data": str(files / "mc.jsonl"), "metric": "acc"}
    if mc_threshold is not None:
        mc["min_retention"] = mc_threshold
    return {"name": "modes", "model_kind": "causal-lm",
            "calibration": {"source": str(files / "ppl.txt"), "samples": 2, "seq_len": 16},
            "tasks": [{"name": "ppl", "kind": "perplexity", "data": str(files / "ppl.txt"), "limit": 96,
                       "window": 48, "stride": 24}, mc],
            "gate": {"min_retention": 0.9, **gate}, "eval": {"batch_size": 2, "max_length": 128, "seed": 0}}


def verdicts(tmp_path, code):
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    md = (tmp_path / "r" / "report.md").read_text()
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    failures = sorted(c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None)
    assert rep["passed"] == (code == 0) == (int(suite.get("failures")) == 0) == ("✅ passed" in md)
    return rep, md, suite, failures


@pytest.mark.parametrize("gate,mc_threshold,code,failures", [
    ({"aggregate": "all"}, None, 0, []),
    ({"aggregate": "all"}, 1.5, 1, ["mc"]),
    # the mean passes (1.0 >= 0.9) but the task's own threshold does not: the gate fails, JUnit agrees
    ({"aggregate": "mean"}, 1.5, 1, ["mc"]),
    ({"aggregate": "mean", "min_retention": 1.5}, None, 1, ["mean retention"]),
    ({"aggregate": "mean"}, None, 0, []),
    ({"aggregate": "all", "confidence": 0.9, "bootstrap_samples": 100}, None, 0, []),
    ({"aggregate": "mean", "confidence": 0.9, "bootstrap_samples": 100}, 1.5, 1, ["mc"]),
])
def test_every_mode_agrees_with_itself(tiny, task_files, tmp_path, capsys, monkeypatch, gate, mc_threshold, code, failures):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    prof = write_profile(tmp_path / "p.yaml", profile(task_files, gate, mc_threshold))
    model = str(tiny("llama"))
    got, out, err = run(["verify", model, model, "--profile", str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    assert got == code, err
    rep, md, suite, fails = verdicts(tmp_path, got)
    assert fails == failures
    if gate["aggregate"] == "mean":
        assert suite.get("tests") == "3"  # one case per task plus the mean
        by_name = {t["name"]: t for t in rep["tasks"]}
        assert by_name["ppl"]["passed"] is None and "in mean" in md  # counted in the mean only
    if code == 1:
        assert "retention gate failed" in err and rep["passed"] is False
        assert all(f in md for f in failures if f != "mean retention")


def test_zero_base_is_bad_input_unless_reported(tiny, task_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    data = profile(task_files, {})
    data["tasks"].append({"name": "gen", "kind": "generation", "data": str(task_files / "gen.jsonl"),
                          "max_new_tokens": 4, "metric": "f1"})  # the random model never gets it right: base 0
    prof = write_profile(tmp_path / "p.yaml", data)
    model = str(tiny("llama"))
    code, _, err = run(["verify", model, model, "--profile", str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "task gen: the base model scores 0 on f1" in err and "gate.zero_base: report" in err
    assert not (tmp_path / "r").exists()
    data["gate"]["zero_base"] = "report"
    prof = write_profile(tmp_path / "p.yaml", data)
    code, _, err = run(["verify", model, model, "--profile", str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    gen = next(t for t in rep["tasks"] if t["name"] == "gen")
    assert gen["retention"] is None and gen["passed"] is None and "not gated (base 0)" in (tmp_path / "r" / "report.md").read_text()
