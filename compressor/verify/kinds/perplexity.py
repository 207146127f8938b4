"""``kind: perplexity``: rolling-window perplexity over held-out text, the one kind that runs on a
streamed model (every window goes through a block before the next block is read)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Literal, cast

from pydantic import Field, model_validator

from compressor.architectures import input_device
from compressor.errors import BadInput
from compressor.sources.data import pad_right
from compressor.verify.kinds.base import DataEntry, Progress, TaskKind, register
from compressor.verify.metrics import FiniteCount, TaskOutput, all_finite, no_nan_or_posinf, ppl_metrics

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from compressor.sources.models import LoadedModel
    from compressor.sources.stream import LayerStream
    from compressor.verify.kinds.base import KindProfile, TaskEntry


def eval_perplexity(model: PreTrainedModel, tok: PreTrainedTokenizerBase, task: Perplexity.Entry, docs: list[str],
                    batch_size: int, max_length: int, progress: Progress | None = None,
                    stream: LayerStream | None = None) -> TaskOutput:
    """Rolling windows: each window scores only tokens no earlier window scored (stride), with up to
    ``window - stride`` tokens of context; ``limit`` = tokens scored. ``stream``: the model's
    ``LayerStream``: every window runs block by block, each block read once (``--stream``)."""
    import torch.nn.functional as F

    limit = task.limit or 4096
    ids: list[int] = []
    sep = tok.eos_token_id
    for d in docs:
        ids.extend(tok(d, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if len(ids) > limit:
            break
    ids = ids[: limit + 1]
    window = min(task.window, max_length)
    stride = min(task.stride, window)
    spans, prev_end, begin = [], 0, 0
    while prev_end < len(ids):
        end = min(begin + window, len(ids))
        spans.append((begin, end, max(end - prev_end, 0)))
        prev_end = end
        begin += stride
    chunks = [pad_right([ids[b:e] for b, e, _ in spans[s:s + batch_size]]) for s in range(0, len(spans), batch_size)]
    records: list[dict[str, Any]] = []
    finite = FiniteCount("windows")
    for c, logits in enumerate(_chunk_logits(model, chunks, stream, progress)):
        x = chunks[c][0]
        for j, (b, e, trg) in enumerate(spans[c * batch_size:(c + 1) * batch_size]):
            first = max(e - b - trg, 1)  # position 0 has no prediction
            lp = F.log_softmax(logits[j, first - 1:e - b - 1].float(), dim=-1)
            tgt = x[j, first:e - b].to(lp.device)
            nll = -lp.gather(-1, tgt[:, None]).squeeze(-1)
            if not finite.see(no_nan_or_posinf(lp) and all_finite(nll)):
                continue
            top1 = lp.argmax(-1)
            records.append({"nll": float(nll.sum()), "n": int(tgt.numel()), "correct": int((top1 == tgt).sum()),
                            "top1": top1.tolist()})
    finite.check()
    if not records or sum(r["n"] for r in records) == 0:
        raise BadInput(f"task {task.name}: no tokens to score", "use more text or a larger limit")
    return TaskOutput(records, ppl_metrics(records))


def _chunk_logits(model: PreTrainedModel, chunks: list[tuple[torch.Tensor, torch.Tensor]], stream: LayerStream | None,
                  progress: Progress | None) -> Iterator[torch.Tensor]:
    """Each (ids, mask) chunk's logits, in order: one forward per chunk, or, streamed, every chunk
    through block 0, then block 1, ... (each block read once), then the head chunk by chunk."""
    import torch

    if stream is None:
        dev = input_device(model)
        for c, (x, m) in enumerate(chunks):
            with torch.inference_mode():
                yield model(input_ids=x.to(dev), attention_mask=m.to(dev), use_cache=False).logits
            if progress:
                progress(c + 1, len(chunks))
        return
    states = stream.final_states([{"input_ids": x, "attention_mask": m} for x, m in chunks], progress)
    for h in states:
        with torch.inference_mode():
            yield stream.logits(h)


@register
class Perplexity(TaskKind):
    name = "perplexity"
    lower_is_better = frozenset({"perplexity", "loss"})
    per_token = True
    example_fields = {"text": str}
    documents = True
    builtin_shapes = frozenset({"text"})

    class Entry(DataEntry):
        """Rolling windows with a stride over held-out text; ``limit`` counts tokens."""

        kind: Literal["perplexity"]
        metric: Literal["perplexity", "token_accuracy"] = "perplexity"
        window: int = Field(512, ge=8)
        stride: int = Field(256, ge=1)

        @model_validator(mode="after")
        def _stride_fits(self) -> Perplexity.Entry:
            if self.stride > self.window:
                raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window})")
            return self

    def load(self, task: TaskEntry, profile: KindProfile) -> tuple[list[Any], list[Any]]:
        spec = cast("Perplexity.Entry", task).data_spec()
        return self.examples(spec.source, spec.split, spec.fields), []  # limit counts tokens

    evaluator = staticmethod(eval_perplexity)
    metrics_of = staticmethod(ppl_metrics)
    streams = True

    def evaluate(self, loaded: LoadedModel, task: TaskEntry, items: list[Any], shots: list[Any], profile: KindProfile,
                 progress: Progress | None) -> TaskOutput:
        # verify loads every model it evaluates with its tokenizer
        return eval_perplexity(loaded.model, cast("PreTrainedTokenizerBase", loaded.tokenizer),
                               cast("Perplexity.Entry", task), items, profile.eval.batch_size, profile.eval.max_length,
                               progress, stream=getattr(loaded, "stream", None))

    def agreement(self, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> float | None:
        """Scored tokens where both models predict the same next token."""
        pairs = [(a, b) for rb, rc in zip(base, cand) for a, b in zip(rb["top1"], rc["top1"])]
        return cast("float", sum(a == b for a, b in pairs) / max(len(pairs), 1))

    def count(self, records: list[dict[str, Any]]) -> int:
        return cast("int", sum(r["n"] for r in records))
