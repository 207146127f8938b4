"""avss-compressor: score transformer layers, remove the least important ones, and prove the result.

Public surface (kept small on purpose; heavy modules import torch lazily):

    from compressor import score_layers, select_layers, prune_model, load_model, load_calibration
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "score_layers", "select_layers", "prune_model", "load_model", "load_calibration"]


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
