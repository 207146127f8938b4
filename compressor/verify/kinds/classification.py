"""``kind: classification`` (a sequence classifier's own head) and ``kind: zero-shot-classification``
(a causal LM picks the likeliest label word): one family, the same examples and metrics, so one module."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field, model_validator

from compressor.architectures import input_device
from compressor.verify.kinds.base import DataEntry, Progress, TaskKind, register
from compressor.verify.loglik import leading_special, loglikelihoods
from compressor.verify.metrics import FiniteCount, TaskOutput, all_finite, cls_metrics, tied_max

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from compressor.sources.models import LoadedModel
    from compressor.verify.kinds.base import KindProfile, TaskEntry


def eval_classification(model: PreTrainedModel, tok: PreTrainedTokenizerBase, task: Classification.Entry,
                        examples: list[dict[str, Any]], batch_size: int, max_length: int,
                        progress: Progress | None = None) -> TaskOutput:
    import torch

    dev = input_device(model)
    records = []
    finite = FiniteCount("examples")
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        enc = tok([e["text"] for e in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**{k: v.to(dev) for k, v in enc.items()}).logits
        for e, row in zip(chunk, logits):
            finite.see(all_finite(row))
            records.append({"pred": int(row.argmax(-1)), "label": int(e["label"]), "tie": tied_max(row.tolist())})
        if progress:
            progress(min(s + batch_size, len(examples)), len(examples))
    finite.check()
    return TaskOutput(records, cls_metrics(records))


def few_shot_prefix(task: ZeroShotClassification.Entry, shots: list[dict[str, Any]]) -> str:
    return "".join(task.template.format(text=s["text"]) + task.labels[int(s["label"])] + "\n\n" for s in shots)


def eval_zero_shot(model: PreTrainedModel, tok: PreTrainedTokenizerBase, task: ZeroShotClassification.Entry,
                   examples: list[dict[str, Any]], batch_size: int, max_length: int,
                   shots: list[dict[str, Any]], progress: Progress | None = None) -> TaskOutput:
    prefix = leading_special(tok)  # BOS where the tokenizer asks for one, as lm-eval
    if shots:
        prefix += tok(few_shot_prefix(task, shots), add_special_tokens=False)["input_ids"]
    labels = sorted(task.labels)
    pairs, keys = [], []
    cont = {y: tok(task.labels[y], add_special_tokens=False)["input_ids"] for y in labels}
    for i, e in enumerate(examples):
        ctx = tok(task.template.format(text=e["text"]), add_special_tokens=False)["input_ids"]
        for y in labels:
            pairs.append((ctx, cont[y]))
            keys.append((i, y))
    lls = loglikelihoods(model, pairs, batch_size, max_length, progress, prefix=prefix)
    scores: dict[int, dict[int, float]] = {}
    for (i, y), ll in zip(keys, lls):
        scores.setdefault(i, {})[y] = ll
    finite = FiniteCount("examples")
    for i in range(len(examples)):
        finite.see(all_finite(scores[i].values()))
    finite.check()
    records = [{"pred": max(labels, key=lambda y: (scores[i][y], -y)), "label": int(e["label"]),
                "tie": tied_max(list(scores[i].values()))} for i, e in enumerate(examples)]
    return TaskOutput(records, cls_metrics(records))


def pick_shots(pool: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """Seeded, label-balanced few-shot examples."""
    if k == 0:
        return []
    rng = random.Random(seed)
    by_label: dict[int, list[dict[str, Any]]] = {}
    for e in pool:
        by_label.setdefault(int(e["label"]), []).append(e)
    labels = sorted(by_label)
    shots = []
    for i in range(k):
        shots.append(rng.choice(by_label[labels[i % len(labels)]]))
    rng.shuffle(shots)
    return shots


@register
class Classification(TaskKind):
    name = "classification"
    model_kind = "sequence-classification"
    example_fields = {"text": str, "label": int}
    builtin_shapes = frozenset({"labelled-text"})

    class Entry(DataEntry):
        kind: Literal["classification"]
        metric: Literal["accuracy", "macro_f1"] = "accuracy"

    evaluator = staticmethod(eval_classification)
    metrics_of = staticmethod(cls_metrics)


@register
class ZeroShotClassification(TaskKind):
    name = "zero-shot-classification"
    example_fields = {"text": str, "label": int}
    builtin_shapes = frozenset({"labelled-text"})

    class Entry(DataEntry):
        """A causal LM picks the label word with the highest likelihood after a prompt."""

        kind: Literal["zero-shot-classification"]
        metric: Literal["accuracy", "macro_f1"] = "accuracy"
        template: str = "{text}\nSentiment:"
        labels: dict[int, str]
        few_shot: int = Field(0, ge=0, le=32)

        @model_validator(mode="after")
        def _template_has_text(self) -> ZeroShotClassification.Entry:
            if "{text}" not in self.template:
                raise ValueError("template must contain {text}")
            if len(self.labels) < 2:
                raise ValueError("labels needs at least two entries")
            return self

    metrics_of = staticmethod(cls_metrics)

    def load(self, task: TaskEntry, profile: KindProfile) -> tuple[list[Any], list[Any]]:
        task = cast("ZeroShotClassification.Entry", task)  # the registry hands each kind its own Entry
        spec = task.data_spec()
        items = self.examples(spec.source, spec.split, spec.fields)
        shots: list[Any] = []
        if task.few_shot:
            if spec.source == "builtin:rt-sentiment":
                pool = self.examples(spec.source, "train", {})
            else:  # local file: the first examples become shots and leave the evaluation set
                pool, items = items[: 4 * task.few_shot], items[4 * task.few_shot:]
            shots = pick_shots(pool, task.few_shot, profile.eval.seed)
        return (items[: task.limit] if task.limit else items), shots

    def evaluate(self, loaded: LoadedModel, task: TaskEntry, items: list[Any], shots: list[Any], profile: KindProfile,
                 progress: Progress | None) -> TaskOutput:
        # verify loads every model it evaluates with its tokenizer
        return eval_zero_shot(loaded.model, cast("PreTrainedTokenizerBase", loaded.tokenizer),
                              cast("ZeroShotClassification.Entry", task), items, profile.eval.batch_size,
                              profile.eval.max_length, shots, progress)
