"""``avss export --exporter genai --stream``: the builder's graph written one block at a time from the shards.
The known answer is the builder's own folder: every file byte-equal, per family and precision."""
import filecmp
import json
from pathlib import Path

import pytest

from helpers import error_lines, run

FILES = ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _export(src, out, capsys, *extra):
    code, _, err = run(["export", str(src), "--exporter", "genai", "--out", str(out), *extra], capsys)
    assert code == 0, err
    return json.loads((out / "export.json").read_text())


def _sharded(tiny, arch, folder: Path) -> Path:
    """``arch``'s tiny model re-saved in several shards (the reader's normal case at scale)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny(arch)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    model.save_pretrained(str(folder), max_shard_size="100KB")
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(folder))
    return folder


def _equal_to_the_builder(tiny, arch, quantize, tmp_path, capsys):
    extra = ["--quantize", quantize] if quantize else []
    built = _export(tiny(arch), tmp_path / "builder", capsys, "--no-stream", *extra)
    streamed = _export(tiny(arch), tmp_path / "streamed", capsys, "--stream", *extra)
    for name in FILES:
        assert filecmp.cmp(tmp_path / "builder" / name, tmp_path / "streamed" / name, shallow=False), name
    assert built["exporter"]["writer"] == "the builder" and streamed["exporter"]["writer"].startswith("streamed")
    return streamed


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_the_streamed_folder_is_the_builders_byte_for_byte(quantize, tiny, tmp_path, capsys):
    rec = _equal_to_the_builder(tiny, "mistral-gqa16", quantize, tmp_path, capsys)  # untied: its own int4 table
    if quantize is None:  # fp32: parity against the model run one block at a time
        assert rec["parity"]["passed"] and any("streamed reference" in c["name"] for c in rec["parity"]["checks"])
    else:
        assert all(c["passed"] for c in rec["structural_checks"]) and rec["quantization"]["method"] == "int4"


@pytest.mark.parametrize("arch,quantize", [("lfm2_moe-gqa16", None), ("lfm2_moe-gqa16", "int4")])
def test_a_hybrid_moe_family_streams_byte_for_byte(arch, quantize, tiny, tmp_path, capsys):
    """LFM2-MoE (transformers 5, the current lane): per-expert tensors on disk put together as transformers does,
    convolution blocks, the builder's QMoE experts and its float routers (it excludes them while it builds)."""
    rec = _equal_to_the_builder(tiny, arch, quantize, tmp_path, capsys)
    assert rec["parity"]["passed"] if quantize is None else all(c["passed"] for c in rec["structural_checks"])


@pytest.mark.slow  # every family and precision the builder builds for us (see pyproject.toml: the slow tier)
@pytest.mark.parametrize("arch", ["llama-gqa16", "mistral-gqa16", "qwen2-gqa16", "qwen3-gqa16", "phi3-gqa16"])
@pytest.mark.parametrize("quantize", [None, "int4", "int8-weights"])
def test_every_family_and_precision_equals_the_builder(arch, quantize, tiny, tmp_path, capsys):
    if quantize == "int8-weights" and arch != "mistral-gqa16":  # tied: refused with --stream (tested below)
        quantize = "int4"
    _equal_to_the_builder(tiny, arch, quantize, tmp_path, capsys)


def test_weights_are_quantized_in_chunks_with_the_same_bytes(tiny, tmp_path, capsys, monkeypatch):
    """An 8 B model's LM head is 2.1 GB in fp32: the pass quantizes column (or row) chunks of it. Each
    column's blocks are independent, so a chunk of a few columns writes the same bytes."""
    from compressor.export import genai_stream

    monkeypatch.setattr(genai_stream, "CHUNK_BYTES", 1000)
    _equal_to_the_builder(tiny, "mistral-gqa16", "int4", tmp_path, capsys)


