"""The streamed GenAI export against ONNX Runtime GenAI's own builder, on Llama-3-8B-shaped checkpoints.

Rows (each a separate process; peak RSS is the process's own VmHWM, wall and CPU seconds measured around it):
- ``llama3-8b-6blk`` (3.2 GB bf16): the builder's CLI (int4, the same options ``avss export --exporter genai
  --quantize int4`` passes) and ``avss export --exporter genai --quantize int4 --stream``; the two folders are
  compared file by file.
- ``llama3-8b-24blk`` (the size of a 24-of-32-layer cut of the 8 B shape): the in-memory export's up-front
  refusal, the streamed int4 export, and a decode bench of its artifact (ONNX Runtime GenAI's Generator:
  prompt 128 tokens, 16 new, 2 threads), each peak also as a share of the whole 32-block 8 B checkpoint.
Writes ``docs/results/genai-stream.md``.

``--e2e``: the whole pipeline on the 32-block 8 B checkpoint (16 GB bf16) on this machine, streamed: ``avss run
--stream --exporter genai --quantize int4 --repair linear --num-layers 8 --skip-bench`` (score, cut, linear patch,
perplexity verify, the int4 export, the artifact's perplexity verify), then the full model's int4 export and
``avss bench`` of full against slim. Each command's wall and peak RSS; the run's stages from ``run.json`` (each
stage's own peak). Writes ``docs/results/genai-stream-8b.md``.

    python benchmarks/genai_stream.py [--quick | --e2e] [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import dataclasses
import filecmp
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import SHAPES, Shape, build_checkpoint, checkpoint_key, default_work, measure  # noqa: E402

from _common import ResultsPage  # noqa: E402

GB = 1e9
BASE = SHAPES["llama3-8b-32blk"]
SMALL = dataclasses.replace(BASE, name="llama3-8b-6blk", layers=6)
CUT = dataclasses.replace(BASE, name="llama3-8b-24blk", layers=24)
QUICK = dataclasses.replace(SHAPES["tinyllama-1.1b"], name="tinyllama-4blk", layers=4)
WIDE = SHAPES["llama3-70b-2blk"]
SLACK = 1 * GB  # 70 B blocks: peak <= one block + embeddings + 1 GB, as for streamed scoring (scale.py)
GOAL_PEAK = 0.35  # x the 8 B bf16 checkpoint (the goal)
GOAL_WALL = 1.5  # streamed / the builder's own, where the builder fits
DECODE = """
import json, sys, time
import onnxruntime_genai as og
cfg = og.Config(sys.argv[1])
m = og.Model(cfg)
p = og.GeneratorParams(m)
p.set_search_options(max_length=128 + 17)
g = og.Generator(m, p)
g.append_tokens([[1 + (i * 7919) % 30000 for i in range(128)]])
times = []
for _ in range(16):
    t0 = time.perf_counter(); g.generate_next_token(); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"decode_ms_p50": 1000 * times[len(times) // 2]}))
"""


def _threads(folder: Path, n: int = 2) -> None:
    """The builder's genai_config.json names no thread count (docs: edge-export notes): the bench says 2."""
    import json

    f = folder / "genai_config.json"
    cfg = json.loads(f.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = n
    f.write_text(json.dumps(cfg, indent=4))


def _same(a: Path, b: Path) -> str:
    names = sorted({p.name for p in a.iterdir() if p.is_file()} & {p.name for p in b.iterdir() if p.is_file()}
                   - {"export.json", "config.json", "generation_config.json"})
    differ = [n for n in names if not filecmp.cmp(a / n, b / n, shallow=False)]
    return f"{len(names) - len(differ)} of {len(names)} files byte-equal" + (f" (differ: {', '.join(differ)})" if differ else "")


def row(label: str, wall: float, peak: int, cpu: float, code: int, ref: Shape, extra: str = "") -> dict:
    print(f"| {label} | {wall:.1f} | {cpu:.0f} | {peak / GB:.2f} | {peak / ref.bytes:.3f} | {peak / BASE.bytes:.3f} "
          f"| exit {code}{'; ' + extra if extra else ''} |")
    return {"wall": wall, "peak": peak, "cpu": cpu, "code": code}


PROFILE = Path(__file__).resolve().parent / "scale_profile.yaml"


def end_to_end(work: Path, logs: Path, keep: bool) -> None:
    """The 8 B pipeline, streamed. ``--skip-bench`` in the run, then the bench by hand: the run's cut/ and model/
    (12.6 GB each), its int4 artifact, the full model's (with their spools) and the checkpoint do not fit this
    machine's disk together, so the plain cut/ (kept by a repaired run for comparison) is removed first."""
    import json

    src, new = build_checkpoint(BASE, work / checkpoint_key(BASE, 10**9))
    run_dir, full = work / "e2e-run", work / "e2e-full-int4"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(full, ignore_errors=True)
    print(f"Checkpoint: {BASE.name}, {BASE.layers} blocks, {BASE.bytes / GB:.1f} GB bf16 (random weights: the "
          "verdicts say nothing about quality, only that every step runs and what it costs).\n")
    print("| command | wall s | CPU s | peak RSS GB | x the 8 B checkpoint | result |")
    print("|---|---|---|---|---|---|")

    def line(label: str, argv: list[str], log: str, module: str = "compressor") -> int:
        w, p, code, _, cpu = measure(argv, logs / log, None, module=module)
        tail = (logs / log).read_text().strip().splitlines()[-1][:160].replace("|", "/") if code else ""
        print(f"| {label} | {w:.0f} | {cpu:.0f} | {p / GB:.2f} | {p / BASE.bytes:.3f} | exit {code}"
              f"{'; ' + tail if tail else ''} |")
        return code

    code = line("`avss run --stream --exporter genai --quantize int4 --repair linear --num-layers 8 --skip-bench`",
                ["run", str(src), "--stream", "--exporter", "genai", "--quantize", "int4", "--repair", "linear",
                 "--num-layers", "8", "--dtype", "bfloat16", "--profile", str(PROFILE), "--skip-bench",
                 "--out", str(run_dir)], "e2e-run.log")
    if code == 0:
        shutil.rmtree(run_dir / "cut", ignore_errors=True)
        line("`avss export --exporter genai --stream --quantize int4` (the full model: the bench's reference)",
             ["export", str(src), "--exporter", "genai", "--stream", "--quantize", "int4", "--out", str(full)],
             "e2e-full.log")
        line("`avss bench FULL-INT4 SLIM-INT4 --new-tokens 16 --runs 3 --warmup 1 --rounds 1`",
             ["bench", str(full), str(run_dir / "onnx-int4"), "--new-tokens", "16", "--runs", "3", "--warmup", "1",
              "--rounds", "1", "--json", str(logs / "bench.json")], "e2e-bench.log")
    rec = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if rec:
        print("\nThe run's stages (`run.json`: each stage's wall time and this process's peak RSS while it ran):\n")
        print("| stage | status | wall s | peak RSS GB | x the 8 B checkpoint | result |")
        print("|---|---|---|---|---|---|")
        for st in rec.get("stages", []):
            peak = st.get("peak_rss_gb")
            print(f"| {st['name']} | {st['status']} | {st['seconds']:.0f} | {'' if peak is None else f'{peak:.2f}'} | "
                  f"{'' if peak is None else f'{peak * GB / BASE.bytes:.3f}'} | {st['detail'][:150].replace('|', '/')} |")
    bench = logs / "bench.json"
    if bench.is_file():
        ratios = (json.loads(bench.read_text()).get("ratios") or [{}])[0]
        if ratios.get("decode_ratio") is not None:
            print(f"\n- slim int4 / full int4 decode time: {ratios['decode_ratio']:.2f}x (ideal {ratios['layer_ratio']:.2f}: "
                  "the kept layers)")
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(full, ignore_errors=True)
        if new:
            shutil.rmtree(src, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 4-block TinyLlama shape only (minutes, no page)")
    ap.add_argument("--e2e", action="store_true", help="the whole streamed pipeline on the 32-block 8 B checkpoint")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (reused next time)")
    args = ap.parse_args()
    work = args.work or default_work()
    logs = work / "genai-stream-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    if args.e2e:
        with ResultsPage("genai-stream-8b", "The whole pipeline on the 8 B shape, streamed, on this machine"):
            end_to_end(work, logs, args.keep)
        return
    small, cut = (QUICK, QUICK) if args.quick else (SMALL, CUT)
    with ResultsPage("genai-stream", "The streamed GenAI export against the builder", enabled=not args.quick):
        print("| shape, command | wall s | CPU s | peak RSS GB | x its checkpoint | x the 8 B checkpoint | result |")
        print("|---|---|---|---|---|---|---|")
        built = []
        src, new = build_checkpoint(small, work / checkpoint_key(small, 10**9))
        built += [src] if new else []
        a, b = logs / "builder", logs / "streamed"
        w, p, code, _, cpu = measure(
            ["import runpy, sys; sys.argv = ['builder', *sys.argv[1:]]; "
             "runpy.run_module('onnxruntime_genai.models.builder', run_name='__main__')",
             "-i", str(src), "-o", str(a), "-p", "int4", "-e", "cpu", "-c", str(logs / "cache"),
             "--extra_options", *_builder_options()], logs / "builder.log", None, module="-c")
        ref = row(f"{small.name}: the builder's CLI, int4", w, p, cpu, code, small)
        w, p, code, _, cpu = measure(["export", str(src), "--exporter", "genai", "--quantize", "int4", "--stream",
                                      "--out", str(b)], logs / "streamed.log", None)
        same = _same(a, b) if code == 0 and ref["code"] == 0 else "not compared"
        got = row(f"{small.name}: avss export --stream, int4", w, p, cpu, code, small,
                  f"{same}; {_stages(b)}" if code == 0 else same)
        shutil.rmtree(a, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)
        if not args.keep and new:
            shutil.rmtree(src, ignore_errors=True)
        src, new = build_checkpoint(cut, work / checkpoint_key(cut, 10**9))
        built += [src] if new else []
        c = logs / "cut-int4"
        w, p, code, _, cpu = measure(["export", str(src), "--exporter", "genai", "--quantize", "int4", "--no-stream",
                                      "--out", str(logs / "refused")], logs / "refused.log", 300)
        tail = (logs / "refused.log").read_text().strip().splitlines()[-1][:200]
        row(f"{cut.name}: avss export --no-stream, int4", w, p, cpu, code, cut, tail.replace("|", "/"))
        w, p, code, _, cpu = measure(["export", str(src), "--exporter", "genai", "--quantize", "int4", "--stream",
                                      "--out", str(c)], logs / "cut.log", None)
        big = row(f"{cut.name}: avss export --stream, int4", w, p, cpu, code, cut,
                  f"{sum(f.stat().st_size for f in c.glob('model.onnx*')) / GB:.2f} GB int4 folder; {_stages(c)}"
                  if code == 0 else "")
        if code == 0:
            _threads(c)
            w, p, code, _, cpu = measure([DECODE, str(c)], logs / "decode.log", 1200, module="-c")
            lines = [ln for ln in (logs / "decode.log").read_text().splitlines() if ln.startswith("{")]
            row(f"{cut.name}: decode 16 tokens after a 128-token prompt (og.Generator, 2 threads)", w, p, cpu, code,
                cut, lines[-1] if lines else "no result")
        shutil.rmtree(c, ignore_errors=True)
        if not args.keep and new:
            shutil.rmtree(src, ignore_errors=True)
        wide = None
        if not args.quick:
            src, new = build_checkpoint(WIDE, work / checkpoint_key(WIDE, 10**9))
            c = logs / "wide-int4"
            w, p, code, _, cpu = measure(["export", str(src), "--exporter", "genai", "--quantize", "int4", "--stream",
                                          "--out", str(c)], logs / "wide.log", None)
            wide = row(f"{WIDE.name}: avss export --stream, int4", w, p, cpu, code, WIDE,
                       _stages(c) if code == 0 else "")
            shutil.rmtree(c, ignore_errors=True)
            if not args.keep and new:
                shutil.rmtree(src, ignore_errors=True)
        print()
        print(f"- streamed / the builder's wall time on {small.name}: {got['wall'] / ref['wall']:.2f}x "
              f"(CPU time {got['cpu'] / ref['cpu']:.2f}x); peak RSS {got['peak'] / ref['peak']:.2f}x; {same}")
        print(f"- goal: {cut.name} streamed int4 peak <= {GOAL_PEAK}x the 8 B bf16 checkpoint ({BASE.bytes / GB:.1f} GB): "
              f"{'REACHED' if big['code'] == 0 and big['peak'] <= GOAL_PEAK * BASE.bytes else 'NOT reached'} "
              f"({big['peak'] / BASE.bytes:.3f}x, {big['peak'] / GB:.2f} GB)")
        if wide is not None:
            limit = WIDE.block_bytes + WIDE.embedding_bytes + SLACK
            print(f"- goal: {WIDE.name} streamed int4 peak <= one block + embeddings + 1 GB ({limit / GB:.2f} GB): "
                  f"{'REACHED' if wide['code'] == 0 and wide['peak'] <= limit else 'NOT reached'} "
                  f"({wide['peak'] / GB:.2f} GB)")
        print(f"- goal: streamed wall <= {GOAL_WALL}x the builder's on {small.name}: "
              f"{'REACHED' if got['wall'] <= GOAL_WALL * ref['wall'] else 'NOT reached'} ({got['wall'] / ref['wall']:.2f}x)")


def _stages(folder: Path) -> str:
    """The export's own record of each stage's peak (build: the writer; checks: the artifact loaded to run it)."""
    import json

    rec = json.loads((folder / "export.json").read_text())
    return "peak by stage: " + ", ".join(f"{k} {v:.2f} GB" for k, v in (rec.get("peak_rss_gb") or {}).items())


def _builder_options() -> list[str]:
    from compressor.export.genai import PRECISION

    return list(PRECISION["int4"][1])


if __name__ == "__main__":
    main()
