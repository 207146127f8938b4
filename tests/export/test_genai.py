"""``avss export --exporter genai``: ONNX Runtime GenAI's Model Builder, parity-checked like Optimum, refused
up front where it cannot build; its folder gated by ``verify`` like any candidate and benched by ``bench``."""
import json
import shutil
from pathlib import Path

import pytest

from compressor.compat import genai_requirement
from helpers import error_lines, run, write_ppl_profile
from verify.conftest import causal_profile, task_files, write_profile  # noqa: F401 (task_files: a fixture)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def genai(tiny, tmp_path_factory):
    """genai(arch, quantize=None) -> folder built by `avss export --exporter genai` (once per module)."""
    from compressor.cli.app import main

    made = {}

    def get(arch, quantize=None):
        if (arch, quantize) not in made:
            out = tmp_path_factory.mktemp(f"genai-{arch}") / "genai"
            argv = ["export", str(tiny(arch)), "--exporter", "genai", "--out", str(out)]
            with pytest.raises(SystemExit) as e:
                main(argv + (["--quantize", quantize] if quantize else []))
            assert e.value.code == 0
            made[(arch, quantize)] = out
        return made[(arch, quantize)]

    return get


@pytest.mark.parametrize("arch", ["llama-gqa16", "qwen2-gqa16", "lfm2_moe-gqa16"])  # lfm2_moe: convolution states
def test_the_builder_export_passes_parity(arch, genai):
    from compressor.export.genai import is_genai_folder

    folder = genai(arch)
    rec = json.loads((folder / "export.json").read_text())
    assert rec["exporter"]["name"] == "genai" and rec["exporter"]["package"] == genai_requirement()
    assert rec["parity"]["passed"] is True and rec["quantization"] is None
    assert {c["name"] for c in rec["parity"]["checks"]} == {
        "kv-cache outputs", "prompt logits (batch 3, right-padded, lengths 11/7/4)",
        "decode step with past vs no-cache forward (each sequence)", "greedy generation (8 tokens)"}
    assert all(c["passed"] for c in rec["structural_checks"]) and set(rec["timings"]) == {"load", "build", "checks", "parity"}
    assert set(rec["peak_rss_gb"]) == set(rec["timings"]) and all(v > 0 for v in rec["peak_rss_gb"].values())
    assert is_genai_folder(folder) and (folder / "config.json").is_file() and (folder / "model.onnx").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
    if arch == "lfm2_moe-gqa16":  # a hybrid: one convolution state for block 0, a KV cache for blocks 1 and 2
        cache = next(c for c in rec["parity"]["checks"] if c["name"] == "kv-cache outputs")["detail"]
        assert cache == "4 past_key_values.* inputs for 2 KV-cache layers, 1 past.*.state inputs for 1 state layers"
        assert rec["structural_checks"][0]["detail"] == "2 for 2 attention layers (of 3)"


