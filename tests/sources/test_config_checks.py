"""config.json's fields we rely on are checked before transformers builds anything: a count that is not a
whole number, a per-layer list of the wrong length, a layer count or embedding size the weights disagree
with are bad input (exit 2) naming config.json and the field, on every command and path."""
import json
import shutil

import pytest

from helpers import error_lines, run, write_ppl_profile
from tiny_models import ARCHS


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _edited(tiny, tmp_path, arch="llama", **changes):
    model = tmp_path / "model"
    shutil.copytree(tiny(arch), model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def _argvs(model, tmp_path):
    profile = str(write_ppl_profile(tmp_path, 0.5))
    return {"score": ["score", str(model), "--method", "last-k"],
            "score --stream": ["score", str(model), "--method", "block-influence", "--stream"],
            "prune --stream": ["prune", str(model), "--method", "last-k", "--num-layers", "1", "--stream",
                               "--out", str(tmp_path / "slim")],
            "run": ["run", str(model), "--profile", profile, "--out", str(tmp_path / "art"), "--skip-export",
                    "--method", "last-k", "--num-layers", "1"]}


@pytest.mark.parametrize("value", ["four", "4", None, 4.0, True, 0])
def test_a_layer_count_that_is_not_a_whole_number_is_refused_up_front(value, tiny, tmp_path, capsys):
    model = _edited(tiny, tmp_path, num_hidden_layers=value)
    for name, argv in _argvs(model, tmp_path).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        (line,) = error_lines(err)
        assert f"{model / 'config.json'}: num_hidden_layers is {json.dumps(value)}, not a whole number above 0" in line
        assert "loaded " not in err and "Traceback" not in err, (name, err)
        assert not (tmp_path / "slim").exists() and not (tmp_path / "art").exists()


def test_the_field_is_named_as_the_architecture_spells_it(tiny, tmp_path, capsys):
    model = _edited(tiny, tmp_path, "gpt2", n_embd="32")
    code, _, err = run(["score", str(model), "--method", "last-k"], capsys)
    assert code == 2 and f"{model / 'config.json'}: n_embd is \"32\", not a whole number above 0" in err, err


def test_a_per_layer_list_of_the_wrong_length_is_refused(tiny, tmp_path, capsys):
    model = _edited(tiny, tmp_path, "qwen2", layer_types=["full_attention"] * 3)
    code, _, err = run(["score", str(model), "--method", "last-k", "--stream"], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "config.json" in line and "layer_types has 3 entries but num_hidden_layers is 4" in line, line


def test_a_per_layer_list_that_is_not_names_is_refused(tiny, tmp_path, capsys):
    model = _edited(tiny, tmp_path, "qwen2", layer_types="full_attention")
    code, _, err = run(["score", str(model), "--method", "last-k"], capsys)
    assert code == 2 and "layer_types is \"full_attention\", not a list of attention type names" in err, err


def test_embeddings_of_another_size_than_config_json_gives_are_refused(tiny, tmp_path, capsys):
    model = _edited(tiny, tmp_path, hidden_size=48)
    code, _, err = run(["prune", str(model), "--method", "last-k", "--num-layers", "1", "--stream", "--out",
                        str(tmp_path / "slim")], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "vocab_size 49152 and hidden_size 48 do not match the input embeddings model.embed_tokens.weight " \
           "[49152, 32]" in line, line
    assert not (tmp_path / "slim").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_an_intact_config_of_every_architecture_passes(arch, tiny):
    from compressor.sources.models import load_config

    assert load_config(str(tiny(arch))).model_type == arch
