"""The log-likelihood engine our log-likelihood kinds share: continuations scored in right-padded batches,
one shared context's KV cache reused for all its continuations (lm-eval's per-request scoring gives the
same numbers: benchmarks/lm_eval_parity.py), only the last position's logits computed where that is all
a kind reads. Text becomes ids here too, as lm-eval encodes it (its BOS rule, its context/continuation
split), so every kind that must match lm-eval's numbers encodes the same way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

from compressor.architectures import input_device
from compressor.sources.data import pad_right

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from transformers.cache_utils import Cache

Progress = Callable[[int, int], None]


def leading_special(tok: PreTrainedTokenizerBase) -> list[int]:
    """Token ids the tokenizer puts before any text by default (its BOS, if ``add_bos_token``).

    lm-evaluation-harness encodes with the tokenizer's defaults, so a model whose tokenizer asks for a
    BOS is evaluated with one; ours follows the tokenizer the same way (a pruned model keeps its
    tokenizer, so base and candidate always see the same ids)."""
    probe = "x"
    a = tok(probe)["input_ids"]
    b = tok(probe, add_special_tokens=False)["input_ids"]
    return list(a[: len(a) - len(b)]) if b and a[len(a) - len(b):] == b else []


def encode_pair(tok: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
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


def loglikelihoods(model: PreTrainedModel, pairs: list[tuple[list[int], list[int]]], batch_size: int, max_length: int,
                   progress: Progress | None = None, prefix: list[int] | None = None) -> list[float]:
    """Sum of log p(continuation | prefix + context) per pair.

    Pairs that share a context (the choices of one question, the label words of one review) run the
    context once: single-token continuations read the context's last logits (batched), longer ones
    reuse its KV cache, so cost scales with contexts, not contexts x choices. A ``prefix`` shared by
    every pair (few-shot examples) is run once and its KV cache reused for every batch.
    """
    prefix = list(prefix or [])
    prefix_past = _prefix_past(model, prefix) if prefix else None
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        groups.setdefault(tuple(ctx), []).append(i)
    out = [0.0] * len(pairs)
    single = [k for k, idx in groups.items() if all(len(pairs[i][1]) == 1 for i in idx)]
    multi = [k for k, idx in groups.items() if not all(len(pairs[i][1]) == 1 for i in idx)]
    done, total = 0, len(groups)
    for start in range(0, len(single), batch_size):
        chunk = single[start:start + batch_size]
        last = _last_logprobs(model, [list(k)[-max(max_length - len(prefix), 1):] for k in chunk], prefix_past)
        for row, k in zip(last, chunk):
            for i in groups[k]:
                out[i] = float(row[pairs[i][1][0]])
        done += len(chunk)
        if progress:
            progress(done, total)
    for k in multi:
        idx = groups[k]
        conts = [pairs[i][1] for i in idx]
        ctx = (prefix + list(k))[-max(max_length - max(len(c) for c in conts), 1):]
        for i, v in zip(idx, _continuations(model, ctx, conts)):
            out[i] = v
        done += 1
        if progress:
            progress(done, total)
    return out


def _repeat_rows(past: Cache, n: int) -> None:
    """Each row of a cache ``n`` times in place. A hybrid's cache (transformers 5's convolution and linear-attention
    layers: LFM2-MoE, Qwen3.5) has no ``batch_repeat_interleave``, but every layer has ``reorder_cache``, which
    selects batch rows: selecting each row ``n`` times is the same repeat."""
    import torch

    layers = getattr(past, "layers", None)
    if layers is not None and not all(hasattr(layer, "batch_repeat_interleave") for layer in layers):
        past.reorder_cache(cast("torch.LongTensor", torch.arange(_batch_rows(past)).repeat_interleave(n)))
    else:
        past.batch_repeat_interleave(n)


def _batch_rows(past: Cache) -> int:
    for layer in past.layers:
        for t in (getattr(layer, "keys", None), *getattr(layer, "conv_states", {}).values()):
            if t is not None and hasattr(t, "shape") and t.dim() > 0:
                return int(t.shape[0])
    raise ValueError("an empty cache has no rows to repeat")


def _last_only(model: PreTrainedModel) -> dict[str, Any]:
    """Ask for the last position's logits only, where the model supports it (saves the vocab matmul)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _prefix_past(model: PreTrainedModel, prefix: list[int]) -> Cache:
    """KV cache of the shared prefix (callers copy it before use: a forward pass appends to it)."""
    import torch

    with torch.inference_mode():
        past: Cache = model(input_ids=torch.tensor([prefix], device=input_device(model)), use_cache=True,
                            **_last_only(model)).past_key_values
        return past


def _last_logprobs(model: PreTrainedModel, contexts: list[list[int]], prefix_past: Cache | None = None) -> torch.Tensor:
    """log-softmax of the next-token distribution after (prefix +) each context (right padding, one batch)."""
    import copy

    import torch
    import torch.nn.functional as F

    x, m = pad_right(contexts)
    dev = input_device(model)
    with torch.inference_mode():
        if prefix_past is not None:
            past = copy.deepcopy(prefix_past)
            _repeat_rows(past, len(contexts))
            full = torch.cat([torch.ones((len(contexts), past.get_seq_length()), dtype=torch.long), m], dim=1)
            logits = model(input_ids=x.to(dev), attention_mask=full.to(dev), past_key_values=past, use_cache=True).logits
        else:
            logits = model(input_ids=x.to(dev), attention_mask=m.to(dev), use_cache=False).logits
    rows = torch.arange(len(contexts), device=logits.device)
    ends = (m.sum(1) - 1).to(logits.device)
    return F.log_softmax(logits[rows, ends].float(), dim=-1).cpu()


def _continuations(model: PreTrainedModel, ctx: list[int], conts: list[list[int]]) -> list[float]:
    """Run ``ctx`` once, then every continuation (right-padded) on a copy of its KV cache."""
    import torch
    import torch.nn.functional as F

    dev = input_device(model)
    n = len(conts)
    with torch.inference_mode():
        pre = model(input_ids=torch.tensor([ctx], device=dev), use_cache=True, **_last_only(model))
        first = F.log_softmax(pre.logits[0, -1].float(), dim=-1)
        past = pre.past_key_values
        _repeat_rows(past, n)
        x, cm = pad_right(conts)
        m = torch.cat([torch.ones((n, len(ctx)), dtype=torch.long), cm], dim=1)
        logits = model(input_ids=x.to(dev), attention_mask=m.to(dev), past_key_values=past, use_cache=True).logits
        lp = F.log_softmax(logits.float(), dim=-1)
    out = []
    for j, c in enumerate(conts):
        total = float(first[c[0]])
        for t in range(1, len(c)):
            total += float(lp[j, t - 1, c[t]])
        out.append(total)
    return out
