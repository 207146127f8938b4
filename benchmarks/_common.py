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
    from compressor.score.passes import model_loss

    return math.exp(model_loss(loaded, data)[0])


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs.

    A thread samples RSS every 2 ms (torch releases the GIL inside kernels, so it keeps up); the
    increment over the RSS on entry is what the block itself needed (activations, logits).
    """

    MB = 1024 * 1024

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self) -> "PeakRSS":
        import threading

        import psutil

        self._proc = psutil.Process()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / self.MB

    @property
    def baseline_mb(self) -> float:
        return self.baseline / self.MB

    @property
    def increment_mb(self) -> float:
        return (self.peak - self.baseline) / self.MB
