"""``--search`` with the linear patch also tries the cuts chosen for it, and reuses shared verdicts."""
import json

from compressor.run.config import RunConfig
from helpers import run


def test_the_patch_scorers_join_the_search_when_the_repair_is_linear():
    base = {"model": "m", "profile": "p.yaml", "out": "o", "search": True}
    assert RunConfig(**base).methods == ["avss", "block-influence"]
    for repair in ("linear", "linear+distill", "linear+lora"):
        assert RunConfig(**base, repair=repair).methods == ["avss", "block-influence", "angular", "patch-residual",
                                                            "patch-residual-greedy"]
    assert RunConfig(**base, repair="distill").methods == ["avss", "block-influence"]


def test_search_with_the_patch_scorers(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.01)), "--out", str(out), "--search",
                        "--repair", "linear", "--methods", "patch-residual,patch-residual-greedy", "--max-remove", "2",
                        "--skip-export"], capsys)
    assert code == 0, err
    s = json.loads((out / "search.json").read_text())
    assert set(s["best"]) == {"patch-residual", "patch-residual-greedy"}
    assert all(0 not in c["removed"] for c in s["candidates"])  # nothing precedes layer 0 to fold into
    greedy = json.loads((out / "search" / "scores-patch-residual-greedy.json").read_text())
    assert greedy["extra"]["greedy"]["protect"] == [0]
    contiguous = json.loads((out / "search" / "scores-patch-residual.json").read_text())
    m = contiguous["extra"]["span_cost_matrix"]
    one = min((m[s_][s_ + 1], s_) for s_ in range(1, 4))[1]
    assert {"method": "patch-residual", "k": 1, "removed": [one]}.items() <= next(
        c for c in s["candidates"] if c["method"] == "patch-residual" and c["k"] == 1).items()
    # both propose the cheapest single span at k = 1: one cut, repair and verify; the second verdict is reused
    g1 = next(c for c in s["candidates"] if c["method"] == "patch-residual-greedy" and c["k"] == 1)
    assert g1["removed"] == [one] and "the same cut as patch-residual k=1" in err


def test_the_chosen_candidate_is_not_repaired_twice(tiny, tmp_path, ppl_profile, capsys):
    """The search keeps its best passing repaired candidate; the repair step moves it into model/ instead
    of cutting and training it again (same content, same key), and nothing is left in .search."""
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.01)), "--out", str(out), "--search",
                        "--repair", "linear", "--methods", "block-influence", "--max-remove", "2", "--skip-export"],
                       capsys)
    assert code == 0, err
    r = json.loads((out / "run.json").read_text())
    stages = {s["name"]: s for s in r["stages"]}
    assert "not repaired twice" in stages["repair"]["detail"]
    comp = json.loads((out / "model" / "compression.json").read_text())
    assert comp["removed_layers"] == r["removed"] and comp["repair"]["method"] == "linear"
    assert not (out / ".search").exists()
    # a fresh run (nothing resumed) that cannot reuse anything repairs as before and agrees
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.01)), "--out", str(tmp_path / "b"),
                        "--repair", "linear", "--method", "block-influence", "--num-layers", str(len(r["removed"])),
                        "--skip-export"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "model" / "compression.json").read_text())
    assert again["removed_layers"] == comp["removed_layers"]
    assert again["repair"]["linear"]["spans"] == comp["repair"]["linear"]["spans"]
