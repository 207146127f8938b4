"""What ``avss bench`` reports: each model's figures (``ModelBench``), every other model against the first
(``Ratio``) and the report that holds both (``BenchReport``, written as bench.json with ``SCHEMA_VERSION``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


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


def ratios(models: list[ModelBench]) -> list[Ratio]:
    """Every model after the first against the first (the reference)."""
    return [ratio(m, models[0]) for m in models[1:]]


def ratio(m: ModelBench, ref: ModelBench) -> Ratio:
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


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _p50(p: Percentiles | None) -> float | None:
    return None if p is None else p.p50


def _own_device_mb(b: ModelBench) -> float | None:
    """Device memory the model added (peak - before); NVML reads the whole device."""
    if b.device_mem_peak_mb is None or b.device_mem_before_mb is None:
        return None
    return b.device_mem_peak_mb - b.device_mem_before_mb
