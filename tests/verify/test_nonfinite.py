"""A broken model never passes: NaN/inf outputs fail the candidate's task (exit 1) and refuse a broken
base (exit 2); ties between choices are counted and flagged; every report stays valid JSON."""
import json

import pytest

from helpers import error_lines, run
from verify.conftest import write_profile


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _save_with(src, dst, fill):
    """A copy of the tiny model at ``src`` with block 1's weights (or all weights) replaced."""
    import torch

    from compressor.sources.models import load_model

    m = load_model(str(src))
    with torch.no_grad():
        params = m.model.model.layers[1].parameters() if fill != 0.0 else m.model.parameters()
        for p in params:
            p.fill_(fill)
    m.model.save_pretrained(str(dst))
    m.tokenizer.save_pretrained(str(dst))
    return dst


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    """(healthy, NaN in one block, all weights zero) tiny Llama folders."""
    folder = tmp_path_factory.mktemp("broken")
    good = tiny("llama")
    return good, _save_with(good, folder / "nan", float("nan")), _save_with(good, folder / "zero", 0.0)


@pytest.fixture
def profiles(tmp_path):
    """acc: 16 multiple-choice questions + 16 zero-shot snippets + 4 generations; ppl: one perplexity task."""
    import pydoc_data.topics as t

    mc = [{"context": f"Fact {i}: the box holds a {c}.", "question": "What does the box hold?",
           "choices": ["cat", "lamp", "stone", "shoe"], "answer": i % 4}
          for i, c in enumerate(["cat", "lamp", "stone", "shoe"] * 4)]
    zs = [{"text": f"a {'wonderful' if i % 2 else 'dreadful'} film, number {i}", "label": i % 2} for i in range(16)]
    gen = [{"context": r["context"], "question": r["question"], "answers": [r["choices"][r["answer"]]]} for r in mc[:4]]
    for name, rows in (("mc", mc), ("zs", zs), ("gen", gen)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    (tmp_path / "ppl.txt").write_text("\n\n".join(t.topics[k] for k in sorted(t.topics)[:6]), encoding="utf-8")
    common = {"model_kind": "causal-lm", "calibration": {"source": str(tmp_path / "ppl.txt"), "samples": 2, "seq_len": 16},
              "eval": {"batch_size": 4, "max_length": 128}, "gate": {"min_retention": 0.9, "zero_base": "report"}}
    acc = {**common, "name": "acc", "tasks": [
        {"name": "mc", "kind": "multiple-choice", "data": str(tmp_path / "mc.jsonl"), "metric": "acc"},
        {"name": "zs", "kind": "zero-shot-classification", "data": str(tmp_path / "zs.jsonl"),
         "labels": {0: " bad", 1: " good"}, "template": "Review: {text}\nVerdict:", "metric": "accuracy"},
        {"name": "gen", "kind": "generation", "data": str(tmp_path / "gen.jsonl"), "max_new_tokens": 3,
         "metric": "contains"}]}
    ppl = {**common, "name": "ppl", "tasks": [{"name": "ppl", "kind": "perplexity", "data": str(tmp_path / "ppl.txt"),
                                              "limit": 96, "window": 48, "stride": 24}]}
    return {"acc": write_profile(tmp_path / "acc.yaml", acc), "ppl": write_profile(tmp_path / "ppl.yaml", ppl)}


def _strict_json(path):
    """Parse as strict JSON: NaN and Infinity are not JSON."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _verify(base, candidate, profile, reports, capsys):
    code, _, err = run(["verify", str(base), str(candidate), "--profile", str(profile), "--report-dir", str(reports)],
                       capsys)
    return code, err


@pytest.mark.parametrize("profile", ["acc", "ppl"])
def test_a_nan_candidate_fails_every_task_naming_non_finite_outputs(profile, models, profiles, tmp_path, capsys):
    good, nan, _ = models
    reports = tmp_path / "reports"
    code, err = _verify(good, nan, profiles[profile], reports, capsys)
    assert code == 1, err
    (line,) = error_lines(err)
    names = ["mc", "zs", "gen"] if profile == "acc" else ["ppl"]
    for name in names:
        assert f"{name}: non-finite candidate outputs (NaN/inf) on " in line, line
    rep = _strict_json(reports / "report.json")
    assert rep["passed"] is False and rep["schema_version"] == 3
    for t in rep["tasks"]:
        assert t["passed"] is False and t["candidate"] is None and t["retention"] is None
        assert t["failure"].startswith("non-finite candidate outputs (NaN/inf) on ")
    assert "non-finite candidate outputs" in (reports / "report.md").read_text()
    assert (reports / "junit.xml").read_text().count("<failure message=\"non-finite candidate outputs") == len(names)


@pytest.mark.parametrize("profile", ["acc", "ppl"])
def test_a_nan_base_is_bad_input_and_writes_no_report(profile, models, profiles, tmp_path, capsys):
    good, nan, _ = models
    reports = tmp_path / "reports"
    code, err = _verify(nan, good, profiles[profile], reports, capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    task = "mc" if profile == "acc" else "ppl"
    assert f"task {task}: the base model {nan} gives non-finite outputs (NaN/inf)" in line
    assert "check the base model's weights" in line and "Traceback" not in err
    assert not reports.exists()


def test_ties_are_counted_and_a_task_of_mostly_ties_is_flagged(models, profiles, tmp_path, capsys):
    good, _, zero = models  # all weights zero: every choice scores the same, the argmax takes the first
    reports = tmp_path / "reports"
    code, err = _verify(good, zero, profiles["acc"], reports, capsys)
    assert code in (0, 1), err
    rep = _strict_json(reports / "report.json")
    by_name = {t["name"]: t for t in rep["tasks"]}
    assert by_name["mc"]["ties"]["candidate"] == 16 and by_name["zs"]["ties"]["candidate"] == 16
    assert by_name["mc"]["ties"]["base"] < 8 and by_name["gen"]["ties"] is None
    flags = [w for w in rep["warnings"] if "predictions of the candidate model are ties" in w]
    assert len(flags) == 2 and any(w.startswith("task mc: 16 of 16") for w in flags)
    assert "16 of 16 predictions of the candidate model are ties" in err


def _task(name, value, threshold=0.9, own=False, failure=None):
    from compressor.verify.report import TaskResult

    return TaskResult(name=name, kind="multiple-choice", metric="acc", base=0.5,
                      candidate=None if failure else value * 0.5, retention=None if failure else value,
                      threshold=threshold, passed=None, agreement=None, n=16, higher_is_better=True,
                      own_threshold=own, failure=failure)


@pytest.mark.parametrize("aggregate", ["all", "mean"])
def test_a_task_without_a_score_fails_and_weighs_zero(aggregate):
    from compressor.verify.gate import judge

    tasks = [_task("a", 1.2), _task("b", 1.2), _task("c", 0.0, failure="non-finite candidate outputs")]
    passed, agg = judge(tasks, 0.5, aggregate)
    assert passed is False and tasks[2].passed is False
    assert agg == (0.0 if aggregate == "all" else pytest.approx(0.8))


def test_a_report_read_back_is_re_judged_from_its_numbers():
    from compressor.verify.gate import judge
    from compressor.verify.report import VerifyReport

    tasks = [_task("a", 0.95), _task("b", 0.80)]
    passed, agg = judge(tasks, 0.9, "all")
    rep = VerifyReport(passed=passed, min_retention=0.9, aggregate="all", aggregate_retention=agg, confidence=None,
                       profile={"name": "p", "path": ""}, base={}, candidate={}, tasks=tasks, warnings=[],
                       tool_version="x", seconds=0.0)
    d = json.loads(json.dumps(rep.to_dict()))
    d["passed"] = True  # an edit: the numbers still say b fails
    again = VerifyReport.from_dict(d)
    assert again.judged() == (False, pytest.approx(0.80))
    with pytest.raises(ValueError):
        VerifyReport.from_dict({**d, "schema_version": 2})
