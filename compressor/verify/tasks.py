"""Task kinds: each turns (model, examples) into per-example records, and records into metrics.

Per-example records (not just a final number) let the gate compute agreement between base and
candidate, and paired bootstrap confidence intervals, from the same data. One ``TaskKind`` class per
kind (at the end of this file) holds all of it: its profile entry (schema and validators), its data
rules, evaluation, metrics and agreement. Profiles and ``verify.examples`` ask the registry, so adding a
kind is one class in one place (lm-evaluation-harness tasks: ``harness.py``). What the kinds share lives
apart: records -> numbers and the finiteness rule in ``verify.metrics``, the KV-sharing log-likelihood
engine in ``verify.loglik``.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressor.errors import BadInput
from compressor.registry import Registry
from compressor.sources.data import pad_right
from compressor.verify.examples import load_examples
from compressor.verify.loglik import input_device, loglikelihoods
from compressor.verify.metrics import (
    MC_PREDICTION,
    FiniteCount,
    TaskOutput,
    all_finite,
    cls_metrics,
    gen_metrics,
    mc_metrics,
    mc_predictions,
    nan_or_posinf,
    no_nan_or_posinf,
    normalize,
    ppl_metrics,
    tied_max,
    token_f1,
)

Progress = Callable[[int, int], None]
# lower-is-better metric names: ours, and lm-evaluation-harness's rolling-log-likelihood metrics

# ---------------------------------------------------------------- evaluators

def eval_perplexity(model: Any, tok: Any, task: Any, docs: list[str], batch_size: int, max_length: int,
                    progress: Progress | None = None, stream: Any = None) -> TaskOutput:
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


def _chunk_logits(model: Any, chunks: list[tuple[Any, Any]], stream: Any, progress: Progress | None) -> Iterator[Any]:
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


def eval_classification(model: Any, tok: Any, task: Any, examples: list[dict[str, Any]], batch_size: int,
                        max_length: int, progress: Progress | None = None) -> TaskOutput:
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


def few_shot_prefix(task: Any, shots: list[dict[str, Any]]) -> str:
    return "".join(task.template.format(text=s["text"]) + task.labels[int(s["label"])] + "\n\n" for s in shots)


def eval_zero_shot(model: Any, tok: Any, task: Any, examples: list[dict[str, Any]], batch_size: int, max_length: int,
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


def leading_special(tok: Any) -> list[int]:
    """Token ids the tokenizer puts before any text by default (its BOS, if ``add_bos_token``).

    lm-evaluation-harness encodes with the tokenizer's defaults, so a model whose tokenizer asks for a
    BOS is evaluated with one; ours follows the tokenizer the same way (a pruned model keeps its
    tokenizer, so base and candidate always see the same ids)."""
    probe = "x"
    a = tok(probe)["input_ids"]
    b = tok(probe, add_special_tokens=False)["input_ids"]
    return list(a[: len(a) - len(b)]) if b and a[len(a) - len(b):] == b else []


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-evaluation-harness 0.4 encodes a causal LM request:
    trailing spaces of the context move to the continuation, the whole string is encoded with the
    tokenizer's defaults (BOS) and split at the context's length."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    bos = getattr(tok, "bos_token", None)
    special = {"add_special_tokens": False} if bos and context.startswith(bos) else {}
    whole = tok(context + continuation, **special)["input_ids"]
    ctx = tok(context, **special)["input_ids"]
    return list(ctx), list(whole[len(ctx):])


def eval_multiple_choice(model: Any, tok: Any, task: Any, examples: list[dict[str, Any]], batch_size: int,
                         max_length: int, progress: Progress | None = None) -> TaskOutput:
    """lm-evaluation-harness's ``multiple_choice``: each choice after ``target_delimiter`` (" "), ``acc``
    on the summed log-likelihood, ``acc_norm`` on it divided by the choice's length in characters,
    ``acc_bytes`` by its UTF-8 bytes (the choice without the delimiter, as lm-eval 0.4.13)."""
    pairs, keys = [], []
    for i, e in enumerate(examples):
        ctx = task.template.format(context=e.get("context", ""), question=e["question"])
        for c, choice in enumerate(e["choices"]):
            pairs.append(encode_pair(tok, ctx, " " + choice))
            keys.append((i, c))
    lls = loglikelihoods(model, pairs, batch_size, max_length, progress)
    per: dict[int, list[float]] = {}
    for (i, _c), ll in zip(keys, lls):
        per.setdefault(i, []).append(ll)
    finite = FiniteCount("examples")
    for i in range(len(examples)):
        finite.see(all_finite(per[i]))
    finite.check()
    records = [{**mc_predictions(per[i], e["choices"]), "answer": int(e["answer"]), "lls": per[i]}
               for i, e in enumerate(examples)]
    return TaskOutput(records, mc_metrics(records))


def eval_generation(model: Any, tok: Any, task: Any, examples: list[dict[str, Any]], batch_size: int, max_length: int,
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
            out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                 max_new_tokens=task.max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 logits_processor=watch.processors)
        for bad in watch.bad:
            finite.see(not bad)
        for e, row in zip(chunk, out[:, width:]):
            text = tok.decode(row, skip_special_tokens=True)
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


def finite_watch(rows: int) -> Any:
    """A logits processor for ``generate`` that only looks: which rows ever saw NaN or +inf logits
    (``.bad``). Nothing is stored per step, so long generations cost no memory."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Watch(LogitsProcessor):
        def __init__(self) -> None:
            self.bad = [False] * rows
            self.processors: Any = None  # what generate() takes: a list holding this watch

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for j in nan_or_posinf(scores).any(-1).nonzero().flatten().tolist():
                self.bad[j] = True
            return scores

    w = Watch()
    w.processors = LogitsProcessorList([w])
    return w


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


