"""`avss bench`: schema, ratios, restaging, provider errors, worker isolation, outputs, IO binding.

Timings on a shared machine are noise: only their shape (present, positive, ordered) is asserted.
"""
import ctypes
import json
import math
import shutil
import sys

import pytest

from compressor.defaults import BENCH
from compressor.errors import BadInput
from compressor.export import layout
from compressor.export.bench import BenchOptions, bench_models, run_worker
from helpers import run

TINY = dict(provider="cpu", prompt_len=8, new_tokens=4, warmup=1, runs=2, rounds=1, threads=1)
SCHEMA_MODEL_KEYS = {"path", "layers", "params", "prefill_ms", "decode_ms_per_token", "tokens_per_s",
                     "rss_peak_mb", "device_mem_peak_mb"}


def assert_percentiles(p):
    assert set(p) == {"p50", "p90", "p99"}
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in p.values()), p
    assert p["p50"] <= p["p90"] <= p["p99"], p


@pytest.mark.optimum
def test_decoder_bench_has_every_schema_field(tiny_onnx):
    report = bench_models([str(tiny_onnx("llama"))], BenchOptions(**TINY))
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["schema_version"] == 1 and d["provider"] == "CPUExecutionProvider"
    s = d["settings"]
    for key in ("batch_size", "prompt_len", "new_tokens", "warmup", "runs", "rounds", "threads"):
        assert s[key] == {**BENCH, **TINY}[key]  # the shared defaults (compressor.defaults) fill the rest
    assert s["versions"]["onnxruntime"] and s["versions"]["numpy"] and s["machine"]["cpu_count"] >= 1
    assert d["ratios"] == []
    (m,) = d["models"]
    assert SCHEMA_MODEL_KEYS <= set(m)
    assert m["kind"] == "decoder" and m["layers"] == 4 and m["params"] > 0 and m["file_mb"] > 0
    assert m["provider"] == "CPUExecutionProvider" and m["io_binding"] is False
    assert m["restaged"] is False  # avss export always stores weights as external data
    assert_percentiles(m["prefill_ms"])
    assert_percentiles(m["decode_ms_per_token"])
    assert m["tokens_per_s"] > 0 and m["batch_ms"] is None and m["sequences_per_s"] is None
    for key in ("rss_before_session_mb", "rss_after_session_mb", "rss_peak_mb", "ru_maxrss_mb", "session_create_s"):
        assert m[key] > 0, key
    assert m["rss_peak_mb"] >= m["rss_after_session_mb"] >= m["rss_before_session_mb"]
    assert m["device_mem_peak_mb"] is None and m["device_mem_before_mb"] is None
    assert len(m["samples"]["prefill_ms"]) == 2 and len(m["samples"]["decode_ms"]) == 2 * 4


@pytest.mark.optimum
def test_encoder_bench(tiny_onnx):
    (m,) = bench_models([str(tiny_onnx("bert"))], BenchOptions(**TINY)).to_dict()["models"]
    assert m["kind"] == "encoder"
    assert_percentiles(m["batch_ms"])
    assert m["sequences_per_s"] > 0
    assert m["prefill_ms"] is None and m["decode_ms_per_token"] is None and m["tokens_per_s"] is None


@pytest.mark.optimum
def test_two_models_ratios_against_the_layer_ideal(tiny_onnx):
    full, slim = str(tiny_onnx("llama")), str(tiny_onnx("llama", pruned=True))
    report = bench_models([full, slim], BenchOptions(**{**TINY, "rounds": 2}))
    ref, m = report.models
    assert (ref.layers, m.layers) == (4, 3) and m.removed_layers == [1] and m.kept_layers == [0, 2, 3]
    assert len(m.samples["decode_ms"]) == 2 * 2 * 4  # runs x rounds x new tokens, pooled
    (r,) = report.ratios
    assert r.model == slim and r.reference == full
    assert r.layer_ratio == pytest.approx(0.75)
    assert r.param_ratio == pytest.approx(m.params / ref.params) and r.param_ratio < 1
    assert r.decode_ratio == pytest.approx(m.decode_ms_per_token.p50 / ref.decode_ms_per_token.p50)
    assert r.decode_speedup == pytest.approx(1 / r.decode_ratio)
    assert r.decode_vs_ideal == pytest.approx(r.decode_ratio / 0.75)
    assert r.prefill_vs_ideal == pytest.approx(r.prefill_ratio / 0.75)
    assert r.rss_peak_ratio > 0 and r.model_rss_ratio > 0
    assert r.batch_ratio is None and r.device_mem_ratio is None
    with pytest.raises(BadInput, match="cannot compare"):
        bench_models([full, str(tiny_onnx("bert"))], BenchOptions(**TINY))


@pytest.mark.optimum
def test_single_file_model_is_restaged_and_staging_is_removed(tiny_onnx, tmp_path, monkeypatch):
    import onnx

    src = tiny_onnx("llama")  # avss export: weights in model.onnx_data
    single = tmp_path / "single"
    single.mkdir()
    onnx.save_model(onnx.load(str(src / "model.onnx")), str(single / "model.onnx"))  # weights inline, as Optimum writes small models
    shutil.copy2(src / "config.json", single / "config.json")
    assert layout.uses_external_data(src / "model.onnx") and not layout.uses_external_data(single / "model.onnx")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    report = bench_models([str(single / "model.onnx"), str(src)], BenchOptions(**TINY))  # a .onnx file works too
    restaged, external = report.models
    assert restaged.restaged is True and external.restaged is False
    assert restaged.layers == external.layers == 4 and restaged.params == external.params
    assert list(scratch.iterdir()) == []  # the restaged copy and the job files are gone


