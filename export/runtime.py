"""ONNX Runtime install checks and session creation, in one place.

Why: ``onnxruntime`` and ``onnxruntime-gpu`` share one directory (the last installed silently wins),
and a CUDA session that cannot start falls back to CPU without raising. The only reliable check is
the session's own ``get_providers()``, so every session is made here and its real provider returned.

This module imports only the standard library at import time; ``onnxruntime`` is imported lazily so
the benchmark worker (which must import only onnxruntime, numpy and psutil) can use it too.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from onnxruntime import InferenceSession

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda")
_DISTS = ("onnxruntime", "onnxruntime-gpu")


class RuntimeSetupError(Exception):
    """The ONNX Runtime install or the requested provider cannot work; ``kind`` picks the exit code.

    ``kind`` is ``"bad_input"`` (the user asked for something this machine cannot do: exit 2) or
    ``"runtime"`` (exit 3). Kept free of ``compressor`` imports for the benchmark worker.
    """

    def __init__(self, problem: str, fix: str, kind: str = "bad_input"):
        self.problem, self.fix, self.kind = problem, fix, kind
        super().__init__(f"{problem}; {fix}")

    def as_avss_error(self) -> Exception:
        """The ``compressor.errors`` type for ``kind`` (imported here, never by the worker)."""
        from compressor.errors import BadInput, RuntimeFailure

        return (BadInput if self.kind == "bad_input" else RuntimeFailure)(self.problem, self.fix)


# a decoder graph's cache inputs, each fed back from the output of the same name after the prefix: the KV cache
# (``past_key_values.N.key`` <- ``present.N.key``) and a hybrid block's fixed-size state (LFM2's convolution:
# ``past.N.conv`` <- ``present.N.conv``, as ONNX Runtime GenAI's builder names them)
KV, STATE, PRESENT = "past_key_values", "past.", "present"


def is_cache_input(name: str) -> bool:
    return name.startswith(KV) or name.startswith(STATE)


def present_of(name: str) -> str:
    """The output that becomes cache input ``name`` on the next step."""
    return PRESENT + name[len(KV):] if name.startswith(KV) else PRESENT + "." + name[len(STATE):]


def empty_cache_shape(name: str, dims: list[int | str | None], batch: int,
                      kv_shape: Sequence[int] | None = None) -> list[int] | None:
    """The first step's value of a cache input: an empty KV cache (``empty_past_shape``), or a state of zeros
    (every dim but the batch is fixed in the graph); None if the graph leaves it ambiguous."""
    if name.startswith(KV):
        return empty_past_shape(dims, batch, kv_shape)
    fixed = [d for d in dims[1:] if isinstance(d, int)]
    return [batch, *fixed] if len(fixed) == len(dims) - 1 else None


def empty_past_shape(dims: list[int | str | None], batch: int,
                     kv_shape: Sequence[int] | None = None) -> list[int] | None:
    """Shape of an empty ``past_key_values.*`` input, (batch, kv_heads, 0, head_dim), from the graph's
    declared dims (named or unknown dims after the first are the sequence axis); None if ambiguous.
    ``kv_shape``: (kv_heads, head_dim) where the graph leaves them symbolic (a GenAI build, whose
    ``genai_config.json`` has them: ``compressor.export.genai.genai_kv_shape``)."""
    if kv_shape is not None:
        return [batch, int(kv_shape[0]), 0, int(kv_shape[1])]
    shape = [batch if k == 0 else (0 if isinstance(d, str) or d is None else int(d)) for k, d in enumerate(dims)]
    return shape if shape.count(0) == 1 else None


def installed_runtimes() -> list[str]:
    """Which ONNX Runtime distributions pip installed (0, 1 or, wrongly, 2)."""
    from importlib.metadata import distributions

    names = set()
    for d in distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name in _DISTS:
            names.add(name)
    return sorted(names)


def check_runtime_install() -> str:
    """Return the one installed distribution name, or raise with the fix."""
    dists = installed_runtimes()
    if not dists:
        raise RuntimeSetupError("no ONNX Runtime is installed",
                                "pip install 'avss-compressor[cpu]' (or '[gpu]' on a CUDA machine)")
    if len(dists) > 1:
        raise RuntimeSetupError(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's files",
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu==1.31.1 "
            "(or onnxruntime==1.32.0 on CPU)")
    return dists[0]


def cuda_in_build() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def check_provider_request(provider: str) -> None:
    """Fail early (exit 2) when ``--provider cuda`` cannot even be attempted with this install."""
    if provider not in PROVIDERS:
        raise RuntimeSetupError(f"unknown provider {provider!r}", "use --provider auto, cpu or cuda")
    dist = check_runtime_install()
    if provider == "cuda" and not cuda_in_build():
        raise RuntimeSetupError(
            f"--provider cuda was requested but the installed {dist} has no CUDA execution provider",
            "on a CUDA machine: pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.1; "
            "otherwise use --provider cpu")


@dataclass
class Session:
    session: InferenceSession
    provider: str  # the provider the session really runs on ("CPUExecutionProvider", ...)
    requested: str  # auto | cpu | cuda
    note: str  # why auto picked what it picked ("" when nothing to say)

    @property
    def on_cuda(self) -> bool:
        return self.provider == CUDA


def make_session(path: str, provider: str = "cpu", threads: int | None = None, *,
                 spinning: bool = True, device_id: int = 0, gpu_mem_limit: int | None = None) -> Session:
    """Create a session on the requested provider; ``cuda`` never silently becomes CPU.

    ``auto`` tries CUDA when the installed build has it and reports in ``note`` when it got CPU.
    """
    import onnxruntime as ort

    check_provider_request(provider)
    want_cuda = provider == "cuda" or (provider == "auto" and cuda_in_build())
    so = ort.SessionOptions()
    so.log_severity_level = 4  # ORT logs (fallback warnings, kernel errors) are replaced by our explicit checks
    if threads:
        so.intra_op_num_threads = int(threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[str | tuple[str, dict[str, int | str]]] = [CPU]
    if want_cuda:
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:  # CUDA/cuDNN from the nvidia-* wheels, if torch brought them
            try:
                preload()
            except Exception:  # noqa: BLE001 - the provider check below is what decides
                pass
        opts: dict[str, int | str] = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
        if gpu_mem_limit:
            opts["gpu_mem_limit"] = int(gpu_mem_limit)
        providers = [(CUDA, opts), CPU]
    try:
        sess = ort.InferenceSession(path, so, providers=providers)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RuntimeSetupError(f"ONNX Runtime cannot load {path}: {first}",
                                "re-export the model with `avss export`", kind="runtime") from exc
    actual = sess.get_providers()[0]
    note = ""
    if want_cuda and actual != CUDA:
        if provider == "cuda":
            raise RuntimeSetupError(
                f"--provider cuda was requested but the ONNX Runtime session runs on {actual} "
                "(CUDA or cuDNN could not be loaded on this machine)",
                "check the NVIDIA driver, CUDA 13 and cuDNN 9 (onnxruntime-gpu 1.31 needs them), or use --provider cpu")
        note = f"auto: CUDA is in the ONNX Runtime build but could not start here, so the session runs on {actual}"
    elif provider == "auto":
        note = f"auto: the session runs on {actual}"
    return Session(sess, actual, provider, note)