# ---------------------------------------------------------------- profile entries

class TaskEntry(BaseModel):
    """A task as a profile writes it. Strict (unknown keys refused, NaN and inf too), so a typo never silently
    disables a check."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    if TYPE_CHECKING:  # every kind's entry has these; each kind declares them as fields, in its own order
        kind: str
        metric: str
        limit: int | None
        min_retention: float | None


class DataSpec(BaseModel):
    """A built-in name or a local .jsonl/.csv/.txt file, with a mapping from our field names to the file's."""

    model_config = ConfigDict(extra="forbid")

    source: str
    split: Literal["calibration", "evaluation", "train", "test", "all"] | None = None
    fields: dict[str, str] = {}


class DataEntry(TaskEntry):
    """The entry of a kind whose examples come from ``data`` (read by the kind's data rules)."""

    data: Union[str, DataSpec]
    limit: int | None = Field(None, ge=1)
    min_retention: float | None = Field(None, gt=0, le=2)

    def data_spec(self) -> DataSpec:
        return self.data if isinstance(self.data, DataSpec) else DataSpec(source=self.data)


# ---------------------------------------------------------------- the kinds (registry)

class TaskKind:
    """One task kind, whole: its profile entry, the model it evaluates, what its data must hold, how a
    model is evaluated on it, the metrics of per-example records, and how often two models agree.
    ``@register`` makes it a kind that profiles can name; nothing else knows kinds by name."""

    name = ""
    # the pydantic model of its profile entry; declares ``kind: Literal[name]``, the tag profiles dispatch on
    Entry: type[TaskEntry] = TaskEntry
    model_kind = "causal-lm"  # the profile ``model_kind`` whose models it evaluates
    lower_is_better: frozenset[str] = frozenset()  # this kind's metrics where lower is better
    per_token = False  # its scores are per token: base and candidate must share a tokenizer

    # data rules, applied by ``verify.examples``: an example's fields (canonical names; str, int or list, a
    # list written "a|b" in CSV), those a file may leave out (with their value then), whether examples
    # are plain-text documents (the one field) instead of records, the built-in data shapes it reads
    example_fields: dict[str, type] = {}
    optional_fields: dict[str, Any] = {}
    documents = False
    builtin_shapes: frozenset[str] = frozenset()

    def misfit(self, task_name: str, model_kind: str) -> str | None:
        """Why a task of this kind cannot be in a profile of ``model_kind`` models (None: it can)."""
        if model_kind == self.model_kind:
            return None
        return f"task {task_name!r}: kind {self.name} needs model_kind {self.model_kind}"

    def higher_is_better(self, metric: str) -> bool:
        """The metric's direction, declared by the kind that computes it (retention flips for lower)."""
        return metric not in self.lower_is_better

    def examples(self, source: str, split: str | None, fields: dict[str, str]) -> list[Any]:
        """All examples of a task of this kind (no limit applied), checked against its data rules."""
        return load_examples(self, source, split, fields, all_kinds())

    def from_builtin(self, shape: str, rows: list[Any]) -> list[Any]:
        """Built-in rows as this kind's examples: documents as they are, records cut to its fields."""
        return rows if self.documents else [{k: r[k] for k in self.example_fields} for r in rows]

    def check(self, example: dict[str, Any], where: str) -> None:
        """This kind's own rule on one example read from a file (raises BadInput); none by default."""

    def load(self, task: Any, profile: Any) -> tuple[list[Any], list[Any]]:
        """(evaluation examples, few-shot pool), read before any model loads."""
        spec = task.data_spec()
        items = self.examples(spec.source, spec.split, spec.fields)
        return (items[: task.limit] if task.limit else items), []

    # most kinds are one evaluator ``f(model, tok, task, items, batch_size, max_length, progress)`` and
    # one metrics function of the records; a kind that needs more overrides the methods below
    evaluator: Callable[..., TaskOutput] | None = None
    metrics_of: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None
    # it can run on a streamed model (``--stream``: one block at a time over all its inputs); False: it
    # needs the whole model (generation decodes token by token, classifiers have their own heads)
    streams: ClassVar[bool] = False

    def check_streams(self, task: Any) -> None:
        """Refuse ``task`` on a streamed model when this kind needs the whole model."""
        if not self.streams:
            raise BadInput(f"task {task.name} (kind {self.name}) needs the whole model in memory, so it cannot run "
                           f"streamed; only {', '.join(k.name for k in KINDS.values() if k.streams)} tasks run one "
                           "block at a time", "drop --stream (on a machine with the memory), or gate on a profile "
                           "of perplexity tasks")

    def evaluate(self, loaded: Any, task: Any, items: list[Any], shots: list[Any], profile: Any,
                 progress: Progress | None) -> TaskOutput:
        evaluator = type(self).evaluator
        if evaluator is None:
            raise NotImplementedError(f"{type(self).__name__} declares no evaluator")
        return evaluator(loaded.model, loaded.tokenizer, task, items, profile.eval.batch_size,
                         profile.eval.max_length, progress)

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        metrics_of = type(self).metrics_of
        if metrics_of is None:
            raise NotImplementedError(f"{type(self).__name__} declares no metrics")
        return metrics_of(records)

    def agreement(self, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> float | None:
        """Share of examples where both models give the same answer (None: the kind has no answer)."""
        pairs = [(rb["pred"], rc["pred"]) for rb, rc in zip(base, cand)]
        return sum(a == b for a, b in pairs) / max(len(pairs), 1)

    def count(self, records: list[dict[str, Any]]) -> int:
        """What ``n`` means in a report: examples (perplexity: scored tokens)."""
        return len(records)

    def ties(self, metric: str, records: list[dict[str, Any]]) -> int | None:
        """Examples whose prediction was a tie between choices (None: the kind has no choices). Multiple
        choice (ours and lm-eval's) records a tie per prediction; ``metric`` says which one it reads."""
        if not records or "tie" not in records[0]:
            return None
        key = MC_PREDICTION.get(metric, "pred")
        return sum(bool(r["tie"][key] if isinstance(r["tie"], dict) else r["tie"]) for r in records)


def _declares_its_kind(cls: type) -> None:
    tag = cls.Entry.model_fields.get("kind")  # type: ignore[attr-defined]
    if tag is None or get_args(tag.annotation) != (cls.name,):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}.Entry must declare kind: Literal[{cls.name!r}] (profiles find a task's "  # type: ignore[attr-defined]
                        "kind by it)")


