"""Render RESULTS.md and its plots from the results dict that ``benchmarks/scorers.py`` measures.

Kept apart from the measuring so it can be tested on a small synthetic dict (tests/test_results_doc.py).
Every number and every conclusion in the document is computed here from the results: nothing
is written by hand, so the text stays true when the numbers change.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

DATA_NOTES = {
    ("builtin:python-docs", "calibration"): "the first half of Python's de-duplicated reference topics",
    ("builtin:python-docs", "evaluation"): "the second half of the same topics (no topic is in both halves)",
    ("builtin:rt-plots", "calibration"): "the first half of the Rotten Tomatoes plot summaries",
    ("builtin:rt-qa", None): "72 project-written questions over plot summaries from the second (evaluation) "
                             "half of builtin:rt-plots, so no calibration summary is asked about",
    ("builtin:rt-sentiment", None): "the test split of the Rotten Tomatoes snippets (the first 2,000 in sha256 "
                                    "order); fine-tuning and few-shot examples come from the train split",
}


# ------------------------------------------------------------------------------- data access

def groups(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Scorers as the tables show them: random seeds become one group (mean and spread)."""
    out: dict[str, dict[str, Any]] = {}
    for s in model["scorers"]:
        g = out.setdefault(s["group"], {"id": s["group"], "members": [], "passes": s["passes"]})
        g["members"].append(s)
    for g in out.values():
        n = len(g["members"])
        g["label"] = g["members"][0]["label"] if n == 1 else f"random (mean of {n} seeds)"
    return list(out.values())


def task_names(model: dict[str, Any]) -> list[str]:
    return [t["name"] for t in model["profile"]["tasks"]]


def cell(model: dict[str, Any], sid: str, k: int) -> dict[str, Any]:
    return model["grid"][sid][str(k)]


def worst(model: dict[str, Any], sid: str, k: int) -> float:
    """The gate's view of a cut: its lowest task retention."""
    return min(r["retention"] for r in cell(model, sid, k)["tasks"].values())


def group_values(model: dict[str, Any], g: dict[str, Any], k: int, task: str | None) -> list[float]:
    """Retention of every member of ``g`` at cut ``k``: on ``task``, or the worst task (None)."""
    return [worst(model, s["id"], k) if task is None else cell(model, s["id"], k)["tasks"][task]["retention"]
            for s in g["members"]]


def group_mean(model: dict[str, Any], g: dict[str, Any], k: int, task: str | None = None) -> float:
    return statistics.mean(group_values(model, g, k, task))


def group_best_cut(model: dict[str, Any], g: dict[str, Any]) -> float:
    return statistics.mean(model["search"][s["id"]]["best"] for s in g["members"])


def pct(k: float, n: int) -> str:
    return f"{100 * k / n:.0f} %"


