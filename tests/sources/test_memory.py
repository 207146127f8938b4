"""Will it fit: sizes from safetensors headers equal the loaded model's, and each command refuses a
load, an export or a run that cannot fit, with the numbers, before anything heavy loads."""
import pytest

from compressor.architectures import adapter_for_config, get_layers
from compressor.errors import BadInput
from compressor.sources import memory
from compressor.sources.memory import (
    CheckpointSize,
    check_export_fits,
    check_fits,
    checkpoint_size,
    need_export,
    need_in_memory,
    need_streamed,
    need_verify,
    parse_size,
)
from compressor.sources.models import load_model
from helpers import error_lines, run, write_ppl_profile
from tiny_models import ARCHS


@pytest.mark.parametrize("text,expected", [("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("512MB", 512 * 10**6),
                                           ("512 mib", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1000", 1000),
                                           ("2g", 2 * 10**9)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "24 parsecs", "-1GB", "0", "1,5GB"])
def test_parse_size_refuses_bad_text_naming_the_format(text):
    with pytest.raises(BadInput) as e:
        parse_size(text)
    assert "24GB" in e.value.line() and "24GiB" in e.value.line()


@pytest.mark.parametrize("arch", ARCHS)
def test_sizes_from_headers_equal_the_loaded_model(tiny, arch):
    loaded = load_model(str(tiny(arch)))
    size = checkpoint_size(str(tiny(arch)), loaded.adapter)
    assert size is not None
    layers = get_layers(loaded.model, loaded.adapter)
    # what is stored: the parameters and the persistent buffers (LFM2-MoE's expert_bias), as memory holds them
    params = {n for n, _ in loaded.model.named_parameters(remove_duplicate=False)}
    buffers = sum(t.numel() for n, t in loaded.model.state_dict().items() if n not in params)
    assert size.total == loaded.num_parameters + buffers
    assert size.blocks == len(layers) == 4
    per_block = [sum(t.numel() for t in b.state_dict().values()) for b in layers]
    assert size.block == max(per_block)  # a hybrid's blocks differ (convolution or linear attention vs attention)
    assert size.body + size.head + sum(per_block) == size.total
    head = loaded.model.get_output_embeddings() if arch not in ("bert", "roberta", "distilbert") else None
    tied = head is not None and head.weight is loaded.model.get_input_embeddings().weight
    if tied:
        assert size.head == 0  # a tied LM head is not stored
    elif arch in ("bert", "roberta", "distilbert"):
        assert size.head > 0  # the classifier
    assert size.dtype == "float32"
    assert size.bytes("bfloat16") * 2 == size.bytes("float32") == 4 * size.total


def test_needs_use_the_documented_factors():
    s = CheckpointSize(total=1000, block=100, blocks=8, body=150, head=50, dtype="bfloat16")
    assert need_in_memory(s, "float32") == int(4000 * memory.LOAD_FACTOR)
    assert need_verify(s, "bfloat16") == need_in_memory(s, "bfloat16")  # one model at a time
    assert need_export(s) == int(4000 * memory.EXPORT_FACTOR)
    assert need_streamed(s, "bfloat16", 10) == int(300 * 2 * memory.LOAD_FACTOR) + 10
    assert s.slim(6).total == 150 + 50 + 600


def test_check_fits_names_both_numbers():
    with pytest.raises(BadInput) as e:
        check_fits(9_400_000_000, 6_100_000_000, "loading /m in float32", "pass --dtype bfloat16")
    assert e.value.line() == "loading /m in float32 needs about 9.4 GB; 6.1 GB is free; pass --dtype bfloat16"
    check_fits(10, 10, "x", "y")


def test_no_safetensors_means_no_estimate(tmp_path, tiny):
    loaded_adapter = adapter_for_config(load_model(str(tiny("llama"))).config)
    assert checkpoint_size(str(tmp_path), loaded_adapter) is None
    assert checkpoint_size("someone/not-downloaded", loaded_adapter) is None


def test_auto_fp32_that_does_not_fit_names_bfloat16(tiny, monkeypatch):
    folder = str(tiny("llama"))
    size = checkpoint_size(folder, load_model(folder).adapter)
    assert size is not None
    between = (need_in_memory(size, "float32") + need_in_memory(size, "bfloat16")) // 2
    calls = []
    import transformers

    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained",
                        classmethod(lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError)))
    with pytest.raises(BadInput) as e:
        load_model(folder, dtype="auto", max_memory=between)
    msg = e.value.line()
    assert f"loading {folder} in float32 needs about" in msg and "--max-memory allows" in msg
    assert "pass --dtype bfloat16 (needs about" in msg
    assert not calls  # refused before from_pretrained


