"""``score_checkpoint`` (``avss score`` as a call), ``score_model`` and ``scorer_options``, from Python."""
import pytest

from compressor.errors import BadInput
from compressor.score.api import score_checkpoint, score_model
from compressor.score.report import ScoreReport
from compressor.score.settings import scorer_options
from compressor.sources.data import CalibrationSpec
from compressor.sources.models import load_model
from helpers import grouped, library_log


def test_score_checkpoint_writes_what_avss_score_writes(tiny, tmp_path, text_file):
    with library_log() as log:
        report = score_checkpoint(str(tiny("llama")), **grouped(method="block-influence", data=str(text_file), samples=4,
                                                           seq_len=32, out=tmp_path / "s.json", plot=tmp_path / "s.png"))
    assert ScoreReport.load(tmp_path / "s.json").ranking == report.ranking
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.calibration["source"] == str(text_file)
    assert [m for _, m in log if m.startswith("calibration: ")] == [
        f"calibration: {report.calibration['tokens']} tokens in 1 batches, sha256 {report.calibration['sha256'][:12]}"]


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "avss", "protect": "first"}, "--protect on avss score only applies to --method sleb"),
    ({"method": "random", "mode": "official"}, "--avss-mode only applies to --method avss"),
    ({"method": "random", "out": "EXISTING"}, "already exists"),
    ({"method": "random", "samples": 0}, "--samples must be at least 1"),
])
def test_score_checkpoint_refuses_before_loading(kwargs, needle, tiny, tmp_path):
    (tmp_path / "s.json").write_text("{}")
    kwargs = {k: (str(tmp_path / "s.json") if v == "EXISTING" else v) for k, v in kwargs.items()}
    with library_log() as log, pytest.raises(BadInput, match=needle):
        score_checkpoint(str(tiny("llama")), **grouped(**kwargs))
    assert log == []


def test_score_model_names_a_default_calibration_and_sleb_options(tiny):
    loaded = load_model(str(tiny("llama")))
    with library_log() as log:
        report = score_model(loaded, "block-influence", calibration=CalibrationSpec(samples=2, seq_len=16),
                             calibration_given=False)
    assert log[0] == ("info", "no --data or --profile given: calibrating on builtin:python-docs (calibration split)")
    assert report.calibration["source"] == "builtin:python-docs" and report.num_layers == 4
    assert scorer_options("sleb", 4, protect="first,last", rounds=2) == {
        "objective": None, "max_remove": 2, "last_state": None, "protect": [0, 3]}
    assert scorer_options("sleb", 4, max_remove=3, rounds=2)["max_remove"] == 3  # given beats the cut's size
    assert scorer_options("avss", 4, protect="first", rounds=2) == {"objective": None, "max_remove": None,
                                                                    "last_state": None}
