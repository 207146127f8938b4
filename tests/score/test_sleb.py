"""SLEB: iterative greedy removal with prefix-cached candidates (checked against full forwards), nested
cuts, and a model on which one-shot block influence's cut is not the best while SLEB's is."""
import itertools
import sys

import pytest
import torch
from torch import nn

from compressor.architectures import get_layers, running_blocks, set_layers
from compressor.errors import BadInput
from compressor.score.api import score_layers
from compressor.score.passes import model_loss
from compressor.score.select import select_layers
from compressor.sources.data import CalibrationSpec, load_calibration
from compressor.sources.models import load_model


def _calib(loaded, text_file, samples=4, seq_len=32):
    return load_calibration(CalibrationSpec(source=str(text_file), samples=samples, seq_len=seq_len, batch_size=2),
                            loaded.tokenizer, loaded.adapter.family)


def _loss_without(loaded, data, removed, ref=None):
    """The calibration loss of the model with ``removed`` blocks taken out (a plain full forward)."""
    layers = get_layers(loaded.model, loaded.adapter)
    rest = [j for j in range(len(layers)) if j not in removed]
    with running_blocks(loaded.model, loaded.adapter, [layers[j] for j in rest], rest):
        return model_loss(loaded, data, ref)[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma3_text", "gpt_neox"])
def test_a_prefix_cached_candidate_equals_a_full_forward_with_the_block_skipped(arch, tiny, text_file):
    from compressor.score.sleb import sleb_order

    loaded = load_model(str(tiny(arch)))
    data = _calib(loaded, text_file)
    res = sleb_order(loaded, data, max_remove=2, protect=[])
    assert res["base_loss"] == pytest.approx(_loss_without(loaded, data, set()), rel=1e-5)
    first = res["order"][0]
    for b in range(4):  # round 1: every block skipped on its own
        assert res["rounds"][0][str(b)] == pytest.approx(_loss_without(loaded, data, {b}), rel=1e-5, abs=1e-6)
    for b in set(range(4)) - {first}:  # round 2: on top of the first removal
        assert res["rounds"][1][str(b)] == pytest.approx(_loss_without(loaded, data, {first, b}), rel=1e-5, abs=1e-6)
    assert res["loss_after"] == [res["rounds"][r][str(b)] for r, b in enumerate(res["order"])]
    assert loaded.num_layers == 4 and len(get_layers(loaded.model, loaded.adapter)) == 4  # restored


def test_a_classifier_uses_kl_to_its_own_logits(tiny, text_file):
    from compressor.score.sleb import sleb_order

    loaded = load_model(str(tiny("bert")))
    data = _calib(loaded, text_file)
    with pytest.raises(BadInput, match="--objective nll needs a causal LM"):
        sleb_order(loaded, data, max_remove=1, protect=[], objective="nll")
    res = sleb_order(loaded, data, max_remove=1, protect=[], objective="kl")
    _, _, ref = model_loss(loaded, data)
    for b in range(4):  # leave-one-out's classifier loss: KL(full || skipped) per example
        assert res["rounds"][0][str(b)] == pytest.approx(_loss_without(loaded, data, {b}, ref), rel=1e-4, abs=1e-7)


def test_kl_objective_is_zero_for_the_full_model_and_matches_a_direct_kl(tiny, text_file):
    import torch.nn.functional as F

    from compressor.score.sleb import sleb_order

    loaded = load_model(str(tiny("llama")))
    data = _calib(loaded, text_file)
    res = sleb_order(loaded, data, max_remove=1, protect=[], objective="kl")
    assert res["base_loss"] == pytest.approx(0.0, abs=1e-6)
    b = 2
    with torch.no_grad():
        full = [F.log_softmax(loaded.model(**x, use_cache=False).logits[:, :-1].float(), -1) for x in data.batches]
        layers = get_layers(loaded.model, loaded.adapter)
        set_layers(loaded.model, nn.ModuleList([l for j, l in enumerate(layers) if j != b]), loaded.adapter)
        tot = n = 0.0
        for x, p in zip(data.batches, full):
            q = F.log_softmax(loaded.model(**x, use_cache=False).logits[:, :-1].float(), -1)
            m = (x["attention_mask"][:, 1:] * x["attention_mask"][:, :-1]).bool()
            tot += float((p.exp() * (p - q)).sum(-1)[m].sum())
            n += float(m.sum())
        set_layers(loaded.model, layers, loaded.adapter)
    assert res["rounds"][0][str(b)] == pytest.approx(tot / n, rel=1e-4)


def test_rankings_are_nested_and_protection_is_kept(tiny, text_file):
    loaded = load_model(str(tiny("llama")))
    data = _calib(loaded, text_file)
    rep = score_layers(loaded, "sleb", data=data, max_remove=3, protect=[0])
    order = rep.extra["sleb"]["order"]
    assert len(order) == 3 and 0 not in order and rep.ranking[:3] == order and rep.ranking[-1] == 0
    cuts = [select_layers(rep, num_layers=k).removed for k in (1, 2, 3)]
    assert [sorted(order[:k]) for k in (1, 2, 3)] == cuts  # the k-cut is the first k removals
    assert rep.extra["sleb"]["cost_vs_forward"] > 1 and rep.layers[0].stats["protected"] is True
    with pytest.raises(BadInput, match="--max-remove 4 is out of range"):
        score_layers(loaded, "sleb", data=data, max_remove=4, protect=[0])
    with pytest.raises(BadInput, match="--objective only applies to --method sleb"):
        score_layers(loaded, "block-influence", data=data, objective="kl")


def test_sleb_finds_the_best_cut_where_block_influence_does_not(tmp_path, decoder_tokenizer, text_file):
    """A 6-layer random Llama (seed 1): block influence's 1- and 2-layer cuts are not the cheapest on
    the calibration loss; SLEB's are the best of every possible cut (exhaustive search)."""
    import transformers as tf

    sys.path.insert(0, "tests")
    from tiny_models import tiny_config

    cfg, _ = tiny_config("llama")
    cfg.num_hidden_layers = 6
    torch.manual_seed(1)
    m = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(4.0)
    m.save_pretrained(str(tmp_path / "m"))
    decoder_tokenizer.save_pretrained(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    data = _calib(loaded, text_file)
    bi = score_layers(loaded, "block-influence", data=data)
    sl = score_layers(loaded, "sleb", data=data, max_remove=2)
    for k in (1, 2):
        best = min(_loss_without(loaded, data, set(c)) for c in itertools.combinations(range(6), k))
        sleb_cut = select_layers(sl, num_layers=k).removed
        bi_cut = select_layers(bi, num_layers=k).removed
        assert _loss_without(loaded, data, set(sleb_cut)) == pytest.approx(best, abs=1e-6), k
        assert _loss_without(loaded, data, set(bi_cut)) > best + 1e-3, (k, bi_cut)


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
def test_cli_score_prune_and_run_with_sleb(tiny, text_file, tmp_path, capsys):
    import json

    from helpers import error_lines, run, write_ppl_profile

    model = str(tiny("llama"))
    data = ["--data", str(text_file), "--samples", "4", "--seq-len", "32"]
    code, out, err = run(["score", model, "--method", "sleb", "--objective", "kl", "--max-remove", "2",
                          "--protect", "last", "--out", str(tmp_path / "s.json"), *data], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["method"] == "sleb" and s["extra"]["sleb"]["objective"] == "kl" and len(s["extra"]["sleb"]["order"]) == 2
    assert 3 not in s["extra"]["sleb"]["order"] and "a plain forward pass" in err
    code, _, err = run(["prune", model, "--scores", str(tmp_path / "s.json"), "--num-layers", "2",
                        "--out", str(tmp_path / "slim")], capsys)
    assert code == 0, err
    removed = json.loads((tmp_path / "slim" / "compression.json").read_text())["removed_layers"]
    assert removed == sorted(s["extra"]["sleb"]["order"])
    for argv, problem in [(["score", model, "--method", "block-influence", "--objective", "kl", *data],
                           "--objective only applies to --method sleb"),
                          (["score", model, "--method", "angular", "--protect", "0", *data],
                           "--protect on avss score only applies to --method sleb"),
                          (["score", model, "--method", "sleb", "--last-state", "final-norm", *data],
                           "--last-state only applies to block-influence, relative-update, angular and avss"),
                          (["prune", model, "--scores", str(tmp_path / "s.json"), "--num-layers", "1",
                            "--objective", "kl", "--out", str(tmp_path / "x")], "--objective applies to --method")]:
        code, _, err = run(argv, capsys)
        assert code == 2 and problem in error_lines(err)[0], (argv, err)
    prof = write_ppl_profile(tmp_path, 0.5)
    code, _, err = run(["run", model, "--profile", str(prof), "--out", str(tmp_path / "art"), "--method", "sleb",
                        "--num-layers", "1", "--skip-export"], capsys)
    assert code in (0, 1), err
    scores = json.loads((tmp_path / "art" / "scores.json").read_text())
    assert scores["method"] == "sleb" and scores["extra"]["sleb"]["max_remove"] == 1  # only the rounds it needs
    code, _, err = run(["run", model, "--profile", str(prof), "--out", str(tmp_path / "art"), "--method", "sleb",
                        "--num-layers", "1", "--skip-export", "--objective", "kl"], capsys)
    assert code in (0, 1), err
    assert json.loads((tmp_path / "art" / "scores.json").read_text())["extra"]["sleb"]["objective"] == "kl"
