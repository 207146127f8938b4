"""``distill``: short healing of the slim model from the full one, sized for CPU minutes.

Why this loss: a full-vocabulary KL step costs ~4 s per 1k tokens on SmolLM2-135M on 2 cores (the
49k-word LM head dominates, forward and backward). Matching hidden states skips the head: the
student's state after the kept block before each cut is pulled towards the teacher's state leaving
the removed span, and its final (normed) hidden state towards the teacher's, each as a relative
MSE. Only the blocks next to each cut train (everything else is frozen, so backward stops at the
first of them); the result is a plain checkpoint with no adapters. A held-out slice of the
calibration batches stops training when its loss stops falling and keeps the best weights; the
held-out logit KL to the full model is measured before and after, so a report shows what healing
bought.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from compressor.architectures import body_of, get_layers
from compressor.errors import BadInput
from compressor.repair.linear import spans_of

DEFAULT_STEPS = 30  # measured on SmolLM2-135M, 2 cores: ~5 s per 2,048-token step, ~2.5 min in all
DEFAULT_LR = 3e-4


@dataclass
class DistillRecord:
    steps: int  # steps run (early stopping may end before the budget)
    budget_steps: int
    lr: float
    seed: int
    trainable_blocks: list[int]  # student (new) numbering
    trainable_parameters: int
    train_batches: int
    heldout_batches: int
    tokens_seen: int
    heldout_loss_before: float
    heldout_loss_after: float
    heldout_kl_before: float
    heldout_kl_after: float
    stopped_early: bool
    seconds: float
    loss: str = "relative MSE of hidden states at each cut point and of the final normed state"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cut_points(kept: list[int], removed: list[int]) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs whose outputs should agree: the kept block before each
    removed span against the span's last block."""
    pairs = []
    for span in spans_of(removed):
        if span[0] == 0:
            continue  # nothing precedes it in the student; the final state still covers it
        pairs.append((kept.index(span[0] - 1), span[-1]))
    return pairs


def _capture(layers: Any, idx: list[int], store: dict[int, Any]) -> list[Any]:
    from compressor.score.stats import _block_io

    def make(i: int):
        def hook(module, args, kwargs, output):
            store[i] = _block_io(args, kwargs, output)[1]
        return hook

    return [layers[i].register_forward_hook(make(i), with_kwargs=True) for i in idx]


def _kl(student: Any, teacher: Any, batches: list[dict[str, Any]], dev: Any) -> float:
    """Mean per-token KL(teacher || student) of the next-token distributions on real tokens."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.inference_mode():
        for b in batches:
            ids, mask = b["input_ids"].to(dev), b["attention_mask"].to(dev)
            for r in range(ids.shape[0]):  # one row at a time: 256 x 49k logits, not 8x that
                m = mask[r].bool()
                t = F.log_softmax(teacher(input_ids=ids[r:r + 1], attention_mask=mask[r:r + 1]).logits[0][m].float(), -1)
                s = F.log_softmax(student(input_ids=ids[r:r + 1], attention_mask=mask[r:r + 1]).logits[0][m].float(), -1)
                total += float((t.exp() * (t - s)).sum())
                count += int(m.sum())
    return total / max(count, 1)


def distill(student: Any, teacher: Any, kept: list[int], removed: list[int], batches: list[dict[str, Any]], *,
            steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, seed: int = 0, eval_every: int = 10,
            patience: int = 3, progress: Callable[[int, int, float], None] | None = None) -> DistillRecord:
    """Train ``student`` (the cut model, in place) towards ``teacher`` (the full model)."""
    import torch

    if steps < 1:
        raise BadInput(f"--heal-steps must be at least 1 (got {steps})", "e.g. --heal-steps 30")
    if not lr > 0:
        raise BadInput(f"--heal-lr must be positive (got {lr})", "e.g. --heal-lr 3e-4")
    if len(batches) < 2:
        raise BadInput("distillation needs at least 2 calibration batches (one is held out)",
                       "raise --samples or lower --batch-size")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    held = max(1, len(batches) // 8)
    train, heldout = batches[:-held], batches[-held:]
    pairs = cut_points(kept, removed)
    s_layers, t_layers = get_layers(student), get_layers(teacher)
    s_body, t_body = body_of(student), body_of(teacher)
    # trainable: the kept blocks on both sides of every cut
    n = len(s_layers)
    trainable = set()
    for span in spans_of(removed):
        if span[0] > 0:
            trainable.add(kept.index(span[0] - 1))
        if span[-1] + 1 in kept:
            trainable.add(kept.index(span[-1] + 1))
    trainable_blocks = sorted(i for i in trainable if 0 <= i < n)
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for i in trainable_blocks for p in s_layers[i].parameters()]
    for p in params:
        p.requires_grad_(True)
    dev = student.get_input_embeddings().weight.device

    # teacher targets, computed once (relative MSE needs their mean square too)
    targets: list[dict[Any, Any]] = []
    t_store: dict[int, Any] = {}
    handles = _capture(t_layers, [t for _, t in pairs], t_store)
    try:
        with torch.inference_mode():
            for b in batches:
                t_store.clear()
                out = t_body(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)
                targets.append({**{t: t_store[t].detach().clone() for _, t in pairs},
                                "final": out.last_hidden_state.detach().clone()})
    finally:
        for h in handles:
            h.remove()

    s_store: dict[int, Any] = {}

    def loss_on(bi: int, b: dict[str, Any]) -> Any:
        s_store.clear()
        mask = b["attention_mask"].to(dev).bool()
        out = s_body(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)
        terms = [(s_store[s], targets[bi][t]) for s, t in pairs] + [(out.last_hidden_state, targets[bi]["final"])]
        loss = 0.0
        for pred, tgt in terms:
            p, g = pred[mask].float(), tgt[mask].float()
            loss = loss + ((p - g) ** 2).mean() / (g ** 2).mean().clamp_min(1e-12)
        return loss / len(terms)

    def heldout_loss() -> float:
        with torch.no_grad():
            return sum(float(loss_on(len(train) + k, b)) for k, b in enumerate(heldout)) / len(heldout)

    handles = _capture(s_layers, [s for s, _ in pairs], s_store)
    student.eval()  # no dropout: the student should match the teacher's eval-mode function
    try:
        kl_before = _kl(student, teacher, heldout, dev)
        before = best = heldout_loss()
        best_state = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        order = torch.Generator().manual_seed(seed)
        perm: list[int] = []
        bad, done, stopped = 0, 0, False
        for step in range(1, steps + 1):
            if not perm:
                perm = torch.randperm(len(train), generator=order).tolist()
            bi = perm.pop()
            loss = loss_on(bi, train[bi])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            done = step
            if progress:
                progress(step, steps, float(loss.detach()))
            if step % eval_every == 0 or step == steps:
                h = heldout_loss()
                if h < best * (1 - 1e-3):
                    best, bad = h, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= patience:
                        stopped = True
                        break
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
        after = heldout_loss()
        kl_after = _kl(student, teacher, heldout, dev)
    finally:
        for h in handles:
            h.remove()
        for p in student.parameters():
            p.requires_grad_(False)
    tokens = done * int(sum(int(b["attention_mask"].sum()) for b in train) / max(len(train), 1))
    return DistillRecord(done, steps, lr, seed, trainable_blocks, int(sum(p.numel() for p in params)), len(train),
                         len(heldout), tokens, before, after, kl_before, kl_after, stopped,
                         round(time.perf_counter() - t0, 2))

