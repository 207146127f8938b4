"""Large checkpoints: peak memory and wall time of `avss score`, `prune` and `verify`, in memory and streamed.

Builds synthetic Llama checkpoints at real shapes (random weights, bf16, sharded), runs each command on
them in a child process (`python -m compressor ...`) and reads that child's own peak RSS from the kernel
(``os.wait4``: ``ru_maxrss`` of exactly that child, loading included), then prints, per checkpoint, a
table of wall time, peak RSS and peak RSS over the checkpoint's bytes and over one decoder block's bytes,
and at the end the scale issue's goals as reached / not reached (printed, never asserted).

Shapes (``LlamaForCausalLM``; the tokenizer is the built-in SmolLM2's, 49,152 ids):

- ``tinyllama-1.1b``: hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV heads; the tokenizer's vocabulary
  (TinyLlama's own 32,000 is smaller than the tokenizer, which the loader refuses);
- ``llama3-8b-8blk``: Llama-3-8B's blocks (hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocab 128,256),
  8 of its 32;
- ``--large``: ``llama3-70b-2blk`` (hidden 8192, MLP 28672, 64 heads, 8 KV heads, 2 blocks) and
  ``llama3-8b-32blk`` (all 32 blocks: the real 8 B size);
- ``--quick``: ``tiny`` only (hidden 256, 4 layers), a smoke run of seconds; no page.

Choices, said once:
- the Llama-3 shapes keep the real vocabulary (128,256 rows): the embedding and the LM head weigh what they
  weigh in the real model. The SmolLM2 tokenizer only produces ids < 49,152; the loader's vocabulary check
  accepts an embedding larger than the tokenizer (padding), so nothing is shrunk;
- embeddings are untied (``tie_word_embeddings: false``) as in every Llama 3 and TinyLlama: the LM head is a
  second vocab x hidden matrix (llama3-8b-8blk is 5.6 GB, not the 4.5 GB a tied head would give);
- weights: normal(0, 0.02) drawn straight in bf16 (seeded per tensor: the same shape always gives the same
  bytes), RMSNorm weights 1, so a forward stays finite in bf16; nothing is ever materialised in fp32;
- shards of at most 1 GB (``--shard-mb``), written one at a time with ``safetensors.torch.save_file`` plus a
  ``model.safetensors.index.json`` (a tensor larger than a shard gets a shard of its own, as
  ``save_pretrained`` does): building a 16 GB checkpoint needs one shard in memory, not the model;
- checkpoints live in ``--work`` (default ``$AVSS_CACHE/scale``), one folder per shape keyed by a hash of
  its config and shard size, reused when present; without ``--keep`` what this run built is deleted at the
  end (command outputs always are).

Commands measured (``--stream`` / ``--no-stream`` and ``export --max-memory`` are looked up in the options each
command declares in the ``avss`` app; a mode whose flag this build lacks is a row saying "not available in this
build", and the command then runs once without the flag as the build's default, labelled so):

- ``score --method block-influence --dtype bfloat16 --data builtin:python-docs --samples 16 --seq-len 256
  --batch-size 8``, in memory and streamed (time ratio; the two score files must be identical), and
  ``--method avss --avss-mode robust`` once (streamed where available);
- ``prune --scores F --num-layers 2 --dtype bfloat16``, in memory and streamed (the two written checkpoints
  are compared tensor by tensor), and ``--repair linear`` (streamed where available);
- ``verify BASE CANDIDATE --profile benchmarks/scale_profile.yaml --dtype bfloat16 --no-cache`` (perplexity on
  2,048 held-out tokens; the weights are random, so its verdict, exit 0 pass / 1 fail, is not the point);
- on the 8 B shapes only: ``export --max-memory 24GB``, which should refuse up front with its numbers (it is
  killed after 120 s if it starts exporting instead).

Peak RSS counts every resident page of the child, file-backed ones included (an mmap-ed safetensors file
that has been read is resident). The machine is noisy (2 shared cores): read ratios, not absolutes.

    python benchmarks/scale.py [--quick] [--large] [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ResultsPage  # noqa: E402  (also sets HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM)
from compressor.export.peak_rss import recorded_high_water  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = Path(__file__).resolve().parent / "scale_profile.yaml"
TOKENIZER = "builtin:smollm2-135m"
DATA = "builtin:python-docs"
GB = 1e9
BUILD_VERSION = 1  # bump when the builder writes different bytes for the same shape
DEFAULT_SHARD_MB = 1000
EXPORT_TIMEOUT = 120
BASELINE_CODE = ("import torch, transformers; from transformers import LlamaForCausalLM, AutoTokenizer; "
                 "import compressor.cli.app, compressor.score.api, compressor.verify.api, compressor.prune")


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def block_params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h  # q, o, k, v, MLP, two norms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        heads = 1 if self.tied else 2
        return heads * self.embedding_params + self.layers * self.block_params + self.hidden

    @property
    def bytes(self) -> int:  # bf16
        return 2 * self.params

    @property
    def block_bytes(self) -> int:
        return 2 * self.block_params

    @property
    def embedding_bytes(self) -> int:
        return 2 * self.embedding_params

    def config_dict(self, tokenizer_ids: dict[str, int | None] | None = None) -> dict:
        ids = tokenizer_ids or {}
        return dict(hidden_size=self.hidden, intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                    num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
                    vocab_size=self.vocab, rope_theta=self.rope_theta, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, tie_word_embeddings=self.tied, hidden_act="silu", attention_bias=False,
                    mlp_bias=False, initializer_range=0.02, bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"),
                    pad_token_id=ids.get("pad"))


SHAPES = {s.name: s for s in [
    Shape("tiny", 256, 688, 4, 4, 2, 49152, 10000.0),
    Shape("tinyllama-1.1b", 2048, 5632, 22, 32, 4, 49152, 10000.0),
    Shape("llama3-8b-8blk", 4096, 14336, 8, 32, 8, 128256, 500000.0),
    Shape("llama3-70b-2blk", 8192, 28672, 2, 64, 8, 128256, 500000.0),
    Shape("llama3-8b-32blk", 4096, 14336, 32, 32, 8, 128256, 500000.0),
]}
QUICK, DEFAULT, LARGE = ("tiny",), ("tinyllama-1.1b", "llama3-8b-8blk"), ("llama3-70b-2blk", "llama3-8b-32blk")

# Goals of the scale issue (§5)
GOAL_SCORE_8B, GOAL_PRUNE_8B, GOAL_VERIFY_8B = 0.5, 0.35, 1.25  # x the checkpoint, streamed
GOAL_TIME_TINYLLAMA = 1.2  # streamed / in-memory scoring time
GOAL_70B_SLACK = 1 * GB  # 70B blocks: peak <= one block + embeddings + 1 GB


# ------------------------------------------------------------------------------------ the builder

def default_work() -> Path:
    from compressor.sources.cache import cache_dir

    return cache_dir() / "scale"


def tokenizer_dir() -> Path:
    from compressor.sources.builtins import resolve_builtin_model

    return resolve_builtin_model(TOKENIZER)


def checkpoint_key(shape: Shape, shard_bytes: int) -> str:
    blob = json.dumps({"shape": dataclasses.asdict(shape), "shard_bytes": shard_bytes, "version": BUILD_VERSION},
                      sort_keys=True)
    return f"{shape.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _tensor_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    """The model's own parameter names and shapes, in module order, from a model built on the meta device."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()
            if not (config.tie_word_embeddings and k == "lm_head.weight")]


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors, at most ``shard_bytes`` of bf16 a shard (a larger tensor alone in its own)."""
    import math

    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shp in shapes:
        n = 2 * math.prod(shp)
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shp))
        size += n
    return shards


def _tensor(name: str, shp: tuple[int, ...], seed: int):
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shp, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    return torch.empty(shp, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=g)


def _complete(folder: Path) -> bool:
    return (folder / "scale-build.json").exists()


def build_checkpoint(shape: Shape, folder: Path, *, shard_bytes: int = DEFAULT_SHARD_MB * 10**6,
                     tokenizer_from: Path | None = None, seed: int = 0) -> tuple[Path, bool]:
    """Write ``shape`` as a bf16 checkpoint into ``folder`` (staged, renamed into place), one shard in memory
    at a time; returns (folder, built now). A complete folder is reused."""
    import torch  # noqa: F401  (the builder's tensors)
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    if _complete(folder):
        return folder, False
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_from or tokenizer_dir()))
        ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id,
               "pad": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        config = LlamaConfig(**shape.config_dict(ids), dtype="bfloat16")
        config.architectures = ["LlamaForCausalLM"]
        shards = plan_shards(_tensor_shapes(config), shard_bytes)
        n = len(shards)
        weight_map: dict[str, str] = {}
        total = 0
        i_tensor = 0
        for i, shard in enumerate(shards):
            fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            tensors = {}
            for name, shp in shard:
                tensors[name] = _tensor(name, shp, seed * 1_000_003 + i_tensor)
                i_tensor += 1
                total += tensors[name].numel() * 2
                weight_map[name] = fname
            save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
            del tensors
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        record = {"shape": dataclasses.asdict(shape), "shard_bytes": shard_bytes, "shards": n, "bytes": total,
                  "params": total // 2, "seed": seed, "version": BUILD_VERSION}
        (tmp / "scale-build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, True


# ------------------------------------------------------------------------------------ measuring

@dataclasses.dataclass
class Row:
    command: str
    mode: str
    argv: list[str] | None = None  # None: not run (see result)
    needs: tuple[str, ...] = ()
    timeout: float | None = None
    wall: float | None = None
    peak: int | None = None  # bytes
    cpu: float | None = None  # the child's user + system CPU seconds
    code: int | None = None
    result: str = ""
    log: Path | None = None
    need: int = 0  # bytes of memory it is expected to need (0: unknown); more than is available: skipped


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


_HELP: dict[str, set[str]] = {}  # command -> the option names it declares (what its --help lists)


def flags_of(command: str) -> set[str]:
    """The option names ``avss COMMAND`` declares (both sides of ``--stream/--no-stream``), from the app itself."""
    if command not in _HELP:
        import typer

        from compressor.cli.app import app

        params = typer.main.get_group(app).commands[command].params
        _HELP[command] = {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    return _HELP[command]


def has(command: str, *flags: str) -> bool:
    return all(f in flags_of(command) for f in flags)


def measure(argv: list[str], log: Path, timeout: float | None, module: str = "compressor") -> tuple[float, int, int, bool, float]:
    """Run ``python -m MODULE ARGV`` (``python -c CODE`` with module ``-c``); (wall s, that child's own peak
    RSS in bytes, exit code, timed out, its CPU seconds: user + system, which other work on the machine
    changes much less than the wall time).

    The peak is the child's own ``VmHWM`` (/proc), written by the child as it exits: ``ru_maxrss`` of a
    child is not its own, Linux carries the parent's high-water mark across fork and exec (measured: a
    child running ``pass`` reports 1.48 GB after its parent once held 1.5 GB), so every command after
    this script compared two large checkpoints would have reported at least that. ``os.wait4`` still
    gives the child's own CPU time."""
    hwm = log.with_suffix(".hwm")
    target = argv[0] if module == "-c" else f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    rest = argv[1:] if module == "-c" else argv
    cmd = [sys.executable, "-c", _HWM_LAUNCHER.format(path=str(hwm), code=target), *rest]
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if timeout is not None and time.perf_counter() - t0 > timeout and not timed_out:
                timed_out = True
                proc.kill()
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4: Popen must not wait for it again
    peak = recorded_high_water(str(hwm))
    if peak is None:  # killed before it could write it: the (inflated) rusage figure, said
        peak = usage.ru_maxrss * 1024
    return wall, peak, code, timed_out, usage.ru_utime + usage.ru_stime


