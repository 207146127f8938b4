"""The linear patch: exact where the registry says it folds, refused where it cannot."""
import copy

import pytest
import torch

from compressor.architectures import adapter_for_config, get_layers, mlp_out_module
from compressor.errors import BadInput
from compressor.repair.linear import fit_span, fold, linear_repair
from compressor.score.patch import spans_of
from compressor.sources.models import load_model

FOLDABLE = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox", "qwen3_5_text"]
ATTN_OUT = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "qwen3_5_text": "linear_attn.out_proj"}  # block 2's mixer


def batches(tok, n=3, seq=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(100, 5000, (2, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[1, seq - 9:] = 0  # padding must be ignored
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _zero(block, path):
    mod = block
    for part in path.split("."):
        mod = getattr(mod, part)
    with torch.no_grad():
        mod.weight.zero_()
        if getattr(mod, "bias", None) is not None:
            mod.bias.zero_()


def test_spans():
    assert spans_of([5, 1, 2, 9, 10, 11]) == [[1, 2], [5], [9, 10, 11]]


@pytest.mark.parametrize("arch", FOLDABLE)
def test_a_block_that_is_a_known_linear_map_is_recovered_exactly(arch, tiny):
    """Block 2 is replaced by h -> h + M1 (A - I), where M1 is block 1's MLP output: removing it and
    folding the patch into block 1 must give back A and the very same model outputs."""
    full = load_model(str(tiny(arch)))
    m, adapter = full.model, full.adapter
    layers = get_layers(m, adapter)
    d = m.config.hidden_size
    g = torch.Generator().manual_seed(1)
    A = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g) / d ** 0.5
    _zero(layers[2], ATTN_OUT.get(arch, "self_attn.o_proj"))
    _zero(layers[2], adapter.mlp_out)  # block 2 is now the identity ...
    stash = {}
    mlp_out_module(layers[1], adapter).register_forward_hook(lambda mod, a, out: stash.__setitem__("M", out))

    def add_linear(mod, args, kwargs, out):  # ... plus a known linear map of block 1's MLP output
        extra = stash["M"] @ (A - torch.eye(d))
        return (out[0] + extra, *out[1:]) if isinstance(out, tuple) else out + extra

    layers[2].register_forward_hook(add_linear, with_kwargs=True)
    data = batches(full.tokenizer)
    with torch.no_grad():
        ref = [m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in data]
    cut = copy.deepcopy(m)
    for layer in get_layers(cut, adapter):
        layer._forward_hooks.clear()
    for mod in cut.modules():
        mod._forward_hooks.clear()
    # T is solved on the model with the hooks (the "full" model), then folded into the clean copy
    T, st = fit_span(m, adapter, 1, 2, data, ridge=0.0)
    assert torch.allclose(T.float(), A, atol=1e-4), float((T.float() - A).abs().max())
    assert st["error_after"] < 1e-9 < st["error_before"]
    fold(mlp_out_module(get_layers(cut, adapter)[1], adapter), adapter.mlp_out_kind, T)
    from compressor.prune.surgery import remove_layers

    remove_layers(cut, [2], adapter)
    with torch.no_grad():
        got = [cut(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in data]
    for r, c, b in zip(ref, got, data):
        mask = b["attention_mask"].bool()
        assert torch.allclose(r[mask], c[mask], atol=1e-4, rtol=1e-4), float((r[mask] - c[mask]).abs().max())


def test_spans_are_estimated_on_the_model_already_patched(tiny):
    """Two spans: the second one's activations come from the model cut and patched at the first."""
    full = load_model(str(tiny("llama")))
    data = batches(full.tokenizer)
    a = copy.deepcopy(full.model)
    patches, _ = linear_repair(a, [1, 3], data, ridge=1e-6)
    assert [p.removed for p in patches] == [[1], [3]] and [p.fold_block for p in patches] == [0, 2]
    assert all(p.error_after < p.error_before for p in patches)
    assert patches[1].fold_point == "layers.2.mlp.down_proj" and patches[0].tokens == 3 * (48 + 39)
    # by hand: cut+patch span 1, then fit span 2 on that model (current indices 1 and 2)
    b = copy.deepcopy(full.model)
    adapter = full.adapter
    T1, _ = fit_span(b, adapter, 0, 1, data, ridge=1e-6)
    fold(mlp_out_module(get_layers(b, adapter)[0], adapter), "linear", T1)
    from compressor.prune.surgery import remove_layers

    remove_layers(b, [1], adapter)
    _, st2 = fit_span(b, adapter, 1, 2, data, ridge=1e-6)
    assert patches[1].error_before == pytest.approx(st2["error_before"], rel=1e-6)
    assert a.config.num_hidden_layers == 2


@pytest.mark.parametrize("arch,needle", [("gemma3_text", "post_feedforward_layernorm"), ("bert", "post-LN"),
                                         ("lfm2_moe", "mixture of experts")])
def test_refused_where_the_fold_is_not_exact(arch, needle, tiny):
    loaded = load_model(str(tiny(arch)))
    with pytest.raises(BadInput, match=needle) as e:
        linear_repair(loaded.model, [1], batches(loaded.tokenizer))
    assert "--repair distill" in e.value.fix or arch == "bert"


def test_a_span_at_layer_0_is_refused(tiny):
    loaded = load_model(str(tiny("llama")))
    with pytest.raises(BadInput, match="layer 0 is removed"):
        linear_repair(loaded.model, [0, 1], batches(loaded.tokenizer))


def test_registry_names_every_decoders_fold_point():
    from compressor.architectures import _ADAPTERS

    for a in _ADAPTERS.values():
        assert a.no_fold or a.mlp_out, a.model_type
    assert adapter_for_config(type("C", (), {"model_type": "gpt2"})()).mlp_out_kind == "conv1d"
