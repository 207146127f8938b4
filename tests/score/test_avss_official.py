"""Official AVSS: our streaming hooks against a direct, independent transcription of the official
code's formulas (block output stored per batch, then pandas-style means), on the same tensors."""
import math

import pytest
import torch

from compressor.architectures import get_layers
from compressor.score.api import score_layers
from compressor.sources.data import CalibrationSpec, load_calibration
from compressor.sources.models import load_model

ZERO_DIMS = [0, 5, 9]  # hidden dims forced to exactly 0 so |a| < 1e-5 really happens


def _official_transcription(model, layers, batches):
    """As shjdjjfi/AVSS does it: hook stores output[0].detach().cpu(); after the run, per batch:
    Var over the hidden dim (torch.var, unbiased) of the seq-mean-pooled output, mean over the batch;
    sparsity = (h.abs() < 1e-5).float().mean(); then both averaged over batches. AVSS = Var / S."""
    store = {i: [] for i in range(len(layers))}
    handles = [l.register_forward_hook(lambda m, i, o, k=k: store[k].append((o[0] if isinstance(o, tuple) else o).detach().cpu()))
               for k, l in enumerate(layers)]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in handles:
        h.remove()
    out = []
    for k in range(len(layers)):
        variances = [torch.var(torch.mean(h, dim=1), dim=1).mean().item() for h in store[k]]
        sparsities = [(h.abs() < 1e-5).float().mean().item() for h in store[k]]
        v = sum(variances) / len(variances)
        s = sum(sparsities) / len(sparsities)
        out.append((v, s, v / s if s else math.inf))
    return out


@pytest.fixture
def sparse_llama(tiny):
    loaded = load_model(str(tiny("llama")))
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight[:, ZERO_DIMS] = 0
        for block in get_layers(loaded.model):
            block.self_attn.o_proj.weight[ZERO_DIMS, :] = 0
            block.mlp.down_proj.weight[ZERO_DIMS, :] = 0
    return loaded


def test_official_matches_independent_transcription(sparse_llama, text_file):
    loaded = sparse_llama
    data = load_calibration(CalibrationSpec(source=str(text_file), samples=6, seq_len=48, batch_size=4, pack=False),
                            loaded.tokenizer)
    assert any(bool((b["attention_mask"] == 0).any()) for b in data.batches), "want padding in the batches"
    expected = _official_transcription(loaded.model, get_layers(loaded.model), data.batches)
    rep = score_layers(loaded, "avss", mode="official", data=data)
    assert rep.method == "avss" and rep.mode == "official" and rep.label == "avss (official)"
    for layer, (v, s, a) in zip(rep.layers, expected):
        assert s > 0
        assert layer.stats["variance"] == pytest.approx(v, rel=1e-5)
        assert layer.stats["sparsity"] == pytest.approx(s, rel=1e-6)
        assert layer.score == pytest.approx(a, rel=1e-5)
        assert layer.stats["sparsity_zero"] is False
    assert sum(l.stats["navss"] for l in rep.layers) == pytest.approx(1.0)


def test_zero_sparsity_rule_is_finite_and_flagged(tiny, text_file):
    """Dense outputs: no |a| < 1e-5 anywhere. The official code would give inf; we give Var/1e-12."""
    loaded = load_model(str(tiny("llama")))
    data = load_calibration(CalibrationSpec(source=str(text_file), samples=4, seq_len=32, batch_size=2), loaded.tokenizer)
    expected = _official_transcription(loaded.model, get_layers(loaded.model), data.batches)
    rep = score_layers(loaded, "avss", mode="official", data=data)
    zero = [i for i, (_, s, _) in enumerate(expected) if s == 0]
    assert zero, "tiny dense model should have zero-sparsity layers"
    for i in zero:
        layer = rep.layers[i]
        assert layer.stats["sparsity_zero"] is True
        assert math.isfinite(layer.score)
        assert layer.score == pytest.approx(expected[i][0] / 1e-12, rel=1e-5)
    assert any("sparsity 0" in w for w in rep.warnings)
    assert all(math.isfinite(l.score) for l in rep.layers)