KINDS: Registry[TaskKind] = Registry("task kind", check=_declares_its_kind)

# kinds that live with an optional dependency, loaded by name (no import cycle) when first asked for;
# importing one is cheap, its dependency loads only when a task of it runs
PLUGIN_KINDS = {"lm-eval": "compressor.verify.harness"}


def register(cls: type[TaskKind]) -> type[TaskKind]:
    """``@register``: a task kind becomes a ``kind:`` profiles can name (into the registry as it is now)."""
    return KINDS.register(cls)


def unregister(name: str) -> None:
    del KINDS[name]


def kind(name: str) -> TaskKind:
    if name not in KINDS and name in PLUGIN_KINDS:
        import importlib

        importlib.import_module(PLUGIN_KINDS[name])  # its @register adds it
    return KINDS.find(name)


def all_kinds() -> list[TaskKind]:
    """Every kind, plugins included, in registration order (the order a profile error lists them)."""
    for name in PLUGIN_KINDS:
        kind(name)
    return list(KINDS.values())


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
        def _stride_fits(self):
            if self.stride > self.window:
                raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window})")
            return self

    def load(self, task: Any, profile: Any) -> tuple[list[Any], list[Any]]:
        spec = task.data_spec()
        return self.examples(spec.source, spec.split, spec.fields), []  # limit counts tokens

    evaluator = staticmethod(eval_perplexity)
    metrics_of = staticmethod(ppl_metrics)
    streams = True

    def evaluate(self, loaded, task, items, shots, profile, progress):
        return eval_perplexity(loaded.model, loaded.tokenizer, task, items, profile.eval.batch_size,
                               profile.eval.max_length, progress, stream=getattr(loaded, "stream", None))

    def agreement(self, metric, base, cand):
        """Scored tokens where both models predict the same next token."""
        pairs = [(a, b) for rb, rc in zip(base, cand) for a, b in zip(rb["top1"], rc["top1"])]
        return sum(a == b for a, b in pairs) / max(len(pairs), 1)

    def count(self, records):
        return sum(r["n"] for r in records)


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
        def _template_has_text(self):
            if "{text}" not in self.template:
                raise ValueError("template must contain {text}")
            if len(self.labels) < 2:
                raise ValueError("labels needs at least two entries")
            return self

    metrics_of = staticmethod(cls_metrics)

    def load(self, task, profile):
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

    def evaluate(self, loaded, task, items, shots, profile, progress):
        return eval_zero_shot(loaded.model, loaded.tokenizer, task, items, profile.eval.batch_size,
                              profile.eval.max_length, shots, progress)


