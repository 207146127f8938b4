"""The post-patch residual scorers: the closed form equals actually patching each span, the contiguous
cut is the cheapest span, the greedy variant is nested and never removes a protected block."""
import copy

import pytest
import torch

from compressor.architectures import body_of, get_layers
from compressor.errors import BadInput
from compressor.repair.linear import fit_span, linear_repair
from compressor.score.api import score_layers
from compressor.score.residual import greedy_order, span_cost, span_residuals
from compressor.score.select import select_layers
from compressor.score.stats import _block_io
from compressor.sources.data import CalibrationSpec, load_calibration
from compressor.sources.models import load_model


def _calib(loaded, text_file, samples=4, seq_len=32):
    return load_calibration(CalibrationSpec(source=str(text_file), samples=samples, seq_len=seq_len, batch_size=2),
                            loaded.tokenizer, loaded.adapter.family)


def _stream_leaving(model, block, batches):
    """The residual stream leaving ``block`` on real tokens (float64 rows, all batches)."""
    got, rows = {}, []
    layers = get_layers(model)
    h = layers[block].register_forward_hook(lambda m, a, k, o: got.__setitem__("L", _block_io(a, k, o)[1]),
                                            with_kwargs=True)
    try:
        with torch.inference_mode():
            for b in batches:
                body_of(model)(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
                rows.append(got["L"][b["attention_mask"].bool()].double())
    finally:
        h.remove()
    return torch.cat(rows)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_closed_form_equals_patching_each_span(arch, tiny, text_file):
    """Known answer: for every span, the one-pass numbers equal ``fit_span`` on that span alone, and the
    cost equals the relative error of the patched model's stream against the full model's, measured."""
    loaded = load_model(str(tiny(arch)))
    data = _calib(loaded, text_file)
    r = span_residuals(loaded, data)
    L = loaded.num_layers
    for s in range(1, L):
        for e in range(s, L):
            _, st = fit_span(loaded.model, loaded.adapter, s - 1, e, data.batches)
            assert r["error_after"][s][e + 1] == pytest.approx(st["error_after"], rel=1e-7, abs=1e-12)
            assert r["error_before"][s][e + 1] == pytest.approx(st["error_before"], rel=1e-7, abs=1e-12)
            patched = copy.deepcopy(loaded.model)
            linear_repair(patched, list(range(s, e + 1)), data.batches)
            true = _stream_leaving(loaded.model, e, data.batches)
            got = _stream_leaving(patched, s - 1, data.batches)
            measured = float(((got - true) ** 2).sum() / (true ** 2).sum())
            assert r["cost"][s][e + 1] == pytest.approx(measured, rel=1e-4, abs=1e-9)
    assert all(r[k][0][m] is None for k in ("cost", "error_after") for m in range(L + 1))  # no fold block


def test_the_contiguous_cut_is_the_cheapest_span_and_never_layer_0(tiny, text_file):
    loaded = load_model(str(tiny("llama")))
    rep = score_layers(loaded, "patch-residual", data=_calib(loaded, text_file))
    m = rep.extra["span_cost_matrix"]
    L = rep.num_layers
    for k in range(1, L):
        removed = select_layers(rep, num_layers=k).removed
        assert 0 not in removed and removed == list(range(removed[0], removed[0] + k))
        assert m[removed[0]][removed[0] + k] == min(m[s][s + k] for s in range(1, L - k + 1))
    assert rep.layers[0].stats["unpatchable"] and rep.ranking[-1] == 0
    with pytest.raises(BadInput, match="no contiguous block"):
        select_layers(rep, num_layers=L - 1, protect="1")


def test_the_greedy_variant_is_nested_and_protects(tiny, text_file):
    loaded = load_model(str(tiny("llama")))
    data = _calib(loaded, text_file)
    rep = score_layers(loaded, "patch-residual-greedy", data=data, max_remove=2, protect=[2])
    order = rep.extra["greedy"]["order"]
    assert len(order) == 2 and 2 not in order and 0 not in order
    assert rep.ranking[:2] == order
    cuts = [select_layers(rep, num_layers=k).removed for k in (1, 2)]
    assert set(cuts[0]) < set(cuts[1]) and sorted(order) == cuts[1]
    # each round takes the cheapest total cost, recomputed from the span matrix
    m = rep.extra["span_cost_matrix"]
    first = min((span_cost(m, [b]), b) for b in (1, 3))
    assert order[0] == first[1]
    with pytest.raises(BadInput, match="--max-remove 3 is out of range"):
        score_layers(loaded, "patch-residual-greedy", data=data, max_remove=3, protect=[2])


def test_greedy_order_on_a_known_matrix():
    """Block 2 alone is cheap, [2, 3] together cheaper than 2 plus anything else, 1 never (protected)."""
    big = 10.0
    m = [[None] * 5 for _ in range(5)]
    for s in range(1, 4):
        for e in range(s, 4):
            m[s][e + 1] = big * (e - s + 1)
    m[2][3], m[3][4], m[2][4], m[1][2] = 1.0, 2.0, 2.5, 0.5
    assert greedy_order(m, 4, 2, protect=[0, 1]) == ([2, 3], [1.0, 2.5])
    assert greedy_order(m, 4, 1, protect=[0]) == ([1], [0.5])


def test_refused_where_the_patch_is_not_exact(tiny, text_file):
    loaded = load_model(str(tiny("gemma3_text")))
    with pytest.raises(BadInput, match="cannot be folded exactly"):
        score_layers(loaded, "patch-residual", data=_calib(loaded, text_file))
