"""The shard writer cuts a checkpoint exactly as the in-memory cut does (bit for bit, every decoder
architecture, fp32 and bf16), without building the model; sharded inputs, replacements, refusals,
and atomicity."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from compressor.architectures import get_layers, mlp_out_module
from compressor.errors import BadInput
from compressor.prune.shards import write_cut
from compressor.prune.surgery import prune_model, remove_layers
from compressor.sources.models import load_model
from tiny_models import DECODERS

REMOVED = [1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def source(tiny, tmp_path_factory):
    """source(arch, dtype, **save_kwargs) -> a tiny checkpoint saved in that dtype (built once each)."""
    from transformers import AutoModelForCausalLM

    made: dict[tuple, Path] = {}

    def get(arch: str, dtype: str = "float32", **save: object) -> Path:
        key = (arch, dtype, tuple(sorted(save.items())))
        if key not in made:
            if dtype == "float32" and not save:
                made[key] = tiny(arch)
            else:
                folder = tmp_path_factory.mktemp(f"src-{arch}-{dtype}")
                for f in tiny(arch).iterdir():
                    if not f.name.endswith(".safetensors"):
                        shutil.copy(f, folder / f.name)
                m = AutoModelForCausalLM.from_pretrained(str(tiny(arch)), dtype=DTYPES[dtype])
                m.save_pretrained(str(folder), **save)
                made[key] = folder
        return made[key]

    return get


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            assert fh.metadata() == {"format": "pt"}
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _ids(tokenizer):
    return tokenizer(["Layer pruning keeps the cache consistent.", "Short."], return_tensors="pt", padding=True)


# every architecture in bf16 (what large checkpoints ship in), fp32 on two layouts (body prefix model. / transformer.)
@pytest.mark.parametrize("arch,dtype", [(a, "bfloat16") if a in ("llama", "gpt2", "qwen2", "lfm2_moe", "qwen3_5_text") else
                                        pytest.param(a, "bfloat16", marks=pytest.mark.slow) for a in DECODERS]
                         + [("llama", "float32"), ("gpt2", "float32")])  # the other architectures: `-m slow`
def test_shard_cut_equals_the_in_memory_cut(arch, dtype, source, tmp_path):
    from transformers import AutoModelForCausalLM

    src = source(arch, dtype)
    loaded = load_model(str(src), dtype=dtype)
    mem = prune_model(loaded, REMOVED, tmp_path / "mem", provenance={"method": "test"})
    res = write_cut(src, REMOVED, tmp_path / "shard", provenance={"method": "test"}, tokenizer=loaded.tokenizer)
    a, b = tmp_path / "mem", tmp_path / "shard"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert res.files == ["model.safetensors"] and res.bytes == (b / "model.safetensors").stat().st_size
    # the same file, byte for byte (safetensors orders tensors itself; same header, same data)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    _assert_same_tensors(_tensors(a), _tensors(b))
    # every file but the weights and the record: the same names (what this transformers writes) and contents
    others = {f.name for f in a.iterdir()} - {"model.safetensors", "compression.json"}
    assert others == {f.name for f in b.iterdir()} - {"model.safetensors", "compression.json"}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= others
    for name in others:
        assert (a / name).read_text() == (b / name).read_text(), name
    rec_a, rec_b = (json.loads((f / "compression.json").read_text()) for f in (a, b))
    assert rec_a.pop("created") and rec_b.pop("created")
    assert rec_a == rec_b
    assert (res.kept, res.parameters_before, res.parameters_after, res.warnings) == (
        mem.kept, mem.parameters_before, mem.parameters_after, mem.warnings)
    again = AutoModelForCausalLM.from_pretrained(str(b), dtype=DTYPES[dtype]).eval()  # plain transformers
    assert again.config.num_hidden_layers == 3
    batch = _ids(loaded.tokenizer)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, loaded.model(**batch).logits)  # loaded: cut in memory


def test_sharded_input_gives_shards_no_larger_than_its_own_and_an_index(source, tmp_path):
    from transformers import AutoModelForCausalLM

    src = source("llama", "float32", max_shard_size="50KB")
    inputs = sorted(src.glob("*.safetensors"))
    assert len(inputs) > 2 and (src / "model.safetensors.index.json").exists()
    res = write_cut(src, [0, 2], tmp_path / "slim")
    out = tmp_path / "slim"
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and res.files == [s.name for s in shards] + ["model.safetensors.index.json"]
    assert max(s.stat().st_size for s in shards) <= max(s.stat().st_size for s in inputs)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got = _tensors(out)
    assert sorted(index["weight_map"]) == sorted(got)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    model = AutoModelForCausalLM.from_pretrained(str(src))
    remove_layers(model, [0, 2])
    _assert_same_tensors(got, {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"})  # tied
    again = AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_replace_writes_the_folded_tensor(arch, source, tmp_path):
    """A linear patch folded in memory, then written through ``replace``: the same bytes."""
    from compressor.repair.linear import fold

    src = source(arch, "bfloat16")
    loaded = load_model(str(src), dtype="bfloat16")
    d = loaded.config.hidden_size
    T = torch.eye(d, dtype=torch.float64) + 0.01 * torch.randn(d, d, generator=torch.Generator().manual_seed(0),
                                                               dtype=torch.float64)
    proj = mlp_out_module(get_layers(loaded.model)[2], loaded.adapter)
    fold(proj, loaded.adapter.mlp_out_kind, T)
    body = "model.layers" if arch == "llama" else "transformer.h"
    patched = {f"{body}.2.{loaded.adapter.mlp_out}.{n}": p.detach().double() for n, p in proj.named_parameters()}
    prune_model(loaded, REMOVED, tmp_path / "mem")
    write_cut(src, REMOVED, tmp_path / "shard", replace=patched)
    got, want = _tensors(tmp_path / "shard"), _tensors(tmp_path / "mem")
    _assert_same_tensors(got, want)
    assert not torch.equal(got[f"{body}.1.{loaded.adapter.mlp_out}.weight"],
                           _tensors(src)[f"{body}.1.{loaded.adapter.mlp_out}.weight"])


def test_bad_indices_are_refused_as_the_in_memory_cut_refuses_them(source, tmp_path):
    loaded = load_model(str(source("llama")))
    for removed in ([4], [-1, 2], [0, 1, 2, 3]):
        with pytest.raises(BadInput) as mem:
            remove_layers(loaded.model, removed)
        with pytest.raises(BadInput) as shard:
            write_cut(source("llama"), removed, tmp_path / "slim")
        assert str(shard.value) == str(mem.value)
    assert not (tmp_path / "slim").exists()


@pytest.mark.parametrize("key,shape,needle", [
    ("model.layers.1.mlp.down_proj.weight", None, "the cut does not write"),  # block 1 is removed
    ("model.layers.2.mlp.down_proj.bias", (32,), "does not hold"),
    ("model.layers.2.mlp.down_proj.weight", (32, 32), "shape [32, 32], but the checkpoint's is [32, 64]"),
])
def test_bad_replacements_are_refused(key, shape, needle, source, tmp_path):
    value = torch.zeros(shape or (32, 64))
    with pytest.raises(BadInput, match="replace") as e:
        write_cut(source("llama"), REMOVED, tmp_path / "slim", replace={key: value})
    assert needle in str(e.value) and "; " in str(e.value)  # problem; fix
    assert list(tmp_path.iterdir()) == []


def test_a_failure_mid_write_leaves_no_output(source, tmp_path, monkeypatch):
    import compressor.prune.shards as shards

    real, calls = shards._write_shard, []

    def second_fails(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk went away")
        return real(*a, **kw)

    monkeypatch.setattr(shards, "_write_shard", second_fails)
    with pytest.raises(RuntimeError, match="disk went away"):
        write_cut(source("llama", "float32", max_shard_size="50KB"), REMOVED, tmp_path / "slim")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(source, tmp_path):
    (tmp_path / "slim").mkdir()
    with pytest.raises(BadInput, match="already exists"):
        write_cut(source("llama"), REMOVED, tmp_path / "slim")
    write_cut(source("llama"), REMOVED, tmp_path / "slim", force=True)
    assert (tmp_path / "slim" / "model.safetensors").exists()


def test_without_a_tokenizer_the_sources_own_is_saved(source, tmp_path):
    src = source("llama")
    prune_model(load_model(str(src)), REMOVED, tmp_path / "mem")
    write_cut(src, REMOVED, tmp_path / "shard")
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == sorted(p.name for p in (tmp_path / "shard").iterdir())
    assert (tmp_path / "shard" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def test_a_bare_model_has_no_body_prefix(tiny, tmp_path):
    """A checkpoint saved from the body alone spells its blocks ``layers.N.`` (no ``model.``)."""
    from transformers import AutoModel

    bare = tmp_path / "bare"
    AutoModel.from_pretrained(str(tiny("qwen2"))).save_pretrained(str(bare))
    for f in tiny("qwen2").glob("*token*"):  # the tokenizer files this transformers wrote
        shutil.copy(f, bare / f.name)
    write_cut(bare, [2], tmp_path / "slim")
    model = AutoModel.from_pretrained(str(bare))
    remove_layers(model, [2])
    _assert_same_tensors(_tensors(tmp_path / "slim"), model.state_dict())
    cfg = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["max_window_layers"] == 2 and len(cfg["layer_types"]) == 3


def test_index_dependent_flags_warn_as_the_in_memory_cut_does(source, tmp_path):
    src = tmp_path / "gpt2"
    shutil.copytree(source("gpt2"), src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "scale_attn_by_inverse_layer_idx": True}))
    mem = remove_layers(load_model(str(src)).model, [0])
    res = write_cut(src, [0], tmp_path / "slim")
    assert res.warnings == mem and any("scale_attn_by_inverse_layer_idx" in w for w in mem)
    assert json.loads((tmp_path / "slim" / "compression.json").read_text())["warnings"] == mem


def test_the_model_is_never_built_with_weights(source, tmp_path, monkeypatch):
    """Only a meta-device skeleton is built (to check every tensor's name and shape against config.json)."""
    from transformers import PreTrainedModel

    src = source("llama", "float32", max_shard_size="50KB")
    built, init = [], PreTrainedModel.__init__

    def record(self, *a, **kw):
        init(self, *a, **kw)
        built.append(self)

    monkeypatch.setattr(PreTrainedModel, "__init__", record)
    res = write_cut(src, REMOVED, tmp_path / "slim")
    assert res.num_layers_after == 3 and len(res.files) > 2
    assert built and all(p.device.type == "meta" for m in built for p in m.parameters())


def test_mixed_dtypes_are_ordered_as_safetensors_orders_them(tmp_path):
    """A copied shard is byte-identical to save_file's for a file holding several dtypes (its order:
    dtype descending, then name)."""
    import torch
    from safetensors.torch import save_file

    import compressor.prune.shards as shards
    from compressor.sources.integrity import read_header

    tensors = {"b.w": torch.randn(3, 2), "a.w": torch.randn(4).to(torch.bfloat16), "c.i": torch.arange(5),
               "d.h": torch.randn(2, 2).to(torch.float16), "e.m": torch.tensor([True, False]),
               "f.u": torch.arange(3, dtype=torch.uint8), "g.d": torch.randn(2, dtype=torch.float64)}
    save_file(tensors, str(tmp_path / "src.safetensors"), metadata={"format": "pt"})
    plan = [(t, t.key) for t in read_header(tmp_path / "src.safetensors")]
    shards._write_shard(tmp_path / "out.safetensors", plan, {})
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "src.safetensors").read_bytes()
