"""Healing variants: the top-k KL loss, LoRA merged into plain weights, and the time budget."""
import json

import pytest
import torch
from repair.test_linear import batches

from compressor.errors import BadInput
from compressor.repair.methods import repair_cut, repair_settings
from compressor.repair.settings import RepairSettings
from helpers import run


def test_topk_kl_healing_lowers_the_heldout_kl(tiny):
    from compressor.sources.models import load_model

    full = load_model(str(tiny("llama")))
    data = batches(full.tokenizer, n=8, seq=24)
    _, rec, _ = repair_cut(full, [1, 2], RepairSettings("distill", heal_steps=25, heal_lr=3e-3, heal_loss="kl"), data)
    d = rec["distill"]
    assert d["objective"] == "kl" and "top 64" in d["loss"] and d["trainable"] == "neighbours"
    assert d["heldout_loss_after"] < d["heldout_loss_before"]
    assert d["heldout_kl_after"] < d["heldout_kl_before"]


def test_lora_heals_every_kept_block_and_merges_into_plain_weights(tiny, tmp_path, text_file, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "slim"
    code, _, err = run(["prune", str(tiny("llama")), "--method", "block-influence", "--num-layers", "2",
                        "--repair", "linear+lora", "--heal-loss", "kl", "--heal-steps", "12", "--heal-lr", "3e-3",
                        "--data", str(text_file), "--samples", "8", "--seq-len", "32", "--batch-size", "2",
                        "--out", str(out)], capsys)
    assert code == 0, err
    rec = json.loads((out / "compression.json").read_text())["repair"]
    lo = rec["lora"]
    assert rec["method"] == "linear+lora" and lo["trainable"] == "lora" and lo["trainable_blocks"] == [0, 1]
    assert lo["heldout_kl_after"] <= lo["heldout_kl_before"] and lo["steps"] >= 1
    names = set()
    from safetensors import safe_open

    for f in out.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            names |= set(sf.keys())
    assert not any("lora" in n for n in names)  # merged: no adapter tensors, no peft needed to load
    assert not (out / "adapter_config.json").exists()
    m = AutoModelForCausalLM.from_pretrained(str(out))
    assert m.config.num_hidden_layers == 2 and type(m).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.isfinite(m(torch.tensor([[5, 17, 42]])).logits).all()


def test_lora_returns_a_plain_model_with_the_adapters_merged(tiny):
    """No adapter modules or parameters remain, nothing is left trainable, and the held-out KL (measured
    after the merge) is no worse than before."""
    from compressor.repair.distill import distill
    from compressor.sources.models import load_model

    full = load_model(str(tiny("llama")))
    student = load_model(str(tiny("llama"))).model
    data = batches(full.tokenizer, n=6, seq=24)
    healed, rec = distill(student, full.model, [0, 1, 2, 3], [], data, steps=6, lr=3e-3, loss="kl", trainable="lora")
    assert type(healed).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in healed.named_parameters())
    assert rec.heldout_kl_after < rec.heldout_kl_before or rec.heldout_kl_before < 1e-9
    assert all(not p.requires_grad for p in healed.parameters())


def test_the_time_budget_stops_training(tiny):
    from compressor.sources.models import load_model

    full = load_model(str(tiny("llama")))
    data = batches(full.tokenizer, n=8, seq=24)
    _, rec, _ = repair_cut(full, [1, 2], RepairSettings("distill", heal_steps=100_000, heal_minutes=0.02), data)
    d = rec["distill"]
    assert d["budget_minutes"] == 0.02 and d["steps"] < 100_000  # 1.2 s of training, not 100k steps
    assert d["stopped_by_budget"] or d["stopped_early"]


def test_healing_settings_are_refused_before_any_work():
    for kwargs, needle in [({"heal_loss": "mse"}, "unknown --heal-loss"),
                           ({"heal_minutes": 0.0}, "--heal-minutes must be a finite positive number"),
                           ({"heal_minutes": float("nan")}, "--heal-minutes must be a finite positive number"),
                           ({"heal_lr": float("nan")}, "--heal-lr must be a finite positive number")]:
        with pytest.raises(BadInput, match=needle):
            repair_settings("linear+distill", **kwargs)
