"""Streaming statistics: padding is masked in robust mode (and counted in official mode),
block influence and angular distance agree with a direct computation from hidden states."""
import math

import pytest
import torch

from compressor.score.api import score_layers
from compressor.score.select import select_layers
from compressor.sources.data import CalibrationSpec, load_calibration
from compressor.sources.models import load_model
from tiny_models import ARCHS


def _data(loaded, text_file, batch_size, **kw):
    spec = CalibrationSpec(source=str(text_file), samples=6, seq_len=40, batch_size=batch_size, pack=False, **kw)
    return load_calibration(spec, loaded.tokenizer, loaded.adapter.family)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_robust_stats_ignore_padding(arch, tiny, text_file):
    loaded = load_model(str(tiny(arch)))
    padded = _data(loaded, text_file, batch_size=6)
    single = _data(loaded, text_file, batch_size=1)  # no padding at all
    assert int((padded.batches[0]["attention_mask"] == 0).sum()) > 0
    assert padded.tokens == single.tokens
    a = score_layers(loaded, "avss", data=padded)
    b = score_layers(loaded, "avss", data=single)
    assert a.mode == "robust"
    for x, y in zip(a.layers, b.layers):
        for key in ("delta_variance", "delta_sparsity", "cosine"):
            assert x.stats[key] == pytest.approx(y.stats[key], rel=2e-4, abs=1e-6), key
    # the official quantities include padding, so they do change
    oa = score_layers(loaded, "avss", mode="official", data=padded)
    ob = score_layers(loaded, "avss", mode="official", data=single)
    assert any(abs(x.stats["variance"] - y.stats["variance"]) > 1e-4 * abs(y.stats["variance"])
               for x, y in zip(oa.layers, ob.layers))


def _hidden_states(loaded, data):
    """Per batch: hidden_states tuple (embeddings, block 0 out, ...); the last entry is post-norm
    in transformers, so only blocks 0..L-2 are compared."""
    outs = []
    with torch.no_grad():
        for b in data.batches:
            outs.append((loaded.model(**b, output_hidden_states=True).hidden_states, b["attention_mask"]))
    return outs


def test_block_influence_matches_hidden_states(tiny, text_file):
    loaded = load_model(str(tiny("llama")))
    data = _data(loaded, text_file, batch_size=3)
    rep = score_layers(loaded, "block-influence", data=data)
    hs = _hidden_states(loaded, data)
    for i in range(loaded.num_layers - 1):
        num, den, upd = 0.0, 0.0, 0.0
        for states, mask in hs:
            cos = torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1)
            num += float((cos * mask).sum())
            den += float(mask.sum())
            rel = (states[i + 1] - states[i]).norm(dim=-1) / states[i].norm(dim=-1)
            upd += float((rel * mask).sum())
        assert rep.layers[i].score == pytest.approx(1 - num / den, rel=1e-4, abs=1e-6)
        # derived in the hook from the two RMS values and the cosine, without a difference tensor
        assert rep.layers[i].stats["relative_update"] == pytest.approx(upd / den, rel=1e-4)


