"""Healing the slim model from the full one, sized for CPU minutes: ``distill`` and ``lora``.

What trains (``trainable``):
- ``neighbours`` (``--repair distill``): the kept blocks on both sides of every cut, in full; everything
  else is frozen, so backward stops at the first of them.
- ``lora`` (``--repair lora``): LoRA adapters (peft) on every linear layer of every kept block, merged
  back into the weights afterwards, so the result is a plain checkpoint with no adapters.

The loss (``--heal-loss``):
- ``hidden``: the student's state after the kept block before each cut is pulled towards the teacher's
  state leaving the removed span, and its final (normed) hidden state towards the teacher's, each as
  a relative MSE. It skips the LM head (a full-vocabulary KL step costs ~4 s per 1k tokens on
  SmolLM2-135M on 2 cores: the 49k-word head dominates).
- ``kl``: KL between the full model's and the student's next-token distributions restricted to the
  teacher's top-k tokens (k = 64): the head is evaluated on 64 rows, not 49k, so it does not dominate.

A held-out slice of the calibration batches stops training when its loss stops falling and keeps the
best weights; ``minutes`` bounds the training's wall time. The held-out full-vocabulary KL to the full
model is measured before and after, so a report shows what healing bought, whatever the loss.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from compressor.architectures import body_of, get_layers
from compressor.errors import BadInput
from compressor.repair.settings import DEFAULT_LR, DEFAULT_STEPS, LOSSES
from compressor.score.patch import spans_of

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftModel
    from torch import nn
    from torch.utils.hooks import RemovableHandle
    from transformers import PreTrainedModel

TOP_K = 64
LORA_RANK = 8


@dataclass
class DistillRecord:
    steps: int  # steps run (early stopping or the time budget may end before the step budget)
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
    objective: str = "hidden"
    trainable: str = "neighbours"
    budget_minutes: float | None = None
    stopped_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LOSS_TEXT = {"hidden": "relative MSE of hidden states at each cut point and of the final normed state",
             "kl": f"KL(full || slim) of the next-token distribution over the full model's top {TOP_K} tokens"}


def cut_points(kept: list[int], removed: list[int]) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs whose outputs should agree: the kept block before each
    removed span against the span's last block."""
    pairs = []
    for span in spans_of(removed):
        if span[0] == 0:
            continue  # nothing precedes it in the student; the final state still covers it
        pairs.append((kept.index(span[0] - 1), span[-1]))
    return pairs


def _capture(layers: nn.ModuleList, idx: list[int], store: dict[int, torch.Tensor]) -> list[RemovableHandle]:
    from compressor.score.stats import ForwardHook, _block_io

    def make(i: int) -> ForwardHook:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            store[i] = _block_io(args, kwargs, output)[1]
        return hook

    return [layers[i].register_forward_hook(make(i), with_kwargs=True) for i in idx]


def _kl(student: PreTrainedModel, teacher: PreTrainedModel, batches: list[dict[str, torch.Tensor]],
        dev: torch.device) -> float:
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


def _head(model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """The LM head's weight and bias, and the final logit soft-cap if the config has one."""
    head = model.get_output_embeddings()
    if head is None:
        raise BadInput(f"--heal-loss kl needs a causal LM head; {type(model).__name__} has none",
                       "use --heal-loss hidden")
    return head.weight, getattr(head, "bias", None), getattr(model.config, "final_logit_softcapping", None)


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The final logit soft-cap of models that have one (Gemma), so both sides see the model's own logits."""
    import torch

    return cap * torch.tanh(logits / cap) if cap else logits


def _topk_logits(h: torch.Tensor, idx: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None, float | None]
                 ) -> torch.Tensor:
    """Logits of ``idx`` (tokens x k) from final hidden states ``h`` (tokens x d): k rows of the head."""
    import torch

    w, b, cap = head
    out = torch.einsum("td,tkd->tk", h.float(), w[idx].float())
    if b is not None:
        out = out + b[idx].float()
    return _softcap(out, cap)


