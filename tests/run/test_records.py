"""Records cannot be edited into a verdict, and run.json always says what the process exit code says."""
import errno
import json

import pytest

from helpers import error_lines, run


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _edit(record, consistent: bool):
    d = json.loads(record.read_text())
    d["result"]["passed"] = True
    d["result"]["detail"] = d["result"]["verdict"] = "PASS: edited"
    if consistent:  # an editor who also recomputes the record's digest
        from compressor.run.stages import record_digest

        d.pop("digest", None)
        d["digest"] = record_digest(d)
    record.write_text(json.dumps(d))


def _run_json(out):
    return json.loads((out / "run.json").read_text())


def test_an_edited_verify_record_cannot_turn_a_failed_run_into_a_pass(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    argv = ["run", str(tiny("llama")), "--profile", str(ppl_profile(1.5)), "--out", str(out), "--num-layers", "1",
            "--skip-export"]
    code, _, err = run(argv, capsys)
    assert code == 1, err
    record = out / ".avss-run" / "verify.json"
    for consistent, why in ((False, "its record was edited or damaged"),
                            (True, "the recorded verdict does not follow from the numbers in report.json")):
        _edit(record, consistent)
        code, _, err = run(argv, capsys)
        assert code == 1, err
        assert f"verify: running again ({why}" in err, err
        d = _run_json(out)
        assert (d["status"], d["exit_code"], d["passed"]) == ("gate failed", 1, False)
        assert d["verdict"].startswith("FAIL: ppl ") and json.loads(record.read_text())["result"]["passed"] is False
    record.write_text(record.read_text()[:40])  # damaged: not JSON any more
    code, _, err = run(argv, capsys)
    assert code == 1 and "verify: running again (its record is damaged)" in err, err
    code, _, err = run(argv, capsys)  # an intact record resumes, its verdict re-judged from report.json
    assert code == 1 and "verify: running again" not in err, err
    assert [s["status"] for s in _run_json(out)["stages"] if s["name"] == "verify"] == ["resumed"]


def test_a_report_with_lowered_thresholds_is_judged_under_the_runs_gate(tiny, tmp_path, ppl_profile, capsys):
    """report.json and the record edited together, consistently (thresholds lowered, so the report's own
    numbers pass under the report's own gate): the resumed verify is judged under the run's configuration,
    so the stage runs again and the run still fails."""
    out = tmp_path / "art"
    argv = ["run", str(tiny("llama")), "--profile", str(ppl_profile(1.5)), "--out", str(out), "--num-layers", "1",
            "--skip-export"]
    code, _, err = run(argv, capsys)
    assert code == 1, err
    report = out / "report.json"
    rep = json.loads(report.read_text())
    rep["min_retention"] = 0.1
    for t in rep["tasks"]:
        t["threshold"], t["passed"] = 0.1, True
    rep["passed"] = True
    report.write_text(json.dumps(rep))
    from compressor.verify.report import VerifyReport

    assert VerifyReport.from_dict(rep).judged()[0] is True  # it passes under the gate it carries
    from compressor.run.stages import path_digest, record_digest

    record = out / ".avss-run" / "verify.json"
    d = json.loads(record.read_text())  # the editor also records the edited report's digest
    d["result"]["passed"] = True
    d["outputs"]["report.json"] = path_digest(report)
    d.pop("digest", None)
    d["digest"] = record_digest(d)
    record.write_text(json.dumps(d))
    code, _, err = run(argv, capsys)
    assert code == 1, err
    assert "verify: running again (report.json was not judged under this run's gate: its gate is all at 0.1, " \
           "this run's is all at 1.5" in err, err
    assert json.loads(report.read_text())["min_retention"] == 1.5 and _run_json(out)["passed"] is False
    code, _, err = run([*argv, "--min-retention", "0.2"], capsys)  # a lower gate of the run's own: honoured
    assert code == 0, err


def test_run_json_records_the_exit_code_the_process_ends_with(tiny, tmp_path, ppl_profile, capsys, monkeypatch):
    """A read-only disk under the verify cache mid-run: exit 2 (a disk the user can fix), and run.json says 2."""
    from compressor.verify import api

    def read_only(self, key, out):
        raise OSError(errno.EROFS, "Read-only file system", str(self.dir / f"{key}.json"))

    monkeypatch.setattr(api._Cache, "put", read_only)
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                        "--num-layers", "1", "--skip-export"], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "read-only file system" in line
    d = _run_json(out)
    assert (d["status"], d["exit_code"]) == ("error", 2) and d["error"] == line.removeprefix("error: ")
