"""The repair library's command-level calls: settings from flags, each step's evidence from the
registry, and ``repair_pruned`` (``avss repair`` as a call), including on an older compression.json."""
import json

import pytest

from compressor.errors import BadInput
from compressor.prune.provenance import PROVENANCE_KEYS
from compressor.prune.surgery import prune_model
from compressor.repair import methods as repairs
from compressor.repair.api import repair_pruned
from compressor.repair.methods import RepairEvidence, evidence, repair_settings
from compressor.repair.settings import RepairSettings
from compressor.sources.models import load_model
from helpers import grouped, library_log


def test_repair_settings_fill_defaults_and_refuse_bad_values():
    assert repair_settings() == RepairSettings()
    assert repair_settings("linear+distill", heal_tokens=512, seed=3) == RepairSettings("linear+distill", heal_tokens=512,
                                                                                         seed=3)
    for kwargs, needle in [({"ridge": -1.0}, "--ridge must be a finite number >= 0"), ({"heal_steps": 0}, "--heal-steps and --heal-tokens"),
                           ({"heal_tokens": 0}, "--heal-steps and --heal-tokens"), ({"heal_lr": 0.0}, "--heal-lr must be a finite positive number")]:
        with pytest.raises(BadInput, match=needle):
            repair_settings("linear", **kwargs)
    with pytest.raises(BadInput, match="unknown --repair 'bogus'"):
        repair_settings("bogus")


def test_the_registry_renders_each_steps_evidence(monkeypatch):
    rec = {"method": "linear+distill",
           "linear": {"ridge": 1e-4, "spans": [{"removed": [2], "fold_point": "layers.1.mlp.down_proj", "tokens": 128,
                                                 "error_before": 0.91923, "error_after": 0.03821}]},
           "distill": {"steps": 2, "budget_steps": 2, "stopped_early": False, "heldout_loss_before": 0.0117,
                       "heldout_loss_after": 0.0116, "heldout_kl_before": 0.00004, "heldout_kl_after": 0.00002,
                       "seconds": 3.2}}
    lin, dis = evidence(rec)
    assert lin.title == "linear patch (ridge 0.0001)" and lin.line is None
    assert [h for h, _ in lin.columns] == ["removed span", "folded into", "tokens", "residual error before", "after"]
    assert [j for _, j in lin.columns] == ["left", "left", "right", "right", "right"]
    assert lin.rows == (("[2]", "layers.1.mlp.down_proj", "128", "0.9192", "0.0382"),)
    assert dis == RepairEvidence(line="distill: 2 of 2 steps (full budget), held-out loss 0.0117 -> 0.0116, "
                                      "held-out KL 0.0000 -> 0.0000, 3 s")
    assert evidence({"method": "none"}) == []

    class Echo(repairs.Repair):  # a new repair shows its one-line summary unless it renders more
        name = "echo"
        description = "test"

        def summary(self, part):
            return f"echoed {part['n']}"

    monkeypatch.setitem(repairs.REPAIRS, "echo", Echo())
    assert evidence({"method": "echo", "echo": {"n": 2}}) == [RepairEvidence(line="echoed 2")]


def _args(method, **flags):
    """``avss repair``'s flags as ``repair_pruned`` takes them (its --method is the repair)."""
    args = grouped(repair=method, **flags)
    return {k: args[k] for k in ("repair", "calibration", "load")}


def _as_schema_2(folder):
    """Rewrite a checkpoint's compression.json as the previous schema wrote it (no one-shape provenance)."""
    f = folder / "compression.json"
    rec = json.loads(f.read_text())
    rec = {k: v for k, v in rec.items() if k not in ("selection", "scores_file", "run", "scores", "ranking",
                                                      "calibration", "label", "mode")}
    f.write_text(json.dumps({**rec, "schema_version": 2, "method": "last-k"}))


def test_repair_pruned_repairs_an_older_checkpoint_into_the_current_schema(tiny, tmp_path, text_file):
    base = str(tiny("llama"))
    prune_model(load_model(base), [2], tmp_path / "cut")
    _as_schema_2(tmp_path / "cut")
    calib = {"data": str(text_file), "samples": 4, "seq_len": 32, "batch_size": 2}
    with library_log() as log:
        rec = repair_pruned(base, str(tmp_path / "cut"), str(tmp_path / "fixed"), **_args("linear", **calib))
    assert ("info", f"loading {base} ...") in log
    comp = json.loads((tmp_path / "fixed" / "compression.json").read_text())
    assert comp["schema_version"] == 3 and all(k in comp for k in PROVENANCE_KEYS)
    assert comp["method"] == "last-k" and comp["run"] is None and comp["removed_layers"] == [2]
    assert comp["repair"]["method"] == rec["method"] == "linear" and rec["linear"]["spans"][0]["removed"] == [2]
    # distill alone heals the slim weights as written, and rewrites the record under the current schema too
    rec = repair_pruned(base, str(tmp_path / "cut"), str(tmp_path / "healed"), **_args("distill", heal_steps=1, **calib))
    comp = json.loads((tmp_path / "healed" / "compression.json").read_text())
    assert comp["schema_version"] == 3 and comp["run"] is None and comp["repair"]["method"] == "distill" == rec["method"]
    with pytest.raises(BadInput, match="--method none repairs nothing"):
        repair_pruned(base, str(tmp_path / "cut"), str(tmp_path / "none"), **_args("none", **calib))
