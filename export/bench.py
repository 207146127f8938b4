"""Benchmark exported ONNX models with ONNX Runtime: latency and memory, full vs slim.

Method (why each step):
- every model is measured in a fresh subprocess (``compressor.export._bench_worker``) that imports only
  onnxruntime, numpy and psutil, so RSS and session time describe the model, not our imports;
- models whose weights sit inside ``model.onnx`` are first re-saved with external data in a temporary
  folder: the two layouts differ ~1.7x in RSS and ~3x in session time (``compressor.export.layout``);
- ``intra_op_num_threads`` is fixed and recorded; timings run without a sampling thread (ORT threads
  spin and would compete with it) and peak memory is sampled in a separate one-generation pass;
- with ``rounds > 1`` models are measured alternately (A, B, A, B, ...) and samples pooled, because
  identical runs on a shared machine vary by up to 2x.

The first model is the reference; the others get ratios against it and against the ideal
(kept layers / total layers, kept parameters / total parameters).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from compressor.defaults import BENCH, PROVIDER
from compressor.errors import BadInput, RuntimeFailure
from compressor.export import layout, runtime
from compressor.files import atomic_write_figure, atomic_write_text, check_output_file, clean_temp, make_temp_dir

SCHEMA_VERSION = 1
TEMP_PREFIX = "avss-bench"
WORKER_FILE = str(Path(__file__).resolve().with_name("_bench_worker.py"))


@dataclass
class BenchOptions:
    provider: str = PROVIDER  # auto | cpu | cuda (cuda never falls back to CPU)
    batch_size: int = BENCH["batch_size"]
    prompt_len: int = BENCH["prompt_len"]
    new_tokens: int = BENCH["new_tokens"]
    warmup: int = BENCH["warmup"]
    runs: int = BENCH["runs"]
    rounds: int = BENCH["rounds"]
    threads: int | None = None  # intra_op_num_threads; None: physical cores
    io_binding: bool | None = None  # None: on for CUDA, off for CPU; True on CPU exercises the CUDA code path
    seed: int = 0

    def __post_init__(self) -> None:
        if self.provider not in runtime.PROVIDERS:
            raise BadInput(f"unknown provider {self.provider!r}", "use --provider auto, cpu or cuda")
        for name in ("batch_size", "prompt_len", "new_tokens", "runs", "rounds"):
            if getattr(self, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}",
                               f"e.g. --{name.replace('_', '-')} {getattr(BenchOptions, name)}")
        if self.warmup < 0:
            raise BadInput(f"--warmup must be 0 or more, got {self.warmup}", "e.g. --warmup 3")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"--threads must be at least 1, got {self.threads}", "omit it to use the physical cores")

    def resolved_threads(self) -> int:
        import psutil

        return self.threads or psutil.cpu_count(logical=False) or 1


@dataclass
class Percentiles:
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples: list[float]) -> "Percentiles | None":
        if not samples:
            return None
        import numpy as np

        p50, p90, p99 = (float(v) for v in np.percentile(np.asarray(samples, dtype=np.float64), [50, 90, 99]))
        return cls(p50, p90, p99)


@dataclass
class ModelBench:
    """One model: metadata, pooled latency percentiles (ms) and memory (MB) over all rounds."""

    path: str
    kind: str  # decoder | encoder
    layers: int | None
    params: int
    file_mb: float
    restaged: bool  # weights were inside model.onnx and were moved to external data for the measurement
    removed_layers: list[int] | None  # from compression.json, when the folder has one
    kept_layers: list[int] | None
    provider: str
    io_binding: bool
    session_create_s: float  # median over rounds (a GenAI folder: onnxruntime-genai's Model)
    prefill_ms: Percentiles | None  # decoders: the prompt pass
    decode_ms_per_token: Percentiles | None  # decoders: every decode step of every run
    tokens_per_s: float | None  # batch / median decode step
    batch_ms: Percentiles | None  # encoders: one forward pass over batch x prompt_len
    sequences_per_s: float | None
    rss_before_session_mb: float  # memory fields: the maximum over rounds
    rss_after_session_mb: float
    model_rss_mb: float  # after - before session creation: the model's own memory
    rss_peak_mb: float  # during a warm generation, sampled every 1 ms
    ru_maxrss_mb: float  # worker lifetime peak, imports included
    device_mem_before_mb: float | None  # CUDA only (NVML, whole device)
    device_mem_after_mb: float | None
    device_mem_peak_mb: float | None
    notes: list[str] = field(default_factory=list)  # e.g. which provider ``auto`` got
    samples: dict[str, list[float]] = field(default_factory=dict)  # pooled raw timings (ms)
    # what timed it: a raw ONNX Runtime session, or for a GenAI folder onnxruntime-genai's Generator (what serves it)
    runtime: str = "onnxruntime"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = {k: [round(v, 4) for v in vs] for k, vs in self.samples.items()}
        return d


@dataclass
class Ratio:
    """One model against the reference (the first). ``*_ratio`` is model / reference (lower is better),
    the ideal is ``layer_ratio`` (or ``param_ratio``), and ``*_vs_ideal`` = ratio / layer_ratio
    (1.0: latency shrank exactly with the layers; above 1: less gain than the cut promises)."""

    model: str
    reference: str
    layer_ratio: float | None
    param_ratio: float | None
    file_ratio: float | None
    decode_speedup: float | None
    decode_ratio: float | None
    decode_vs_ideal: float | None
    prefill_ratio: float | None
    prefill_vs_ideal: float | None
    batch_ratio: float | None
    batch_vs_ideal: float | None
    rss_peak_ratio: float | None
    model_rss_ratio: float | None
    device_mem_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    provider: str
    settings: dict[str, Any]
    models: list[ModelBench]
    ratios: list[Ratio]

    @property
    def notes(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.models for n in m.notes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "provider": self.provider,
            "settings": self.settings,
            "models": [m.to_dict() for m in self.models],
            "ratios": [r.to_dict() for r in self.ratios],
        }


@dataclass
class _Target:
    path: str  # as the user gave it
    model_file: Path  # the original .onnx
    folder: Path  # holds config.json / compression.json
    measured: Path  # what the worker loads (the original or the restaged copy)
    restaged: bool = False


def check_positions(prompt_len: int, new_tokens: int, config: Any, decoder: bool, flag: str = "--prompt-len") -> None:
    """Refuse a benchmark longer than the model's positions before anything is allocated.

    ``config``: a transformers config or a config.json dict. Without this, a huge --prompt-len was
    found only when ONNX Runtime tried to allocate the attention for it (160 GB for one typo).
    """
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    limit = next((get(k) for k in ("max_position_embeddings", "n_positions") if isinstance(get(k), int)), None)
    if limit is None:
        return
    need = prompt_len + (new_tokens if decoder else 0)
    if need > limit:
        what = f"{prompt_len} prompt + {new_tokens} new tokens" if decoder else f"{prompt_len} tokens"
        raise BadInput(f"the benchmark needs {what} = {need} positions, but the model has {limit}",
                       f"lower {flag} (and the new tokens) to fit {limit} positions")


def _resolve(path: str) -> _Target:
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{path} does not exist", "give an export folder (from `avss export`) or a .onnx file")
    model_file = layout.onnx_path(p)
    if p.is_dir() and not model_file.is_file():
        raise BadInput(f"{path} has no {layout.ONNX_FILE}", "give a folder written by `avss export`, or the .onnx file")
    if p.is_file() and p.suffix != ".onnx":
        raise BadInput(f"{path} is not a .onnx file", "give an export folder or a .onnx file")
    layout.check_onnx_files(model_file)
    return _Target(path, model_file, p if p.is_dir() else p.parent, model_file)


def _uses_external_data(t: _Target) -> bool:
    try:
        return layout.uses_external_data(t.model_file)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise BadInput(f"{t.model_file} cannot be read as an ONNX model ({type(exc).__name__}: {exc})",
                       "re-export it with `avss export`") from exc


def _restage(t: _Target, folder: Path) -> Path:
    try:
        return layout.store_external_data(t.model_file, folder)
    except OSError as exc:
        raise RuntimeFailure(f"re-saving {t.model_file} with external data in {folder.parent} failed: {exc}",
                             "free disk space there, or point TMPDIR at a larger disk") from exc


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``compressor.export._bench_worker`` on one job (keys: see that module) and return its result.

    A worker that reports an error raises BadInput / RuntimeFailure by its kind; one that dies
    (e.g. killed for memory) raises RuntimeFailure with the end of its stderr.
    """
    tmp = make_temp_dir(TEMP_PREFIX)
    try:
        job_file, result_file = tmp / "job.json", tmp / "result.json"
        job_file.write_text(json.dumps({**job, "parent": os.getpid()}), encoding="utf-8")
        # by absolute path, isolated (-I: neither the working directory nor PYTHONPATH on sys.path), so a
        # user's own export.py / compressor.py / onnxruntime.py in the working directory is never run instead
        proc = subprocess.run([sys.executable, "-I", WORKER_FILE, str(job_file), str(result_file)],
                              capture_output=True, text=True)
        if not result_file.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeFailure(f"the benchmark worker for {job['model']} exited with code {proc.returncode}: {tail}",
                                 "check free memory (a killed worker exits with -9) and re-run")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" in result:
        raise runtime.RuntimeSetupError(**result["error"]).as_avss_error()
    return result