@pytest.mark.parametrize("arch", ["qwen3_5_text"])
def test_a_transformers5_family_the_builder_does_not_build_says_no_exporter_here_writes_it(arch, tiny, tmp_path, capsys):
    """Qwen3.5: the builder builds it only from the multimodal checkpoint, and Optimum's lane cannot load it."""
    code, _, err = run(["export", str(tiny(arch)), "--exporter", "genai", "--out", str(tmp_path / "g")], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "does not build Qwen3_5ForCausalLM models" in line and "no exporter here writes it" in line
    assert "--exporter optimum" not in line and not (tmp_path / "g").exists()


def test_a_builder_graph_that_differs_from_pytorch_is_not_kept(tiny, tmp_path, capsys, monkeypatch):
    """The pinned builder's Gemma 3 graph (sliding + full attention layers) does not compute what
    transformers 4.57's Gemma 3 computes (measured: 0.011 on the prompt logits): refused up front (exit 2);
    built anyway, the parity check refuses it (exit 3), nothing written."""
    import compressor.export.genai as genai

    out = tmp_path / "g"
    code, _, err = run(["export", str(tiny("gemma3-gqa16")), "--exporter", "genai", "--out", str(out)], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "builds Gemma3ForCausalLM models, but its Gemma 3 graph" in line and genai.INSTEAD in line
    assert "loading" not in err and not out.exists()
    monkeypatch.setattr(genai, "WRONG", {})
    monkeypatch.setattr(genai, "SUPPORTED", (*genai.SUPPORTED, "Gemma3ForCausalLM"))
    code, _, err = run(["export", str(tiny("gemma3-gqa16")), "--exporter", "genai", "--out", str(out)], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    if genai.REQUIREMENT.endswith("==0.15.2"):
        assert "parity check failed: prompt logits" in line and genai.INSTEAD in line, line
    else:  # 0.18's builder does not get as far: it fails on transformers 5's Gemma 3 config (exit 3 all the same)
        assert "ONNX Runtime GenAI's builder failed on" in line and "'rope_type'" in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".g.")]


def test_int4_is_built_and_checked_structurally(genai):
    from compressor.export.genai import PRECISION

    folder = genai("llama-gqa16", "int4")
    rec = json.loads((folder / "export.json").read_text())
    assert rec["quantization"]["method"] == "int4" and rec["parity"] is None
    assert rec["exporter"]["command"] == ["python", "-m", "onnxruntime_genai.models.builder", "-i", "SRC", "-o", "OUT",
                                          "-p", "int4", "-e", "cpu", "-c", "CACHE", "--extra_options",
                                          *PRECISION["int4"][1]]  # the lane's builder's option names
    assert [c["name"] for c in rec["structural_checks"]] == ["GroupQueryAttention per layer", "int4 weights",
                                                             "runs in ONNX Runtime",
                                                             "served tokenizer (onnxruntime-genai) reads text as the "
                                                             "source's"]
    assert all(c["passed"] for c in rec["structural_checks"])
    fp32 = json.loads((genai("llama-gqa16") / "export.json").read_text())
    assert rec["files"]["model.onnx.data"] < fp32["files"]["model.onnx.data"] / 3


def test_int8_weights_of_a_tied_model_is_built_from_an_untied_copy_and_passes_the_gate(genai, tiny, tmp_path,
                                                                                       task_files, capsys):
    """The pinned builder's int8 precision writes a tied LM head that references an initializer it never
    writes (the graph used to be refused up front): the build reads a copy whose head is stored apart, with
    the same values; the folder loads, runs, and is gated on the profile's tasks like any artifact."""
    assert json.loads((tiny("llama-gqa16") / "config.json").read_text())["tie_word_embeddings"] is True
    folder = genai("llama-gqa16", "int8-weights")
    rec = json.loads((folder / "export.json").read_text())
    assert rec["quantization"]["method"] == "int8-weights" and rec["quantization"]["untied_head"] is True
    assert rec["exporter"]["command"][rec["exporter"]["command"].index("-p") + 1] == "int8"
    assert all(c["passed"] for c in rec["structural_checks"]), rec["structural_checks"]
    assert any("LM head was stored apart" in w for w in rec["warnings"])
    prof = causal_profile(task_files)
    prof["tasks"] = prof["tasks"][:3]  # perplexity, zero-shot, multiple choice
    gate = ["--profile", str(write_profile(tmp_path / "p.yaml", prof)), "--report-dir", str(tmp_path / "r")]
    code, _, err = run(["verify", str(tiny("llama-gqa16")), str(folder), *gate], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    ppl = next(t for t in report["tasks"] if t["name"] == "ppl")
    assert 0.97 <= ppl["retention"] <= 1.03, ppl  # int8 weights: close to the fp32 model, not equal


def test_int4_mixed_keeps_the_lm_head_and_the_sensitive_layers_in_int8(genai, tiny):
    """int4-mixed is the builder's k_quant_mixed: an int4 body with the LM head (and llama.cpp's most sensitive
    MatMuls) in 8 bits; of a tied model it builds without an untied copy, loads and runs."""
    folder = genai("llama-gqa16", "int4-mixed")
    rec = json.loads((folder / "export.json").read_text())
    assert rec["quantization"]["method"] == "int4-mixed" and rec["quantization"]["untied_head"] is False
    from compressor.export.genai import PRECISION

    assert PRECISION["int4-mixed"][1][-1].endswith("algo_config=k_quant_mixed")  # the lane's builder's option name
    assert PRECISION["int4-mixed"][1][-1] in rec["exporter"]["command"]
    assert all(c["passed"] for c in rec["structural_checks"]), rec["structural_checks"]
    import onnx

    inits = [t.name for t in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.initializer]
    assert any(n.startswith("lm_head") and "Q8" in n for n in inits), "the LM head is not 8-bit"
    assert any("Q4" in n for n in inits) and any(n.startswith("model.layers") and "Q8" in n for n in inits)


@pytest.mark.parametrize("arch,extra,words", [
    ("gpt2", [], "does not build GPT2LMHeadModel models"),
    ("bert", [], "does not build BertForSequenceClassification models"),
    ("llama", [], "attention head size is 8"),
    ("llama-gqa16", ["--quantize", "int8"], "has no --quantize int8")])
def test_what_the_builder_cannot_build_is_refused_up_front(arch, extra, words, tiny, tmp_path, capsys):
    code, _, err = run(["export", str(tiny(arch)), "--exporter", "genai", "--out", str(tmp_path / "g"), *extra], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert words in line and "--exporter optimum" in line and "build ..." not in err
    assert not (tmp_path / "g").exists()


def test_fp16_for_the_cuda_provider_is_built_and_parity_checked_at_fp16_tolerance(tiny, tmp_path, capsys):
    """The builder's CUDA fp16 graph also runs on ONNX Runtime's CPU provider: without a CUDA provider its
    parity is checked there, and the warning says so (never silently)."""
    from compressor.export.ort_model import load_onnx_model

    out = tmp_path / "g16"
    code, out_text, err = run(["export", str(tiny("llama-gqa16")), "--exporter", "genai", "--dtype", "fp16",
                               "--device", "cuda", "--out", str(out)], capsys)
    assert code == 0, err
    rec = json.loads((out / "export.json").read_text())
    assert rec["dtype"] == "float16" and rec["target"] == "cuda"
    assert rec["exporter"]["command"][rec["exporter"]["command"].index("-p"):][:4] == ["-p", "fp16", "-e", "cuda"]
    assert rec["parity"]["passed"] and rec["parity"]["dtype"] == "float16"
    assert rec["parity"]["provider"] == "CPUExecutionProvider"
    assert rec["warnings"] and "no CUDA provider" in rec["warnings"][0] and "no CUDA provider" in err
    assert "Saving" not in err and "Extra options" not in out_text  # the builder's prints went to its log
    assert load_onnx_model(str(out)).dtype == "onnx-genai-float16"


def test_a_builder_failure_is_one_line_and_our_output_is_restored(tiny, tmp_path, capsys, monkeypatch):
    """The builder runs in this process with stdout/stderr sent to its log; when it raises, the error is
    one line (exit 3), nothing is written, and our own streams work again."""
    from onnxruntime_genai.models import builder

    def broken(*args, **kwargs):
        print("builder chatter")
        raise ValueError("unsupported rope scaling")

    monkeypatch.setattr(builder, "create_model", broken)
    out = tmp_path / "g"
    code, stdout, err = run(["export", str(tiny("llama-gqa16")), "--exporter", "genai", "--out", str(out)], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert "builder failed" in line and "unsupported rope scaling" in line and "--exporter optimum" in line
    assert "builder chatter" not in stdout + err and not out.exists()
    print("after")
    assert capsys.readouterr().out == "after\n"


@pytest.mark.parametrize("extra,words", [
    (["--dtype", "fp16"], "builds fp16 graphs for the CUDA provider; add --device cuda"),
    (["--dtype", "bf16", "--device", "cuda"], "has no --dtype bf16"),
    (["--device", "cuda", "--quantize", "int4"], "builds --quantize int4 graphs for CPU here")])
def test_a_precision_or_target_the_builder_cannot_check_is_refused_up_front(extra, words, tiny, tmp_path, capsys):
    code, _, err = run(["export", str(tiny("llama-gqa16")), "--exporter", "genai", "--out", str(tmp_path / "g"), *extra],
                       capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert words in line, line
    assert not (tmp_path / "g").exists()


def test_fuse_gate_up_is_the_current_lanes_builder_option_and_refused_where_the_builder_lacks_it(tiny, tmp_path, capsys):
    """A builder option only 0.18.0 has: one line naming the lane in the card's lane; in the current lane each MLP's
    gate and up projections become one MatMulNBits (3 fewer for 3 blocks), recorded in export.json."""
    from compressor.compat import lane

    argv = ["export", str(tiny("llama-gqa16")), "--exporter", "genai", "--quantize", "int4", "--fuse-gate-up",
            "--out", str(tmp_path / "g")]
    code, _, err = run(argv, capsys)
    if lane() == "card":
        assert code == 2, err
        (line,) = error_lines(err)
        assert "--fuse-gate-up needs ONNX Runtime GenAI's builder 0.18.0 or later" in line and "LANE=current" in line
        assert not (tmp_path / "g").exists()
        return
    assert code == 0, err
    rec = json.loads((tmp_path / "g" / "export.json").read_text())
    assert "fuse_mlp_gate_up=true" in rec["quantization"]["settings"]
    assert rec["structural_checks"][1]["detail"] == "13 MatMulNBits nodes"  # 16 unfused: q, k, v, o, gate, up, down + head
    code, _, err = run([*argv[:-1], str(tmp_path / "streamed"), "--stream"], capsys)  # the streamed writer: the same bytes
    assert code == 0, err
    for name in ("model.onnx", "model.onnx.data", "genai_config.json"):
        assert (tmp_path / "g" / name).read_bytes() == (tmp_path / "streamed" / name).read_bytes(), name


@pytest.mark.parametrize("extra,words", [
    (["--exporter", "genai"], "fuses the projections the builder quantizes"),  # fp32: it would change nothing
    (["--exporter", "optimum", "--quantize", "int4"], "is an option of ONNX Runtime GenAI's builder")])
def test_fuse_gate_up_where_it_does_nothing_is_refused(extra, words, tiny, tmp_path, capsys):
    from compressor.compat import lane, optimum_missing

    if lane() == "card" and "genai" in extra:
        words = "needs ONNX Runtime GenAI's builder 0.18.0"  # the lane's refusal comes first
    if "optimum" in extra and optimum_missing():
        words = "--exporter optimum cannot run here"
    code, _, err = run(["export", str(tiny("llama-gqa16")), "--fuse-gate-up", "--out", str(tmp_path / "g"), *extra],
                       capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert words in line, line
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("arch", ["llama-gqa16", "lfm2_moe-gqa16"])  # lfm2_moe: its convolution states carried too
def test_a_genai_candidate_gives_the_pytorch_metrics_for_every_task_kind(arch, genai, tiny, task_files, monkeypatch):
    """Our four kinds and an lm-evaluation-harness task (the harness's HFLM driving the GenAI graph)."""
    from compressor.export.ort_model import load_onnx_model
    from compressor.profiles import Profile
    from compressor.sources.models import load_model
    from compressor.verify.api import verify

    monkeypatch.chdir(ROOT)  # lm-eval reads a task's data_files relative to the working directory
    src = load_model(str(tiny(arch)))
    art = load_onnx_model(str(genai(arch)))
    assert art.dtype == "onnx-genai-float32"
    data = causal_profile(task_files)
    data["tasks"][3]["max_new_tokens"] = 6  # generation: per-row decoding on the GenAI graph
    data["tasks"].append({"name": "rt-qa-harness", "kind": "lm-eval", "task": "avss_rt_qa_mini",
                          "include_path": "tests/verify/lm_eval_task", "metric": "acc_norm", "limit": 24})
    rep = verify(src, art, Profile.model_validate(data))
    assert {t.kind for t in rep.tasks} == {"perplexity", "zero-shot-classification", "multiple-choice", "generation",
                                           "lm-eval"}
    for t in rep.tasks:
        for m, v in t.base_metrics.items():
            assert t.candidate_metrics[m] == pytest.approx(v, rel=1e-4, abs=1e-6), (t.name, m)
        assert t.agreement == pytest.approx(1.0), t.name


@pytest.mark.optimum
def test_a_broken_genai_graph_fails_the_gate_and_bench_runs_it_next_to_optimum(genai, tiny, tiny_onnx, tmp_path,
                                                                              task_files, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(genai("llama-gqa16"), broken)
    import onnx

    data = broken / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    for t in onnx.load(str(broken / "model.onnx"), load_external_data=False).graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        if "layers.1" in t.name and "MatMul" in t.name:  # wrong weights in one block, intact files
            start, length = int(info.get("offset", 0)), int(info["length"])
            blob[start:start + length] = bytes(length)
    data.write_bytes(bytes(blob))
    prof = causal_profile(task_files)
    prof["tasks"] = prof["tasks"][:1]  # perplexity
    prof["gate"]["min_retention"] = 0.99
    gate = ["--profile", str(write_profile(tmp_path / "p.yaml", prof)), "--report-dir", str(tmp_path / "r")]
    code, _, err = run(["verify", str(tiny("llama-gqa16")), str(genai("llama-gqa16")), *gate], capsys)
    assert code == 0, err  # the intact graph passes, and its result is cached ...
    code, _, err = run(["verify", str(tiny("llama-gqa16")), str(broken), *gate], capsys)
    assert code == 1 and "retention gate failed (ppl " in err, err  # ... under its weights' content, not its name
    code, out, err = run(["bench", str(tiny_onnx("llama")), str(genai("llama-gqa16")), "--prompt-len", "8",
                          "--new-tokens", "4", "--warmup", "1", "--runs", "2", "--threads", "1",
                          "--json", str(tmp_path / "bench.json")], capsys)
    assert code == 0, err
    assert "decode p50" in out  # the table (its model names are cut to the terminal's width)
    bench = json.loads((tmp_path / "bench.json").read_text())
    models = bench["models"]
    assert [m["path"] for m in models] == [str(tiny_onnx("llama")), str(genai("llama-gqa16"))]
    assert all(m["decode_ms_per_token"]["p50"] > 0 and m["kind"] == "decoder" for m in models)
    # each figure says what timed it: a raw session, or the runtime that serves a GenAI folder, same threads
    assert models[0]["runtime"].startswith("onnxruntime 1.") and "InferenceSession" in models[0]["runtime"]
    assert models[1]["runtime"].startswith("onnxruntime-genai 0.15.2 (Model + Generator, intra_op_num_threads 1)")
    decode = models[1]["samples"]["decode_ms"]
    assert len(decode) == 2 * 4 * 2  # runs x new tokens x rounds: never stopped early at an EOS
    import statistics

    assert min(decode) > 0.25 * statistics.median(decode)  # each timed step ran the model (a pick-only call: 0.08x)
    assert {"onnxruntime", "onnxruntime_genai"} <= set(bench["settings"]["versions"])
    assert f"{genai('llama-gqa16')}: timed with onnxruntime-genai" in err


def test_the_genai_bench_worker_imports_the_serving_runtime_and_nothing_heavy(genai):
    from compressor.export.bench import run_worker

    job = {"provider": "cpu", "threads": 1, "batch_size": 1, "prompt_len": 8, "new_tokens": 2, "warmup": 0,
           "runs": 1, "io_binding": None, "seed": 0, "model": str(genai("llama-gqa16") / "model.onnx"),
           "genai_folder": str(genai("llama-gqa16"))}
    res = run_worker(job)
    assert "onnxruntime_genai" in res["modules"] and len(res["step_ms"]) == 2
    assert not set(res["modules"]) & {"torch", "transformers", "optimum", "matplotlib", "typer", "rich", "pydantic"}


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
def test_run_builds_gates_and_records_the_genai_artifact(tiny, tmp_path, capsys):

    out = tmp_path / "art"
    profile = str(write_ppl_profile(tmp_path, 0.5))
    code, _, err = run(["run", str(tiny("llama-gqa16")), "--profile", profile, "--out", str(out), "--num-layers", "1",
                        "--exporter", "genai", "--skip-bench"], capsys)
    assert code == 0, err
    d = json.loads((out / "run.json").read_text())
    assert d["exporter"] == "genai" and d["parity"]["passed"] is True
    assert [a["artifact"] for a in d["artifacts"]] == ["onnx"] and d["artifacts"][0]["passed"] is True
    assert (out / "onnx" / "genai_config.json").is_file()
    assert json.loads((out / "onnx" / "export.json").read_text())["exporter"]["name"] == "genai"
    for argv, words in ((["--quantize", "int8"], "the genai exporter builds fp32, int4, int8-weights or int4-mixed graphs"),
                        ([], "does not build GPT2LMHeadModel models")):
        model = tiny("gpt2") if not argv else tiny("llama-gqa16")
        code, _, err = run(["run", str(model), "--profile", profile, "--out", str(tmp_path / "other"),
                            "--num-layers", "1", "--exporter", "genai", *argv], capsys)
        assert code == 2 and words in err and "score" not in err.split("error:")[0], err
        assert not (tmp_path / "other").exists()


def test_a_folder_built_before_records_carried_a_label_still_names_its_exporter(genai, tmp_path):
    import shutil

    from compressor.export.ort_model import load_onnx_model

    old = tmp_path / "old"
    shutil.copytree(genai("llama-gqa16"), old)
    rec = json.loads((old / "export.json").read_text())
    assert rec["exporter"].pop("label") == "onnx-genai"
    (old / "export.json").write_text(json.dumps(rec))
    assert load_onnx_model(str(old)).dtype == "onnx-genai-float32"


# the decoder transformers' GGUF conversion wrote for the built-in SmolLM2 (converted by avss before the fix)
SENTENCEPIECE_STYLE = {"type": "Sequence", "decoders": [
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}


def _with_decoder(folder, decoder):
    f = folder / "tokenizer.json"
    tok = json.loads(f.read_text(encoding="utf-8"))
    tok["decoder"] = decoder
    f.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def test_the_served_tokenizer_of_every_genai_export_reads_text_as_the_source_does(genai):
    rec = json.loads((genai("llama-gqa16") / "export.json").read_text())
    (check,) = [c for c in rec["structural_checks"] if c["name"].startswith("served tokenizer")]
    assert check["passed"] and "all decode alike" in check["detail"], check
    assert "transformers adds <|im_start|> at the start, onnxruntime-genai's encode does not" in check["detail"]
    if genai_requirement().endswith("==0.15.2"):  # the card's lane's builder
        # onnxruntime-genai 0.15.2 splits a newline and the indent after it apart: said, never hidden
        assert "1 of 4 probe texts into other tokens" in check["warning"] and check["warning"] in rec["warnings"]
    else:  # 0.18 reads every probe as transformers does
        assert "warning" not in check and "4 of 4 texts give the same ids" in check["detail"]


def test_a_folder_that_would_serve_garbage_is_never_exported_or_gated(genai, tiny, tmp_path, capsys):
    """With the GGUF conversion's SentencePiece-style decoder, onnxruntime-genai's tokenizer encoded every
    space as -1 ids while the gate (fed transformers' ids) passed: now exit 3 at export and at the gate."""
    src = tmp_path / "src"
    shutil.copytree(tiny("llama-gqa16"), src)
    _with_decoder(src, SENTENCEPIECE_STYLE)
    out = tmp_path / "g"
    code, _, err = run(["export", str(src), "--exporter", "genai", "--out", str(out)], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert "served tokenizer (onnxruntime-genai) reads text as the source's" in line and "-1" in line, line
    assert line.endswith("save the tokenizer the model was trained with next to it and export again")
    assert not out.exists()
    shipped = tmp_path / "shipped"  # a folder exported before the check, its tokenizer as the old conversion left it
    shutil.copytree(genai("llama-gqa16"), shipped)
    _with_decoder(shipped, SENTENCEPIECE_STYLE)
    prof = write_ppl_profile(tmp_path, 0.5)
    code, _, err = run(["verify", str(tiny("llama-gqa16")), str(shipped), "--profile", str(prof), "--report-dir",
                        str(tmp_path / "r")], capsys)
    assert code == 3, err
    assert "ONNX Runtime GenAI's tokenizer does not read text as the source tokenizer does" in err, err


def test_the_builtin_tokenizer_decodes_byte_level_and_an_old_conversion_is_fixed_in_place(smollm2_dir, tmp_path):
    """The fix changes no id and no decoded text in transformers (the vocabulary has no "▁" and no byte
    tokens), so every figure measured before stands; only the runtime's reading changes."""
    from transformers import AutoTokenizer

    from compressor.export.genai import TOKENIZER_PROBES
    from compressor.sources import builtins

    assert builtins._tokenizer_fixed(smollm2_dir)
    old = tmp_path / "smollm2-135m"
    old.mkdir()
    for f in smollm2_dir.iterdir():  # the weights by link: nothing here reads them
        (old / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy2(f, old / f.name)
    _with_decoder(old, SENTENCEPIECE_STYLE)
    before = AutoTokenizer.from_pretrained(str(old))
    assert not builtins._smollm2_complete(old)
    assert builtins._convert_smollm2(old) == old and builtins._tokenizer_fixed(old)
    after = AutoTokenizer.from_pretrained(str(old))
    for text in TOKENIZER_PROBES:
        ids = before(text)["input_ids"]
        assert after(text)["input_ids"] == ids and after.decode(ids) == before.decode(ids) == "<|im_start|>" + text


def test_the_gate_reuses_the_exports_tokenizer_check_while_the_files_are_unchanged(genai, tmp_path, monkeypatch):
    """The runtime's tokenizer needs the whole model loaded; the gate loads the graph already, so it reuses
    the export's passed check, keyed on the tokenizer files' content, and runs it again when they change."""
    import onnxruntime_genai as og

    from compressor.export.ort_model import load_onnx_model

    folder = tmp_path / "g"
    shutil.copytree(genai("llama-gqa16"), folder)
    loads = []
    real = og.Model
    monkeypatch.setattr(og, "Model", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    load_onnx_model(str(folder))
    assert loads == []  # the files the export checked: no second model
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 4096}))
    load_onnx_model(str(folder))
    assert len(loads) == 1  # edited: checked again (and it still reads text alike)
