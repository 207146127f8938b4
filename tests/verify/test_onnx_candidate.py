"""verify on an ONNX export: what ships is gated, with the same metrics as its PyTorch source."""
import math

import pytest

from compressor.export.ort_model import load_onnx_model
from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.api import verify
from helpers import error_lines, run
from verify.conftest import causal_profile, write_profile


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _close(a: float, b: float, metric: str) -> bool:
    if metric in ("perplexity", "loss"):
        return math.isclose(a, b, rel_tol=1e-4)
    return abs(a - b) < 1e-9  # accuracies and generation scores: the same answers


@pytest.mark.optimum
def test_onnx_equals_its_pytorch_source_on_every_decoder_task_kind(tiny, tiny_onnx, task_files):
    prof = Profile.model_validate(causal_profile(task_files))
    torch_model = load_model(str(tiny("llama")))
    onnx_model = load_onnx_model(str(tiny_onnx("llama")))
    rep = verify(torch_model, onnx_model, prof, use_cache=False)
    assert {t.kind for t in rep.tasks} == {"perplexity", "zero-shot-classification", "multiple-choice", "generation"}
    for t in rep.tasks:
        for metric, value in t.base_metrics.items():
            assert _close(value, t.candidate_metrics[metric], metric), (t.name, metric, value, t.candidate_metrics)
        assert t.agreement == pytest.approx(1.0), t.name  # the same prediction on every example
    assert rep.candidate["fingerprint"] != rep.base["fingerprint"]


@pytest.mark.optimum
def test_onnx_classifier_equals_its_pytorch_source(tiny, tiny_onnx, task_files):
    prof = Profile.model_validate({
        "name": "tiny-cls", "model_kind": "sequence-classification",
        "calibration": {"source": str(task_files / "ppl.txt"), "samples": 2, "seq_len": 16},
        "tasks": [{"name": "cls", "kind": "classification",
                   "data": {"source": str(task_files / "cls.jsonl"), "fields": {"text": "sentence", "label": "y"}}}],
        "gate": {"min_retention": 0.9, "zero_base": "report"}, "eval": {"batch_size": 4, "max_length": 64}})
    rep = verify(load_model(str(tiny("bert"))), load_onnx_model(str(tiny_onnx("bert"))), prof, use_cache=False)
    (t,) = rep.tasks
    assert t.base_metrics == t.candidate_metrics and t.agreement == 1.0


def _break_graph(src, dst):
    """A wrong export: the embedding matrix scaled x100 (the graph still runs, its logits are garbage)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from compressor.export import layout

    m = onnx.load(str(src / layout.ONNX_FILE), load_external_data=True)
    for i, t in enumerate(m.graph.initializer):
        if t.name.endswith("embed_tokens.weight"):
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 100.0, t.name))
    layout.save_with_external_data(m, dst)
    for f in src.iterdir():
        if f.suffix != ".onnx" and f.name != layout.DATA_FILE:
            shutil.copy2(f, dst / f.name)


@pytest.mark.optimum
def test_a_broken_onnx_graph_fails_the_gate_with_exit_1(tiny, tiny_onnx, task_files, tmp_path, capsys):
    data = causal_profile(task_files)
    data["tasks"] = [t for t in data["tasks"] if t["name"] == "ppl"]
    prof = write_profile(tmp_path / "p.yaml", data)
    broken = tmp_path / "broken"
    _break_graph(tiny_onnx("llama"), broken)
    code, out, err = run(["verify", str(tiny("llama")), str(tiny_onnx("llama")), "--profile", str(prof),
                          "--report-dir", str(tmp_path / "ok")], capsys)
    assert code == 0, err  # the faithful export passes
    code, out, err = run(["verify", str(tiny("llama")), str(broken), "--profile", str(prof),
                          "--report-dir", str(tmp_path / "bad")], capsys)
    assert code == 1, err
    (line,) = error_lines(err)
    assert "retention gate failed" in line and "ONNX Runtime" in err


@pytest.mark.optimum
def test_provider_cuda_without_a_cuda_runtime_is_refused(tiny_onnx, tiny, task_files, tmp_path, capsys):
    prof = write_profile(tmp_path / "p.yaml", causal_profile(task_files))
    code, _, err = run(["verify", str(tiny("llama")), str(tiny_onnx("llama")), "--profile", str(prof),
                        "--provider", "cuda"], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "--provider cuda" in line  # never a silent CPU run


def test_cached_results_are_keyed_on_where_they_ran(task_files):
    from compressor.verify.api import _Cache

    prof = Profile.model_validate(causal_profile(task_files))
    task = prof.tasks[0]
    keys = {_Cache(True).key("fp", device, task, prof, "data") for device in ("cpu", "cuda", "onnx:CPUExecutionProvider")}
    assert len(keys) == 3  # a CUDA or ONNX Runtime result is never served for a CPU evaluation
