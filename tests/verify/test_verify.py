"""The gate end to end: identity, failing case, cache, bootstrap, reports, exit codes."""
import json
import xml.etree.ElementTree as ET

import pytest

from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.api import verify
from compressor.verify.gate import retention
from helpers import run
from verify.conftest import causal_profile, write_profile


def test_retention_definitions():
    from compressor.verify.kinds.base import kind

    # each kind declares its metrics' direction: perplexity is lower-is-better, accuracy higher
    assert not kind("perplexity").higher_is_better("perplexity") and kind("classification").higher_is_better("accuracy")
    assert not kind("lm-eval").higher_is_better("word_perplexity") and kind("lm-eval").higher_is_better("acc_norm")
    assert retention(kind("perplexity").higher_is_better("perplexity"), 20.0, 40.0) == 0.5  # base / candidate
    assert retention(kind("classification").higher_is_better("accuracy"), 0.8, 0.6) == pytest.approx(0.75)  # cand / base
    assert retention(kind("multiple-choice").higher_is_better("acc_norm"), 0.5, 0.5) == 1.0


def test_identity_passes_with_retention_exactly_one(tiny, task_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    prof = write_profile(tmp_path / "p.yaml", causal_profile(task_files))
    model = str(tiny("llama"))
    code, out, err = run(["verify", model, model, "--profile", str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["passed"] is True and rep["schema_version"] == 3 and rep["min_retention"] == 0.9
    assert [t["name"] for t in rep["tasks"]] == ["ppl", "zs", "mc", "gen"]
    for t in rep["tasks"]:
        if t["base"] == 0:  # the random model never produces the answer: undefined, reported, not gating
            assert t["retention"] is None and t["passed"] is None and t["name"] == "gen"
            assert any(w.startswith("task gen:") and "does not gate" in w for w in rep["warnings"])
            continue
        assert t["retention"] == 1.0 and t["agreement"] == 1.0 and t["passed"] and t["n"] > 0
        assert {"name", "kind", "metric", "base", "candidate", "retention", "threshold", "passed", "agreement", "n"} <= set(t)
    assert "passed" in (tmp_path / "r" / "report.md").read_text() and "passed" in summary.read_text()
    # the tiny profile calibrates on the very file its perplexity task evaluates: flagged by hash
    assert any(w.startswith("task ppl:") and "also appear in the calibration data" for w in rep["warnings"])
    assert not any(w.startswith("task mc:") for w in rep["warnings"])
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0"


def test_failing_gate_writes_reports_and_exits_1(tiny, task_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    data = causal_profile(task_files)
    data["tasks"][2]["min_retention"] = 1.5  # unreachable for an identical model: retention is 1.0
    prof = write_profile(tmp_path / "p.yaml", data)
    model = str(tiny("llama"))
    code, out, err = run(["verify", model, model, "--profile", str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 1
    assert [l for l in err.splitlines() if l.startswith("error:")] == [
        l for l in err.splitlines() if "retention gate failed" in l and "mc 1.000 < 1.50" in l]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["passed"] is False and [t["passed"] for t in rep["tasks"]] == [True, True, False, None]
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["mc"]
    assert "FAIL" in (tmp_path / "r" / "report.md").read_text()


def test_pruned_candidate_and_min_retention_override(tiny, task_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    prof = write_profile(tmp_path / "p.yaml", causal_profile(task_files))
    model = str(tiny("llama"))
    code, _, err = run(["prune", model, "--method", "random", "--num-layers", "2", "--out", str(tmp_path / "slim")], capsys)
    assert code == 0, err
    code, out, err = run(["verify", model, str(tmp_path / "slim"), "--profile", str(prof),
                          "--min-retention", "0.01", "--report-dir", str(tmp_path / "r")], capsys)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["candidate"]["num_layers"] == 2 and rep["base"]["num_layers"] == 4
    assert rep["min_retention"] == 0.01 and all(t["threshold"] == 0.01 for t in rep["tasks"])
    ppl = rep["tasks"][0]
    assert ppl["retention"] == pytest.approx(ppl["base"] / ppl["candidate"])
    assert ppl["base"] != ppl["candidate"]
    assert code == (0 if rep["passed"] else 1)


def test_base_results_are_cached(tiny, task_files, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    profile = Profile.model_validate(causal_profile(task_files))
    base = load_model(str(tiny("llama")))
    first = verify(base, base, profile)
    assert first.tasks[0].cached == {"base": False, "candidate": True}  # same fingerprint: computed once
    second = verify(base, base, profile)
    assert all(t.cached == {"base": True, "candidate": True} for t in second.tasks)
    assert [t.base for t in first.tasks] == [t.base for t in second.tasks]
    # a damaged entry is recomputed, never trusted
    for f in (tmp_path / "cache" / "verify").glob("*.json"):
        f.write_text("{broken")
    third = verify(base, base, profile)
    assert third.tasks[0].cached["base"] is False and third.tasks[0].base == first.tasks[0].base
    # a changed task definition is a different key
    changed = Profile.model_validate({**causal_profile(task_files), "tasks": [{**causal_profile(task_files)["tasks"][0], "limit": 60}]})
    assert verify(base, base, changed).tasks[0].cached["base"] is False
    # new evaluation code (a fixed metric) never gets the results of the old code
    import compressor.fingerprint as fp

    monkeypatch.setattr(fp, "code_digest", lambda: "the next version")
    assert all(t.cached["base"] is False for t in verify(base, base, profile).tasks)
    # nor does the same folder loaded in another dtype
    bf16 = load_model(str(tiny("llama")), dtype="bfloat16")
    assert verify(bf16, bf16, profile).tasks[0].cached["base"] is False


def test_task_data_edited_in_place_is_a_cache_miss(tiny, task_files, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    profile = Profile.model_validate(causal_profile(task_files))
    base = load_model(str(tiny("llama")))
    verify(base, base, profile)
    mc = task_files / "mc.jsonl"
    mc.write_text(mc.read_text().replace("baker", "chef"))
    rep = verify(base, base, profile)
    assert {t.name: t.cached["base"] for t in rep.tasks} == {"ppl": True, "zs": True, "mc": False, "gen": True}


def test_unreadable_calibration_source_is_an_error_not_a_skipped_check(tiny, task_files, tmp_path, capsys):
    data = causal_profile(task_files)
    data["calibration"]["source"] = str(tmp_path / "gone.txt")
    prof = write_profile(tmp_path / "p.yaml", data)
    model = str(tiny("llama"))
    code, _, err = run(["verify", model, model, "--profile", str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "calibration source cannot be read" in err and "gone.txt" in err, err
    assert not (tmp_path / "r").exists()


def test_bootstrap_lower_bound(tiny, task_files, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    profile = Profile.model_validate(causal_profile(task_files, confidence=0.9, bootstrap_samples=200))
    base = load_model(str(tiny("llama")))
    cand = load_model(str(tiny("llama")))
    from compressor.prune.surgery import remove_layers

    remove_layers(cand.model, [1])
    cand.path = str(tmp_path / "not-a-folder")  # in-memory candidate: fingerprint by name
    rep = verify(base, cand, profile)
    gated = [t for t in rep.tasks if t.retention is not None]
    assert len(gated) >= 3
    for t in gated:
        assert t.retention_lower is not None and t.retention_lower <= t.retention + 1e-12
    same = verify(base, base, profile)
    assert all(t.retention_lower == 1.0 for t in same.tasks if t.retention is not None)


def test_model_kind_mismatch_is_bad_input(tiny, task_files, tmp_path, capsys):
    prof = write_profile(tmp_path / "p.yaml", causal_profile(task_files))
    code, _, err = run(["verify", str(tiny("bert")), str(tiny("bert")), "--profile", str(prof)], capsys)
    assert code == 2 and "expects a causal-lm model" in err and "Traceback" not in err


@pytest.mark.slow  # fine-tunes a real classifier (session fixture)
def test_sentiment_encoder_profile_on_a_real_classifier(small_classifier, tmp_path, capsys):
    """profiles/sentiment-encoder.yaml end to end: prune a fine-tuned MiniLM, verify on rt-sentiment."""
    import yaml

    prof = yaml.safe_load(open("profiles/sentiment-encoder.yaml"))
    prof["tasks"][0]["limit"] = 300
    p = write_profile(tmp_path / "enc.yaml", prof)
    code, _, err = run(["prune", str(small_classifier), "--method", "block-influence", "--profile", str(p),
                        "--samples", "16", "--num-layers", "1", "--out", str(tmp_path / "slim")], capsys)
    assert code == 0, err
    code, out, err = run(["verify", str(small_classifier), str(tmp_path / "slim"), "--profile", str(p),
                          "--report-dir", str(tmp_path / "r"), "--no-cache"], capsys)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    t = rep["tasks"][0]
    assert t["kind"] == "classification" and t["n"] == 300 and t["base"] > 0.6
    assert "macro_f1" in t["base_metrics"] and 0 < t["agreement"] <= 1
    assert code == (0 if rep["passed"] else 1) and rep["candidate"]["num_layers"] == 5


def test_report_names_the_scorer_and_repair_that_made_the_candidate(tiny, task_files, tmp_path, capsys, text_file):
    slim = tmp_path / "slim"
    code, _, err = run(["prune", str(tiny("llama")), "--method", "last-k", "--num-layers", "1", "--repair", "linear",
                        "--data", str(text_file), "--samples", "4", "--seq-len", "32", "--out", str(slim)], capsys)
    assert code == 0, err
    prof = write_profile(tmp_path / "p.yaml", causal_profile(task_files, min_retention=0.01))
    code, _, err = run(["verify", str(tiny("llama")), str(slim), "--profile", str(prof), "--report-dir",
                        str(tmp_path / "r")], capsys)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "cut by last-k, removed [2], repair linear" in md
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["candidate"]["cut"] == {"method": "last-k", "removed_layers": [2], "repair": "linear"}
