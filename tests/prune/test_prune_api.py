"""``prune_checkpoint`` (``avss prune`` as a call) and ``cut_provenance`` (compression.json's one shape),
called from Python on real tiny models."""
import contextlib
import json
import shutil

import pytest

from compressor.errors import BadInput
from compressor.prune.api import PruneOutcome, prune_checkpoint
from compressor.prune.provenance import COMPRESSION_SCHEMA, PROVENANCE_KEYS, current, cut_provenance
from compressor.score.api import score_layers
from compressor.score.select import select_layers
from compressor.sources.models import load_model
from helpers import grouped, library_log


def test_cut_provenance_has_every_key_whoever_cuts(tiny):
    report = score_layers(load_model(str(tiny("llama"))), "last-k")
    sel = select_layers(report, num_layers=1)
    plain = cut_provenance(report, sel, scores_file="s.json")
    assert tuple(plain) == PROVENANCE_KEYS
    assert plain["method"] == "last-k" and plain["mode"] is None and plain["label"] == "last-k"
    assert plain["selection"] == sel.to_dict() and plain["scores_file"] == "s.json" and plain["run"] is None
    assert plain["scores"] == [{"index": l.index, "score": l.score} for l in report.layers]
    assert plain["ranking"] == report.ranking and plain["calibration"] is None  # last-k reads no data
    ran = cut_provenance(report, run={"model": "m", "protect": "none", "search": False})
    assert tuple(ran) == PROVENANCE_KEYS
    assert ran["selection"] is None and ran["scores_file"] is None and ran["run"] == {"model": "m", "protect": "none",
                                                                                      "search": False}
    assert cut_provenance(report, sel.to_dict()) == cut_provenance(report, sel)
    json.dumps(plain, allow_nan=False)


def test_an_older_record_is_brought_to_the_current_schema():
    old = {"schema_version": 2, "base_model": {"model_type": "llama"}, "method": "avss", "removed_layers": [1],
           "repair": {"method": "none"}}
    new = current(old)
    assert COMPRESSION_SCHEMA == 3 and new["schema_version"] == 3 and next(iter(new)) == "schema_version"
    assert all(k in new for k in PROVENANCE_KEYS) and new["method"] == "avss" and new["run"] is None
    assert {k: v for k, v in new.items() if k in old and k != "schema_version"} == {k: v for k, v in old.items()
                                                                                     if k != "schema_version"}


def test_prune_checkpoint_is_the_prune_command_as_a_call(tiny, tmp_path):
    model = str(tiny("llama"))
    with library_log() as log:
        done = prune_checkpoint(model, tmp_path / "slim", **grouped(cut=True, method="last-k", num_layers=3))
    assert isinstance(done, PruneOutcome) and not done.repaired and done.out == tmp_path / "slim"
    assert (done.result.num_layers_before, done.result.num_layers_after) == (4, 1)
    assert done.result.removed == done.selection.removed and done.report.method == "last-k"
    assert done.warnings == ["this removes 3 of 4 layers, more than half of the model"]
    assert ("warning", done.warnings[0]) in log and ("info", f"loading {model} ...") in log
    assert ("info", f"method last-k: removing 3 of 4 layers {done.selection.removed} (num-layers)") in log
    comp = json.loads((tmp_path / "slim" / "compression.json").read_text())
    assert comp["schema_version"] == COMPRESSION_SCHEMA and {k: comp[k] for k in PROVENANCE_KEYS} == done.provenance
    assert comp["scores_file"] is None and comp["run"] is None and comp["selection"]["rule"] == "num-layers"
    assert comp["repair"] == {"method": "none"}


