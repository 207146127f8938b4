"""docs/RESULTS.md is rendered from results.json: tables and conclusions follow the data (no models here)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _scorers_report as R  # noqa: E402

SCORERS = [("avss-official", "AVSS (official)", "1"), ("avss-robust", "AVSS (robust)", "1"),
           ("block-influence", "block influence", "1"), ("leave-one-out", "leave-one-out", "L + 1"),
           ("random-0", "random (seed 0)", "0"), ("random-1", "random (seed 1)", "0")]


def _model(key, name, L, tasks, cuts, claim_cuts, grid, best, onnx_rows):
    """grid: scorer id -> k -> (removed, {task: retention}); best: scorer id -> largest passing k."""
    gate = 0.9
    scorers, g, search, speed = [], {}, {}, {"threads": 2, "forward": {"seconds": 10.0, "peak_rss_mb": 1000.0,
                                                                       "tokens": 8192, "batches": 4}}
    for sid, label, passes in SCORERS:
        scorers.append({"id": sid, "label": label, "group": "random" if sid.startswith("random") else sid,
                        "method": sid, "mode": None, "seed": int(sid[-1]) if sid.startswith("random") else None,
                        "passes": passes, "ranking": list(range(L)), "warnings": []})
        g[sid] = {}
        for k in cuts:
            removed, rets = grid[sid][k]
            g[sid][str(k)] = {"removed": removed, "passed": all(v >= gate for v in rets.values()),
                              "tasks": {t: {"name": t, "metric": "m", "candidate": 10 * v, "retention": v,
                                            "agreement": 0.5, "threshold": gate, "passed": v >= gate}
                                        for t, v in rets.items()}}
        search[sid] = {"best": best[sid], "candidates": [
            {"method": sid, "k": best[sid], "removed": list(range(best[sid])), "passed": True, "complete": True,
             "retention": {t: 0.95 for t in tasks}, "thresholds": {t: gate for t in tasks}}] if best[sid] else []}
        if passes != "0":
            speed[sid] = {"seconds": 9.0 if passes == "1" else 90.0, "peak_rss_mb": 900.0}
    return {
        "key": key, "name": name, "spec": f"builtin:{key}", "num_layers": L, "parameters": 5_000_000,
        "classifier": None,
        "profile": {"path": f"profiles/{key}.yaml", "name": key, "gate": gate,
                    "calibration": {"source": "builtin:python-docs", "samples": 4, "seq_len": 64},
                    "tasks": [{"name": t, "kind": "perplexity" if t == "ppl" else "classification", "metric": "m",
                               "data": "builtin:python-docs" if t == "ppl" else "builtin:rt-sentiment",
                               "split": None, "limit": None, "few_shot": None, "base": 20.0, "n": 100,
                               "threshold": gate} for t in tasks]},
        "cuts": cuts, "claim_cuts": claim_cuts, "max_remove": L // 2, "scorers": scorers, "grid": g,
        "search": search, "speed": speed,
        "onnx": {"kind": "decoder", "provider": "cpu", "rows": onnx_rows,
                 "settings": {"batch_size": 1, "prompt_len": 128, "new_tokens": 32, "warmup": 2, "runs": 5,
                              "rounds": 2, "threads": 2}},
        "evaluations": {"cuts": 9, "computed": 20, "cached": 7}, "verify_warnings": [],
        "seconds": {"prepare": 1.0, "scoring": 2.0, "grid": 3.0, "search": 4.0, "onnx": 5.0},
    }


def _onnx_row(layers, removed, scorers, fallback=False, ratio=1.0):
    return {"layers": layers, "removed": removed, "scorers": scorers, "fallback": fallback,
            "latency_ms_p50": 10.0 * ratio, "latency_ms_p90": 11.0, "prefill_ms_p50": 50.0, "rss_peak_mb": 500.0,
            "model_rss_mb": 400.0, "file_mb": 300.0, "params": 1, "layer_ratio": layers / 8, "latency_ratio": ratio,
            "rss_peak_ratio": ratio, "model_rss_ratio": ratio}


@pytest.fixture
def results():
    lm_grid = {
        "avss-official": {1: ([0], {"ppl": 0.3, "qa": 0.8}), 2: ([0, 1], {"ppl": 0.1, "qa": 0.5})},
        "avss-robust": {1: ([3], {"ppl": 0.92, "qa": 0.95}), 2: ([2, 3], {"ppl": 0.85, "qa": 0.93})},
        "block-influence": {1: ([3], {"ppl": 0.92, "qa": 0.95}), 2: ([3, 4], {"ppl": 0.95, "qa": 0.92})},
        "leave-one-out": {1: ([4], {"ppl": 0.97, "qa": 0.99}), 2: ([2, 3, 4][:2], {"ppl": 0.93, "qa": 0.91})},
        "random-0": {1: ([6], {"ppl": 0.5, "qa": 0.9}), 2: ([5, 6], {"ppl": 0.2, "qa": 0.7})},
        "random-1": {1: ([1], {"ppl": 0.6, "qa": 0.9}), 2: ([1, 7], {"ppl": 0.4, "qa": 0.8})},
    }
    cls_grid = {sid: {1: ([i % 4], {"acc": r})} for i, (sid, r) in enumerate(
        [("avss-official", 0.5), ("avss-robust", 0.85), ("block-influence", 0.8), ("leave-one-out", 0.88),
         ("random-0", 0.6), ("random-1", 0.7)])}
    lm = _model("toy-lm", "Toy LM", 8, ["ppl", "qa"], [1, 2], [2], lm_grid,
                {"avss-official": 0, "avss-robust": 1, "block-influence": 3, "leave-one-out": 4, "random-0": 0,
                 "random-1": 1},
                [_onnx_row(8, [], []), _onnx_row(4, [2, 3, 4, 5], ["leave-one-out"], ratio=0.6)])
    cls = _model("toy-cls", "Toy classifier", 4, ["acc"], [1], [1], cls_grid, {s[0]: 0 for s in SCORERS},
                 [_onnx_row(4, [], []), _onnx_row(3, [1], ["avss-robust"], fallback=True, ratio=0.8)])
    cls["onnx"]["kind"] = "encoder"
    return {"schema_version": 1, "command": "python benchmarks/scorers.py", "quick": False,
            "started": "2025-01-02 03:04 UTC",
            "machine": {"cpu_count": 2, "cpu_count_physical": 1, "cpu": "Test CPU", "memory_gb": 8.0,
                        "platform": "Linux", "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [2.0, 2.0, 2.0]},
            "versions": {"avss-compressor": "0.1.0", "torch": "2.13.0"}, "gate": 0.9, "verify_cache_entries_at_start": 0,
            "models": [lm, cls], "total_seconds": 750.0}


def test_header_and_sections(results):
    md = R.to_markdown(results)
    assert md.startswith("# Results")
    assert "Generated by `python benchmarks/scorers.py` on 2025-01-02 03:04 UTC; not edited by hand" in md
    assert "2 CPU cores (Test CPU)" in md and "torch 2.13.0" in md
    assert "Total wall time: **12.5 min**" in md
    for section in ("## What this means", "## Setup", "## Retention per scorer, cut size and task",
                    "## Which layers each scorer removed", "## Largest cut that passes 0.90 on every task",
                    "### Scoring cost", "### ONNX Runtime (CPU)", "## Run details"):
        assert section in md, section
    assert "Smoke run" not in md
    assert md.index("## What this means") < md.index("## Setup")


def test_retention_tables(results):
    md = R.to_markdown(results)
    assert "**ppl** (m; base model 20). Cells: retention (candidate value); bold = passes." in md
    # a passing cell is bold and shows the candidate value; random shows the mean and the spread
    assert "| block influence | **0.920 (9.2)** | **0.950 (9.5)** |" in md
    assert "| random (mean of 2 seeds) | 0.550 (0.500–0.600) | 0.300 (0.200–0.400) |" in md
    assert "![retention against layers removed](results/toy-lm-retention.png)" in md
    # removed layers, each random seed on its own row, ranges compacted
    assert "| random (seed 1) | 1 | 1, 7 |" in md
    assert R.layers([13, 14, 15, 16, 17, 25, 26]) == "13–17, 25, 26"


def test_search_and_speed_tables(results):
    md = R.to_markdown(results)
    assert "| leave-one-out | 4 (50 %) | 0–3 |" in md
    assert "| AVSS (official) | none | — |" in md
    assert "| plain forward (reference) | 1 | 10.00 | 1.00 | 1000 | 1.00 |" in md
    assert "| leave-one-out | L + 1 | 90.00 | 9.00 | 900 | 0.90 |" in md
    assert "| random | 0 | ≈ 0 | — | — | — (no forward pass) |" in md
    assert "passing 4-layer cut (leave-one-out) 2–5" in md
    assert "**fallback (no cut passes): 1-layer AVSS (robust) cut** 1" in md
    assert "forward ms/batch (p50)" in md and "decode ms/token (p50)" in md


def test_conclusions_are_computed(results):
    f = R.conclusions(results)
    lm, cls = f["models"]
    claim = lm["claims"][0]
    assert claim["k"] == 2 and claim["share"] == "25 %"
    assert claim["holds_for"] == ["block influence", "leave-one-out"]
    assert [e["task"] for e in claim["kept"]] == ["ppl", "qa"] and claim["lost"] == []
    assert lm["largest"] == 4 and lm["largest_by"] == ["leave-one-out"]
    assert cls["claims"][0]["holds_for"] == [] and cls["largest"] == 0
    assert cls["claims"][0]["top"]["label"] == "leave-one-out"
    # mean worst-task retention per model, then over models: leave-one-out (0.94 + 0.88) / 2;
    # AVSS (robust) (0.885 + 0.85) / 2 beats block influence (0.92 + 0.80) / 2 among single-pass scorers
    assert f["pick"]["label"] == "leave-one-out" and f["pick"]["worst"] == pytest.approx(0.91)
    assert f["one_pass_pick"]["label"] == "AVSS (robust)"

    text = "\n".join(R.what_this_means(results))
    assert "**Toy LM, 2 of 8 layers removed (25 %).** The claim holds for block influence, leave-one-out" in text
    assert "official AVSS is below random here" in text
    assert "ppl: 2 of 5 scorers keep ≥ 90% (best block influence, 0.95)." in text
    assert "The claim does not hold for any scorer: the best on its worst task (leave-one-out) keeps acc 0.88." in text
    assert "acc: no scorer keeps 90% (best leave-one-out, 0.88)" in text
    assert "Closest at 1 layer(s): leave-one-out, keeping acc 0.88." in text
    assert "largest cut that passes the 0.90 gate** (search up to 4 layer(s)) is 4 layer(s) (50 %), by leave-one-out" in text
    assert "**Toy classifier: no cut passes the 0.90 gate**" in text
    assert "**Best scorer by this measure: leave-one-out**" in text and "mean worst-task retention 0.91" in text
    assert "scoring costs 9.0× (Toy LM), 9.0× (Toy classifier) a plain forward pass" in text
    assert ("leave-one-out runs the model once per layer plus once; the best single-pass scorer, AVSS (robust), "
            "is 0.04 behind") in text
    assert "Runner-up" not in text  # the runner-up is that single-pass scorer


def test_conclusions_follow_the_numbers(results):
    """Change the data and the text changes with it: nothing is hard-coded."""
    r = copy.deepcopy(results)
    for m in r["models"]:
        m["search"]["avss-official"]["best"], m["search"]["leave-one-out"]["best"] = 1, 0
        for c in m["grid"]["avss-official"].values():
            for t in c["tasks"].values():
                t["retention"], t["passed"] = 0.99, True
            c["passed"] = True
    text = "\n".join(R.what_this_means(r))
    assert "**Best scorer by this measure: AVSS (official)**" in text
    assert "Runner-up: leave-one-out, 0.08 behind." in text
    assert "official AVSS is at or above random here" in text
    assert "The claim holds for AVSS (official), block influence, leave-one-out" in text
    assert "best single-pass scorer" not in text  # the pick already is one


def test_ties_name_every_scorer(results):
    """Scorers that agree (often on the very same cut) are all named, not just the first in the list."""
    results["models"][1]["grid"]["block-influence"]["1"]["tasks"]["acc"]["retention"] = 0.88
    text = "\n".join(R.what_this_means(results))
    assert "Closest at 1 layer(s): block influence, leave-one-out, keeping acc 0.88." in text
    assert "acc: no scorer keeps 90% (best block influence, leave-one-out, 0.88)" in text


def test_render_writes_document_and_plots(results, tmp_path):
    doc = R.render(results, tmp_path)
    assert doc == tmp_path / "RESULTS.md" and doc.read_text(encoding="utf-8") == R.to_markdown(results)
    for key in ("toy-lm", "toy-cls"):
        png = tmp_path / "results" / f"{key}-retention.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_runs_are_labelled(results):
    results["quick"] = True
    results["command"] = "python benchmarks/scorers.py --quick"
    md = R.to_markdown(results)
    assert "Generated by `python benchmarks/scorers.py --quick`" in md and "**Smoke run (`--quick`)**" in md


def test_the_page_plans_every_registered_scorer_and_mode():
    """RESULTS.md claims every scorer: benchmarks/scorers.py runs each one the registry has (a new scorer
    that is not added to the benchmark fails here, not silently off the page)."""
    import scorers as bench  # benchmarks/scorers.py

    from compressor.score.methods import SCORERS as REGISTERED

    planned = {(p.method, p.mode) for p in bench.SCORERS}
    for name, scorer in REGISTERED.items():
        for mode in scorer.modes or (None,):
            assert (name, mode) in planned, f"{name} {mode or ''} is not on the scorers page"
