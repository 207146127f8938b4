"""Helpers shared by the benchmark scripts (not part of the library)."""
from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def eval_batches(tokenizer, tokens: int = 2048, window: int = 512, source: str = "builtin:python-docs"):
    """Held-out text (the evaluation split: disjoint from calibration) as packed windows."""
    from compressor.sources.data import CalibrationSpec, load_calibration

    spec = CalibrationSpec(source=source, samples=tokens // window, seq_len=window, batch_size=2, split="evaluation")
    return load_calibration(spec, tokenizer, "decoder")


def perplexity(loaded, data) -> float:
    """exp(mean next-token NLL) over real tokens, computed by the library's leave-one-out loss."""
    from compressor.score.api import model_loss

    return math.exp(model_loss(loaded, data)[0])