def test_prune_checkpoint_from_a_scores_file(tiny, tmp_path):
    score_layers(load_model(str(tiny("llama"))), "last-k").save(tmp_path / "s.json")
    twin = tmp_path / "twin"  # the same model in another folder: a warning, not an error
    shutil.copytree(tiny("llama"), twin)
    done = prune_checkpoint(str(twin), tmp_path / "slim", **grouped(cut=True, scores=tmp_path / "s.json", num_layers=1))
    assert done.warnings == [f"{tmp_path / 's.json'} was computed for {str(tiny('llama'))!r}; pruning {str(twin)!r}"]
    assert done.provenance["scores_file"] == str(tmp_path / "s.json") and done.result.removed == [2]
    with pytest.raises(BadInput, match="was computed for a llama model, not gpt2"):
        prune_checkpoint(str(tiny("gpt2")), tmp_path / "other", **grouped(cut=True, scores=tmp_path / "s.json", num_layers=1))


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "last-k", "scores": "s.json", "num_layers": 1}, "give exactly one of --scores FILE or --method NAME"),
    ({"method": "last-k"}, "give exactly one of --ratio, --num-layers, --mass"),
    ({"scores": "s.json", "avss_mode": "official", "num_layers": 1}, "a scores file already records its mode"),
    ({"scores": "s.json", "max_remove": 2, "num_layers": 1}, "--max-remove applies to --method"),
    ({"method": "last-k", "objective": "kl", "num_layers": 1}, "--objective only applies to --method sleb"),
    ({"method": "last-k", "num_layers": 1, "repair": "linear", "ridge": -1.0}, "--ridge must be a finite number >= 0"),
    ({"method": "last-k", "num_layers": 1, "data": "a.txt", "profile": "p.yaml"}, "--data and --profile both"),
    # every float rejects NaN and inf, every count and range is checked against config.json, before the load
    ({"method": "last-k", "num_layers": 1, "repair": "linear", "ridge": float("nan")}, r"--ridge must be a finite"),
    ({"method": "last-k", "num_layers": 1, "repair": "linear", "ridge": float("inf")}, r"--ridge must be a finite"),
    ({"method": "last-k", "num_layers": 1, "repair": "distill", "heal_lr": float("inf")}, "--heal-lr must be a finite"),
    ({"method": "last-k", "num_layers": 1, "repair": "distill", "heal_minutes": float("inf")},
     "--heal-minutes must be a finite"),
    ({"method": "last-k", "ratio": float("nan")}, r"--ratio must be between 0 and 1 \(got nan\)"),
    ({"method": "last-k", "mass": float("inf")}, r"--mass must be between 0 and 1 \(got inf\)"),
    ({"method": "last-k", "num_layers": 0}, r"--num-layers must be at least 1 \(got 0\)"),
    ({"method": "last-k", "num_layers": -1}, r"--num-layers must be at least 1 \(got -1\)"),
    ({"method": "last-k", "num_layers": 4}, "cannot remove 4 of 4 layers: at least one layer must remain"),
    ({"method": "last-k", "ratio": 0.1}, "--ratio 0.1 of 4 layers rounds to 0 layers"),
    ({"method": "last-k", "num_layers": 3, "protect": "first,last"}, "cannot remove 3 layers: only 2 are not protected"),
    ({"method": "last-k", "num_layers": 1, "protect": "7"}, "--protect layer 7 is out of range for a 4-layer model"),
    ({"method": "sleb", "num_layers": 1, "max_remove": 4}, "--max-remove 4 is out of range for a 4-layer model"),
])
def test_prune_checkpoint_refuses_bad_flags_before_loading(kwargs, needle, tiny, tmp_path):
    with library_log() as log, pytest.raises(BadInput, match=needle):
        prune_checkpoint(str(tiny("llama")), tmp_path / "slim", **grouped(cut=True, **kwargs))
    assert log == [] and not (tmp_path / "slim").exists()


def test_prune_checkpoint_with_a_repair_keeps_layer_0_and_drives_the_displays(tiny, tmp_path, text_file):
    from compressor.repair.methods import evidence

    loaded = load_model(str(tiny("llama")))
    seen: list[str] = []

    @contextlib.contextmanager
    def bar(description):
        seen.append(description)
        yield lambda done, total: None

    @contextlib.contextmanager
    def repair_bars():
        yield lambda step, done, total, loss: seen.append(step) if step not in seen else None

    with library_log() as log:
        done = prune_checkpoint(loaded, tmp_path / "slim", **grouped(
            cut=True, method="block-influence", num_layers=1, repair="linear", data=str(text_file), samples=4,
            seq_len=32, bar=bar, repair_bars=repair_bars))
    assert done.repaired and done.selection.protect == [0] and 0 not in done.result.removed
    assert ("info", "--repair linear keeps layer 0 (its patch folds into the block before each removed span)") in log
    assert not any(m.startswith("loading") for _, m in log)  # a loaded model is used as it is
    assert seen == ["scoring block-influence: batches", "linear patch"]
    assert done.provenance["calibration"]["tokens"] > 0 and done.result.repair["method"] == "linear"
    (table,) = evidence(done.result.repair)
    assert table.title == "linear patch (ridge 0.0001)" and len(table.rows) == 1
