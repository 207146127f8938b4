"""Leave-one-out, last-k, random: definitions checked against direct computations."""
import pytest
import torch
import torch.nn.functional as F

from compressor.errors import BadInput
from compressor.prune.surgery import remove_layers
from compressor.score.api import score_layers
from compressor.sources.data import CalibrationSpec, load_calibration
from compressor.sources.models import load_model


def _nll(model, data):
    tot, n = 0.0, 0
    with torch.no_grad():
        for b in data.batches:
            logits = model(**b, use_cache=False).logits[:, :-1]
            t = b["input_ids"][:, 1:]
            m = (b["attention_mask"][:, 1:] * b["attention_mask"][:, :-1]).bool()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="none")
            tot += float(loss[m.reshape(-1)].sum())
            n += int(m.sum())
    return tot / n


def test_leave_one_out_is_the_loss_increase_of_skipping(tiny, text_file):
    path = str(tiny("llama"))
    loaded = load_model(path)
    data = load_calibration(CalibrationSpec(source=str(text_file), samples=4, seq_len=32, batch_size=2, pack=False),
                            loaded.tokenizer)
    rep = score_layers(loaded, "leave-one-out", data=data)
    base = _nll(load_model(path).model, data)
    assert rep.layers[0].stats["loss_full"] == pytest.approx(base, rel=1e-5)
    for i in (0, 2):
        m = load_model(path).model
        remove_layers(m, [i])
        assert rep.layers[i].score == pytest.approx(_nll(m, data) - base, rel=1e-4, abs=1e-6)
    # the model is restored afterwards
    assert loaded.num_layers == 4 and _nll(loaded.model, data) == pytest.approx(base, rel=1e-6)


def test_leave_one_out_on_a_classifier_uses_logit_kl(tiny, text_file):
    loaded = load_model(str(tiny("bert")))
    data = load_calibration(CalibrationSpec(source=str(text_file), samples=4, seq_len=32, batch_size=2),
                            loaded.tokenizer, "encoder")
    rep = score_layers(loaded, "leave-one-out", data=data)
    assert rep.layers[0].stats["loss_kind"].startswith("KL")
    assert all(l.score >= -1e-6 for l in rep.layers)
    assert any(l.score > 0 for l in rep.layers)


def test_last_k_ranks_the_layers_before_the_final_one_first(tiny):
    loaded = load_model(str(tiny("gpt2")))
    rep = score_layers(loaded, "last-k")
    assert rep.ranking == [2, 1, 0, 3]
    assert rep.calibration is None


def test_random_is_seeded(tiny):
    loaded = load_model(str(tiny("gpt2")))
    a = score_layers(loaded, "random", seed=1)
    b = score_layers(loaded, "random", seed=1)
    c = score_layers(loaded, "random", seed=2)
    assert a.ranking == b.ranking and [l.score for l in a.layers] == [l.score for l in b.layers]
    assert [l.score for l in a.layers] != [l.score for l in c.layers]
    assert a.extra["seed"] == 1


def test_data_scorers_need_data_and_modes_are_checked(tiny):
    loaded = load_model(str(tiny("gpt2")))
    with pytest.raises(BadInput, match="needs calibration data"):
        score_layers(loaded, "block-influence")
    with pytest.raises(BadInput, match="only applies to --method avss"):
        score_layers(loaded, "random", mode="official")
    with pytest.raises(BadInput, match="unknown --avss-mode"):
        score_layers(loaded, "avss", mode="paper")
    with pytest.raises(BadInput, match="unknown method"):
        score_layers(loaded, "magnitude")


def test_relative_update_is_the_mean_per_token_update_norm(tiny, text_file):
    """The scorer added as one registry class: ||h_out - h_in|| / ||h_in|| per real token, averaged,
    against hidden states computed here from the model's own outputs."""
    loaded = load_model(str(tiny("llama")))
    data = load_calibration(CalibrationSpec(source=str(text_file), samples=4, seq_len=24, batch_size=2, pack=False),
                            loaded.tokenizer)
    rep = score_layers(loaded, "relative-update", data=data)
    n = loaded.num_layers
    sums, tokens = [0.0] * n, 0.0
    body = loaded.model.model
    with torch.no_grad():
        for b in data.batches:
            hs = body(**b, output_hidden_states=True).hidden_states
            m = b["attention_mask"].float()
            tokens += float(m.sum())
            for i in range(n):
                x, y = hs[i].float(), hs[i + 1].float()
                if i == n - 1:  # transformers' last hidden state is after the final norm; ours is the raw block output
                    y = _raw_last_block_output(loaded, b)
                sums[i] += float(((y - x).norm(dim=-1) / x.norm(dim=-1) * m).sum())
    expect = [s / tokens for s in sums]
    assert [l.score for l in rep.layers] == pytest.approx(expect, rel=1e-4)
    assert rep.method == "relative-update" and all("relative_update" in l.stats for l in rep.layers)


def _raw_last_block_output(loaded, batch):
    out = {}
    handle = loaded.model.model.layers[-1].register_forward_hook(
        lambda mod, args, res: out.setdefault("h", res[0] if isinstance(res, tuple) else res))
    try:
        loaded.model.model(**batch)
    finally:
        handle.remove()
    return out["h"].float()


def test_a_new_scorer_is_one_registry_class(monkeypatch, tiny):
    """What the registry promises: a class with @register is a --method for score, prune and run, with its
    options validated, and no other code names it."""
    from compressor.score import methods

    monkeypatch.setattr(methods, "SCORERS", methods.SCORERS.copy())  # the registry as it was, after the test

    @methods.register
    class Depth(methods.Scorer):
        name = "depth-test"
        description = "deeper is more important (a test scorer)"
        needs_data = False

        def compute(self, x):
            return methods.ScoreOutcome([methods.LayerScore(i, float(i), {}) for i in range(x.num_layers)])

    assert isinstance(methods.get_scorer("depth-test"), Depth)
    loaded = load_model(str(tiny("gpt2")))
    assert score_layers(loaded, "depth-test").ranking == [0, 1, 2, 3]
    with pytest.raises(BadInput, match="--objective only applies to --method sleb"):
        score_layers(loaded, "depth-test", objective="kl")
