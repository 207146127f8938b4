"""The CLI contract: exit codes, one clear stderr line, no traceback, nothing half-written."""
import json
import subprocess
import sys

import pytest

from helpers import run


def assert_bad_input(code, err, needle):
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_help_does_not_import_torch():
    code = "import sys; from compressor.cli.app import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_python_dash_m_and_version():
    r = subprocess.run([sys.executable, "-m", "compressor", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "avss-compressor" in r.stdout


def test_score_and_prune_end_to_end(tiny, tmp_path, text_file, capsys):
    model = str(tiny("qwen2"))
    scores, plot, slim = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "slim"
    code, out, err = run(["score", model, "--data", str(text_file), "--samples", "4", "--seq-len", "32",
                          "--out", str(scores), "--plot", str(plot)], capsys)
    assert code == 0, err
    d = json.loads(scores.read_text())
    for key in ("schema_version", "model", "method", "mode", "num_layers", "layers", "ranking", "calibration"):
        assert key in d
    assert d["method"] == "avss" and d["mode"] == "robust" and d["num_layers"] == 4
    assert d["calibration"]["tokens"] > 0 and len(d["calibration"]["sha256"]) == 64
    assert {"index", "score", "delta_variance", "delta_sparsity", "cosine"} <= set(d["layers"][0])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "avss (robust)" in out  # the table says which variant produced it
    code, out, err = run(["prune", model, "--scores", str(scores), "--num-layers", "2", "--out", str(slim)], capsys)
    assert code == 0, err
    comp = json.loads((slim / "compression.json").read_text())
    assert comp["removed_layers"] == sorted(d["ranking"][:2])
    assert comp["label"] == "avss (robust)" and comp["calibration"]["sha256"] == d["calibration"]["sha256"]
    assert comp["num_layers_after"] == 2


def test_prune_with_method_scores_inline(tiny, tmp_path, capsys):
    code, out, err = run(["prune", str(tiny("gpt2")), "--method", "last-k", "--ratio", "0.25",
                          "--out", str(tmp_path / "slim")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "slim" / "compression.json").read_text())["removed_layers"] == [2]


@pytest.mark.parametrize("case", ["missing-model", "unknown-arch", "bad-ratio", "remove-all", "unreadable-data",
                                  "empty-data", "existing-output", "mode-with-baseline", "unknown-method",
                                  "scores-mismatch", "pickle", "cuda", "mode-with-scores"])
def test_bad_input(case, tiny, tmp_path, capsys):
    model = str(tiny("llama"))
    out = tmp_path / "out"
    argv, needle = {
        "missing-model": (["score", str(tmp_path / "nope"), "--method", "random"], "does not exist"),
        "unknown-arch": (["score", str(tmp_path / "t5"), "--method", "random"], "unsupported architecture"),
        "bad-ratio": (["prune", model, "--method", "random", "--ratio", "1.5", "--out", str(out)], "--ratio must be between 0 and 1"),
        "remove-all": (["prune", model, "--method", "random", "--num-layers", "4", "--out", str(out)], "at least one layer must remain"),
        "unreadable-data": (["score", model, "--data", str(tmp_path / "bin.txt")], "not UTF-8"),
        "empty-data": (["score", model, "--data", str(tmp_path / "empty.txt")], "is empty"),
        "existing-output": (["prune", model, "--method", "random", "--num-layers", "1", "--out", str(tmp_path)], "already exists"),
        "mode-with-baseline": (["score", model, "--method", "random", "--avss-mode", "official"], "only applies to --method avss"),
        "unknown-method": (["score", model, "--method", "magnitude"], "unknown method"),
        "scores-mismatch": (["prune", model, "--scores", str(tmp_path / "s.json"), "--num-layers", "1", "--out", str(out)], "scores 30 layers"),
        "pickle": (["score", str(tmp_path / "pickled"), "--method", "random"], "--allow-pickle"),
        "cuda": (["score", model, "--method", "random", "--device", "cuda"], "CUDA is not available"),
        "mode-with-scores": (["prune", model, "--scores", str(tmp_path / "s.json"), "--avss-mode", "official",
                              "--num-layers", "1", "--out", str(out)], "a scores file already records its mode"),
    }[case]
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "s.json").write_text(json.dumps({"schema_version": 1, "model": {"model_type": "llama"}, "method": "avss",
                                                 "num_layers": 30, "layers": [{"index": i, "score": 1.0} for i in range(30)]}))
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((tiny("llama") / "config.json").read_text())
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not really")
    if case == "cuda":
        import torch

        if torch.cuda.is_available():  # on a GPU machine the same flag must really run on CUDA
            code, _, err = run(argv, capsys)
            assert code == 0 and "on cuda" in err
            return
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(argv, capsys)
    assert_bad_input(code, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_debug_shows_traceback(tiny, capsys, monkeypatch):
    monkeypatch.setenv("AVSS_DEBUG", "1")
    code, _, err = run(["score", str(tiny("llama")), "--method", "magnitude"], capsys)
    assert code == 2 and "Traceback" in err


def test_usage_error_exit_code(capsys):
    code, _, err = run(["score"], capsys)
    assert code == 2