def _compression(folder: Path) -> dict[str, Any]:
    from compressor.prune.surgery import read_compression

    return read_compression(folder)


def _file_mb(model_file: Path) -> float:
    return layout.model_bytes(model_file) / 2**20


def _max(rounds: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rounds if r[key] is not None]
    return max(vals) if vals else None


def _summarise(t: _Target, rounds: list[dict[str, Any]], batch: int) -> ModelBench:
    import numpy as np

    first = rounds[0]
    prompt = [v for r in rounds for v in r["prompt_ms"]]
    steps = [v for r in rounds for v in r["step_ms"]]
    decoder = first["kind"] == "decoder"
    prefill = Percentiles.of(prompt)
    decode = Percentiles.of(steps)
    comp = _compression(t.folder)
    return ModelBench(
        path=t.path,
        kind=first["kind"],
        layers=layout.read_num_layers(t.folder),
        params=layout.count_parameters(t.model_file),
        file_mb=_file_mb(t.model_file),
        restaged=t.restaged,
        removed_layers=comp.get("removed_layers"),
        kept_layers=comp.get("kept_layers"),
        provider=first["provider"],
        runtime=first["runtime"],
        io_binding=first["io_binding"],
        session_create_s=float(np.median([r["session_create_s"] for r in rounds])),
        prefill_ms=prefill if decoder else None,
        decode_ms_per_token=decode,
        tokens_per_s=batch * 1e3 / decode.p50 if decode else None,
        batch_ms=None if decoder else prefill,
        sequences_per_s=None if decoder or prefill is None else batch * 1e3 / prefill.p50,
        rss_before_session_mb=max(r["rss_before_session_mb"] for r in rounds),
        rss_after_session_mb=max(r["rss_after_session_mb"] for r in rounds),
        model_rss_mb=max(r["rss_after_session_mb"] - r["rss_before_session_mb"] for r in rounds),
        rss_peak_mb=max(r["rss_peak_mb"] for r in rounds),
        ru_maxrss_mb=max(r["ru_maxrss_mb"] for r in rounds),
        device_mem_before_mb=_max(rounds, "device_mem_before_mb"),
        device_mem_after_mb=_max(rounds, "device_mem_after_mb"),
        device_mem_peak_mb=_max(rounds, "device_mem_peak_mb"),
        notes=list(dict.fromkeys(n for r in rounds for n in r["notes"])),
        samples={"prefill_ms" if decoder else "batch_ms": prompt, **({"decode_ms": steps} if decoder else {})},
    )


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _p50(p: Percentiles | None) -> float | None:
    return None if p is None else p.p50


