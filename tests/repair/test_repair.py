"""Repaired checkpoints are standard models: they reload, generate, export and pass parity; distill heals."""
import json

import pytest
import torch
from repair.test_linear import batches

from compressor.errors import BadInput
from compressor.repair.methods import protect_for, repair_cut
from compressor.repair.settings import RepairSettings
from compressor.sources.models import load_model
from helpers import run

EXPORTED = {"llama", "gpt2", "gpt_neox"}  # one of each fold kind: plain Linear, Conv1D, Linear + bias (parallel residual)


@pytest.mark.optimum
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox", "qwen3_5_text"])
def test_repaired_checkpoint_reloads_generates_exports_with_parity(arch, tiny, tmp_path, text_file, capsys):
    from transformers import AutoModelForCausalLM

    from compressor.export.convert import export_model

    out = tmp_path / "slim"
    code, stdout, err = run(["prune", str(tiny(arch)), "--method", "last-k", "--num-layers", "2",
                             "--data", str(text_file), "--samples", "4", "--seq-len", "32", "--repair", "linear",
                             "--out", str(out)], capsys)
    assert code == 0, err
    assert "linear patch" in stdout and "residual error before" in stdout
    comp = json.loads((out / "compression.json").read_text())
    rep = comp["repair"]
    assert rep["method"] == "linear" and rep["calibration"]["tokens"] > 0
    assert 0 not in comp["removed_layers"]  # the patch needs a block before each span: layer 0 is kept
    for sp in rep["linear"]["spans"]:
        assert sp["error_after"] <= sp["error_before"] and sp["tokens"] > 0 and sp["ridge_lambda"] >= 0
        assert f".{sp['fold_block']}." in sp["fold_point"]
    m = AutoModelForCausalLM.from_pretrained(str(out))  # plain transformers, no custom code
    assert type(m).__name__ == type(load_model(str(tiny(arch))).model).__name__ and m.config.num_hidden_layers == 2
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():
        full = m(ids).logits[0, -1]
        step = m(ids[:, :-1], use_cache=True)
        cached = m(ids[:, -1:], past_key_values=step.past_key_values).logits[0, -1]
        assert torch.allclose(full, cached, atol=1e-4)  # KV-cache parity
        g = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert g.shape[1] == 9
    if arch in EXPORTED:
        res = export_model(str(out), tmp_path / "onnx")
        assert res.parity.passed


def test_linear_repair_lowers_the_gap_to_the_full_model(tiny):
    full = load_model(str(tiny("llama")))
    data = batches(full.tokenizer, n=4)
    cut, rec_none, _ = repair_cut(full, [2], RepairSettings("none"), data)
    fixed, rec, _ = repair_cut(full, [2], RepairSettings("linear", ridge=1e-6), data)
    assert full.model.config.num_hidden_layers == 4  # the base is never modified

    def gap(m):
        with torch.no_grad():
            return sum(float((full.model(**{k: b[k] for k in ("input_ids", "attention_mask")}).logits
                              - m.model(**{k: b[k] for k in ("input_ids", "attention_mask")}).logits).pow(2).mean())
                       for b in data)

    assert gap(fixed) < gap(cut)
    assert rec_none["method"] == "none" and rec["linear"]["spans"][0]["removed"] == [2]


def test_distill_reduces_the_heldout_kl(tiny):
    full = load_model(str(tiny("llama")))
    data = batches(full.tokenizer, n=8, seq=24)
    _, rec, _ = repair_cut(full, [1, 2], RepairSettings("distill", heal_steps=25, heal_lr=3e-3, seed=0), data)
    d = rec["distill"]
    assert d["heldout_batches"] == 1 and d["train_batches"] == 7 and d["trainable_blocks"] == [0, 1]
    assert d["heldout_loss_after"] < d["heldout_loss_before"]
    assert d["heldout_kl_after"] < d["heldout_kl_before"]
    # seeded: the same settings give the same result
    _, again, _ = repair_cut(full, [1, 2], RepairSettings("distill", heal_steps=25, heal_lr=3e-3, seed=0), data)
    assert again["distill"]["heldout_kl_after"] == pytest.approx(d["heldout_kl_after"], rel=1e-6)


