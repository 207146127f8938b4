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

This module runs the measurement; the models' resolution and restaging are ``bench_targets``, the report's
types and ratios ``bench_report``, and writing it ``bench_output``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from compressor.defaults import BENCH, PROVIDER
from compressor.errors import BadInput, RuntimeFailure
from compressor.export import layout, runtime
from compressor.export.bench_report import BenchReport, ModelBench, Percentiles, ratios
from compressor.export.bench_targets import Target, resolve, restage
from compressor.files import clean_temp, make_temp_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

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


def check_positions(prompt_len: int, new_tokens: int, config: PretrainedConfig | dict[str, Any], decoder: bool,
                    flag: str = "--prompt-len") -> None:
    """Refuse a benchmark longer than the model's positions before anything is allocated.

    ``config``: a transformers config or a config.json dict. Without this, a huge --prompt-len was
    found only when ONNX Runtime tried to allocate the attention for it (160 GB for one typo).
    """
    get: Callable[[str], Any] = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    limit = next((get(k) for k in ("max_position_embeddings", "n_positions") if isinstance(get(k), int)), None)
    if limit is None:
        return
    need = prompt_len + (new_tokens if decoder else 0)
    if need > limit:
        what = f"{prompt_len} prompt + {new_tokens} new tokens" if decoder else f"{prompt_len} tokens"
        raise BadInput(f"the benchmark needs {what} = {need} positions, but the model has {limit}",
                       f"lower {flag} (and the new tokens) to fit {limit} positions")


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
        result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" in result:
        raise runtime.RuntimeSetupError(**result["error"]).as_avss_error()
    return result


def _compression(folder: Path) -> dict[str, Any]:
    from compressor.prune.surgery import read_compression

    return read_compression(folder)


def _file_mb(model_file: Path) -> float:
    return float(layout.model_bytes(model_file) / 2**20)


def _max(rounds: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rounds if r[key] is not None]
    return max(vals) if vals else None


def _summarise(t: Target, rounds: list[dict[str, Any]], batch: int) -> ModelBench:
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


def bench_models(paths: list[str], options: BenchOptions,
                 progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every model (the first is the reference) and compare the others against it.

    Raises BadInput (missing model, unusable provider, models on different providers or of different
    kinds) or RuntimeFailure (a session or run failed). Nothing is written; see ``bench_output``.
    """
    if not paths:
        raise BadInput("no model given", "avss bench FULL_DIR [SLIM_DIR ...]")
    try:
        runtime.check_provider_request(options.provider)
    except runtime.RuntimeSetupError as exc:
        raise exc.as_avss_error() from exc
    from compressor.export.layout import genai_kv_shape

    say = progress or (lambda msg: None)
    targets = [resolve(p) for p in paths]
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
        restage(targets, staging, say)
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
    return BenchReport(first["provider"], settings, models, ratios(models))


def _physical_cores() -> int | None:
    import psutil

    return cast("int | None", psutil.cpu_count(logical=False))


def _check_same(targets: list[Target], results: list[list[dict[str, Any]]], i: int) -> None:
    """Comparisons across providers or model kinds are meaningless: stop as soon as one differs."""
    ref, new = results[0][0], results[i][-1]
    if new["provider"] != ref["provider"]:
        raise RuntimeFailure(f"{targets[0].path} ran on {ref['provider']} but {targets[i].path} on {new['provider']}",
                             "pin one provider with --provider cpu or --provider cuda")
    if new["kind"] != ref["kind"]:
        raise BadInput(f"cannot compare {targets[0].path} ({ref['kind']}) with {targets[i].path} ({new['kind']})",
                       "bench models of the same kind together")