@pytest.mark.optimum
def test_store_external_data_works_from_inside_an_export_folder(tiny_onnx, tmp_path, monkeypatch):
    """onnx's own external-data save refuses to run where a model.onnx_data already exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx_data").write_bytes(b"")
    layout.store_external_data(tiny_onnx("llama") / "model.onnx", tmp_path / "ext")
    assert layout.uses_external_data(tmp_path / "ext" / "model.onnx")


@pytest.mark.optimum
def test_provider_cuda_without_cuda_build_exits_2(tiny_onnx, capsys, monkeypatch):
    from compressor.export import runtime

    monkeypatch.setattr(runtime, "cuda_in_build", lambda: False)  # as on a CPU-only install, also on a GPU box
    code, out, err = run(["bench", str(tiny_onnx("llama")), "--provider", "cuda"], capsys)
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA" in lines[0], err
    assert "Traceback" not in err and out == ""


@pytest.mark.optimum
def test_worker_imports_only_onnxruntime_numpy_psutil(tiny_onnx):
    job = {"model": str(tiny_onnx("bert") / "model.onnx"), "provider": "cpu", "threads": 1, "batch_size": 1,
           "prompt_len": 4, "new_tokens": 1, "warmup": 0, "runs": 1, "io_binding": None, "seed": 0}
    modules = set(run_worker(job)["modules"])
    assert not modules & {"torch", "transformers", "optimum", "onnx", "matplotlib", "typer", "rich", "pydantic"}
    third_party = {m for m in modules - set(sys.stdlib_module_names) if not m.startswith("_")}
    assert third_party <= {"compressor", "numpy", "onnxruntime", "psutil", "cython_runtime"}, third_party


@pytest.mark.optimum
def test_json_and_plot_written_atomically_and_force_respected(tiny_onnx, tmp_path, capsys):
    model = str(tiny_onnx("llama"))
    out_json = tmp_path / "res" / "bench.json"
    args = ["bench", model, model, "--prompt-len", "8", "--new-tokens", "4", "--warmup", "1",
            "--runs", "2", "--threads", "1", "--json", str(out_json)]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "measuring" in err and "round 1/2" in err and "round 2/2" in err and "measuring" not in out
    assert "auto: the session runs on" in err  # --provider auto says what it got
    assert "decode p50" in out and "vs ideal" in out  # both tables on stdout
    d = json.loads(out_json.read_text())
    assert set(d) == {"schema_version", "provider", "settings", "models", "ratios"} and len(d["ratios"]) == 1
    png = tmp_path / "res" / "bench.png"  # default: next to --json
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["bench.json", "bench.png"]  # no temp files left

    before = out_json.read_bytes()
    code, out, err = run(args, capsys)
    assert code == 2 and "already exists" in err and "--force" in err and "measuring" not in err
    assert out_json.read_bytes() == before
    code, out, err = run(args + ["--force", "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "p.png").exists() and json.loads(out_json.read_text())["models"][0]["path"] == model


def test_missing_model_is_bad_input_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target, needle in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "has no model.onnx")):
        code, out, err = run(["bench", str(target), "--json", str(tmp_path / "b.json")], capsys)
        assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b.png").exists()


def test_nvml_is_none_without_the_nvidia_driver():
    from compressor.export._bench_worker import nvml_used_mb

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        assert nvml_used_mb() is None
    else:
        assert nvml_used_mb() >= 0


@pytest.mark.optimum
def test_io_binding_path_on_cpu(tiny_onnx):
    import numpy as np

    from compressor.export import runtime
    from compressor.export._bench_worker import Workload, bound_runner, plain_runner

    # the CUDA code path (OrtValues bound on a device, present.* fed back without a copy), run on CPU
    model = tiny_onnx("llama")
    (m,) = bench_models([str(model)], BenchOptions(**TINY, io_binding=True)).to_dict()["models"]
    assert m["io_binding"] is True
    assert_percentiles(m["prefill_ms"])
    assert_percentiles(m["decode_ms_per_token"])

    sess = runtime.make_session(str(model / "model.onnx"), "cpu", 1).session
    results = []
    for runner in (plain_runner(sess), bound_runner(sess, "cpu")):
        work = Workload(sess, batch=2, prompt_len=5, new_tokens=2, seed=7)
        first = runner(work.prompt_feed())
        second = runner(work.step_feed(first, 5))
        results.append([np.asarray(x if isinstance(x, np.ndarray) else x.numpy()) for x in
                        (first["logits"], second["logits"], second["present.3.value"])])
    for plain, bound in zip(*results):
        assert plain.shape == bound.shape
        np.testing.assert_allclose(plain, bound, rtol=1e-5, atol=1e-6)
    assert results[0][2].shape == (2, 2, 6, 8)  # 5 prompt tokens + 1 decoded
