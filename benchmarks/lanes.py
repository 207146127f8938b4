"""The two lanes on the built-in model: the same scores, the same cut, the same gate, in the card's lane
(transformers 4.57, `.venv`) and the current lane (transformers 5, `.venv-current`).

Each lane runs, in its own venv: `avss score` (block influence and robust AVSS: rankings), `avss prune
--method block-influence --num-layers 1 --repair linear` and `avss verify` of that cut against the full model
on profiles/default.yaml (retention per task, the verdict), then `avss export --exporter genai` of that cut (each
lane's builder) and `avss verify` of the GenAI artifact. The page puts the two side by side: rankings
identical or not, each score's largest difference, each retention's difference (the goal: within 1e-4).
Both lanes' venvs must exist (`make install` and `make install LANE=current`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANES = {"card": ROOT / ".venv", "current": ROOT / ".venv-current"}
MODEL = "builtin:smollm2-135m"
PROFILE = str(ROOT / "profiles" / "default.yaml")


def avss(venv: Path, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([str(venv / "bin" / "avss"), *args], env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"avss {' '.join(args)} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1]}")


def lane(name: str, venv: Path, work: Path) -> dict:
    out: dict = {"lane": name}
    version = subprocess.run([str(venv / "bin" / "avss"), "--version"], capture_output=True, text=True).stdout
    out["versions"] = next(line for line in version.splitlines() if line.startswith("versions:"))
    for method in ("block-influence", "avss"):
        f = work / f"{name}-{method}.json"
        avss(venv, "score", MODEL, "--method", method, "--out", str(f), "--force")
        rep = json.loads(f.read_text())
        out[method] = {"ranking": rep["ranking"], "scores": [layer["score"] for layer in rep["layers"]]}
    slim = work / f"{name}-slim"
    avss(venv, "prune", MODEL, "--method", "block-influence", "--num-layers", "1", "--repair", "linear",
         "--profile", PROFILE, "--out", str(slim), "--force")
    rdir = work / f"{name}-report"
    avss(venv, "verify", MODEL, str(slim), "--profile", PROFILE, "--report-dir", str(rdir), "--no-cache")
    rep = json.loads((rdir / "report.json").read_text())
    out["removed"] = json.loads((slim / "compression.json").read_text())["removed_layers"]
    out["passed"] = rep["passed"]
    out["tasks"] = {t["name"]: {"base": t["base"], "candidate": t["candidate"], "retention": t["retention"]}
                    for t in rep["tasks"]}
    # the artifact the demo ships with --exporter genai: each lane's own builder (0.15.2 / 0.18.0), gated the same way
    art = work / f"{name}-genai"
    avss(venv, "export", str(slim), "--exporter", "genai", "--out", str(art), "--force")
    gdir = work / f"{name}-genai-report"
    avss(venv, "verify", MODEL, str(art), "--profile", PROFILE, "--report-dir", str(gdir), "--no-cache")
    rep = json.loads((gdir / "report.json").read_text())
    out["genai_passed"] = rep["passed"]
    out["genai_parity"] = json.loads((art / "export.json").read_text())["parity"]["max_abs_diff"]
    out["genai_tasks"] = {t["name"]: t["retention"] for t in rep["tasks"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    missing = [str(v) for v in LANES.values() if not (v / "bin" / "avss").exists()]
    if missing:
        print(f"missing venv(s): {', '.join(missing)}; run `make install` and `make install LANE=current`")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        got = {name: lane(name, venv, Path(tmp)) for name, venv in LANES.items()}
    a, b = got["card"], got["current"]
    print(f"card lane: {a['versions']}\n\ncurrent lane: {b['versions']}\n")
    print("## Scores (avss score on the built-in SmolLM2-135M, default calibration)\n")
    print("| scorer | rankings identical | largest score difference |")
    print("|---|---|---|")
    for m in ("block-influence", "avss"):
        diff = max(abs(x - y) for x, y in zip(a[m]["scores"], b[m]["scores"]))
        print(f"| {m} | {'yes' if a[m]['ranking'] == b[m]['ranking'] else 'NO'} | {diff:.2e} |")
    print("\n## The demo's cut, gated (block influence, 1 layer, linear patch; profiles/default.yaml)\n")
    print(f"removed: card {a['removed']}, current {b['removed']}; verdict: card "
          f"{'PASS' if a['passed'] else 'FAIL'}, current {'PASS' if b['passed'] else 'FAIL'}\n")
    print("| task | retention, card | retention, current | difference |")
    print("|---|---|---|---|")
    worst = 0.0
    for t, ra in a["tasks"].items():
        rb = b["tasks"][t]
        d = abs((ra["retention"] or 0) - (rb["retention"] or 0))
        worst = max(worst, d)
        print(f"| {t} | {ra['retention']:.6f} | {rb['retention']:.6f} | {d:.2e} |")
    print("\n## The same cut through --exporter genai (each lane's builder), gated as the artifact\n")
    print(f"verdict: card {'PASS' if a['genai_passed'] else 'FAIL'}, current {'PASS' if b['genai_passed'] else 'FAIL'}; "
          f"parity (max abs diff vs PyTorch): card {a['genai_parity']:.2e}, current {b['genai_parity']:.2e}\n")
    print("| task | retention, card | retention, current | difference |")
    print("|---|---|---|---|")
    for t, ra in a["genai_tasks"].items():
        d = abs((ra or 0) - (b["genai_tasks"][t] or 0))
        worst = max(worst, d)
        print(f"| {t} | {ra:.6f} | {b['genai_tasks'][t]:.6f} | {d:.2e} |")
    same = (a["passed"] == b["passed"] and a["genai_passed"] == b["genai_passed"]
            and all(a[m]["ranking"] == b[m]["ranking"] for m in ("block-influence", "avss")))
    print(f"\nsame verdict and rankings: {'yes' if same else 'NO'}; largest retention difference {worst:.2e} "
          f"(goal: within 1e-4: {'met' if worst <= 1e-4 else 'NOT met'})")
    return 0 if same and worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ResultsPage

    with ResultsPage("lanes", "The card's lane against the current lane (transformers 4.57 vs 5)"):
        raise SystemExit(main())