def test_an_explicit_dtype_that_does_not_fit_is_refused(tiny):
    with pytest.raises(BadInput) as e:
        load_model(str(tiny("llama")), dtype="bfloat16", max_memory=parse_size("1MB"))
    assert "in bfloat16 needs about" in e.value.line() and "0.0 GB" in e.value.line()
    assert "free memory or use a machine with more" in e.value.line()


def test_loads_that_fit_pass(tiny):
    assert load_model(str(tiny("llama")), max_memory=parse_size("64GB")).dtype == "float32"


def test_export_check(tiny):
    folder = str(tiny("llama"))
    adapter = load_model(folder).adapter
    with pytest.raises(BadInput) as e:
        check_export_fits(folder, adapter, parse_size("1MB"))
    assert f"exporting {folder} to ONNX (fp32) needs about" in e.value.line()
    check_export_fits(folder, adapter, parse_size("64GB"))


@pytest.mark.parametrize("argv", [
    ["score", "{m}", "--max-memory", "1MB"],
    ["prune", "{m}", "--out", "{out}", "--method", "random", "--num-layers", "1", "--max-memory", "1MB"],
    ["verify", "{m}", "{m}", "--profile", "{profile}", "--report-dir", "{out}", "--max-memory", "1MB"],
    ["run", "{m}", "--profile", "{profile}", "--out", "{out}", "--max-memory", "1MB"],
    ["export", "{m}", "--out", "{out}", "--max-memory", "1MB"],
])
def test_cli_refuses_in_one_line(argv, tiny, tmp_path, capsys):
    m, profile = str(tiny("llama")), write_ppl_profile(tmp_path, 0.5)
    code, out, err = run([a.format(m=m, out=tmp_path / "out", profile=profile) for a in argv], capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "needs about" in lines[0] and "--max-memory allows" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_bad_size(tiny, capsys):
    code, _, err = run(["score", str(tiny("llama")), "--max-memory", "lots"], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "24GB" in err and "Traceback" not in err


def _run_config(tiny, tmp_path, **kw):
    from compressor.run.config import RunConfig

    return RunConfig(model=str(tiny("llama")), profile=str(write_ppl_profile(tmp_path, 0.5)),
                     out=str(tmp_path / "run"), **kw)


def test_a_run_is_refused_by_its_largest_step(tiny, tmp_path, monkeypatch):
    """The bench's fp32 export of the full model is the largest step: a limit under it names it and the way
    around it (--skip-bench), before the base loads and before the run folder is written."""
    from compressor.run.api import run_pipeline

    folder = str(tiny("llama"))
    size = checkpoint_size(folder, load_model(folder).adapter)
    assert size is not None
    limit = (need_in_memory(size, "float32") + need_export(size)) // 2
    import compressor.sources.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(BadInput) as e:
        run_pipeline(_run_config(tiny, tmp_path, max_memory=str(limit)))
    msg = e.value.line()
    assert f"exporting {folder} to ONNX (fp32, the bench's full-model reference), the largest step" in msg
    assert "pass --skip-bench (the slim model's export needs about" in msg and "--max-memory allows" in msg
    assert not (tmp_path / "run").exists()


def test_a_run_that_fits_passes_the_check(tiny, tmp_path):
    from compressor.run.context import RunContext, Silent
    from compressor.run.prepare import check_memory

    check_memory(RunContext(_run_config(tiny, tmp_path, max_memory="64GB"), False, Silent()))
    with pytest.raises(BadInput) as e:  # skipping the export leaves the load (fp32 on CPU) the largest step
        check_memory(RunContext(_run_config(tiny, tmp_path, max_memory="1MB", skip_export=True), False, Silent()))
    assert "in float32, the largest step of this run, needs about" in e.value.line()
    assert "pass --dtype bfloat16" in e.value.line()


def test_an_in_memory_repair_counts_two_copies(tiny):
    """prune --repair and avss repair cut a copy of the base in memory: the check needs room for both."""
    from compressor.sources.memory import check_load_fits, checkpoint_size, need_in_memory

    folder = str(tiny("llama"))
    adapter = load_model(folder).adapter
    size = checkpoint_size(folder, adapter)
    one = need_in_memory(size, "float32")
    check_load_fits(folder, adapter, "float32", "cpu", max_memory=int(one * 1.5))
    with pytest.raises(BadInput, match="the repair holds 2 copies"):
        check_load_fits(folder, adapter, "float32", "cpu", max_memory=int(one * 1.5), copies=2)