def test_linear_then_distill_and_the_repair_command(tiny, tmp_path, text_file, capsys):
    slim = tmp_path / "slim"
    code, _, err = run(["prune", str(tiny("llama")), "--method", "block-influence", "--num-layers", "1",
                        "--data", str(text_file), "--samples", "4", "--seq-len", "32", "--out", str(slim)], capsys)
    assert code == 0, err
    code, stdout, err = run(["repair", str(tiny("llama")), str(slim), "--method", "linear+distill", "--heal-steps", "6",
                             "--data", str(text_file), "--samples", "8", "--seq-len", "32", "--batch-size", "2",
                             "--out", str(tmp_path / "fixed")], capsys)
    assert code == 0, err
    comp = json.loads((tmp_path / "fixed" / "compression.json").read_text())
    assert comp["repair"]["method"] == "linear+distill" and comp["repair"]["distill"]["budget_steps"] == 6
    assert comp["removed_layers"] == json.loads((slim / "compression.json").read_text())["removed_layers"]
    assert "held-out KL" in err
    # distill alone heals the slim weights as they are
    code, _, err = run(["repair", str(tiny("llama")), str(tmp_path / "fixed"), "--method", "distill", "--heal-steps", "3",
                        "--data", str(text_file), "--samples", "8", "--seq-len", "32", "--batch-size", "2",
                        "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "compression.json").read_text())["repair"]
    assert again["method"] == "linear+distill+distill" and again["distill"]["budget_steps"] == 3 and "linear" in again


@pytest.mark.parametrize("argv,needle", [
    (["--method", "magic"], "unknown --repair 'magic'"),
    (["--method", "linear", "--heal-lr", "0"], "--heal-lr must be a finite positive number"),
])
def test_bad_repair_input(argv, needle, tiny, tmp_path, capsys):
    code, _, err = run(["repair", str(tiny("llama")), str(tiny("llama")), "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_repair_needs_a_pruned_checkpoint_and_refuses_unfoldable_architectures(tiny, tmp_path, capsys):
    code, _, err = run(["repair", str(tiny("llama")), str(tiny("llama")), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no readable compression.json" in err
    code, _, err = run(["prune", str(tiny("gemma3_text")), "--method", "last-k", "--num-layers", "1", "--repair", "linear",
                        "--out", str(tmp_path / "g")], capsys)
    assert code == 2 and "post_feedforward_layernorm" in err and "--repair distill" in err
    assert not (tmp_path / "g").exists()


def test_linear_protects_layer_zero():
    assert protect_for(RepairSettings("linear"), "none") == "first"
    assert protect_for(RepairSettings("linear+distill"), "last") == "first,last"
    assert protect_for(RepairSettings("distill"), "none") == "none"
    assert protect_for(RepairSettings("linear"), "0,5") == "0,5"
    with pytest.raises(BadInput):
        repair_cut(type("L", (), {"adapter": __import__("compressor.architectures", fromlist=["x"]).adapter_for_config(
            type("C", (), {"model_type": "llama"})()), "num_layers": 4})(), [0], RepairSettings("linear"), [])


def test_repair_choices_order_and_summaries_come_from_the_registry(tmp_path, capsys):
    from compressor.repair.methods import choices, describe, parse_method

    # linear cuts, so it comes first; one healing step per chain
    assert choices() == ("none", "linear", "distill", "lora", "linear+distill", "linear+lora")
    with pytest.raises(BadInput, match="heals twice"):
        parse_method("linear+distill+lora")
    with pytest.raises(BadInput, match="linear must come first in --repair") as e:
        parse_method("distill+linear")
    assert e.value.fix == "use --repair linear+distill"
    with pytest.raises(BadInput, match="unknown --repair 'linear\\+linear'"):
        parse_method("linear+linear")
    rec = {"method": "linear+distill", "seconds": 12,
           "linear": {"ridge": 1e-4, "spans": [{"error_before": 0.5, "error_after": 0.25}]},
           "distill": {"steps": 3, "heldout_kl_before": 0.2, "heldout_kl_after": 0.1}}
    assert describe(rec) == ("linear+distill: 1 span(s), mean residual error 0.500 -> 0.250; 3 steps, held-out KL "
                             "0.200 -> 0.100; 12 s")
    from pathlib import Path

    profile = Path(__file__).resolve().parents[2] / "profiles" / "default.yaml"
    code, _, err = run(["run", "builtin:smollm2-135m", "--profile", str(profile), "--out",
                        str(tmp_path / "art"), "--repair", "distill+linear"], capsys)
    assert code == 2 and "linear must come first in --repair" in err and not (tmp_path / "art").exists(), err
