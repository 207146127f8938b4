"""avss-compressor: score transformer layers, remove the least important ones, and prove the result.

Public surface (kept small on purpose; each name imports its module, and torch, only when used):

    from compressor import load_model, score_layers, select_layers, prune_model, verify_models, export_model
    from compressor import score_checkpoint, prune_checkpoint, repair_pruned  # the commands as calls
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it ("module:attr" when the name differs): what `from compressor import X` offers
_PUBLIC = {
    "load_model": "compressor.sources.models",
    "CalibrationSpec": "compressor.sources.data",
    "load_calibration": "compressor.sources.data",
    "calibration_spec": "compressor.profiles",
    "score_layers": "compressor.score.api",
    "score_checkpoint": "compressor.score.api",
    "select_layers": "compressor.score.select",
    "prune_model": "compressor.prune.surgery",
    "prune_checkpoint": "compressor.prune.api",
    "cut_provenance": "compressor.prune.provenance",
    "repair_pruned": "compressor.repair.api",
    # the settings the commands take, one object per concern (what each CLI shell builds from its flags)
    "LoadSettings": "compressor.sources.settings",
    "CalibrationSettings": "compressor.sources.settings",
    "ScorerSettings": "compressor.score.settings",
    "CutSettings": "compressor.score.select",
    "repair_settings": "compressor.repair.methods",
    "load_profile": "compressor.profiles",
    # not "verify": that is the subpackage's name, which the import system binds over a lazy attribute
    "verify_models": "compressor.verify.api:verify",
    "write_reports": "compressor.verify.report",
    "export_model": "compressor.export.convert",
    "export_genai": "compressor.export.genai",
    "get_exporter": "compressor.export.exporters",
    "quantize_export": "compressor.export.quantize",
    "load_onnx_model": "compressor.export.ort_model",
    "BenchOptions": "compressor.export.bench",
    "bench_models": "compressor.export.bench",
    "RunConfig": "compressor.run.config",
    "run_pipeline": "compressor.run.api",
}

__all__ = ["__version__", *_PUBLIC]


def library_versions() -> dict[str, str]:
    """What produced a result (recorded in run.json, export.json, benchmarks); missing packages are left out."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"avss-compressor": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu",
                 "onnxruntime-genai", "onnxruntime-genai-cuda",
                 "lm_eval", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def __getattr__(name: str) -> Any:  # lazy: `import compressor` must not import torch
    if name not in _PUBLIC:
        raise AttributeError(f"module 'compressor' has no attribute {name!r}")
    import importlib

    module, _, attr = _PUBLIC[name].partition(":")
    return getattr(importlib.import_module(module), attr or name)
