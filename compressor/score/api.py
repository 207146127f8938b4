"""``score_layers``: the library entry point behind ``avss score``."""
from __future__ import annotations

import time
from typing import Any, Callable

from compressor import __version__
from compressor.architectures import body_of, final_norm_of, get_layers, set_layers
from compressor.errors import BadInput, compute_error
from compressor.score import methods
from compressor.score.report import ScoreReport
from compressor.score.stats import ROBUST_TAU, StatConfig, StatsCollector
from compressor.sources.data import CalibrationData
from compressor.sources.models import LoadedModel

Progress = Callable[[int, int], None]  # (done, total) batches

DEFAULT_RATIO = 0.25


def input_device(model: Any) -> Any:
    return model.get_input_embeddings().weight.device


def _forward_kwargs(loaded: LoadedModel, batch: dict[str, Any]) -> dict[str, Any]:
    dev = input_device(loaded.model)
    kw = {"input_ids": batch["input_ids"].to(dev), "attention_mask": batch["attention_mask"].to(dev)}
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
    with StatsCollector(layers, StatConfig(groups, tau, last)) as col, torch.inference_mode():
        for n, batch in enumerate(data.batches, 1):
            col.start_batch(batch["attention_mask"])
            body(**_forward_kwargs(loaded, batch))
            col.end_batch()
            if progress:
                progress(n, total)
    return col


def model_loss(loaded: LoadedModel, data: CalibrationData, reference: list[Any] | None = None) -> tuple[float, str, list[Any]]:
    """Loss used by leave-one-out. Returns (value, kind, per-batch outputs kept for reference)."""
    import torch
    import torch.nn.functional as F

    model = loaded.model
    is_causal = loaded.adapter.family == "decoder" and model.get_output_embeddings() is not None
    is_cls = not is_causal and "SequenceClassification" in type(model).__name__
    total, count, keep = 0.0, 0.0, []
    with torch.inference_mode():
        for bi, batch in enumerate(data.batches):
            kw = _forward_kwargs(loaded, batch)
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


def leave_one_out_losses(loaded: LoadedModel, data: CalibrationData, progress: Progress | None = None):
    """Skip each block in turn (removed from the ModuleList, restored afterwards)."""
    from torch import nn

    layers = get_layers(loaded.model, loaded.adapter)
    n = len(layers)
    base, kind, ref = model_loss(loaded, data)
    if ref:  # encoders: the loss is a distance to the full model's outputs, 0 for the full model
        base = 0.0
    skipped = []
    try:
        for i in range(n):
            set_layers(loaded.model, nn.ModuleList([l for j, l in enumerate(layers) if j != i]), loaded.adapter)
            loss, _, _ = model_loss(loaded, data, ref or None)
            skipped.append(loss)
            if progress:
                progress(i + 1, n)
    finally:
        set_layers(loaded.model, layers, loaded.adapter)
    return base, skipped, kind


def score_layers(
    loaded: LoadedModel,
    method: str = "avss",
    *,
    mode: str | None = None,
    data: CalibrationData | None = None,
    seed: int = 0,
    tau: float = ROBUST_TAU,
    progress: Progress | None = None,
    objective: str | None = None,
    max_remove: int | None = None,
    protect: list[int] | None = None,
    last_state: str | None = None,
) -> ScoreReport:
    """Score every block of ``loaded``; returns a report whose ``ranking`` is least important first.

    ``objective`` / ``max_remove`` / ``protect``: SLEB's loss (nll, kl), how many removals to compute
    (default: half the layers) and the blocks it may never remove. ``last_state``: ``final-norm`` reads
    the last block's output after the model's final norm, as ShortGPT and PruneMe do (transformers'
    ``hidden_states[-1]``); ``block`` (default) its raw output, like every other block's."""
    scorer = methods.get_scorer(method)
    mode = methods.check_mode(method, mode)
    methods.check_options(method, objective, max_remove, last_state)
    n = loaded.num_layers
    if scorer.needs_data and data is None:
        raise BadInput(f"--method {method} needs calibration data", "pass --data SOURCE or --profile FILE")
    t0 = time.perf_counter()
    try:
        final = last_state == "final-norm"
        if method == "avss" and mode == "official":
            outcome = methods.avss_official(collect_stats(loaded, data, methods.stat_groups(method, mode), tau, progress,
                                                          final).results())
        elif method == "avss":
            outcome = methods.avss_robust(collect_stats(loaded, data, methods.stat_groups(method, mode), tau, progress,
                                                        final).results(), tau)
        elif method == "block-influence":
            outcome = methods.block_influence(collect_stats(loaded, data, scorer.groups, tau, progress, final).results())
        elif method == "angular":
            col = collect_stats(loaded, data, scorer.groups, tau, progress, final)
            outcome = methods.angular(col.angular_matrix(), n)
        elif method == "sleb":
            from compressor.score import sleb

            result = sleb.sleb_order(loaded, data, max_remove if max_remove is not None else n // 2,
                                     sorted(protect or []), objective or "nll", progress)
            outcome = sleb.sleb_outcome(result, n)
        elif method == "leave-one-out":
            base, skipped, kind = leave_one_out_losses(loaded, data, progress)
            outcome = methods.leave_one_out(base, skipped, kind)
        elif method == "last-k":
            outcome = methods.last_k(n)
        else:
            outcome = methods.random_scores(n, seed)
    except (RuntimeError, MemoryError) as exc:
        known = compute_error(exc, "scoring", "try a smaller --batch-size or --seq-len")
        if known is None:
            raise  # a bug, not a setting: "unexpected …; report it"
        raise known from exc
    seconds = time.perf_counter() - t0
    label = f"{method} ({mode})" if mode else method
    methods.check_finite(outcome, label)
    warnings = list(outcome.warnings) + (list(data.warnings) if data is not None and scorer.needs_data else [])
    report = ScoreReport(
        model=_model_info(loaded), method=method, mode=mode, description=scorer.description, num_layers=n,
        layers=outcome.layers, calibration=data.describe() if data is not None and scorer.needs_data else None,
        default_selection={}, device=loaded.device, dtype=loaded.dtype, seconds=seconds,
        tool_version=__version__, warnings=warnings, extra=outcome.extra,
    )
    if method == "random":
        report.extra["seed"] = seed
    if last_state is not None:
        report.extra["last_state"] = last_state
    from compressor.prune.select import select_layers

    sel = select_layers(report, ratio=DEFAULT_RATIO)
    report.default_selection = sel.to_dict()
    return report


def _model_info(loaded: LoadedModel) -> dict[str, Any]:
    cfg = loaded.config
    return {
        "spec": loaded.spec,
        "path": loaded.path,
        "model_type": cfg.model_type,
        "architecture": (getattr(cfg, "architectures", None) or [type(loaded.model).__name__])[0],
        "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
    }