def test_angular_matches_last_token_states_and_selects_a_block(tiny, text_file):
    loaded = load_model(str(tiny("llama")))
    data = _data(loaded, text_file, batch_size=3)
    rep = score_layers(loaded, "angular", data=data)
    hs = _hidden_states(loaded, data)
    for i in range(loaded.num_layers - 1):
        vals = []
        for states, mask in hs:
            last = mask.sum(1) - 1
            rows = torch.arange(mask.shape[0])
            c = torch.nn.functional.cosine_similarity(states[i][rows, last], states[i + 1][rows, last], dim=-1)
            vals += [math.acos(max(-1.0, min(1.0, float(x)))) / math.pi for x in c]
        assert rep.layers[i].score == pytest.approx(sum(vals) / len(vals), rel=1e-4, abs=1e-6)
    m = rep.extra["angular_distance_matrix"]
    assert len(m) == loaded.num_layers + 1
    sel = select_layers(rep, num_layers=2)
    start = sel.removed[0]
    assert sel.removed == [start, start + 1]
    assert m[start][start + 2] == min(m[s][s + 2] for s in range(loaded.num_layers - 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_scorer_runs_on_every_architecture(arch, tiny, text_file):
    loaded = load_model(str(tiny(arch)))
    data = _data(loaded, text_file, batch_size=3)
    for method, mode in [("avss", "robust"), ("avss", "official"), ("block-influence", None), ("angular", None)]:
        rep = score_layers(loaded, method, mode=mode, data=data)
        assert sorted(rep.ranking) == list(range(loaded.num_layers))
        assert all(math.isfinite(l.score) for l in rep.layers)
        assert rep.calibration["tokens"] == data.tokens and rep.calibration["sha256"] == data.sha256
        assert rep.default_selection["num_layers"] == 1  # round-half-up(0.25 * 4)


def test_device_map_auto_scores_like_a_plain_load(tiny, text_file):
    """accelerate's device map (here: all on CPU) keeps hooks and streaming statistics working."""
    plain = load_model(str(tiny("llama")))
    mapped = load_model(str(tiny("llama")), device_map="auto")
    from compressor.compat import lane

    assert mapped.device == "auto-map"
    if lane() == "card":  # transformers 5 places an all-CPU map without accelerate's hooks (nothing to record)
        assert hasattr(mapped.model, "hf_device_map")
    data = _data(plain, text_file, batch_size=3)
    a = score_layers(plain, "avss", data=data)
    b = score_layers(mapped, "avss", data=data)
    assert [x.score for x in a.layers] == pytest.approx([y.score for y in b.layers], rel=1e-5)


def _shortgpt_block_influence(model, batches):
    """Transcription of ShortGPT's block influence (icip-cas/ShortGPT): transformers' hidden_states,
    BI_i = 1 - cos(hidden_states[i], hidden_states[i+1]) per token, averaged over tokens."""
    import torch.nn.functional as F

    sums, n = None, 0
    with torch.no_grad():
        for b in batches:
            hs = model(**b, output_hidden_states=True, use_cache=False).hidden_states
            d = hs[0].shape[-1]
            cos = torch.stack([F.cosine_similarity(hs[i].reshape(-1, d).double(), hs[i + 1].reshape(-1, d).double(),
                                                   dim=-1) for i in range(len(hs) - 1)])
            s = (1 - cos).sum(-1)
            sums = s if sums is None else sums + s
            n += cos.shape[-1]
    return (sums / n).tolist()


def _angular_last_token(model, batches, l, m):
    """PruneMe's / Gromov et al.'s distance between hidden_states[l] and hidden_states[m], last token."""
    vals = []
    with torch.no_grad():
        for b in batches:
            hs = model(**b, output_hidden_states=True, use_cache=False).hidden_states
            a, c = hs[l][:, -1].double(), hs[m][:, -1].double()
            cos = torch.nn.functional.cosine_similarity(a, c, dim=-1).clamp(-1, 1)
            vals += (torch.arccos(cos) / math.pi).tolist()
    return sum(vals) / len(vals)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_last_state_conventions_match_the_reference_formulas(arch, tiny, text_file):
    """--last-state final-norm is ShortGPT's and PruneMe's hidden_states[-1] (after the final norm) on
    every layer; the default (block) differs from theirs on the last layer only."""
    from compressor.architectures import final_norm_of

    loaded = load_model(str(tiny(arch)))
    with torch.no_grad():  # a freshly initialised norm has weight 1 (cosine-invariant): give it a shape
        torch.manual_seed(0)
        final_norm_of(loaded.model, loaded.adapter).weight.mul_(torch.rand(loaded.config.hidden_size) + 0.5)
    spec = CalibrationSpec(source=str(text_file), samples=4, seq_len=32, batch_size=2)  # packed: no padding
    data = load_calibration(spec, loaded.tokenizer, loaded.adapter.family)
    ref = _shortgpt_block_influence(loaded.model, data.batches)
    ours_ref = score_layers(loaded, "block-influence", data=data, last_state="final-norm")
    ours = score_layers(loaded, "block-influence", data=data)
    assert [l.score for l in ours_ref.layers] == pytest.approx(ref, abs=2e-5)
    assert [l.score for l in ours.layers][:-1] == pytest.approx(ref[:-1], abs=2e-5)
    assert abs(ours.layers[-1].score - ref[-1]) > 1e-3  # the raw last block output is another state
    assert ours_ref.extra["last_state"] == "final-norm"
    ang = score_layers(loaded, "angular", data=data, last_state="final-norm").extra["angular_distance_matrix"]
    L = loaded.num_layers
    assert ang[1][L] == pytest.approx(_angular_last_token(loaded.model, data.batches, 1, L), abs=2e-5)
    assert ang[0][2] == pytest.approx(_angular_last_token(loaded.model, data.batches, 0, 2), abs=2e-5)
