"""Model loading safety: safetensors only by default, no remote code, clear errors."""
import json
import shutil

import pytest
import torch

from compressor.errors import BadInput
from compressor.sources.models import load_model, resolve_device


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
