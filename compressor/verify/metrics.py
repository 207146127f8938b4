"""What a task's outputs are and how they become numbers: records -> metrics, the finiteness rule every
kind applies (a broken model must not score like a base near chance), and SQuAD-style text matching.

Why apart from the kinds (``verify.kinds``): metrics are pure functions of records, used by our kinds and
by lm-evaluation-harness's (``verify.harness``); they need neither a model nor torch (except to test
logits for NaN).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class TaskOutput:
    records: list[dict[str, Any]]
    metrics: dict[str, float]


class NonFiniteOutputs(Exception):
    """A model gave NaN/inf logits or log-likelihoods on a task: there is no score to compare.

    Why an exception and not a number: every NaN log-likelihood ties, the argmax takes the first
    choice, and a broken model scores like a base near chance; a NaN perplexity cannot be written to
    JSON. ``verify`` turns it into a failed task (candidate) or bad input (base)."""

    def __init__(self, bad: int, total: int, unit: str):
        self.bad, self.total, self.unit = bad, total, unit
        super().__init__(self.what())

    def what(self, whose: str = "") -> str:
        return f"non-finite {whose + ' ' if whose else ''}outputs (NaN/inf) on {self.bad} of {self.total} {self.unit}"


class FiniteCount:
    """Counts the examples (windows, generations) whose outputs were not all finite; ``check()`` raises."""

    def __init__(self, unit: str):
        self.unit, self.bad, self.total = unit, 0, 0

    def see(self, finite: bool) -> bool:
        self.total += 1
        self.bad += not finite
        return finite

    def check(self) -> None:
        if self.bad:
            raise NonFiniteOutputs(self.bad, self.total, self.unit)


def all_finite(values: torch.Tensor | Iterable[float]) -> bool:
    """Whether every value (floats, or a tensor) is finite."""
    if hasattr(values, "isfinite"):
        return bool(values.isfinite().all())
    return all(math.isfinite(v) for v in values)


def nan_or_posinf(t: torch.Tensor) -> torch.Tensor:
    """Where logits are broken: NaN or +inf (-inf is a masked vocabulary slot or a logits processor's)."""
    import torch

    return torch.isnan(t) | torch.isposinf(t)


def no_nan_or_posinf(t: torch.Tensor) -> bool:
    return not bool(nan_or_posinf(t).any())


def tied_max(scores: list[float]) -> bool:
    """Whether the highest score is shared: the argmax then picks the first of equals, not the model."""
    top = max(scores)
    return sum(v == top for v in scores) > 1


def ppl_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    nll = sum(r["nll"] for r in records)
    n = sum(r["n"] for r in records)
    loss = nll / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "token_accuracy": sum(r["correct"] for r in records) / max(n, 1)}


def cls_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    acc = sum(r["pred"] == r["label"] for r in records) / max(len(records), 1)
    labels = sorted({r["label"] for r in records} | {r["pred"] for r in records})
    f1s = []
    for c in labels:
        tp = sum(r["pred"] == c and r["label"] == c for r in records)
        fp = sum(r["pred"] == c and r["label"] != c for r in records)
        fn = sum(r["pred"] != c and r["label"] == c for r in records)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": acc, "macro_f1": sum(f1s) / max(len(f1s), 1)}


# which per-example prediction a multiple-choice metric reads (our kind and lm-eval's multiple_choice)
MC_PREDICTION = {"acc": "pred", "acc_norm": "pred_norm", "acc_bytes": "pred_bytes"}


def first_argmax(scores: list[float]) -> int:
    """Index of the highest score, the first of equals (numpy's argmax, which lm-eval uses)."""
    return max(range(len(scores)), key=lambda c: (scores[c], -c))


def mc_predictions(lls: list[float], choices: list[str]) -> dict[str, Any]:
    """The choice each multiple-choice metric picks (lm-eval's argmax, first of equals), and whether that
    pick was a tie (every tied choice scored the same, so the pick says nothing about the model)."""
    scored = {"pred": lls, "pred_norm": [v / max(len(c), 1) for v, c in zip(lls, choices)],
              "pred_bytes": [v / max(len(c.encode("utf-8")), 1) for v, c in zip(lls, choices)]}
    out: dict[str, Any] = {k: first_argmax(v) for k, v in scored.items()}
    out["tie"] = {k: tied_max(v) for k, v in scored.items()}
    return out


def mc_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    n = max(len(records), 1)
    return {"acc": sum(r["pred"] == r["answer"] for r in records) / n,
            "acc_norm": sum(r["pred_norm"] == r["answer"] for r in records) / n,
            "acc_bytes": sum(r["pred_bytes"] == r["answer"] for r in records) / n}


def gen_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    n = max(len(records), 1)
    return {k: sum(r[k] for r in records) / n for k in ("exact_match", "f1", "contains")}


def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)
