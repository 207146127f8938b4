"""Quantized exports (int8 dynamic, int4 MatMulNBits): they run, keep the layout, are gated and benched."""
import json

import pytest

from compressor.export import layout
from compressor.export.bench import BenchOptions, bench_models
from compressor.export.convert import export_model
from compressor.export.ort_model import load_onnx_model
from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.api import verify
from helpers import error_lines, run

QUANT_OPS = {"int8": "DynamicQuantizeLinear", "int8-weights": "MatMulNBits", "int4": "MatMulNBits"}


def _ops(folder) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(folder / layout.ONNX_FILE), load_external_data=False).graph.node}


def _ppl_profile(text_file):
    return Profile.model_validate({
        "name": "q", "model_kind": "causal-lm", "calibration": {"source": str(text_file), "samples": 2, "seq_len": 16},
        "tasks": [{"name": "ppl", "kind": "perplexity", "data": str(text_file), "limit": 64, "window": 32, "stride": 32}],
        "gate": {"min_retention": 0.5}, "eval": {"batch_size": 2, "max_length": 64}})


@pytest.mark.optimum
@pytest.mark.parametrize("method", ["int8", "int8-weights", "int4"])
def test_a_quantized_decoder_runs_is_gated_and_benched(method, tiny, tiny_onnx, tmp_path, text_file):
    out = tmp_path / method
    res = export_model(str(tiny("llama")), out, quantize=method)
    # our layout, weights in external data (what > 2 GB models need too), the settings recorded
    assert (out / layout.ONNX_FILE).is_file() and (out / layout.DATA_FILE).is_file()
    assert layout.uses_external_data(out / layout.ONNX_FILE)
    rec = json.loads((out / layout.EXPORT_RECORD).read_text())
    assert rec["quantization"]["method"] == method and rec["parity_fp32"]["passed"]
    assert all(c["passed"] for c in rec["structural_checks"]) and res.quantization["settings"]["method"] == method
    assert QUANT_OPS[method] in _ops(out) and (out / "tokenizer.json").is_file()
    rep = verify(load_model(str(tiny("llama"))), load_onnx_model(str(out)), _ppl_profile(text_file), use_cache=False)
    (t,) = rep.tasks
    assert t.retention is not None and 0.9 < t.retention < 1.1  # a random tiny model: close, not equal
    assert rep.candidate["fingerprint"] != rep.base["fingerprint"]
    bench = bench_models([str(tiny_onnx("llama")), str(out)],
                         BenchOptions(prompt_len=8, new_tokens=4, runs=2, warmup=1))
    assert [m.layers for m in bench.models] == [4, 4] and bench.models[1].file_mb < bench.models[0].file_mb


@pytest.mark.optimum
def test_a_tied_lm_head_is_quantized_not_transposed_at_every_step(tiny_onnx, tmp_path):
    """Optimum writes a tied head as MatMul(x, Transpose(embedding)); the weight-only quantizer only
    takes a constant weight, so the transpose is folded first and the head becomes MatMulNBits."""
    import onnx

    from compressor.export.quantize import fold_weight_transposes, quantize_export

    src = tiny_onnx("llama")
    graph = onnx.load(str(src / layout.ONNX_FILE), load_external_data=True)
    inits = {t.name for t in graph.graph.initializer}
    head = [n for n in graph.graph.node if n.op_type == "MatMul" and n.output[0] == "logits"
            or n.name == "/lm_head/MatMul"]
    assert head and any(n.op_type == "Transpose" and n.input[0] in inits and n.output[0] == head[0].input[1]
                        for n in graph.graph.node)  # the tied head as Optimum writes it
    tied = fold_weight_transposes(graph)
    assert tied == 4 * graph_vocab_hidden(graph)
    assert not [n for n in graph.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    folded = quantize_export(src, tmp_path / "int4", "int4", fold_head=True)
    q = onnx.load(str(tmp_path / "int4" / layout.ONNX_FILE), load_external_data=False)
    assert [n.op_type for n in q.graph.node if n.name.startswith("/lm_head/")] == ["MatMulNBits"]
    assert folded["quantization"]["lm_head_folded"] and all(c["passed"] for c in folded["structural_checks"])
    # by default only where the embedding is at most half the weights: here (a tiny model) it is nearly all
    auto = quantize_export(src, tmp_path / "auto", "int4")
    assert auto["quantization"]["lm_head_folded"] is False
    assert "LM head left fp32" in auto["quantization"]["lm_head_detail"]
    assert auto["files"][layout.DATA_FILE] < folded["files"][layout.DATA_FILE]


def graph_vocab_hidden(graph) -> int:
    (emb,) = [t for t in graph.graph.initializer if t.name == "model.embed_tokens.weight"]
    return emb.dims[0] * emb.dims[1]


@pytest.mark.optimum
def test_a_quantized_encoder_classifier_runs_is_gated_and_benched(tiny, tiny_onnx, tmp_path, task_files_for_export):
    out = tmp_path / "int8"
    export_model(str(tiny("bert")), out, quantize="int8")
    assert "DynamicQuantizeLinear" in _ops(out)
    prof = Profile.model_validate({
        "name": "cls", "model_kind": "sequence-classification",
        "calibration": {"source": str(task_files_for_export / "cls.jsonl"), "text_field": "sentence", "samples": 2,
                        "seq_len": 16},
        "tasks": [{"name": "cls", "kind": "classification",
                   "data": {"source": str(task_files_for_export / "cls.jsonl"),
                            "fields": {"text": "sentence", "label": "y"}}}],
        "gate": {"min_retention": 0.5, "zero_base": "report"}, "eval": {"batch_size": 4, "max_length": 32}})
    rep = verify(load_model(str(tiny("bert"))), load_onnx_model(str(out)), prof, use_cache=False)
    assert rep.tasks[0].n == 16
    bench = bench_models([str(tiny_onnx("bert")), str(out)], BenchOptions(prompt_len=8, runs=2, warmup=1))
    assert [m.kind for m in bench.models] == ["encoder", "encoder"] and bench.ratios[0].batch_ratio is not None


@pytest.mark.optimum
def test_unknown_quantize_method_is_bad_input_before_any_work(tiny, tmp_path, capsys):
    code, _, err = run(["export", str(tiny("llama")), "--out", str(tmp_path / "q"), "--quantize", "int3"], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "unknown --quantize 'int3'; use --quantize int8, int8-weights or int4" in line
    assert not (tmp_path / "q").exists()


@pytest.fixture
def task_files_for_export(tmp_path):
    rows = [{"sentence": s, "y": y} for s, y in [("a wonderful film", 1), ("dull and long", 0), ("great fun", 1),
                                                 ("a clumsy mess", 0)] * 4]
    (tmp_path / "cls.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return tmp_path
