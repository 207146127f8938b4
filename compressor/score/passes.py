"""Forward passes over calibration data that the scorers share: one hooked pass that collects block
statistics, the model's own loss, and leave-one-out's pass per skipped block.

Why a module of its own: the scorers (``methods``), SLEB and ``score_layers`` all run these passes;
kept here, none of them imports another's internals.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from compressor.architectures import body_of, final_norm_of, get_layers, input_device, model_kind, running_blocks
from compressor.score.stats import ROBUST_TAU, StatConfig, StatsCollector
from compressor.sources.data import CalibrationData
from compressor.sources.models import LoadedModel

if TYPE_CHECKING:  # pragma: no cover
    import torch

Progress = Callable[[int, int], None]  # (done, total) batches


def forward_kwargs(loaded: LoadedModel, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    dev = input_device(loaded.model)
    kw: dict[str, Any] = {"input_ids": batch["input_ids"].to(dev), "attention_mask": batch["attention_mask"].to(dev)}
    if loaded.adapter.family == "decoder":
        kw["use_cache"] = False
    return kw


def collect_stats(loaded: LoadedModel, data: CalibrationData, groups: frozenset[str],
                  tau: float = ROBUST_TAU, progress: Progress | None = None,
                  final_norm: bool = False) -> StatsCollector:
    """One pass over the calibration batches with hooks on every block.

    Runs the bare transformer (no task head): block statistics need no LM head, and skipping
    SmolLM2's 49k-vocabulary head saves ~12 % of the forward time and ~400 MB of logits at 8 x 256.
    """
    import torch

    layers = get_layers(loaded.model, loaded.adapter)
    body = body_of(loaded.model, loaded.adapter)
    total = len(data.batches)
    last = final_norm_of(loaded.model, loaded.adapter) if final_norm else None
    if loaded.streamed:
        return _collect_streamed(loaded, data, StatConfig(groups, tau, last), progress)
    with StatsCollector(layers, StatConfig(groups, tau, last)) as col, torch.inference_mode():
        for n, batch in enumerate(data.batches, 1):
            col.start_batch(batch["attention_mask"])
            body(**forward_kwargs(loaded, batch))
            col.end_batch()
            if progress:
                progress(n, total)
    return col


def _collect_streamed(loaded: LoadedModel, data: CalibrationData, cfg: StatConfig,
                      progress: Progress | None) -> StatsCollector:
    """``collect_stats`` one block at a time (``--stream``): the same hooks on the same block modules,
    fed block by block instead of batch by batch. Progress counts blocks."""
    import torch

    stream = loaded.stream
    assert stream is not None, "a streamed model has its LayerStream"
    layers = get_layers(loaded.model, loaded.adapter)
    hidden, calls = stream.block_inputs(data.batches)  # before the hooks: the recorders are not blocks
    with StatsCollector(layers, cfg) as col, torch.inference_mode():
        for i in range(len(layers)):
            with stream.block(i) as block:
                for b, batch in enumerate(data.batches):
                    col.select_batch(b, batch["attention_mask"])
                    hidden[b] = stream.run_block(block, hidden[b], calls[i][b])
            if progress:
                progress(i + 1, len(layers))
        col.end_batches()
    return col


def model_loss(loaded: LoadedModel, data: CalibrationData, reference: list[torch.Tensor] | None = None
               ) -> tuple[float, str, list[torch.Tensor]]:
    """Loss used by leave-one-out. Returns (value, kind, per-batch outputs kept for reference)."""
    import torch
    import torch.nn.functional as F

    model = loaded.model
    head = model_kind(model, loaded.adapter)
    is_causal, is_cls = head == "causal-lm", head == "sequence-classification"
    total, count, keep = 0.0, 0.0, []
    with torch.inference_mode():
        for bi, batch in enumerate(data.batches):
            kw = forward_kwargs(loaded, batch)
            mask = kw["attention_mask"]
            out = model(**kw)
            if is_causal:
                logits = out.logits[:, :-1].float()
                target = kw["input_ids"][:, 1:].to(logits.device)
                m = (mask[:, 1:] * mask[:, :-1]).to(logits.device).bool()
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
                total += float(nll[m.reshape(-1)].sum())
                count += float(m.sum())
                kind = "next-token NLL"
            elif is_cls:
                logp = F.log_softmax(out.logits.float(), dim=-1)
                if reference is None:
                    keep.append(logp)
                else:
                    ref = reference[bi].to(logp.device)
                    total += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
                count += float(logp.shape[0])
                kind = "KL(full || skipped) of classifier logits"
            else:
                h = out.last_hidden_state.float()
                if reference is None:
                    keep.append(h)
                else:
                    cos = F.cosine_similarity(h, reference[bi].to(h.device), dim=-1)
                    m = mask.to(h.device).float()
                    total += float(((1 - cos) * m).sum())
                count += float(mask.sum())
                kind = "1 - cos of the final hidden state"
    return total / max(count, 1.0), kind, keep


def leave_one_out_losses(loaded: LoadedModel, data: CalibrationData,
                         progress: Progress | None = None) -> tuple[float, list[float], str]:
    """Skip each block in turn (removed from the ModuleList, restored afterwards)."""
    layers = get_layers(loaded.model, loaded.adapter)
    n = len(layers)
    base, kind, ref = model_loss(loaded, data)
    if ref:  # encoders: the loss is a distance to the full model's outputs, 0 for the full model
        base = 0.0
    skipped = []
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        with running_blocks(loaded.model, loaded.adapter, [layers[j] for j in rest], rest):
            loss, _, _ = model_loss(loaded, data, ref or None)
        skipped.append(loss)
        if progress:
            progress(i + 1, n)
    return base, skipped, kind