def _own_device_mb(b: ModelBench) -> float | None:
    """Device memory the model added (peak - before); NVML reads the whole device."""
    if b.device_mem_peak_mb is None or b.device_mem_before_mb is None:
        return None
    return b.device_mem_peak_mb - b.device_mem_before_mb


def _ratio(m: ModelBench, ref: ModelBench) -> Ratio:
    layer_ratio = _div(m.layers, ref.layers)
    decode = _div(_p50(m.decode_ms_per_token), _p50(ref.decode_ms_per_token))
    prefill = _div(_p50(m.prefill_ms), _p50(ref.prefill_ms))
    batch = _div(_p50(m.batch_ms), _p50(ref.batch_ms))
    return Ratio(
        model=m.path,
        reference=ref.path,
        layer_ratio=layer_ratio,
        param_ratio=_div(m.params, ref.params),
        file_ratio=_div(m.file_mb, ref.file_mb),
        decode_speedup=_div(_p50(ref.decode_ms_per_token), _p50(m.decode_ms_per_token)),
        decode_ratio=decode,
        decode_vs_ideal=_div(decode, layer_ratio),
        prefill_ratio=prefill,
        prefill_vs_ideal=_div(prefill, layer_ratio),
        batch_ratio=batch,
        batch_vs_ideal=_div(batch, layer_ratio),
        rss_peak_ratio=_div(m.rss_peak_mb, ref.rss_peak_mb),
        model_rss_ratio=_div(m.model_rss_mb, ref.model_rss_mb),
        device_mem_ratio=_div(_own_device_mb(m), _own_device_mb(ref)),
    )


