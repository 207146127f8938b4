"""Measure one ONNX model in a fresh process: ``python -m compressor.export._bench_worker JOB.json RESULT.json``.

Why a separate process: RSS and session-creation time only describe the model in a process that has
not loaded torch, transformers or another model. This module therefore imports only onnxruntime,
numpy, psutil, the standard library, ``compressor.export.runtime`` and ``compressor.export.peak_rss`` (both
stdlib-only at import time); a test checks the list it reports in ``modules``.

JOB keys: parent (the pid this worker dies with), model, provider, threads, batch_size, prompt_len, new_tokens, warmup, runs, io_binding
(null: on for CUDA only; true on CPU exercises the CUDA code path), seed, genai_folder (a GenAI folder: timed
with onnxruntime-genai's own Model and Generator, what serves it; then onnxruntime_genai is imported too). RESULT is either the
measurement or ``{"error": {"kind": "bad_input" | "runtime", "problem": ..., "fix": ...}}``.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import psutil

from compressor.export import runtime
from compressor.export.peak_rss import MB, PeakRSS, lifetime_peak_mb

if TYPE_CHECKING:  # pragma: no cover
    from onnxruntime import InferenceSession, NodeArg, OrtValue

_KNOWN_INPUTS = {"input_ids", "attention_mask", "position_ids", "token_type_ids"}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


# mypy cannot follow the compressor.export -> export/ package-dir mapping, so `runtime` is Any to it
class WorkerError(runtime.RuntimeSetupError):  # type: ignore[misc]
    """A problem with the model or the job (not the install); reported, not raised, to the parent."""


class _MemoryInfo(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Nvml:
    """Device-wide used memory through NVML via ctypes: ORT's CUDA allocations are invisible to psutil.

    The reading is for the whole GPU (other processes included); the device is the first entry of
    ``CUDA_VISIBLE_DEVICES`` when it is a number, else index 0.
    """

    def __init__(self, lib: ctypes.CDLL, handle: ctypes.c_void_p):
        self._lib, self._handle = lib, handle

    @classmethod
    def open(cls) -> "Nvml | None":
        """None when the NVIDIA driver's NVML library is not installed; errors from a present NVML raise."""
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return None
        cls._check(lib.nvmlInit_v2(), "nvmlInit_v2")
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        index = int(first) if first.isdigit() else 0
        handle = ctypes.c_void_p()
        cls._check(lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)),
                   "nvmlDeviceGetHandleByIndex_v2")
        return cls(lib, handle)

    @staticmethod
    def _check(code: int, call: str) -> None:
        if code != 0:
            raise WorkerError(f"NVML {call} failed with code {code}",
                              "check the NVIDIA driver (nvidia-smi), or use --provider cpu", kind="runtime")

    def used_mb(self) -> float:
        info = _MemoryInfo()
        self._check(self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(info)), "nvmlDeviceGetMemoryInfo")
        return float(info.used / MB)


def nvml_used_mb() -> float | None:
    """Device memory used now (MB), or None when NVML is absent (a CPU-only machine)."""
    nvml = Nvml.open()
    return None if nvml is None else nvml.used_mb()


# a graph's inputs or outputs by name: numpy arrays, or OrtValues left on the device by IO binding
Feed = dict[str, "np.ndarray | OrtValue"]
Runner = Callable[[Feed], Feed]


def plain_runner(sess: InferenceSession) -> Runner:
    """``session.run`` with numpy feeds; outputs come back as numpy arrays."""
    names = [o.name for o in sess.get_outputs()]

    def run(feed: Feed) -> Feed:
        return dict(zip(names, sess.run(names, feed)))

    return run


