"""Every output path is checked before any work: a path under a file, a folder where a file goes, or a
file where a report folder goes is exit 2 naming it (these used to be "unexpected FileExistsError"
after the compute)."""
import pytest

from helpers import error_lines, run, write_ppl_profile


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _argv(command, flag, path, tiny, tiny_onnx, tmp_path):
    model = str(tiny("llama"))
    if command == "score":
        return ["score", model, "--method", "last-k", flag, path]
    if command == "export":
        return ["export", model, "--out", path]
    if command == "bench":
        return ["bench", str(tiny_onnx("llama")), flag, path]
    return ["verify", model, model, "--profile", str(write_ppl_profile(tmp_path, 0.5)), "--report-dir", path]


CASES = [("score", "--out"), ("score", "--plot"), ("export", "--out"),
         pytest.param("bench", "--json", marks=pytest.mark.optimum),  # its ONNX fixture is an Optimum export
         pytest.param("bench", "--plot", marks=pytest.mark.optimum), ("verify", "--report-dir")]


@pytest.mark.parametrize("command,flag", CASES)
def test_an_output_under_a_file_is_refused_before_any_work(command, flag, tiny, tiny_onnx, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    path = str(tmp_path / "afile" / "out.png" if flag == "--plot" else tmp_path / "afile" / "out")
    code, _, err = run(_argv(command, flag, path, tiny, tiny_onnx, tmp_path), capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"{tmp_path / 'afile'} is a file" in line and "loading" not in err and "measuring" not in err, line
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_report_dir_that_is_a_file_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    code, _, err = run(_argv("verify", None, str(tmp_path / "afile"), tiny, None, tmp_path), capsys)
    assert code == 2 and "--report-dir" in err and "is a file, not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "mine"