def _lora_targets(model: nn.Module, kept_layers: Iterable[nn.Module]) -> list[str]:
    """Full names of every linear layer inside the blocks (peft matches names by suffix)."""
    from torch import nn

    names = []
    inside = {id(m) for layer in kept_layers for m in layer.modules()}
    for name, mod in model.named_modules():
        if id(mod) in inside and (isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"):
            names.append(name)
    return names


class _Neighbours:
    """Train the kept blocks on either side of each removed span (ShortGPT-style healing, in place)."""

    name = "neighbours"

    @staticmethod
    def attach(student: PreTrainedModel, s_layers: nn.ModuleList, kept: list[int], removed: list[int]
               ) -> tuple[nn.Module, list[nn.Parameter], list[int]]:
        blocks = set()
        for span in spans_of(removed):
            if span[0] > 0:
                blocks.add(kept.index(span[0] - 1))
            if span[-1] + 1 in kept:
                blocks.add(kept.index(span[-1] + 1))
        trained = sorted(i for i in blocks if 0 <= i < len(s_layers))
        return student, [p for i in trained for p in s_layers[i].parameters()], trained

    @staticmethod
    def detach(model: nn.Module) -> PreTrainedModel:
        return cast("PreTrainedModel", model)  # attach trains the student itself


class _Lora:
    """LoRA adapters (peft) on every linear layer of every kept block, merged back into plain weights."""

    name = "lora"

    @staticmethod
    def attach(student: PreTrainedModel, s_layers: nn.ModuleList, kept: list[int], removed: list[int]
               ) -> tuple[nn.Module, list[nn.Parameter], list[int]]:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                            target_modules=_lora_targets(student, s_layers), bias="none")
        model = get_peft_model(student, config)
        return model, [p for name, p in model.named_parameters() if "lora_" in name], list(range(len(s_layers)))

    @staticmethod
    def detach(model: nn.Module) -> PreTrainedModel:
        # plain modules again, the adapters folded into their weights
        merged: PreTrainedModel = cast("PeftModel", model).merge_and_unload()  # attach's PeftModel
        return merged


# what a healing step trains (``Repair.trainable`` names one): attach returns (the model to run, its trained
# parameters, the trained blocks), detach the plain model afterwards
TRAINABLE = {t.name: t for t in (_Neighbours, _Lora)}


