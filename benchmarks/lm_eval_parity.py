"""Our multiple-choice kind against lm-evaluation-harness on the same work, per question, in one run.

    python benchmarks/lm_eval_parity.py [--out out/lm-eval-parity] [--remove 7]

On the built-in SmolLM2-135M and a cut of it (block influence, ``--remove`` layers: 30 -> 23 by
default), ``builtin:rt-qa`` (72 questions, 4 choices) is evaluated three ways:
- ours: ``kind: multiple-choice`` (each context runs once, its KV cache serves every choice);
- ours without KV sharing: the same (context, choice) token pairs, one full forward per pair
  (what the KV sharing buys, on the same engine);
- lm-eval 0.4.13: ``kind: lm-eval`` on ``profiles/lm-eval/avss_rt_qa.yaml`` (same prompt, choices and
  target delimiter), the harness's HFLM around the same loaded model.
Prints acc / acc_norm / acc_bytes of each, how many answers agree per question, the largest
log-likelihood difference, and the wall time of each (one run; the machine is shared: compare ratios).
Run from the repository root (the harness task's data path is relative to it).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402,F401  (offline environment defaults)

ROOT = Path(__file__).resolve().parents[1]


def unshared_loglikelihoods(model, pairs, batch_size: int) -> list[float]:
    """log p(continuation | context) with one full forward per (context, continuation): no KV reuse."""
    import torch
    import torch.nn.functional as F

    from compressor.sources.data import pad_right

    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        x, m = pad_right([c + t for c, t in chunk])
        with torch.inference_mode():
            lp = F.log_softmax(model(input_ids=x, attention_mask=m, use_cache=False).logits.float(), dim=-1)
        for j, (c, t) in enumerate(chunk):
            pos = torch.arange(len(c) - 1, len(c) + len(t) - 1)
            out.append(float(lp[j, pos, torch.tensor(t)].sum()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/lm-eval-parity")
    ap.add_argument("--remove", type=int, default=7)
    args = ap.parse_args()

    import os

    os.chdir(ROOT)
    from compressor.profiles import load_profile
    from compressor.sources.models import load_model
    from compressor.verify.api import check_task_data
    from compressor.verify.kinds.base import kind
    from compressor.verify.loglik import encode_pair

    profile = load_profile("profiles/lm-eval.yaml")
    (h_task, h_items, h_shots), (o_task, o_items, o_shots) = check_task_data(profile)[0]
    cut = Path(args.out) / f"cut-{args.remove}"
    if not cut.exists():
        subprocess.run([sys.executable, "-m", "compressor", "prune", "builtin:smollm2-135m", "--num-layers",
                        str(args.remove), "--method", "block-influence", "--profile", "profiles/default.yaml",
                        "--out", str(cut)], check=True)
    rows = []
    for label, spec in (("SmolLM2-135M (30 layers)", "builtin:smollm2-135m"),
                        (f"cut ({30 - args.remove} layers, block influence)", str(cut))):
        loaded = load_model(spec)
        t = time.perf_counter()
        ours = kind("multiple-choice").evaluate(loaded, o_task, o_items, o_shots, profile, None)
        t_ours = time.perf_counter() - t
        pairs = [encode_pair(loaded.tokenizer, o_task.template.format(context=e.get("context", ""),
                                                                       question=e["question"]), " " + c)
                 for e in o_items for c in e["choices"]]
        t = time.perf_counter()
        plain = unshared_loglikelihoods(loaded.model, pairs, profile.eval.batch_size)
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        theirs = kind("lm-eval").evaluate(loaded, h_task, h_items, h_shots, profile, None)
        t_theirs = time.perf_counter() - t
        same = {k: sum(a[k] == b[k] for a, b in zip(ours.records, theirs.records))
                for k in ("pred", "pred_norm", "pred_bytes")}
        ll_ours = [v for r in ours.records for v in r["lls"]]
        ll_theirs = [v for r in theirs.records for v in r["lls"]]
        rows.append({"model": label, "ours": ours.metrics, "lm-eval": theirs.metrics, "same": same,
                     "n": len(ours.records), "pairs": len(pairs),
                     "dll_lm_eval": max(abs(a - b) for a, b in zip(ll_ours, ll_theirs)),
                     "dll_unshared": max(abs(a - b) for a, b in zip(ll_ours, plain)),
                     "s_ours": t_ours, "s_unshared": t_plain, "s_lm_eval": t_theirs})

    print("\n| model | metric | ours | lm-eval | same answer (of n) |")
    print("|---|---|---|---|---|")
    for r in rows:
        for m, k in (("acc", "pred"), ("acc_norm", "pred_norm"), ("acc_bytes", "pred_bytes")):
            print(f"| {r['model']} | {m} | {r['ours'][m]:.4f} | {r['lm-eval'][m]:.4f} | {r['same'][k]} / {r['n']} |")
    print("\n| model | (context, choice) pairs | max abs Δ log-lik vs lm-eval | vs ours unshared | "
          "ours s | ours unshared s | lm-eval s | lm-eval / ours | unshared / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['pairs']} | {r['dll_lm_eval']:.1e} | {r['dll_unshared']:.1e} | {r['s_ours']:.1f} | "
              f"{r['s_unshared']:.1f} | {r['s_lm_eval']:.1f} | {r['s_lm_eval'] / r['s_ours']:.2f}x | "
              f"{r['s_unshared'] / r['s_ours']:.2f}x |")
    ok = all(all(v == r["n"] for v in r["same"].values()) and all(r["ours"][m] == r["lm-eval"][m] for m in ("acc", "acc_norm", "acc_bytes"))
             for r in rows)
    print(f"\nparity: {'every answer and metric equal' if ok else 'DIFFERENT (see above)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    import sys as _sys

    from _common import ResultsPage

    # docs/results/lm-eval-parity.md: this run's output, dated, at its commit (not for smoke or child runs)
    _full = not {"--quick", "--child", "--exports-only"} & set(_sys.argv)
    with ResultsPage("lm-eval-parity", "Our multiple-choice kind against lm-evaluation-harness", enabled=_full):
        raise SystemExit(main())
