"""avss-compressor: score transformer layers, remove the least important ones, and prove the result.

Public surface (kept small on purpose; heavy modules import torch lazily):

    from compressor import score_layers, select_layers, prune_model, load_model, load_calibration
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "score_layers", "select_layers", "prune_model", "load_model", "load_calibration"]


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


def __getattr__(name: str):  # lazy: `import compressor` must not import torch
    if name == "score_layers":
        from compressor.score.api import score_layers

        return score_layers
    if name == "select_layers":
        from compressor.prune.select import select_layers

        return select_layers
    if name == "prune_model":
        from compressor.prune.surgery import prune_model

        return prune_model
    if name == "load_model":
        from compressor.sources.models import load_model

        return load_model
    if name == "load_calibration":
        from compressor.sources.data import load_calibration

        return load_calibration
    raise AttributeError(name)