def test_a_shard_that_vanishes_mid_export_is_exit_2_naming_it_and_nothing_is_left(tiny, tmp_path, capsys, monkeypatch):
    from compressor.export import genai_stream

    src = _sharded(tiny, "mistral-gqa16", tmp_path / "sharded")
    shards = sorted(src.glob("model-*.safetensors"))
    assert len(shards) > 2
    load = genai_stream._Writer._load

    def then_lose_the_last(self, prefix, module, head_unit):
        if self.units == 2:  # the embeddings and a block are written: the last shard is gone
            shards[-1].unlink()
        return load(self, prefix, module, head_unit)

    monkeypatch.setattr(genai_stream._Writer, "_load", then_lose_the_last)
    out = tmp_path / "g"
    code, _, err = run(["export", str(src), "--exporter", "genai", "--stream", "--quantize", "int4", "--out", str(out)],
                       capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert shards[-1].name in line and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_truncated_shard_is_exit_2_naming_it(tiny, tmp_path, capsys, monkeypatch):
    from compressor.export import genai_stream

    src = _sharded(tiny, "mistral-gqa16", tmp_path / "sharded")
    last = sorted(src.glob("model-*.safetensors"))[-1]
    load = genai_stream._Writer._load

    def then_truncate(self, prefix, module, head_unit):
        if self.units == 2:
            with last.open("r+b") as fh:
                fh.truncate(last.stat().st_size // 2)
        return load(self, prefix, module, head_unit)

    monkeypatch.setattr(genai_stream._Writer, "_load", then_truncate)
    code, _, err = run(["export", str(src), "--exporter", "genai", "--stream", "--out", str(tmp_path / "g")], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert last.name in line and "ends inside tensor" in line
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("arch,extra,words", [
    ("gpt2", [], "does not build GPT2LMHeadModel"),
    ("gemma3-gqa16", [], "Gemma3ForCausalLM"),
    ("mistral-gqa16", ["--quantize", "int4-mixed"], "k-quant pass over the whole graph"),
    ("llama-gqa16", ["--quantize", "int8-weights"], "tied embeddings"),
    pytest.param("llama-gqa16", ["--exporter", "optimum"], "cannot --stream", marks=pytest.mark.optimum)])
def test_what_streaming_cannot_write_is_refused_before_any_weight_is_read(arch, extra, words, tiny, tmp_path, capsys,
                                                                          monkeypatch):
    from compressor.sources import stream

    def never(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(stream.ShardReader, "get_many", never)
    argv = ["export", str(tiny(arch)), "--stream", "--out", str(tmp_path / "g"), *extra]
    code, _, err = run(argv if "--exporter" in extra else [*argv, "--exporter", "genai"], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert words in line
    assert not (tmp_path / "g").exists()


def test_an_export_that_fits_only_streamed_streams_and_says_so(tiny, tmp_path, capsys, monkeypatch):
    """Without --stream, an export that would not fit whole streams when the exporter can (the loader's rule);
    with --no-stream it is refused, naming --stream and what it needs."""
    from compressor.architectures import adapter_for_config
    from compressor.sources import memory
    from compressor.sources.models import load_config

    monkeypatch.setattr(memory, "STREAM_EXPORT_BASE", 0)  # the imports' share: dwarfs a tiny model's weights
    src = tiny("mistral-gqa16")
    size = memory.checkpoint_size(str(src), adapter_for_config(load_config(str(src), False)))
    assert size is not None
    whole, streamed = memory.need_export(size), memory.need_export_streamed(size)
    assert streamed < whole
    limit = str((whole + streamed) // 2)
    base = ["export", str(src), "--exporter", "genai", "--quantize", "int4", "--max-memory", limit]
    code, _, err = run([*base, "--no-stream", "--out", str(tmp_path / "g")], capsys)
    assert code == 2 and "add --stream" in error_lines(err)[0]
    code, _, err = run([*base, "--out", str(tmp_path / "g2")], capsys)
    assert code == 0 and "streamed: one block at a time" in err, err
    assert json.loads((tmp_path / "g2" / "export.json").read_text())["exporter"]["writer"].startswith("streamed")


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
def test_a_streamed_run_ships_the_streamed_quantized_artifact_and_benches_it_against_the_full_one(tiny, tmp_path,
                                                                                                  capsys):
    """A streamed run with --exporter genai --quantize int4: no fp32 slim graph, the int4 artifact written one
    block at a time and gated on tasks, the bench's reference the full model through the same exporter; every
    stage that ran records its peak RSS."""
    from helpers import write_ppl_profile

    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("mistral-gqa16")), "--profile", str(write_ppl_profile(tmp_path, 0.1)),
                        "--out", str(out), "--num-layers", "1", "--exporter", "genai", "--quantize", "int4",
                        "--stream", "--repair", "linear", "--bench-runs", "1", "--bench-warmup", "0",
                        "--bench-rounds", "1", "--bench-new-tokens", "4", "--bench-prompt-len", "8"], capsys)
    assert code == 0, err
    stages = {s["name"]: s for s in json.loads((out / "run.json").read_text())["stages"]}
    assert stages["export"]["status"] == "skipped" and "fp32 slim graph" in stages["export"]["detail"]
    assert "(streamed)" in stages["quantize"]["detail"] and "(streamed)" in stages["export-base-genai"]["detail"]
    assert stages["verify-onnx-int4"]["status"] == "ran" and stages["bench"]["status"] == "ran"
    assert all(s["peak_rss_gb"] > 0 for s in stages.values() if s["status"] == "ran")
    for folder in ("onnx-int4", "onnx-base-genai"):
        assert json.loads((out / folder / "export.json").read_text())["exporter"]["writer"].startswith("streamed")
    bench = json.loads((out / "bench.json").read_text())
    assert Path(bench["models"][0]["path"]).name in ("onnx-base", "onnx-base-genai")  # the full model first
    assert not (out / "onnx").exists()