# the child writes its own peak resident set (VmHWM, reset by exec) to a file as it exits, however it exits
_HWM_LAUNCHER = """
import sys
from compressor.export.peak_rss import record_high_water_at_exit
record_high_water_at_exit({path!r})
sys.argv = ['avss', *sys.argv[1:]]
{code}
"""


def _tail(log: Path, n: int = 1) -> str:
    """The last ``n`` meaningful lines of a child's output (its error message, on failure)."""
    lines = [l.strip() for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    lines = [l for l in lines if not set(l) <= set("─│╭╮╰╯ ")]
    return " / ".join(lines[-n:])[:300]


def run_row(row: Row, logs: Path, idx: int, ok_codes: tuple[int, ...] = (0,)) -> Row:
    if row.argv is None:
        return row
    if row.need and row.need > 0.9 * _mem_available():
        row.argv, row.result = None, (f"skipped: expected to need ~{row.need / GB:.1f} GB, "
                                      f"{_mem_available() / GB:.1f} GB available")
        return row
    row.log = logs / f"{idx:02d}-{row.command.split()[0]}-{re.sub(r'[^a-z0-9]+', '-', row.mode.lower())}.log"
    print(f"  running: avss {' '.join(row.argv)}", file=sys.stderr, flush=True)
    row.wall, row.peak, row.code, timed_out, row.cpu = measure(row.argv, row.log, row.timeout)
    if timed_out:
        row.result = f"killed after {row.timeout:.0f} s"
    elif row.code in ok_codes:
        row.result = row.result or f"exit {row.code}"
    else:
        row.result = f"exit {row.code}: {_tail(row.log)}"
    print(f"    {row.wall:.1f} s ({row.cpu:.0f} CPU s), peak RSS {row.peak / GB:.2f} GB, {row.result}", file=sys.stderr, flush=True)
    return row


def mode_rows(command: str, label: str, argv: list[str], timeout: float, need: int = 0) -> list[Row]:
    """In memory and streamed side by side; without the flags, one run as the build's default.
    ``need``: what the in-memory run is expected to need (a run that cannot fit is skipped, not OOM-killed)."""
    if has(command, "--stream", "--no-stream"):
        return [Row(label, "in-memory", [*argv, "--no-stream"], timeout=timeout, need=need),
                Row(label, "streamed", argv + ["--stream"], timeout=timeout)]
    return [Row(label, "build default (in-memory)", list(argv), timeout=timeout, need=need),
            Row(label, "streamed", None, result="not available in this build (no --stream)")]


def one_row(command: str, label: str, argv: list[str], timeout: float, need: int = 0) -> Row:
    """Streamed where the build can, else the build's default."""
    if has(command, "--stream"):
        return Row(label, "streamed", [*argv, "--stream"], timeout=timeout)
    return Row(label, "build default (in-memory)", list(argv), timeout=timeout, need=need)


def score_diff(a: Path, b: Path) -> tuple[float, bool]:
    """(max |score difference| over layers, same ranking) of two scores files."""
    da, db = (json.loads(p.read_text(encoding="utf-8")) for p in (a, b))
    sa, sb = ({l["index"]: l["score"] for l in d["layers"]} for d in (da, db))
    if sa.keys() != sb.keys():
        return float("inf"), False
    return max(abs(sa[k] - sb[k]) for k in sa), da["ranking"] == db["ranking"]


def same_checkpoint(a: Path, b: Path) -> str:
    """Do two checkpoint folders hold the same tensors (names, shapes, dtypes, bytes)? Read one pair at a time."""
    import torch
    from safetensors import safe_open

    def where(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                out.update({k: f for k in fh.keys()})
        return out

    wa, wb = where(a), where(b)
    if wa.keys() != wb.keys():
        return f"different tensor names ({len(wa.keys() ^ wb.keys())} differ)"
    cfg = [json.loads((p / "config.json").read_text(encoding="utf-8")) for p in (a, b)]
    if cfg[0].get("num_hidden_layers") != cfg[1].get("num_hidden_layers"):
        return "different num_hidden_layers"
    for k in sorted(wa):
        with safe_open(str(wa[k]), framework="pt") as fa, safe_open(str(wb[k]), framework="pt") as fb:
            ta, tb = fa.get_tensor(k), fb.get_tensor(k)
            if ta.dtype != tb.dtype or ta.shape != tb.shape or not torch.equal(ta, tb):
                return f"tensor {k} differs"
    return f"identical ({len(wa)} tensors)"


def _mem_available() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------ one checkpoint

def bench_shape(shape: Shape, args: argparse.Namespace, work: Path, run_dir: Path) -> dict:
    ckpt_dir = work / checkpoint_key(shape, args.shard_mb * 10**6)
    need_disk = int(shape.bytes * 3.2)  # the checkpoint, two pruned copies, slack
    free = shutil.disk_usage(work).free + (_dir_bytes(ckpt_dir) if _complete(ckpt_dir) else 0)
    if free < need_disk:
        print(f"\n## {shape.name}\n\nSKIPPED: needs about {need_disk / GB:.1f} GB of disk in {work}, "
              f"{free / GB:.1f} GB free.")
        return {"shape": shape, "rows": [], "skipped": True}

    t0 = time.perf_counter()
    ckpt, built = build_checkpoint(shape, ckpt_dir, shard_bytes=args.shard_mb * 10**6)
    build_s = time.perf_counter() - t0
    rec = json.loads((ckpt / "scale-build.json").read_text(encoding="utf-8"))
    print(f"  checkpoint {ckpt} ({'built in %.0f s' % build_s if built else 'reused'})", file=sys.stderr, flush=True)

    out = run_dir / shape.name
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model = str(ckpt)
    to = float(args.timeout)
    calib = ["--data", DATA, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
             "--batch-size", str(args.batch_size)]
    remove = min(2, shape.layers // 2)
    rows: list[Row] = []
    files: dict[str, Path] = {}
    same: str | None = None

    # --- score
    score = ["score", model, "--method", "block-influence", "--dtype", "bfloat16", *calib]
    # what the in-memory commands need, x the checkpoint (docs: score 1.21x, prune 1.09x, verify 2.08x measured)
    need = {c: int(f * shape.bytes) for c, f in (("score", 1.3), ("prune", 1.2), ("repair", 1.4), ("verify", 2.2))}
    for r in mode_rows("score", "score block-influence", score, to, need["score"]):
        if r.argv is not None:
            files[r.mode] = out / f"scores-{r.mode.split()[0]}.json"
            r.argv += ["--out", str(files[r.mode])]
        rows.append(run_row(r, logs, len(rows)))
    r = one_row("score", "score avss (robust)",
                ["score", model, "--method", "avss", "--avss-mode", "robust", "--dtype", "bfloat16", *calib,
                 "--out", str(out / "scores-avss.json")], to, need["score"])
    rows.append(run_row(r, logs, len(rows)))
    scores = next((files[m] for m in files if files[m].exists()), None)
    diff = None
    if all(m in files and files[m].exists() for m in ("in-memory", "streamed")):
        diff = score_diff(files["in-memory"], files["streamed"])

    # --- prune
    pruned: dict[str, Path] = {}
    if scores is None:
        rows.append(Row("prune", "-", None, result="skipped: no scores file"))
    else:
        prune = ["prune", model, "--scores", str(scores), "--num-layers", str(remove), "--dtype", "bfloat16"]
        for r in mode_rows("prune", f"prune {remove} layers", prune, to, need["prune"]):
            if r.argv is not None:
                pruned[r.mode] = out / f"pruned-{r.mode.split()[0]}"
                r.argv += ["--out", str(pruned[r.mode])]
            rows.append(run_row(r, logs, len(rows)))
        if all(m in pruned and (pruned[m] / "config.json").exists() for m in ("in-memory", "streamed")):
            same = same_checkpoint(pruned["in-memory"], pruned["streamed"])
        r = one_row("prune", f"prune {remove} + repair linear",
                    [*prune, "--repair", "linear", *calib, "--out", str(out / "pruned-repair")], to, need["repair"])
        rows.append(run_row(r, logs, len(rows)))
        shutil.rmtree(out / "pruned-repair", ignore_errors=True)
    candidate = next((p for m, p in sorted(pruned.items(), key=lambda kv: kv[0] != "streamed")
                      if (p / "config.json").exists()), None)
    for p in pruned.values():  # keep one candidate on disk
        if p != candidate:
            shutil.rmtree(p, ignore_errors=True)

    # --- verify
    if candidate is None:
        rows.append(Row("verify", "-", None, result="skipped: no pruned checkpoint"))
    else:
        verify = ["verify", model, str(candidate), "--profile", str(PROFILE), "--dtype", "bfloat16", "--no-cache",
                  "--report-dir", str(out / "verify-report")]
        vrows = mode_rows("verify", "verify (perplexity)", verify, to, need["verify"]) \
            if has("verify", "--stream", "--no-stream") \
            else [Row("verify (perplexity)", "build default", list(verify), timeout=to, need=need["verify"])]
        for r in vrows:
            rows.append(run_row(r, logs, len(rows), ok_codes=(0, 1)))
            if r.code in (0, 1):
                r.result = f"exit {r.code} ({'pass' if r.code == 0 else 'fail'})"
        shutil.rmtree(candidate, ignore_errors=True)

    # --- export: the up-front refusal only
    if shape.name.startswith("llama3-8b"):
        if has("export", "--max-memory"):
            r = Row("export --max-memory 24GB", "refusal", ["export", model, "--out", str(out / "onnx"),
                                                            "--max-memory", "24GB"], timeout=EXPORT_TIMEOUT)
            run_row(r, logs, len(rows), ok_codes=())
            if r.result.startswith("killed"):
                r.result = f"did NOT refuse within {EXPORT_TIMEOUT} s (killed)"
            elif r.code not in (0, None):
                r.result = f"refused, exit {r.code}: {_tail(r.log)}"
            elif r.code == 0:
                r.result = "did NOT refuse (exported)"
            rows.append(r)
            shutil.rmtree(out / "onnx", ignore_errors=True)
        else:
            rows.append(Row("export --max-memory 24GB", "refusal", None,
                            result="not available in this build (no --max-memory)"))

    print_shape(shape, rec, built, build_s, rows, diff, same)
    if built and not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return {"shape": shape, "rows": rows, "diff": diff, "skipped": False}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_shape(shape: Shape, rec: dict, built: bool, build_s: float, rows: list[Row],
                diff: tuple[float, bool] | None, same: str | None) -> None:
    print(f"\n## {shape.name}\n")
    print(f"Llama: hidden {shape.hidden}, MLP {shape.intermediate}, {shape.layers} blocks, {shape.heads} heads, "
          f"{shape.kv_heads} KV heads, vocab {shape.vocab:,} (untied LM head); {rec['params'] / 1e9:.2f} B parameters, "
          f"{rec['bytes'] / GB:.2f} GB bf16 in {rec['shards']} shard(s) of <= {rec['shard_bytes'] / GB:.1f} GB; "
          f"one block {shape.block_bytes / GB:.3f} GB, embedding {shape.embedding_bytes / GB:.2f} GB "
          f"({'built in %.0f s' % build_s if built else 'reused from an earlier --keep run'}).\n")
    print("| command | mode | wall s | CPU s | peak RSS GB | x checkpoint | x block | result |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = None if r.peak is None else r.peak / GB
        print(f"| {r.command} | {r.mode} | {_fmt(r.wall, '.1f')} | {_fmt(r.cpu, '.0f')} | {_fmt(peak, '.2f')} | "
              f"{_fmt(None if r.peak is None else r.peak / shape.bytes, '.2f')} | "
              f"{_fmt(None if r.peak is None else r.peak / shape.block_bytes, '.1f')} | {r.result} |")
    print()
    pruned = next((r.command for r in rows if r.command.startswith("prune") and r.command.endswith(" layers")), "")
    for cmd in ("score block-influence", pruned):
        pair = {r.mode: r for r in rows if r.command == cmd and r.wall is not None and r.code == 0}
        if "in-memory" in pair and "streamed" in pair:
            a, b = pair["in-memory"], pair["streamed"]
            print(f"- {cmd}: streamed / in-memory wall time {b.wall / a.wall:.2f}x (CPU time {b.cpu / a.cpu:.2f}x), "
                  f"peak RSS {b.peak / a.peak:.2f}x")
    if diff is not None:
        print(f"- scores, streamed vs in-memory: max |difference| {diff[0]:.3g}, ranking "
              f"{'identical' if diff[1] else 'DIFFERENT'}")
    if same is not None:
        print(f"- pruned checkpoints, streamed vs in-memory: {same}")


# ------------------------------------------------------------------------------------ goals

def _row(results: dict, shape: str, command: str, mode: str = "streamed") -> Row | None:
    res = results.get(shape)
    if not res:
        return None
    for r in res["rows"]:
        if r.command.startswith(command) and r.mode == mode:
            return r
    return None


def _measured(r: Row | None) -> bool:
    return r is not None and r.peak is not None and r.code in (0, 1) and not r.result.startswith("killed")


def print_goals(results: dict) -> None:
    print("\n## Goals (scale issue §5)\n")

    def line(name: str, ok: bool | None, detail: str) -> None:
        verdict = "not measured" if ok is None else ("REACHED" if ok else "NOT REACHED")
        print(f"- {name}: {verdict} ({detail})")

    s8 = SHAPES["llama3-8b-8blk"]
    for label, cmd, goal in (("llama3-8b-8blk streamed scoring", "score block-influence", GOAL_SCORE_8B),
                             ("llama3-8b-8blk streamed prune", "prune 2 layers", GOAL_PRUNE_8B)):
        r = _row(results, s8.name, cmd)
        if _measured(r):
            x = r.peak / s8.bytes
            line(f"{label} peak RSS <= {goal}x the checkpoint", x <= goal, f"{x:.2f}x, {r.peak / GB:.2f} GB")
        else:
            line(f"{label} peak RSS <= {goal}x the checkpoint", None,
                 r.result if r is not None else "shape not run")
    r = _row(results, s8.name, "verify") if _row(results, s8.name, "verify") else \
        _row(results, s8.name, "verify", "build default")
    if _measured(r):
        x = r.peak / s8.bytes
        line(f"llama3-8b-8blk verify peak RSS <= {GOAL_VERIFY_8B}x the checkpoint", x <= GOAL_VERIFY_8B,
             f"{x:.2f}x, {r.peak / GB:.2f} GB, mode {r.mode}")
    else:
        line(f"llama3-8b-8blk verify peak RSS <= {GOAL_VERIFY_8B}x the checkpoint", None,
             r.result if r is not None else "shape not run")

    s70 = SHAPES["llama3-70b-2blk"]
    limit = s70.block_bytes + s70.embedding_bytes + GOAL_70B_SLACK
    r = _row(results, s70.name, "score block-influence")
    name = "llama3-70b-2blk streamed scoring peak RSS <= one block + embeddings + 1 GB"
    if _measured(r):
        line(name, r.peak <= limit, f"{r.peak / GB:.2f} GB vs {limit / GB:.2f} GB")
    else:
        line(name, None, r.result if r is not None else "not run (needs --large)")

    st = SHAPES["tinyllama-1.1b"]
    a, b = _row(results, st.name, "score block-influence", "in-memory"), _row(results, st.name, "score block-influence")
    name = f"tinyllama-1.1b streamed scoring time <= {GOAL_TIME_TINYLLAMA}x in-memory"
    if _measured(a) and _measured(b):
        x = b.wall / a.wall
        line(name, x <= GOAL_TIME_TINYLLAMA, f"wall {x:.2f}x, CPU time {b.cpu / a.cpu:.2f}x")
    else:
        line(name, None, (b.result if b is not None else "shape not run"))
    res = results.get(st.name)
    diff = res.get("diff") if res else None
    name = "tinyllama-1.1b streamed scores identical to in-memory"
    if diff is not None:
        line(name, diff[0] == 0.0 and diff[1], f"max |difference| {diff[0]:.3g}, ranking "
             f"{'identical' if diff[1] else 'different'}")
    else:
        line(name, None, "needs both score files")


# ------------------------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny shape only, small calibration; smoke run, no page")
    ap.add_argument("--large", action="store_true", help="also llama3-70b-2blk and llama3-8b-32blk (16 GB)")
    ap.add_argument("--only", action="append", choices=sorted(SHAPES), help="run only these shapes (no page)")
    ap.add_argument("--work", help="where checkpoints are built and outputs written (default: $AVSS_CACHE/scale)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints this run built (reused next time)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep scores, logs and reports (debugging)")
    ap.add_argument("--shard-mb", type=int, default=DEFAULT_SHARD_MB, help="max shard size in MB (default 1000)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1200, help="kill a command after this many seconds")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.seq_len, args.batch_size = 8, 64, 4
    names = args.only or (QUICK if args.quick else DEFAULT + (LARGE if args.large else ()))
    full = not args.quick and not args.only and args.samples == 16 and args.seq_len == 256 and args.batch_size == 8

    work = Path(args.work).expanduser() if args.work else default_work()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / f"run-{os.getpid()}"
    t_start = time.perf_counter()
    import psutil

    with ResultsPage("scale", "Large checkpoints: score, prune and verify in memory and streamed",
                     enabled=full):
        try:
            avail = {c: {f: has(c, f) for f in fl} for c, fl in (("score", ("--stream",)), ("prune", ("--stream",)),
                                                                  ("verify", ("--stream",)),
                                                                  ("export", ("--max-memory",)))}
            print(f"Shapes: {', '.join(names)}. Calibration: {DATA}, {args.samples} samples x {args.seq_len} tokens, "
                  f"batch {args.batch_size}; --dtype bfloat16 everywhere; verify: {PROFILE.relative_to(ROOT)}.")
            print("Flags in this build: " + "; ".join(f"{c} " + ", ".join(f"{f} {'yes' if ok else 'no'}"
                                                                          for f, ok in fl.items())
                                                      for c, fl in avail.items()))
            print(f"Machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / GB:.1f} GB RAM "
                  f"({_mem_available() / GB:.1f} GB available at start), load average "
                  f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at start (other work distorts times: read ratios).")
            base_log = run_dir / "baseline.log"
            run_dir.mkdir(parents=True, exist_ok=True)
            wall, peak, code, _, _ = measure([BASELINE_CODE], base_log, 300, module="-c")
            print(f"Baseline: a process that only imports what a command imports (torch, transformers, the scorer, "
                  f"verify) peaks at {peak / GB:.2f} GB RSS ({wall:.1f} s, exit {code}); every peak below includes it.")
            results = {}
            for n in names:
                print(f"[{n}]", file=sys.stderr, flush=True)
                results[n] = bench_shape(SHAPES[n], args, work, run_dir)
            if not args.quick:
                print_goals(results)
            cpu = sum(r.cpu or 0.0 for res in results.values() for r in res["rows"])
            print(f"\nTotal wall time {time.perf_counter() - t_start:.0f} s (checkpoint builds included); the commands used "
                  f"{cpu:.0f} CPU s (on an idle machine with {os.cpu_count()} cores, about {cpu / (os.cpu_count() or 1):.0f} "
                  f"s of wall); load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.")
        finally:
            if not args.keep_outputs:
                shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
