"""Helpers shared by the benchmark scripts (not part of the library)."""
from __future__ import annotations

import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def eval_batches(tokenizer, tokens: int = 2048, window: int = 512, source: str = "builtin:python-docs"):
    """Held-out text (the evaluation split: disjoint from calibration) as packed windows."""
    from compressor.sources.data import CalibrationSpec, load_calibration

    spec = CalibrationSpec(source=source, samples=tokens // window, seq_len=window, batch_size=2, split="evaluation")
    return load_calibration(spec, tokenizer, "decoder")


def perplexity(model, data) -> float:
    import torch
    import torch.nn.functional as F

    nll, n = 0.0, 0
    with torch.inference_mode():
        for b in data.batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            lp = logits[:, :-1].float()
            tgt = b["input_ids"][:, 1:]
            m = (b["attention_mask"][:, 1:] * b["attention_mask"][:, :-1]).bool()
            loss = F.cross_entropy(lp.reshape(-1, lp.shape[-1]), tgt.reshape(-1), reduction="none")
            nll += float(loss[m.reshape(-1)].sum())
            n += int(m.sum())
    return math.exp(nll / n)


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t