def bound_runner(sess: InferenceSession, device: str, device_id: int = 0) -> Runner:
    """IO binding: inputs copied once to ``device``, outputs left there, so present.* OrtValues are fed
    back as past_key_values.* without a host round trip (what matters on CUDA; ``cpu`` tests the path)."""
    import onnxruntime as ort

    names = [o.name for o in sess.get_outputs()]

    def run(feed: Feed) -> Feed:
        binding = sess.io_binding()
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                value = ort.OrtValue.ortvalue_from_numpy(value, device, device_id)
            binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, device, device_id)
        sess.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs()))

    return run


class Workload:
    """Random-token feeds for one graph: a decoder (past_key_values.* inputs) or an encoder."""

    def __init__(self, sess: InferenceSession, batch: int, prompt_len: int, new_tokens: int, seed: int,
                 kv_shape: Sequence[int] | None = None):
        self.kv_shape = kv_shape  # (kv heads, head size) of a GenAI graph, whose past dims are all symbolic
        self.inputs = {i.name: i for i in sess.get_inputs()}
        self.past = [i for i in sess.get_inputs() if runtime.is_cache_input(i.name)]
        unknown = sorted(set(self.inputs) - _KNOWN_INPUTS - {i.name for i in self.past})
        if "input_ids" not in self.inputs or unknown:
            raise WorkerError(f"unsupported graph inputs {unknown or sorted(self.inputs)} (need input_ids, "
                              "attention_mask, optional position_ids/token_type_ids and past_key_values.*)",
                              "bench models exported with `avss export`")
        self.decoder = bool(self.past)
        self.batch, self.prompt_len, self.new_tokens = batch, prompt_len, new_tokens
        self.rng = np.random.default_rng(seed)

    def _ids(self, length: int) -> np.ndarray:
        return self.rng.integers(3, 200, (self.batch, length), dtype=np.int64)

    def _empty_past(self, inp: NodeArg) -> np.ndarray:
        """Shape (batch, kv_heads, 0, head_dim): named dims other than the first are the sequence axis."""
        dtype = _DTYPES.get(inp.type)
        if dtype is None:
            raise WorkerError(f"{inp.name} has type {inp.type}", "export in float32 or float16")
        shape = runtime.empty_cache_shape(inp.name, inp.shape, self.batch, self.kv_shape)
        if shape is None:
            raise WorkerError(f"cannot build an empty past for {inp.name} with shape {inp.shape}",
                              "export with dynamic batch and sequence axes only")
        return np.zeros(shape, dtype)

    def prompt_feed(self) -> Feed:
        b, p = self.batch, self.prompt_len
        feed: Feed = {"input_ids": self._ids(p)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((b, p), np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.tile(np.arange(p, dtype=np.int64), (b, 1))
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros((b, p), np.int64)
        for inp in self.past:
            feed[inp.name] = self._empty_past(inp)
        return feed

    def step_feed(self, outputs: Feed, cached: int) -> Feed:
        """One new token per sequence after ``cached`` tokens; the previous present.* become the past."""
        b = self.batch
        feed: Feed = {"input_ids": self._ids(1)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((b, cached + 1), np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.full((b, 1), cached, np.int64)
        for inp in self.past:
            feed[inp.name] = outputs[runtime.present_of(inp.name)]
        return feed

    def generate(self, run: Runner) -> tuple[float, list[float]]:
        """(prompt ms, [ms per decode step]); an encoder does the prompt pass only."""
        feed = self.prompt_feed()
        t0 = time.perf_counter()
        outputs = run(feed)
        prompt_ms = (time.perf_counter() - t0) * 1e3
        steps: list[float] = []
        if self.decoder:
            for k in range(self.new_tokens):
                feed = self.step_feed(outputs, self.prompt_len + k)
                t0 = time.perf_counter()
                outputs = run(feed)
                steps.append((time.perf_counter() - t0) * 1e3)
        return prompt_ms, steps


class GenAIWorkload:
    """A GenAI folder timed as it is served: onnxruntime-genai's ``Model`` and ``Generator`` (prompt through
    ``append_tokens``, then ``generate_next_token``), not a raw session. The bench's intra-op thread count is
    set through ``Config.overlay``, as for every raw session: the builder's genai_config.json carries none,
    and onnxruntime-genai's own choice decoded 1.7x slower on 2 cores (measured), which would compare
    settings rather than graphs."""

    def __init__(self, folder: str, on_cuda: bool, threads: int, batch: int, prompt_len: int, new_tokens: int,
                 seed: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(folder)
        config.clear_providers()
        if on_cuda:
            config.append_provider("cuda")
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.decoder = True
        self.batch, self.prompt_len, self.new_tokens = batch, prompt_len, new_tokens
        self.rng = np.random.default_rng(seed)

    def generate(self, run: Runner | None = None) -> tuple[float, list[float]]:
        """(prompt ms, [ms per decode step]): greedy, never stopped early (min length = max length).
        ``append_tokens`` runs the prompt; each ``generate_next_token`` picks a token from the logits it has and
        runs the model on the token picked before, so the first call only picks (0.1 ms, measured): it is
        not timed, and ``new_tokens`` timed calls after it run the model ``new_tokens`` times, as a raw
        session's decode steps do."""
        og, total = self.og, self.prompt_len + self.new_tokens + 1
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(self.model, params)
        ids = self.rng.integers(3, 200, (self.batch, self.prompt_len), dtype=np.int64)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        prompt_ms = (time.perf_counter() - t0) * 1e3
        gen.generate_next_token()  # picks the first new token from the prompt's logits
        steps: list[float] = []
        for _ in range(self.new_tokens):
            t0 = time.perf_counter()
            gen.generate_next_token()
            steps.append((time.perf_counter() - t0) * 1e3)
        return prompt_ms, steps


class Loaded:
    """What loading a model cost: its time, and the process (and device) memory before and after."""

    def __init__(self, proc: psutil.Process, nvml: Nvml | None):
        self.proc, self.nvml = proc, nvml
        self.rss_before, self.dev_before = proc.memory_info().rss, nvml.used_mb() if nvml else None
        self.t0 = time.perf_counter()

    def done(self) -> "Loaded":
        self.create_s = time.perf_counter() - self.t0
        self.rss_after, self.dev_after = self.proc.memory_info().rss, self.nvml.used_mb() if self.nvml else None
        return self


def timed(job: dict[str, Any], generate: Callable[[], tuple[float, list[float]]], loaded: Loaded) -> dict[str, Any]:
    """The measurement both runtimes share: warm-up, ``runs`` timed generations (no sampler running), then one
    generation under the memory sampler; with the load's own figures."""
    for _ in range(job["warmup"]):
        generate()
    prompt_ms: list[float] = []
    step_ms: list[float] = []
    for _ in range(job["runs"]):
        p, steps = generate()
        prompt_ms.append(p)
        step_ms.extend(steps)
    # every 1 ms, in this pass only: next to ORT's spinning intra-op threads, the sampler would distort timings
    with PeakRSS(0.001, loaded.nvml.used_mb if loaded.nvml else None) as sampler:
        generate()
    return {
        "threads": job["threads"], "session_create_s": loaded.create_s,
        "rss_before_session_mb": loaded.rss_before / MB, "rss_after_session_mb": loaded.rss_after / MB,
        "rss_peak_mb": max(sampler.peak, loaded.rss_after) / MB, "ru_maxrss_mb": lifetime_peak_mb(),
        "device_mem_before_mb": loaded.dev_before, "device_mem_after_mb": loaded.dev_after,
        "device_mem_peak_mb": None if sampler.device_peak is None else max(sampler.device_peak, loaded.dev_after or 0.0),
        "prompt_ms": prompt_ms, "step_ms": step_ms, "modules": sorted({m.split(".")[0] for m in sys.modules}),
    }


def measure_genai(job: dict[str, Any]) -> dict[str, Any]:
    """``measure`` for a GenAI folder, in its own runtime (see ``GenAIWorkload``)."""
    import onnxruntime_genai as og

    on_cuda = job["provider"] == "cuda" or (job["provider"] == "auto" and runtime.cuda_in_build())
    loaded = Loaded(psutil.Process(), Nvml.open() if on_cuda else None)
    try:
        work = GenAIWorkload(job["genai_folder"], on_cuda, job["threads"], job["batch_size"], job["prompt_len"],
                             job["new_tokens"], job["seed"])
    except Exception as exc:  # noqa: BLE001 - whatever onnxruntime-genai says is the problem
        raise WorkerError(f"onnxruntime-genai cannot load {job['genai_folder']} ({str(exc).splitlines()[0]})",
                          "re-export it with `avss export --exporter genai`") from exc
    version = getattr(og, "__version__", "?")
    return {
        "provider": "CUDAExecutionProvider" if on_cuda else "CPUExecutionProvider",
        "runtime": f"onnxruntime-genai {version} (Model + Generator, intra_op_num_threads {job['threads']})",
        "notes": [], "kind": "decoder", "io_binding": False,
        "versions": {"onnxruntime_genai": version, "numpy": np.__version__, "psutil": psutil.__version__},
        **timed(job, work.generate, loaded.done()),
    }


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Session creation and memory, a timing pass (no sampler), then a one-generation memory pass."""
    import onnxruntime as ort

    if job.get("genai_folder"):
        return measure_genai(job)
    may_use_cuda = job["provider"] == "cuda" or (job["provider"] == "auto" and runtime.cuda_in_build())
    loaded = Loaded(psutil.Process(), Nvml.open() if may_use_cuda else None)
    s = runtime.make_session(job["model"], job["provider"], job["threads"])
    loaded.done()
    notes = [s.note] if s.note else []
    if not s.on_cuda:
        loaded.nvml, loaded.dev_before, loaded.dev_after = None, None, None
    elif loaded.nvml is None:
        notes.append("NVML (libnvidia-ml.so.1) was not found, so device memory was not measured")

    io_binding = s.on_cuda if job["io_binding"] is None else bool(job["io_binding"])
    run = bound_runner(s.session, "cuda" if s.on_cuda else "cpu") if io_binding else plain_runner(s.session)
    work = Workload(s.session, job["batch_size"], job["prompt_len"], job["new_tokens"], job["seed"],
                    job.get("kv_shape"))
    return {
        "provider": s.provider,
        "runtime": f"onnxruntime {ort.__version__} (InferenceSession)",
        "notes": notes,
        "kind": "decoder" if work.decoder else "encoder",
        "io_binding": io_binding,
        "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__, "psutil": psutil.__version__},
        **timed(job, lambda: work.generate(run), loaded),
    }


def exit_with_parent(parent: int | None) -> None:
    """Die with the parent: a benchmark whose ``avss`` was killed must not spin on the CPUs for minutes.

    Linux's PR_SET_PDEATHSIG sends SIGKILL when the parent goes; a watchdog thread that polls the
    parent pid covers the other systems and a parent that died before the call.
    """
    if not parent:
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        except (OSError, AttributeError):  # pragma: no cover - every glibc/musl has prctl
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(70)
            time.sleep(0.5)

    if os.getppid() != parent:
        os._exit(70)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    exit_with_parent(job.get("parent"))
    rc = 0
    try:
        result: dict[str, Any] = measure(job)
    except runtime.RuntimeSetupError as exc:  # WorkerError included
        result, rc = {"error": {"kind": exc.kind, "problem": exc.problem, "fix": exc.fix}}, 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises RuntimeFailure
        traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        result, rc = {"error": {"kind": "runtime", "problem": f"measuring {job['model']} failed: "
                                f"{type(exc).__name__}: {first}",
                                "fix": "check that the model runs in ONNX Runtime (avss export verifies it)"}}, 1
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
