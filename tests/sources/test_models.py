"""Model loading safety: safetensors only by default, no remote code, clear errors."""
import json
import shutil

import pytest
import torch

from compressor.errors import BadInput
from compressor.sources.models import load_model, resolve_device
from helpers import error_lines, run


def test_pickle_weights_refused_unless_allowed(tiny, tmp_path):
    src = tiny("gpt2")
    dst = tmp_path / "pickled"
    shutil.copytree(src, dst)
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(src))
    for f in dst.glob("*.safetensors"):
        f.unlink()
    torch.save(m.state_dict(), dst / "pytorch_model.bin")
    with pytest.raises(BadInput, match="--allow-pickle"):
        load_model(str(dst))
    loaded = load_model(str(dst), allow_pickle=True)
    assert loaded.num_layers == 4


def test_remote_code_refused_by_default(tmp_path):
    cfg = {"model_type": "my_custom_arch", "auto_map": {"AutoConfig": "configuration_x.XConfig"}, "architectures": ["X"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(BadInput, match="needs custom code to load; pass --trust-remote-code"):
        load_model(str(tmp_path))  # configuration_x.py would raise SystemExit if it were imported


def test_unknown_architecture_fails_before_loading_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(BadInput, match="unsupported architecture 't5'.*supported model types"):
        load_model(str(tmp_path))


def test_missing_folder_and_unknown_builtin():
    with pytest.raises(BadInput, match="does not exist"):
        load_model("./no/such/model")
    with pytest.raises(BadInput, match="unknown built-in model"):
        load_model("builtin:gpt-5")


def test_cuda_is_never_a_silent_fallback():
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(BadInput, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_unknown_model_class_is_refused_not_loaded_headless(tiny, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSomethingNew"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="'LlamaForSomethingNew', which transformers .* does not have"):
        load_model(str(folder))


def test_hub_models_are_fingerprinted_by_snapshot_content_and_dtype(tiny, tmp_path, monkeypatch):
    """A Hub id is never its own fingerprint: bf16 and fp32 loads differ, and so do two revisions."""
    import huggingface_hub.constants as hc
    import transformers.utils.hub as th

    from compressor.fingerprint import model_fingerprint

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-llama"

    def publish(commit, scale):
        snap = repo / "snapshots" / commit
        shutil.copytree(tiny("llama"), snap)
        if scale != 1.0:
            from safetensors.torch import load_file, save_file

            t = load_file(str(snap / "model.safetensors"))
            save_file({k: v * scale for k, v in t.items()}, str(snap / "model.safetensors"), metadata={"format": "pt"})
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))  # what huggingface_hub and transformers read
    if hasattr(th, "TRANSFORMERS_CACHE"):  # transformers 4.57 keeps its own copy; 5 reads huggingface_hub's
        monkeypatch.setattr(th, "TRANSFORMERS_CACHE", str(cache))
    publish("a" * 40, 1.0)
    fp32 = load_model("acme/tiny-llama", dtype="float32")
    bf16 = load_model("acme/tiny-llama", dtype="bfloat16")
    assert fp32.path == "acme/tiny-llama"
    assert model_fingerprint(fp32) != model_fingerprint(bf16)
    first = model_fingerprint(fp32)
    publish("b" * 40, 0.5)  # a new revision behind the same id
    again = load_model("acme/tiny-llama", dtype="float32")
    assert model_fingerprint(again) != first


def test_a_model_type_this_transformers_lacks_is_refused_naming_the_lane_that_has_it(tmp_path, monkeypatch):
    """In the card's lane a family transformers 5 added (Gemma 4, Qwen 3.5, ...) points at the current lane;
    in the current lane the same refusal says a newer transformers is needed. One line, before any load."""
    from compressor import compat
    from compressor.sources.models import load_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "avss_future_family",
                                                      "architectures": ["AvssFutureForCausalLM"]}))
    for lane, words in (("card", "use the current lane (make install LANE=current)"),
                        ("current", "needs a newer transformers than this lane's")):
        monkeypatch.setattr(compat, "lane", lambda lane=lane: lane)
        with pytest.raises(BadInput) as exc:
            load_config(str(tmp_path))
        assert exc.value.problem == (f"{tmp_path} is a avss_future_family model, which transformers "
                                     f"{compat.transformers_version()} does not know")
        assert words in exc.value.fix


@pytest.mark.parametrize("model_type,arch", [("lfm2_moe", "Lfm2MoeForCausalLM"), ("qwen3_5_text", "Qwen3_5ForCausalLM")])
def test_a_family_we_cut_in_the_current_lane_says_it_needs_transformers_5_in_the_cards(model_type, arch, tmp_path,
                                                                                         capsys):
    from compressor.compat import lane, transformers_version

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
    code, _, err = run(["score", str(tmp_path), "--out", str(tmp_path / "s.json")], capsys)
    assert code == 2 and not (tmp_path / "s.json").exists(), err
    (line,) = error_lines(err)
    if lane() == "card":
        assert line == (f"error: {tmp_path} is a {model_type} model, which needs transformers >= 5 (this lane has "
                        f"{transformers_version()}); use the current lane (make install LANE=current)")
    else:  # the family is known here: this config only lacks its weights
        assert "needs transformers" not in line and "has no weight files" in line, line


def test_the_builtin_tokenizer_ends_text_with_the_ggufs_eos_in_both_lanes(smollm2_dir, tmp_path):
    """transformers 4.57's GGUF conversion named <|im_start|> (id 1) the EOS, against the GGUF's (and config.json's)
    <|im_end|> (id 2), which transformers 5 names: perplexity documents were separated by different tokens in the
    two lanes. A folder converted so is fixed in place; every lane then reads the GGUF's EOS and padding token."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from compressor.sources import builtins

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2) == (
        "<|im_end|>", cfg["eos_token_id"], cfg["pad_token_id"])
    old = tmp_path / "smollm2-135m"
    old.mkdir()
    for f in smollm2_dir.iterdir():  # the weights by link: nothing here reads them
        (old / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy2(f, old / f.name)
    tc = json.loads((old / "tokenizer_config.json").read_text())
    tc.update(eos_token="<|im_start|>", eos_token_id=1)  # what 4.57's conversion wrote
    (old / "tokenizer_config.json").write_text(json.dumps(tc))
    assert AutoTokenizer.from_pretrained(str(old)).eos_token_id == 1 and not builtins._tokenizer_fixed(old)
    assert builtins._convert_smollm2(old) == old and builtins._tokenizer_fixed(old)
    assert AutoTokenizer.from_pretrained(str(old)).eos_token_id == 2