def distill(student: PreTrainedModel, teacher: PreTrainedModel, kept: list[int], removed: list[int],
            batches: list[dict[str, torch.Tensor]], *,
            steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, seed: int = 0, eval_every: int = 10,
            patience: int = 3, loss: str = "hidden", trainable: str = "neighbours", minutes: float | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> tuple[PreTrainedModel, DistillRecord]:
    """Train ``student`` (the cut model) towards ``teacher`` (the full model); returns the healed model
    (``student`` itself, or with ``lora`` the same modules with the adapters merged) and the record."""
    import torch

    from compressor.architectures import input_device

    if steps < 1:
        raise BadInput(f"--heal-steps must be at least 1 (got {steps})", "e.g. --heal-steps 30")
    if not lr > 0:
        raise BadInput(f"--heal-lr must be positive (got {lr})", "e.g. --heal-lr 3e-4")
    if minutes is not None and not minutes > 0:
        raise BadInput(f"--heal-minutes must be positive (got {minutes})", "e.g. --heal-minutes 5")
    if loss not in LOSSES:
        raise BadInput(f"unknown --heal-loss {loss!r}", f"use one of: {', '.join(LOSSES)}")
    if trainable not in TRAINABLE:  # pragma: no cover - set by the repair classes, never by a user
        raise ValueError(f"unknown trainable {trainable!r}")
    if len(batches) < 2:
        raise BadInput("distillation needs at least 2 calibration batches (one is held out)",
                       "raise --samples or lower --batch-size")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    held = max(1, len(batches) // 8)
    train, heldout = batches[:-held], batches[-held:]
    pairs = cut_points(kept, removed) if loss == "hidden" else []
    s_layers, t_layers = get_layers(student), get_layers(teacher)
    t_body = body_of(teacher)
    for p in student.parameters():
        p.requires_grad_(False)
    model, params, trainable_blocks = TRAINABLE[trainable].attach(student, s_layers, kept, removed)
    for p in params:
        p.requires_grad_(True)
    s_body = body_of(student)  # the same modules, adapters injected in place
    dev = input_device(student)
    head = _head(teacher) if loss == "kl" else None

    # teacher targets, computed once: hidden states (relative MSE needs their mean square too), or the
    # top-k token ids and logits of every real token
    targets: list[dict[int | str, torch.Tensor]] = []
    t_store: dict[int, torch.Tensor] = {}
    handles = _capture(t_layers, [t for _, t in pairs], t_store)
    try:
        with torch.inference_mode():
            for b in batches:
                t_store.clear()
                out = t_body(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)
                if loss == "kl":
                    m = b["attention_mask"].to(dev).bool()
                    h = out.last_hidden_state[m]
                    logits = _softcap(teacher.get_output_embeddings()(h).float(), head[2] if head else None)
                    top = logits.topk(TOP_K, dim=-1)
                    targets.append({"idx": top.indices.clone(), "logp": torch.log_softmax(top.values, -1).clone()})
                else:
                    targets.append({**{t: t_store[t].detach().clone() for _, t in pairs},
                                    "final": out.last_hidden_state.detach().clone()})
    finally:
        for h_ in handles:
            h_.remove()

    s_store: dict[int, torch.Tensor] = {}
    s_head = _head(student) if loss == "kl" else None

    def loss_on(bi: int, b: dict[str, torch.Tensor]) -> torch.Tensor:
        s_store.clear()
        mask = b["attention_mask"].to(dev).bool()
        out = s_body(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)
        if s_head is not None:
            tg = targets[bi]
            logq = torch.log_softmax(_topk_logits(out.last_hidden_state[mask], tg["idx"], s_head), -1)
            return (tg["logp"].exp() * (tg["logp"] - logq)).sum(-1).mean()
        terms = [(s_store[s], targets[bi][t]) for s, t in pairs] + [(out.last_hidden_state, targets[bi]["final"])]
        total: torch.Tensor | float = 0.0
        for pred, tgt in terms:
            p, g = pred[mask].float(), tgt[mask].float()
            total = total + ((p - g) ** 2).mean() / (g ** 2).mean().clamp_min(1e-12)
        return cast("torch.Tensor", total) / len(terms)  # a tensor: terms always holds the final state

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
        bad, done, stopped, out_of_time = 0, 0, False, False
        for step in range(1, steps + 1):
            if not perm:
                perm = torch.randperm(len(train), generator=order).tolist()
            bi = perm.pop()
            value = loss_on(bi, train[bi])
            opt.zero_grad(set_to_none=True)
            value.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            done = step
            if progress:
                progress(step, steps, float(value.detach()))
            out_of_time = minutes is not None and time.perf_counter() - t0 >= 60 * minutes
            if step % eval_every == 0 or step == steps or out_of_time:
                h = heldout_loss()
                if h < best * (1 - 1e-3):
                    best, bad = h, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= patience:
                        stopped = True
                        break
            if out_of_time:
                break
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
        after = heldout_loss()
    finally:
        for h_ in handles:
            h_.remove()
        for p in params:
            p.requires_grad_(False)
    n_params = int(sum(p.numel() for p in params))
    student = TRAINABLE[trainable].detach(model)
    for p in student.parameters():
        p.requires_grad_(False)
    kl_after = _kl(student, teacher, heldout, dev)
    tokens = done * int(sum(int(b["attention_mask"].sum()) for b in train) / max(len(train), 1))
    return student, DistillRecord(
        done, steps, lr, seed, trainable_blocks, n_params, len(train), len(heldout), tokens, before, after, kl_before,
        kl_after, stopped, round(time.perf_counter() - t0, 2), LOSS_TEXT[loss], loss, trainable, minutes,
        out_of_time and not stopped)
