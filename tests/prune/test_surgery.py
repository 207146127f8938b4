"""Surgery invariants on every architecture: reload with plain transformers, same numbers,
renumbered layer_idx, shrunk config lists, KV-cache parity, generate, tied weights."""
import json

import pytest
import torch

from compressor.architectures import get_layers
from compressor.errors import BadInput
from compressor.prune.surgery import COMPRESSION_FILE, prune_model, remove_layers
from compressor.sources.models import load_model
from tiny_models import ARCHS, DECODERS

REMOVED = [1]


def _batch(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.", "Short one."]


def _auto_class(arch):
    import transformers

    return transformers.AutoModelForCausalLM if arch in DECODERS else transformers.AutoModelForSequenceClassification


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_checkpoint_reloads_and_matches(arch, tiny, tmp_path):
    loaded = load_model(str(tiny(arch)))
    old_lists = {k: list(getattr(loaded.config, k)) for k in loaded.adapter.per_layer_lists
                 if getattr(loaded.config, k, None) is not None}
    old_mwl = getattr(loaded.config, "max_window_layers", None)
    res = prune_model(loaded, REMOVED, tmp_path / "slim", provenance={"method": "test"})
    assert res.kept == [0, 2, 3] and res.num_layers_after == 3
    assert res.parameters_after < res.parameters_before
    batch = _batch(loaded.tokenizer, TEXTS)
    with torch.no_grad():
        mem = loaded.model(**batch).logits
    reloaded = _auto_class(arch).from_pretrained(str(tmp_path / "slim")).eval()  # plain transformers
    assert reloaded.config.num_hidden_layers == 3
    assert len(get_layers(reloaded)) == 3
    with torch.no_grad():
        again = reloaded(**batch).logits
    mask = batch["attention_mask"].bool()
    if arch in DECODERS:
        torch.testing.assert_close(again[mask], mem[mask], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(again, mem, atol=1e-5, rtol=1e-5)
    idx = [m.layer_idx for block in get_layers(reloaded) for m in block.modules() if hasattr(m, "layer_idx")]
    in_mem = sorted({m.layer_idx for block in get_layers(loaded.model) for m in block.modules() if hasattr(m, "layer_idx")})
    if idx:
        assert in_mem == [0, 1, 2]
    for k, v in old_lists.items():
        assert list(getattr(reloaded.config, k)) == [v[i] for i in (0, 2, 3)], k
    if old_mwl is not None:
        assert reloaded.config.max_window_layers == sum(1 for i in (0, 2, 3) if i < old_mwl)
    rec = json.loads((tmp_path / "slim" / COMPRESSION_FILE).read_text())
    assert rec["removed_layers"] == REMOVED and rec["kept_layers"] == [0, 2, 3] and rec["method"] == "test"
    assert list((tmp_path / "slim").glob("*.safetensors")) and not list((tmp_path / "slim").glob("*.bin"))
    assert (tmp_path / "slim" / "tokenizer_config.json").exists()


@pytest.mark.parametrize("arch", DECODERS)
def test_kv_cache_parity_and_generate(arch, tiny, tmp_path):
    loaded = load_model(str(tiny(arch)))
    prune_model(loaded, [0, 2], tmp_path / "slim")
    model = _auto_class(arch).from_pretrained(str(tmp_path / "slim")).eval()
    assert (tmp_path / "slim" / "generation_config.json").exists()
    ids = loaded.tokenizer("Layer pruning keeps the cache consistent", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, -1]
        pre = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], past_key_values=pre.past_key_values, use_cache=True).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
        a = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        b = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert a.shape[1] == ids.shape[1] + 6
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_tied_embeddings_stay_tied(arch, tiny, tmp_path):
    loaded = load_model(str(tiny(arch)))
    assert loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight
    prune_model(loaded, [3], tmp_path / "slim")
    m = _auto_class(arch).from_pretrained(str(tmp_path / "slim"))
    assert m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()


def test_renumbering_is_what_makes_the_cache_work(tiny):
    """Without renumbering, the kept block at layer_idx=3 indexes past a 3-slot cache (pitfall P1)."""
    loaded = load_model(str(tiny("llama")))
    remove_layers(loaded.model, [1])
    for i, block in enumerate(get_layers(loaded.model)):
        block.self_attn.layer_idx = [0, 2, 3][i]  # undo the renumbering
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(IndexError):
        loaded.model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_gpt2_index_dependent_scaling_warns(tiny):
    loaded = load_model(str(tiny("gpt2")))
    loaded.model.config.scale_attn_by_inverse_layer_idx = True
    warnings = remove_layers(loaded.model, [0])
    assert any("scale_attn_by_inverse_layer_idx" in w for w in warnings)


def test_existing_output_refused_and_force_replaces_atomically(tiny, tmp_path):
    out = tmp_path / "slim"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    loaded = load_model(str(tiny("llama")))
    with pytest.raises(BadInput, match="already exists"):
        prune_model(loaded, [1], out)
    assert (out / "keep.txt").exists()
    prune_model(load_model(str(tiny("llama"))), [1], out, force=True)
    assert not (out / "keep.txt").exists() and (out / COMPRESSION_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["slim"]  # no temporary folders left behind


def test_removing_all_layers_refused(tiny):
    loaded = load_model(str(tiny("bert")))
    with pytest.raises(BadInput, match="cannot remove all"):
        remove_layers(loaded.model, [0, 1, 2, 3])