def num(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1e6:
        return f"{v:.2e}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def layers(ids: list[int]) -> str:
    """[13, 14, 15, 16, 17, 25, 26] -> '13–17, 25, 26'."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs) or "—"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


# ------------------------------------------------------------------------------- conclusions

def _best(gs: list[dict[str, Any]], value: Any) -> tuple[dict[str, Any], str]:
    """The group with the highest ``value`` and the labels of every group tied with it (e.g. the same cut)."""
    top = max(gs, key=value)
    return top, ", ".join(g["label"] for g in gs if abs(value(g) - value(top)) < 1e-9)


def _failing(model: dict[str, Any], g: dict[str, Any], k: int, gate: float) -> list[dict[str, Any]]:
    vals = {t: group_mean(model, g, k, t) for t in task_names(model)}
    return [{"task": t, "retention": v} for t, v in vals.items() if v < gate]


def conclusions(results: dict[str, Any]) -> dict[str, Any]:
    """Facts the "What this means" text states, computed from the results."""
    gate = results["gate"]
    facts: dict[str, Any] = {"models": [], "gate": gate}
    all_groups: dict[str, dict[str, Any]] = {}
    for m in results["models"]:
        gs = groups(m)
        L = m["num_layers"]
        claims = []
        for k in m["claim_cuts"]:
            per_group = {g["id"]: {"label": g["label"], "worst": group_mean(m, g, k),
                                   "passed": sum(cell(m, s["id"], k)["passed"] for s in g["members"]),
                                   "members": len(g["members"])} for g in gs}
            kept, lost = [], []
            for t in task_names(m):
                best_g, labels = _best(gs, lambda g: group_mean(m, g, k, t))
                entry = {"task": t, "best": labels, "retention": group_mean(m, best_g, k, t),
                         "n_kept": sum(group_mean(m, g, k, t) >= gate for g in gs), "n": len(gs)}
                (kept if entry["retention"] >= gate else lost).append(entry)
            top, top_labels = _best(gs, lambda g: group_mean(m, g, k))
            claims.append({"k": k, "share": pct(k, L), "holds_for": [v["label"] for v in per_group.values()
                                                                      if v["passed"] == v["members"]],
                           "groups": per_group, "kept": kept, "lost": lost,
                           "top": {"label": top_labels, "worst": group_mean(m, top, k),
                                   "failing": _failing(m, top, k, gate)}})
        best_k = max(m["search"][s["id"]]["best"] for s in m["scorers"])
        smallest = min(m["cuts"])
        closest, closest_labels = _best(gs, lambda g: group_mean(m, g, smallest))
        facts["models"].append({
            "key": m["key"], "name": m["name"], "L": L, "claims": claims, "largest": best_k,
            "largest_by": [s["label"] for s in m["scorers"] if m["search"][s["id"]]["best"] == best_k] if best_k else [],
            "max_remove": m["max_remove"],
            "closest": {"k": smallest, "label": closest_labels, "failing": _failing(m, closest, smallest, gate)}})
        for g in gs:
            a = all_groups.setdefault(g["id"], {"id": g["id"], "label": g["label"], "passes": g["passes"],
                                                "share": 0.0, "cuts": [], "worst": [], "cost": []})
            a["share"] += group_best_cut(m, g) / L
            a["cuts"].append(f"{num(group_best_cut(m, g))} of {L} ({m['name']})")
            a["worst"].append(statistics.mean(group_mean(m, g, k) for k in m["cuts"]))
            a["cost"] += [f"{m['speed'][s['id']]['seconds'] / m['speed']['forward']['seconds']:.1f}× ({m['name']})"
                          for s in g["members"] if s["id"] in m["speed"]]
    ranking = list(all_groups.values())
    for a in ranking:
        a["worst"] = statistics.mean(a["worst"])
    # the pick: what keeps every model alive over every cut size; ties go to the larger passing cuts
    ranking.sort(key=lambda a: (-round(a["worst"], 9), -a["share"]))
    facts["ranking"] = ranking
    facts["pick"] = ranking[0]
    facts["one_pass_pick"] = next((a for a in ranking if a["passes"] == "1"), None)
    return facts


def _tasks_text(entries: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['task']} {e['retention']:.2f}" for e in entries)


def what_this_means(results: dict[str, Any]) -> list[str]:
    f = conclusions(results)
    gate = f["gate"]
    out = []
    for m in f["models"]:
        for c in m["claims"]:
            head = f"- **{m['name']}, {c['k']} of {m['L']} layers removed ({c['share']}).** "
            if c["holds_for"]:
                head += (f"The claim holds for {', '.join(c['holds_for'])}: every task keeps at least "
                         f"{gate:.0%} of the base model's score.")
            else:
                t = c["top"]
                head += (f"The claim does not hold for any scorer: the best on its worst task ({t['label']}) "
                         f"keeps {_tasks_text(t['failing'])}.")
            for e in c["kept"]:
                verb = "keeps" if e["n_kept"] == 1 else "keep"
                head += (f" {e['task']}: {e['n_kept']} of {e['n']} scorers {verb} ≥ {gate:.0%} "
                         f"(best {e['best']}, {e['retention']:.2f}).")
            for e in c["lost"]:
                head += f" {e['task']}: no scorer keeps {gate:.0%} (best {e['best']}, {e['retention']:.2f})."
            g = c["groups"]
            if {"avss-official", "avss-robust", "random"} <= set(g):
                off, rob, rnd = g["avss-official"]["worst"], g["avss-robust"]["worst"], g["random"]["worst"]
                head += (f" Worst-task retention: official AVSS {off:.2f}, robust AVSS {rob:.2f}, random "
                         f"{rnd:.2f} (mean of {g['random']['members']} seeds); official AVSS is "
                         f"{'below' if off < rnd else 'at or above'} random here.")
            out.append(head)
        if m["largest"]:
            out.append(f"- **{m['name']}: the largest cut that passes the {gate:.2f} gate** (search up to "
                       f"{m['max_remove']} layer(s)) is {m['largest']} layer(s) ({pct(m['largest'], m['L'])}), "
                       f"by {', '.join(m['largest_by'])}.")
        else:
            c = m["closest"]
            out.append(f"- **{m['name']}: no cut passes the {gate:.2f} gate**, not even one layer, with any scorer. "
                       f"Closest at {c['k']} layer(s): {c['label']}, keeping {_tasks_text(c['failing'])}.")
    ranking, p, one = f["ranking"], f["pick"], f["one_pass_pick"]
    pick = (f"- **Best scorer by this measure: {p['label']}** (`avss`'s default stays robust AVSS, the paper's idea "
            f"without its collapse; pick this one with --method). Rule: the highest worst-task retention, averaged "
            f"over every cut size of a model and then over the models (ties: the larger passing cuts). {p['label']}: mean "
            f"worst-task retention {p['worst']:.2f}; largest passing cuts {', '.join(p['cuts'])}")
    pick += f"; scoring costs {', '.join(p['cost'])} a plain forward pass." if p["cost"] else "."
    nxt = ranking[1] if len(ranking) > 1 else None
    if one is not None and one["id"] != p["id"]:
        why = {"L + 1": "runs the model once per layer plus once",
               "iterative": "re-measures every remaining block after each removal (a round per removed layer)"
               }.get(p["passes"], "does not read the model")
        pick += (f" {p['label']} {why}; the best single-pass scorer, {one['label']}, is "
                 f"{p['worst'] - one['worst']:.2f} behind (largest passing cuts {', '.join(one['cuts'])}; "
                 f"scoring costs {', '.join(one['cost'])} a forward pass).")
    if nxt is not None and nxt is not one:
        pick += f" Runner-up: {nxt['label']}, {p['worst'] - nxt['worst']:.2f} behind."
    out.append(pick)
    out.append("- These are two small models, one calibration set each, no healing (no fine-tuning after "
               "removal), and a gate on every task: the numbers say what happens on them, not in general.")
    return out


# ---------------------------------------------------------------------------------- sections

def header(results: dict[str, Any]) -> list[str]:
    mc, v = results["machine"], results["versions"]
    vers = ", ".join(f"{k} {val}" for k, val in v.items())
    lines = ["# Results: which layer scorer keeps the model alive", "",
             f"Generated by `{results['command']}` on {results['started']}"
             + (f" at commit `{results['commit']}`" if results.get("commit") else "")
             + "; not edited by hand: rerun `make results` (or the command) to regenerate this file, its plots and "
             "`results/results.json`.", ""]
    if results["quick"]:
        lines += ["**Smoke run (`--quick`)**: fewer scorers and cut sizes, smaller tasks and calibration. "
                  "Its numbers are not results.", ""]
    load = f"load average {mc['load_average_start'][0]:.2f} at the start, {mc['load_average_end'][0]:.2f} at the end"
    lines += [f"- Machine: {mc['cpu_count']} CPU cores ({mc['cpu']}), {mc['memory_gb']} GB RAM, no GPU; {load} "
              "(shared machine: timings are noisy).",
              f"- Versions: {vers}.",
              f"- Total wall time: **{results['total_seconds'] / 60:.1f} min** for everything below "
              "(per model and phase under \"Run details\").", ""]
    return lines


def setup(results: dict[str, Any]) -> list[str]:
    lines = ["## Setup", ""]
    rows = []
    for m in results["models"]:
        p = m["profile"]
        rows.append([m["name"], f"`{m['spec']}`", str(m["num_layers"]), f"{m['parameters'] / 1e6:.1f} M",
                     f"`{p['path']}`", ", ".join(t["name"] for t in p["tasks"]),
                     ", ".join(f"{k} ({pct(k, m['num_layers'])})" for k in m["cuts"])])
    lines += table(["model", "spec", "layers", "parameters", "profile", "tasks", "layers removed"], rows) + [""]
    for m in results["models"]:
        c = m["classifier"]
        if c:
            variant = ("the small variant (`--minilm small`, the default with `--quick`)" if m["spec"].endswith("-small")
                       else "the full classifier")
            lines.append(f"- {m['name']}: {variant}, `{m['spec']}`: all-MiniLM-L6-v2 fine-tuned once ({c['epochs']} "
                         f"epoch, {c['seconds']:.0f} s when it was built) on {c['train_size']:,} Rotten Tomatoes "
                         f"training snippets; accuracy {c['accuracy']:.3f} on {c['eval_size']} test snippets. "
                         f"Getting it ready took {m['seconds']['prepare']:.0f} s in this run (building it, or "
                         "loading it from `$AVSS_CACHE`).")
    lines += ["", "Calibration (what the scorers see) and evaluation (what the gate measures) never share text:", ""]
    for m in results["models"]:
        cal = m["profile"]["calibration"]
        size = (f"{cal['samples']} documents of up to {cal['seq_len']} tokens" if cal.get("pack") is False
                else f"{cal['samples']} × {cal['seq_len']} tokens")
        fewer = [f"{x['label']} sees the first {x['samples']}" for x in m["scorers"]
                 if x.get("samples") and x["samples"] < cal["samples"]]
        parts = [f"calibration {size} from `{cal['source']}`, "
                 f"{DATA_NOTES.get((cal['source'], 'calibration'), 'the whole source')}"
                 + (f" ({', '.join(fewer)}, to keep the run near an hour: SLEB runs the LM head once per candidate, "
                    "round and batch)" if fewer else "")]
        for t in m["profile"]["tasks"]:
            split = t["split"] or ("evaluation" if t["data"] in ("builtin:python-docs", "builtin:rt-plots") else None)
            note = DATA_NOTES.get((t["data"], split), "a local file")
            size = f"{t['n']:,} {'tokens' if t['kind'] == 'perplexity' else 'examples'}"
            shots = f", {t['few_shot']}-shot" if t.get("few_shot") else ""
            parts.append(f"`{t['name']}` ({t['kind']}, {t['metric']}, {size}{shots}): {note}")
        lines.append(f"- {m['name']}: " + "; ".join(parts) + ".")
    warned = [w for m in results["models"] for w in m["verify_warnings"]]
    lines += ["", f"verify also checks this by hashing every evaluation text against the calibration documents: "
              f"{len(warned)} overlap warning(s) in this run" + (f" ({'; '.join(warned)})." if warned else "."), "",
              f"Retention = candidate / base for accuracies, base / candidate for perplexity (so 1.0 = unchanged, "
              f"above 1 = better). A cut passes when **every** task keeps ≥ {results['gate']:.2f}. Layers are "
              "removed as scored (no protected layers), with no healing. Random scores are shown as the mean "
              "of their seeds with the spread (min–max) in brackets.", ""]
    return lines


def retention_tables(results: dict[str, Any]) -> list[str]:
    gate = results["gate"]
    lines = ["## Retention per scorer, cut size and task", ""]
    for m in results["models"]:
        lines += [f"### {m['name']}", "", f"![retention against layers removed](results/{m['key']}-retention.png)", ""]
        for t in m["profile"]["tasks"]:
            lines += [f"**{t['name']}** ({t['metric']}; base model {num(t['base'])}). Cells: retention "
                      "(candidate value); bold = passes.", ""]
            rows = []
            for g in groups(m):
                row = [g["label"]]
                for k in m["cuts"]:
                    vals = group_values(m, g, k, t["name"])
                    mean = statistics.mean(vals)
                    if len(vals) > 1:
                        txt = f"{mean:.3f} ({min(vals):.3f}–{max(vals):.3f})"
                    else:
                        txt = f"{mean:.3f} ({num(cell(m, g['members'][0]['id'], k)['tasks'][t['name']]['candidate'])})"
                    row.append(f"**{txt}**" if mean >= gate else txt)
                rows.append(row)
            lines += table(["scorer", *(f"{k} removed" for k in m["cuts"])], rows) + [""]
    return lines


def removed_tables(results: dict[str, Any]) -> list[str]:
    lines = ["## Which layers each scorer removed", "", "0-based indices in the original numbering.", ""]
    for m in results["models"]:
        rows = [[s["label"], *(layers(cell(m, s["id"], k)["removed"]) for k in m["cuts"])] for s in m["scorers"]]
        lines += [f"**{m['name']}**", ""] + table(["scorer", *(f"{k} removed" for k in m["cuts"])], rows) + [""]
    return lines


def search_tables(results: dict[str, Any]) -> list[str]:
    gate = results["gate"]
    lines = [f"## Largest cut that passes {gate:.2f} on every task", "",
             "From `compressor.run.search.search_method` (what `avss run --search` does): gallop 1, 2, 4, ... "
             "then bisect, tasks in profile order, stopping at the first failing task; results come from the "
             "same verify cache as the tables above.", ""]
    for m in results["models"]:
        rows = []
        for s in m["scorers"]:
            sr = m["search"][s["id"]]
            best = sr["best"]
            chosen = next((c for c in sr["candidates"] if c["k"] == best), None)
            tried = ", ".join(f"{c['k']}{'✓' if c['passed'] else '✗'}" for c in sr["candidates"])
            rets = ", ".join(f"{t} {v:.3f}" for t, v in chosen["retention"].items()) if chosen else "—"
            rows.append([s["label"], f"{best} ({pct(best, m['num_layers'])})" if best else "none",
                         layers(chosen["removed"]) if chosen else "—", rets, tried])
        lines += [f"**{m['name']}** (search up to {m['max_remove']} layer(s))", ""]
        lines += table(["scorer", "largest passing cut", "removed", "retention at that cut", "cuts tried (✓ pass)"],
                       rows) + [""]
    return lines


def speed_tables(results: dict[str, Any]) -> list[str]:
    lines = ["## Speed", "", "### Scoring cost", "",
             "Each measurement in a fresh process (one pass, after a one-batch warm-up), on the calibration "
             "batches of the model's profile. The reference is the model's plain forward pass with its head; "
             "AVSS, block influence and angular run the bare body under hooks (no head), leave-one-out runs "
             "the full model once per layer plus once, SLEB one round per removed layer (the current model "
             "once, then every remaining block skipped in turn, each from the cached state entering it: the "
             "blocks after it plus the head). A scorer run on fewer calibration tokens (named with its token count) "
             "is compared per token. Peak RSS is sampled every 2 ms.", ""]
    for m in results["models"]:
        sp = m["speed"]
        fwd = sp["forward"]
        rows = [["plain forward (reference)", "1", f"{fwd['seconds']:.2f}", "1.00", f"{fwd['peak_rss_mb']:.0f}", "1.00"]]
        for s in m["scorers"]:
            if s["id"] in sp:
                r = sp[s["id"]]
                # per token: a scorer given fewer calibration samples (SLEB) is compared at the same work per token
                scale = fwd["tokens"] / r["tokens"] if r.get("tokens") else 1.0
                label = s["label"] + (f" ({r['tokens']:,} tokens)" if r.get("tokens") and r["tokens"] != fwd["tokens"] else "")
                rows.append([label, s["passes"], f"{r['seconds']:.2f}", f"{r['seconds'] * scale / fwd['seconds']:.2f}",
                             f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / fwd['peak_rss_mb']:.2f}"])
            elif s["group"] != "random" or s["seed"] == 0:
                rows.append([s["group"] if s["group"] == "random" else s["label"], s["passes"], "≈ 0", "—", "—",
                             "— (no forward pass)"])
        lines += [f"**{m['name']}** ({fwd['tokens']:,} calibration tokens in {fwd['batches']} batch(es), "
                  f"{sp['threads']} threads)", ""]
        lines += table(["scorer", "forward passes", "time (s)", "× forward", "peak RSS (MB)", "× forward"], rows) + [""]
    lines += ["### ONNX Runtime (CPU)", "",
              "Exported with `compressor.export.convert.export_model` (parity-checked against PyTorch) and measured with "
              "`compressor.export.bench.bench_models`, each model in a fresh process, models alternated. Latency depends on "
              "the number of layers only, so one cut per size is measured and stands for every scorer's cut of "
              "that size. Ideal = kept-layer share; vs ideal = latency ratio / ideal (1.0 = the cut's full gain).", ""]
    for m in results["models"]:
        o = m["onnx"]
        s = o["settings"]
        what = ("decode ms/token (p50)" if o["kind"] == "decoder" else "forward ms/batch (p50)")
        rows = []
        for r in o["rows"]:
            if not r["removed"]:
                label = "full model"
            else:
                names = {x["id"]: x["label"] for x in m["scorers"]}
                by = ", ".join(names[x] for x in r["scorers"])
                label = (f"**fallback (no cut passes): {len(r['removed'])}-layer {by} cut** {layers(r['removed'])}"
                         if r["fallback"] else f"passing {len(r['removed'])}-layer cut ({by}) {layers(r['removed'])}")
            rows.append([label, str(r["layers"]), f"{r['latency_ms_p50']:.2f}", f"{r['latency_ratio']:.2f}",
                         f"{r['layer_ratio']:.2f}", f"{r['latency_ratio'] / r['layer_ratio']:.2f}",
                         f"{r['rss_peak_mb']:.0f}", f"{r['rss_peak_ratio']:.2f}", f"{r['file_mb']:.0f}"])
        lines += [f"**{m['name']}** ({o['provider']}, batch {s['batch_size']}, prompt {s['prompt_len']}"
                  + (f", {s['new_tokens']} new tokens" if o["kind"] == "decoder" else "")
                  + f", {s['threads']} threads, {s['runs']} runs × {s['rounds']} rounds)", ""]
        lines += table(["model", "layers", what, "× full", "ideal", "vs ideal", "peak RSS (MB)", "× full",
                        "files (MB)"], rows) + [""]
    return lines


def run_details(results: dict[str, Any]) -> list[str]:
    lines = ["## Run details", ""]
    rows = []
    for m in results["models"]:
        s, e = m["seconds"], m["evaluations"]
        rows.append([m["name"], *(f"{s[k]:.0f}" for k in ("prepare", "scoring", "grid", "search", "onnx")),
                     str(e["cuts"]), f"{e['computed']} / {e['cached']}"])
    lines += table(["model", "prepare (s)", "scoring (s)", "grid (s)", "search (s)", "ONNX (s)", "distinct cuts",
                    "candidate task evaluations computed / from cache"], rows) + [""]
    lines += [f"The run started with {results['verify_cache_entries_at_start']} result(s) in the verify cache "
              "(0: every evaluation above was computed in this run).", ""]
    for m in results["models"]:
        for s in m["scorers"]:
            for w in s["warnings"]:
                lines.append(f"- {m['name']}, {s['label']}: {w}")
    return lines + [""]


def to_markdown(results: dict[str, Any]) -> str:
    lines = header(results) + ["## What this means", ""] + what_this_means(results) + [""]
    lines += setup(results) + retention_tables(results) + removed_tables(results) + search_tables(results)
    lines += speed_tables(results) + run_details(results)
    return "\n".join(lines).rstrip() + "\n"


# -------------------------------------------------------------------------------------- plots

def plot_retention(model: dict[str, Any], gate: float, path: Path) -> None:
    """One panel per task: retention against layers removed, one line per scorer, random as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = task_names(model)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.0, 4.4 * len(tasks)), 3.8), squeeze=False)
    ks = model["cuts"]
    for ax, t in zip(axes[0], tasks):
        for g in groups(model):
            vals = [group_values(model, g, k, t) for k in ks]
            line, = ax.plot(ks, [statistics.mean(v) for v in vals], marker="o", label=g["label"])
            if len(g["members"]) > 1:
                ax.fill_between(ks, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
        ax.axhline(gate, linestyle="--", color="grey", linewidth=1, label=f"gate {gate:.2f}")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("layers removed")
        ax.set_ylabel("retention")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{model['name']} ({model['num_layers']} layers): retention against layers removed", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def render(results: dict[str, Any], out: str | Path) -> Path:
    """Write OUT/RESULTS.md and OUT/results/<model>-retention.png; returns the Markdown path."""
    out = Path(out)
    for m in results["models"]:
        plot_retention(m, results["gate"], out / "results" / f"{m['key']}-retention.png")
    doc = out / "RESULTS.md"
    doc.write_text(to_markdown(results), encoding="utf-8")
    return doc
