"""docs/REPAIR.md is rendered from repair.json: header (date, commit, settings), rows and healing (no models)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_BENCH))
# loaded under its own name: "repair" is also the tests' package for compressor.repair
_spec = importlib.util.spec_from_file_location("bench_repair", _BENCH / "repair.py")
assert _spec and _spec.loader
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)


def _row(scorer, k, repair, ppl, qa, options=None, record=None, samples=32):
    tasks = {"python-docs-ppl": (ppl, 0.9), "rt-qa": (qa, 0.9)}
    return {"scorer": scorer, "scorer_id": scorer, "k": k, "removed": list(range(1, k + 1)), "repair": repair,
            "calibration": "builtin:python-docs", "samples": samples, "options": options or {},
            "options_text": "", "passed": all(v >= t for v, t in tasks.values()),
            "tasks": {n: {"metric": "m", "base": 1.0, "candidate": v, "retention": v, "threshold": t,
                          "passed": v >= t} for n, (v, t) in tasks.items()},
            "repair_seconds": 150.0, "repair_cpu_seconds": 290.0, "repair_peak_rss_mb": 3000,
            "record": record or {}}


def test_the_page_states_its_date_commit_settings_and_numbers():
    heal = {"steps": 40, "budget_steps": 1000, "stopped_early": False, "stopped_by_budget": True,
            "heldout_kl_before": 0.348, "heldout_kl_after": 0.282, "trainable_parameters": 1_327_104,
            "seconds": 120.0, "objective": "kl", "trainable": "lora"}
    res = {"model": "builtin:smollm2-135m", "profile": "profiles/default.yaml", "num_layers": 30, "seconds": 900,
           "started": "2026-12-03 20:40 UTC", "commit": "abc123def456", "command": "python benchmarks/repair.py",
           "machine": {"cpu_count": 2}, "versions": {"torch": "2.13.0"},
           "settings": {"heal_steps": 30, "plan": [], "calibration": {"samples": 32, "seq_len": 256}},
           "rows": [_row("block influence", 7, "linear", 0.534, 0.796),
                    _row("patch residual", 1, "linear", 0.935, 1.0),
                    _row("block influence", 7, "linear+lora", 0.596, 0.764, {"loss": "kl", "minutes": 2.0, "steps": 1000},
                         {"lora": heal})]}
    page = B.render(res)
    assert "on 2026-12-03 20:40 UTC at commit `abc123def456`" in page and "32 × 256 tokens" in page
    assert "| patch residual | python-docs | 1 | linear | **0.935** | **1.000** | 0.935 | pass |" in page
    assert "| block influence | python-docs | 7 | linear+lora (kl, 2 min) | 0.596 | 0.764 | 0.596 | fail | 2.5 |" in page
    assert "| block influence | 7 | linear+lora (kl, 2 min) | kl | LoRA, every kept block | 40/1000 | time budget |" in page
    assert "1,327,104" in page


def test_plan_options_are_checked():
    assert B.parse_options("loss=kl,minutes=2,steps=1000,samples=8") == {"loss": "kl", "minutes": 2.0, "steps": 1000,
                                                                          "samples": 8}
    with pytest.raises(SystemExit, match="unknown plan option 'speed'"):
        B.parse_options("speed=2")