@register
class MultipleChoice(TaskKind):
    name = "multiple-choice"
    example_fields = {"context": str, "question": str, "choices": list, "answer": int}
    optional_fields = {"context": ""}
    builtin_shapes = frozenset({"questions"})

    class Entry(DataEntry):
        """Log-likelihood of each choice after the prompt, as lm-evaluation-harness's ``multiple_choice``
        (``acc_norm``: per character of the choice; ``acc_bytes``: per UTF-8 byte)."""

        kind: Literal["multiple-choice"]
        metric: Literal["acc", "acc_norm", "acc_bytes"] = "acc_norm"
        template: str = "Context: {context}\nQuestion: {question}\nAnswer:"

    def check(self, example, where):
        if not 0 <= example["answer"] < len(example["choices"]):
            raise BadInput(f"{where}: answer {example['answer']} is not an index into its choices", "use a 0-based index")

    evaluator = staticmethod(eval_multiple_choice)
    metrics_of = staticmethod(mc_metrics)

    def agreement(self, metric, base, cand):
        key = MC_PREDICTION.get(metric, "pred")
        return sum(rb[key] == rc[key] for rb, rc in zip(base, cand)) / max(len(base), 1)


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

    def from_builtin(self, shape, rows):
        """A question's correct choice is its one gold answer."""
        return [{"context": r["context"], "question": r["question"], "answers": [r["choices"][r["answer"]]]}
                for r in rows]

    evaluator = staticmethod(eval_generation)
    metrics_of = staticmethod(gen_metrics)

    def agreement(self, metric, base, cand):
        return sum(normalize(rb["pred"]) == normalize(rc["pred"]) for rb, rc in zip(base, cand)) / max(len(base), 1)
