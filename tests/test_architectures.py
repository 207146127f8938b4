"""The adapter registry: every required architecture resolves; unknown ones fail clearly."""
import pytest

from compressor.architectures import adapter_for_config, get_layers, supported_model_types
from compressor.errors import BadInput
from tiny_models import ARCHS, L

REQUIRED = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "gpt2", "gpt_neox", "lfm2_moe", "qwen3_5_text", "bert",
            "roberta", "distilbert"}


def test_registry_covers_required_architectures():
    assert REQUIRED <= set(supported_model_types())


@pytest.mark.parametrize("arch", ARCHS)
def test_block_list_found(arch, tiny):
    from compressor.sources.models import load_model

    loaded = load_model(str(tiny(arch)))
    layers = get_layers(loaded.model)
    assert len(layers) == L == loaded.num_layers
    assert loaded.adapter.model_type == arch


def test_unknown_architecture_names_the_supported_ones():
    class Cfg:
        model_type = "t5"

    with pytest.raises(BadInput) as e:
        adapter_for_config(Cfg())
    assert "t5" in str(e.value) and "llama" in str(e.value) and "distilbert" in str(e.value)


def test_model_kind_is_read_from_the_head(tiny):
    from transformers import AutoModel

    from compressor.architectures import model_kind
    from compressor.sources.models import load_model

    assert model_kind(load_model(str(tiny("llama"))).model) == "causal-lm"
    assert model_kind(load_model(str(tiny("gpt2"))).model) == "causal-lm"
    assert model_kind(load_model(str(tiny("bert"))).model) == "sequence-classification"
    assert model_kind(AutoModel.from_pretrained(str(tiny("bert")))) == "bare"
    assert model_kind(AutoModel.from_pretrained(str(tiny("llama")))) == "bare"  # a decoder without its LM head
