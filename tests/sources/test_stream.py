"""Streaming (``--stream``): one block at a time, read from the shards, gives the in-memory results exactly."""
from __future__ import annotations

import pytest
import torch

from compressor.errors import BadInput
from compressor.sources.data import CalibrationSpec, calibration_for
from compressor.sources.models import load_model
from tiny_models import ARCHS, DECODERS

EVERYDAY = ("llama", "gpt2", "qwen2", "lfm2_moe", "qwen3_5_text")  # two block-list layouts, per-layer attention types,
# hybrids (the families only transformers 5 has run here, in the current lane, whose suite has the time); the rest: -m slow


def sweep(archs):
    return [a if a in EVERYDAY else pytest.param(a, marks=pytest.mark.slow) for a in archs]


SCORERS = [("block-influence", None, {}), ("avss", "robust", {}), ("avss", "official", {}), ("angular", None, {}),
           ("relative-update", None, {}), ("block-influence", None, {"last_state": "final-norm"})]


def _pair(folder, **kw):
    full = load_model(str(folder), **kw)
    streamed = load_model(str(folder), stream=True, **kw)
    data = calibration_for(full, CalibrationSpec(samples=6, seq_len=48, batch_size=4))
    return full, streamed, data


@pytest.mark.parametrize("arch", sweep(ARCHS))
def test_streamed_scores_equal_in_memory(tiny, arch):
    from compressor.score.api import score_layers

    full, streamed, data = _pair(tiny(arch))
    assert streamed.streamed and not full.streamed
    # nothing of the blocks is in memory: every block parameter is on the meta device
    from compressor.architectures import get_layers

    assert all(p.device.type == "meta" for p in get_layers(streamed.model, streamed.adapter).parameters())
    for method, mode, extra in SCORERS:
        a = score_layers(full, method, mode=mode, data=data, **extra)
        b = score_layers(streamed, method, mode=mode, data=data, **extra)
        diff = max(abs(x.score - y.score) for x, y in zip(a.layers, b.layers))
        assert diff <= 1e-5, (arch, method, mode, extra, diff)
        assert a.ranking == b.ranking
    # blocks are released after they run
    assert all(p.device.type == "meta" for p in get_layers(streamed.model, streamed.adapter).parameters())


def test_streamed_bf16_checkpoint_scored_in_float32_equals_in_memory(tiny, tmp_path):
    """The loader's dtype applies to each block as it is read, as from_pretrained casts the whole model."""
    from transformers import AutoModelForCausalLM

    from compressor.score.api import score_layers

    m = AutoModelForCausalLM.from_pretrained(str(tiny("llama")), dtype=torch.bfloat16)
    m.save_pretrained(tmp_path / "bf16", max_shard_size="100KB")  # several shards and an index
    import shutil

    for f in tiny("llama").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, tmp_path / "bf16" / f.name)
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    full, streamed, data = _pair(tmp_path / "bf16", dtype="float32")
    assert streamed.model.get_input_embeddings().weight.dtype == torch.float32
    a = score_layers(full, "avss", mode="robust", data=data)
    b = score_layers(streamed, "avss", mode="robust", data=data)
    assert [x.score for x in a.layers] == [y.score for y in b.layers]


@pytest.mark.parametrize("method", ["leave-one-out", "sleb"])
def test_whole_model_scorers_refuse_a_streamed_model(tiny, method):
    from compressor.score.api import score_layers, stream_choice

    streamed = load_model(str(tiny("llama")), stream=True)
    data = calibration_for(streamed, CalibrationSpec(samples=4, seq_len=32, batch_size=4))
    with pytest.raises(BadInput, match="cannot stream one block at a time"):
        score_layers(streamed, method, data=data)
    with pytest.raises(BadInput, match="drop --stream"):
        stream_choice(method, True)
    assert stream_choice(method, None) is False  # never streamed by default
    assert stream_choice("avss", None) is None  # the loader decides


def test_stream_refuses_what_it_cannot_read(tiny, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny("llama"), folder)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    sd.pop("model.layers.1.mlp.down_proj.weight")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BadInput, match="no weights named model.layers.1.mlp.down_proj.weight"):
        load_model(str(folder), stream=True)
    (folder / "model.safetensors").unlink()
    with pytest.raises(BadInput):
        load_model(str(folder), stream=True)


# gemma3 and lfm2_moe cannot be folded (tests/repair/test_linear.py); [1, 3] is two spans (the second fitted on the
# first's patched output)
@pytest.mark.parametrize("arch,removed", [(a, [1, 3]) if a in EVERYDAY else pytest.param(a, [1, 3], marks=pytest.mark.slow)
                                          for a in DECODERS if a not in ("gemma3_text", "lfm2_moe")] + [("llama", [1, 2])])
def test_streamed_linear_patch_equals_in_memory(tiny, arch, removed):
    from compressor.repair.linear import linear_repair, linear_repair_streamed

    full, streamed, data = _pair(tiny(arch))
    patches_s, replace = linear_repair_streamed(streamed, removed, data.batches)
    patches_m, _ = linear_repair(full.model, removed, data.batches)
    assert [p.to_dict() for p in patches_s] == [p.to_dict() for p in patches_m]
    kept = [i for i in range(4) if i not in removed]
    state = full.model.state_dict()
    prefix = streamed.stream.layers_prefix
    assert replace and all(k.startswith(prefix) for k in replace)
    for key, tensor in replace.items():
        index, rest = key[len(prefix):].split(".", 1)
        assert int(index) + 1 in removed  # folded into the block before a span
        cut_key = f"{prefix}{kept.index(int(index))}.{rest}"
        assert torch.equal(state[cut_key], tensor), key


@pytest.mark.parametrize("arch", sweep(["llama", "gemma3_text", "gpt2", "gpt_neox"]))
def test_streamed_perplexity_equals_in_memory(tiny, arch, tmp_path):
    from types import SimpleNamespace

    from compressor.verify.kinds.base import kind

    folder = tiny(arch)
    full = load_model(str(folder))
    streamed = load_model(str(folder), stream=True, with_head=True)
    docs = ["The quick brown fox jumps over the lazy dog. " * 20, "Pack my box with five dozen liquor jugs. " * 15]
    task = SimpleNamespace(name="ppl", limit=300, window=64, stride=32)
    profile = SimpleNamespace(eval=SimpleNamespace(batch_size=3, max_length=128))
    ppl = kind("perplexity")
    a = ppl.evaluate(full, task, docs, [], profile, None)
    b = ppl.evaluate(streamed, task, docs, [], profile, None)
    assert len(a.records) == len(b.records) > 3
    assert abs(a.metrics["perplexity"] - b.metrics["perplexity"]) <= 1e-4 * a.metrics["perplexity"]
    assert [r["top1"] for r in a.records] == [r["top1"] for r in b.records]


def test_whole_model_task_kinds_refuse_to_stream():
    from types import SimpleNamespace

    from compressor.verify.kinds.base import kind

    kind("perplexity").check_streams(SimpleNamespace(name="p"))
    with pytest.raises(BadInput, match="task mc .* needs the whole model"):
        kind("multiple-choice").check_streams(SimpleNamespace(name="mc"))
