"""load_model refuses a model that would load silently wrong: weights that do not fill the model,
a tokenizer with ids past the embeddings, a tokenizer that needs custom code."""
import json
import shutil

import pytest

from compressor.errors import BadInput
from compressor.sources.models import load_model
from tiny_models import ARCHS


def _copy_with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("arch", ARCHS)
def test_every_tiny_arch_loads_with_no_weight_error(tiny, arch):
    """Tied weights (lm_head with tie_word_embeddings) and ignored buffers are not reported as missing."""
    loaded = load_model(str(tiny(arch)))
    assert loaded.num_layers == 4


@pytest.mark.slow  # the real built-in model (converted once from its GGUF)
def test_builtin_model_loads_with_no_weight_error():
    loaded = load_model("builtin:smollm2-135m")
    assert loaded.config.tie_word_embeddings and loaded.model.get_output_embeddings() is not None
    assert loaded.model.get_input_embeddings().num_embeddings == len(loaded.tokenizer) == 49152


def _refusal(tiny, tmp_path, **config) -> tuple[str, str]:
    """(folder, message) of loading a tiny llama whose config.json was edited with ``config``."""
    folder = _copy_with_config(tiny("llama"), tmp_path / "m", **config)
    with pytest.raises(BadInput) as e:
        load_model(str(folder))
    return str(folder), e.value.line()


def test_more_layers_in_config_than_in_weights_is_refused(tiny, tmp_path):
    """Refused from the config and the headers, before transformers builds the model."""
    folder, msg = _refusal(tiny, tmp_path, num_hidden_layers=6)
    assert f"{folder}/config.json: num_hidden_layers is 6 but the weights hold 4 blocks (0..3)" in msg
    assert "make num_hidden_layers match the weights" in msg


def test_fewer_layers_in_config_than_in_weights_is_refused(tiny, tmp_path):
    folder, msg = _refusal(tiny, tmp_path, num_hidden_layers=2)
    assert f"{folder}/config.json: num_hidden_layers is 2 but the weights hold 4 blocks (0..3)" in msg


def test_missing_block_tensors_are_named_after_loading(tiny, tmp_path):
    """What the config check cannot see (a block missing one of its tensors) the load's own check refuses."""
    from safetensors.torch import load_file, save_file

    folder = _copy_with_config(tiny("llama"), tmp_path / "m")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["model.layers.2.mlp.up_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BadInput) as e:
        load_model(str(folder))
    assert "1 tensor(s) the model needs are missing from its weights and would be random" in e.value.line()
    assert "model.layers.2.mlp.up_proj.weight" in e.value.line()


def test_shape_mismatch_is_bad_input_naming_the_tensor(tiny, tmp_path):
    _, msg = _refusal(tiny, tmp_path, intermediate_size=48)
    assert "12 tensor(s) of the weights do not have the shape its config.json gives" in msg
    assert "model.layers.0.mlp.down_proj.weight [32, 64] in the weights vs [32, 48] from config.json" in msg


def _small_vocab_llama(folder, vocab, tokenizer):
    import torch
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def test_embeddings_smaller_than_the_tokenizer_are_refused(tmp_path, decoder_tokenizer):
    folder = _small_vocab_llama(tmp_path / "m", 1000, decoder_tokenizer)
    with pytest.raises(BadInput) as e:
        load_model(str(folder))
    msg = e.value.line()
    assert "input embeddings have 1000 rows but its tokenizer has 49152 tokens" in msg and str(folder) in msg
    assert "resize_token_embeddings" in msg


def test_embeddings_padded_past_the_tokenizer_are_fine(tmp_path, decoder_tokenizer):
    folder = _small_vocab_llama(tmp_path / "m", 49152 + 64, decoder_tokenizer)
    loaded = load_model(str(folder))
    assert loaded.model.get_input_embeddings().num_embeddings == 49216 and len(loaded.tokenizer) == 49152


def test_tokenizer_needing_custom_code_suggests_trust_remote_code(tiny, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny("llama"), folder)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="XTokenizer", auto_map={"AutoTokenizer": ["tokenization_x.XTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "tokenization_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(BadInput) as e:
        load_model(str(folder))  # tokenization_x.py would raise SystemExit if it were imported
    msg = e.value.line()
    assert f"the tokenizer of {folder} needs custom code to load" in msg
    assert msg.endswith("pass --trust-remote-code if you trust it")