def bench_models(paths: list[str], options: BenchOptions,
                 progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every model (the first is the reference) and compare the others against it.

    Raises BadInput (missing model, unusable provider, models on different providers or of different
    kinds) or RuntimeFailure (a session or run failed). Nothing is written; see ``write_json``/``save_plot``.
    """
    if not paths:
        raise BadInput("no model given", "avss bench FULL_DIR [SLIM_DIR ...]")
    try:
        runtime.check_provider_request(options.provider)
    except runtime.RuntimeSetupError as exc:
        raise exc.as_avss_error() from exc
    from compressor.export.layout import genai_kv_shape

    say = progress or (lambda msg: None)
    targets = [_resolve(p) for p in paths]
    for t in targets:
        cfg = layout.read_config(t.folder)
        check_positions(options.prompt_len, options.new_tokens, cfg, layout.has_kv_cache(t.model_file))
    threads = options.resolved_threads()
    job = {"provider": options.provider, "threads": threads, "batch_size": options.batch_size,
           "prompt_len": options.prompt_len, "new_tokens": options.new_tokens, "warmup": options.warmup,
           "runs": options.runs, "io_binding": options.io_binding, "seed": options.seed}
    results: list[list[dict[str, Any]]] = [[] for _ in targets]
    clean_temp(TEMP_PREFIX)  # what a killed benchmark left in the temp dir
    staging = make_temp_dir(TEMP_PREFIX)
    try:
        for i, t in enumerate(targets):
            if not _uses_external_data(t):
                say(f"{t.path}: weights are inside {t.model_file.name}; re-saving with external data for a fair comparison")
                t.measured, t.restaged = _restage(t, staging / str(i)), True
        for r in range(options.rounds):
            for i, t in enumerate(targets):
                say(f"measuring {t.path} (round {r + 1}/{options.rounds}) ...")
                started = time.perf_counter()
                res = run_worker({**job, "model": str(t.measured), "kv_shape": genai_kv_shape(t.folder),
                                  "genai_folder": str(t.folder) if layout.is_genai_folder(t.folder) else None})
                results[i].append(res)
                _check_same(targets, results, i)
                say(f"{t.path}: done in {time.perf_counter() - started:.1f} s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    models = [_summarise(t, res, options.batch_size) for t, res in zip(targets, results)]
    first = results[0][0]
    settings = {
        "provider_requested": options.provider,
        "batch_size": options.batch_size,
        "prompt_len": options.prompt_len,
        "new_tokens": options.new_tokens,
        "warmup": options.warmup,
        "runs": options.runs,
        "rounds": options.rounds,
        "threads": threads,
        "io_binding": first["io_binding"],
        "seed": options.seed,
        "versions": {**{k: v for rs in results for r in rs for k, v in r["versions"].items()},
                     "python": platform.python_version()},
        "machine": {"cpu_count": os.cpu_count(), "cpu_count_physical": _physical_cores(),
                    "platform": platform.platform(), "processor": platform.machine()},
    }
    return BenchReport(first["provider"], settings, models, [_ratio(m, models[0]) for m in models[1:]])


def _physical_cores() -> int | None:
    import psutil

    return psutil.cpu_count(logical=False)


def _check_same(targets: list[_Target], results: list[list[dict[str, Any]]], i: int) -> None:
    """Comparisons across providers or model kinds are meaningless: stop as soon as one differs."""
    ref, new = results[0][0], results[i][-1]
    if new["provider"] != ref["provider"]:
        raise RuntimeFailure(f"{targets[0].path} ran on {ref['provider']} but {targets[i].path} on {new['provider']}",
                             "pin one provider with --provider cpu or --provider cuda")
    if new["kind"] != ref["kind"]:
        raise BadInput(f"cannot compare {targets[0].path} ({ref['kind']}) with {targets[i].path} ({new['kind']})",
                       "bench models of the same kind together")


def output_paths(json_path: str | None, plot_path: str | None, force: bool) -> tuple[Path | None, Path | None]:
    """Resolve the outputs before measuring (the plot defaults to the --json path with .png) and refuse
    to overwrite existing files without ``force``."""
    j = Path(json_path) if json_path else None
    p = Path(plot_path) if plot_path else (j.with_suffix(".png") if j else None)
    if j is not None and p is not None and j.resolve() == p.resolve():
        raise BadInput(f"--json and --plot are both {j}", "give the plot a .png name")
    for f, flag in ((j, "--json"), (p, "--plot")):
        if f is not None:
            check_output_file(f, flag, force)
    return j, p


def write_json(report: BenchReport, path: str | Path) -> Path:
    """bench.json, written atomically (temporary file + rename)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def _label(path: str) -> str:
    """A short axis label: the folder name for ``.../model.onnx``, else the last path component."""
    p = Path(path)
    return (p.parent.name if p.name == layout.ONNX_FILE else p.name) or path


def save_plot(report: BenchReport, path: str | Path) -> Path:
    """Box plots of the pooled latency samples per model (prefill and per-token decode, or per batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = [_label(m.path) for m in report.models]
    keys = [("prefill_ms", "prefill (ms)"), ("decode_ms", "decode (ms / token)")]
    if report.models[0].kind == "encoder":
        keys = [("batch_ms", "forward pass (ms / batch)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(max(5.0, 1.6 * len(names) + 2) * len(keys), 3.8), dpi=110,
                             squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        ax.boxplot([m.samples[key] for m in report.models], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=7, rotation=15)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    s = report.settings
    fig.suptitle(f"{report.provider}, batch {s['batch_size']}, prompt {s['prompt_len']}, "
                 f"{s['threads']} threads, {s['runs']} runs x {s['rounds']} rounds", fontsize=9)
    fig.tight_layout()
    return atomic_write_figure(fig, path)
