"""``kind: generation``: greedy decoding of a short answer, matched against the gold answers
(SQuAD-style). It needs the whole model: decoding runs token by token, so it cannot stream."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field

from compressor.architectures import input_device
from compressor.verify.kinds.base import DataEntry, Progress, TaskKind, register
from compressor.verify.loglik import leading_special
from compressor.verify.metrics import FiniteCount, TaskOutput, gen_metrics, nan_or_posinf, normalize, token_f1

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    import torch
    from transformers import GenerationMixin, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

    class FiniteWatch(Protocol):
        """What ``finite_watch`` returns: the rows that saw NaN or +inf logits, and the processor list holding it."""

        bad: list[bool]
        processors: LogitsProcessorList | None


def eval_generation(model: PreTrainedModel, tok: PreTrainedTokenizerBase, task: Generation.Entry,
                    examples: list[dict[str, Any]], batch_size: int, max_length: int,
                    progress: Progress | None = None) -> TaskOutput:
    import torch

    dev = input_device(model)
    bos = leading_special(tok)  # as lm-eval's generate_until: the tokenizer's defaults
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    keep = max(max_length - task.max_new_tokens, 8)
    records = []
    finite = FiniteCount("generations")
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        # a long prompt loses its start, never its "Answer:" ending (as log-likelihood tasks); left padding
        rows = [(bos + tok(task.template.format(context=e.get("context", ""), question=e["question"]),
                           add_special_tokens=False)["input_ids"])[-keep:] for e in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        with torch.inference_mode():
            watch = finite_watch(len(chunk))  # greedy decoding of NaN logits is the argmax of nothing
            # a causal LM's class mixes GenerationMixin in (PreTrainedModel alone does not declare generate)
            out = cast("GenerationMixin", model).generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                 max_new_tokens=task.max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 logits_processor=watch.processors)
        for bad in watch.bad:
            finite.see(not bad)
        for e, row in zip(chunk, out[:, width:]):
            text = tok.decode(row, skip_special_tokens=True)
            assert isinstance(text, str)  # one row decodes to one string (transformers 5 types it str | list[str])
            for stop in task.stop:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            text = text.strip()
            golds = [str(a) for a in e["answers"]]
            records.append({
                "pred": text,
                "exact_match": float(any(normalize(text) == normalize(g) for g in golds)),
                "f1": max(token_f1(text, g) for g in golds),
                "contains": float(any(normalize(g) and normalize(g) in normalize(text) for g in golds)),
            })
        if progress:
            progress(min(s + batch_size, len(examples)), len(examples))
    finite.check()
    return TaskOutput(records, gen_metrics(records))


def finite_watch(rows: int) -> FiniteWatch:
    """A logits processor for ``generate`` that only looks: which rows ever saw NaN or +inf logits
    (``.bad``). Nothing is stored per step, so long generations cost no memory."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Watch(LogitsProcessor):
        def __init__(self) -> None:
            self.bad = [False] * rows
            self.processors: LogitsProcessorList | None = None  # what generate() takes: a list holding this watch

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            for j in nan_or_posinf(scores).any(-1).nonzero().flatten().tolist():
                self.bad[j] = True
            return scores

    w = Watch()
    w.processors = LogitsProcessorList([w])
    return w


@register
class Generation(TaskKind):
    name = "generation"
    example_fields = {"context": str, "question": str, "answers": list}
    optional_fields = {"context": ""}
    builtin_shapes = frozenset({"questions"})

    class Entry(DataEntry):
        kind: Literal["generation"]
        metric: Literal["exact_match", "f1", "contains"] = "contains"
        template: str = "Context: {context}\nQuestion: {question}\nAnswer:"
        max_new_tokens: int = Field(16, ge=1, le=512)
        stop: list[str] = ["\n"]

    def from_builtin(self, shape: str, rows: list[Any]) -> list[Any]:
        """A question's correct choice is its one gold answer."""
        return [{"context": r["context"], "question": r["question"], "answers": [r["choices"][r["answer"]]]}
                for r in rows]

    evaluator = staticmethod(eval_generation)
    metrics_of = staticmethod(gen_metrics)

    def agreement(self, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> float | None:
        return sum(normalize(rb["pred"]) == normalize(rc["pred"]) for rb, rc in zip(base, cand)) / max(len(base), 1)
