"""``linear``: a training-free, closed-form patch per removed span, folded into the weights.

For a span of consecutive removed blocks [i..j], the kept block i-1 is made to produce what the
span produced: with M = block i-1's MLP output, Y = its output minus M (everything else the block
adds) and L = the residual stream leaving block j, solve the ridge least-squares problem
min ||M T - (L - Y)||^2 over real (unpadded) tokens, in float64, streaming M^T M and M^T (L - Y)
(activations are never stored). T is then folded into block i-1's MLP output projection, which
feeds the residual stream with nothing in between (the architecture registry says where that is,
and refuses architectures where a norm follows it). Spans are estimated one after another on the
model already cut and patched before them, and L is the block's own output, never
``hidden_states[-1]`` (which transformers returns after the final norm).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

from compressor.architectures import adapter_for_config, get_layers, mlp_out_module
from compressor.errors import BadInput, RuntimeFailure
from compressor.score.patch import DEFAULT_RIDGE, accumulate, check_foldable, solve, spans_of

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from transformers import PreTrainedModel

    from compressor.architectures import ArchAdapter
    from compressor.sources.models import LoadedModel


@dataclass
class SpanPatch:
    removed: list[int]  # original indices of the span
    fold_block: int  # original index of the kept block the patch is folded into
    fold_point: str  # e.g. "layers.12.mlp.down_proj" (index in the original numbering)
    tokens: int
    ridge: float  # relative ridge
    ridge_lambda: float  # absolute lambda added to M^T M's diagonal
    error_before: float  # ||M - target||^2 / ||target||^2: the cut without a patch
    error_after: float  # ||M T - target||^2 / ||target||^2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    """Raised by the hook on the span's last block: later blocks are not needed for this span."""


def fit_span(model: PreTrainedModel, adapter: ArchAdapter, fold_at: int, end_at: int,
             batches: list[dict[str, torch.Tensor]], ridge: float = DEFAULT_RIDGE,
             progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Solve T for the span ending at block ``end_at`` (current numbering), folded into ``fold_at``."""
    import torch

    from compressor.architectures import body_of, input_device
    from compressor.score.stats import _block_io

    layers = get_layers(model, adapter)
    body = body_of(model, adapter)
    proj = mlp_out_module(layers[fold_at], adapter)
    got: dict[str, torch.Tensor] = {}
    acc: dict[str, Any] = {}

    def on_mlp(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        got["M"] = output

    def on_fold(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        got["L_prev"] = _block_io(args, kwargs, output)[1]

    def on_end(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        got["L_end"] = _block_io(args, kwargs, output)[1]
        raise _Stop

    handles = [proj.register_forward_hook(on_mlp), layers[fold_at].register_forward_hook(on_fold, with_kwargs=True),
               layers[end_at].register_forward_hook(on_end, with_kwargs=True)]
    dev = input_device(model)
    try:
        with torch.inference_mode():
            for n, batch in enumerate(batches, 1):
                got.clear()
                try:
                    body(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                         use_cache=False)
                except _Stop:
                    pass
                if "L_end" not in got or "M" not in got:
                    raise RuntimeFailure("the linear repair's hooks saw no activations", "report this model's config")
                mask = batch["attention_mask"].to(got["M"].device).bool()
                acc = accumulate(acc, got["M"], got["L_prev"], got["L_end"], mask)
                if progress:
                    progress(n, len(batches))
    finally:
        for h in handles:
            h.remove()
    return solve(acc, ridge)


def fold(module: nn.Module, kind: str, T: torch.Tensor) -> None:
    """Make ``module``'s output y become y @ T (weights and bias), exactly, in float64 then cast back."""
    import torch

    weight = cast("torch.Tensor", module.weight)  # nn.Linear's or Conv1D's parameter
    with torch.no_grad():
        W = weight.data
        T = T.to(W.device)
        if kind == "conv1d":  # y = x W + b, W [d_in, d_out]
            new = W.double() @ T
        else:  # nn.Linear: y = x W^T + b, W [d_out, d_in]
            new = T.T @ W.double()
        weight.data = new.to(W.dtype)
        bias = getattr(module, "bias", None)
        if bias is not None:
            bias.data = (bias.data.double() @ T).to(bias.dtype)


def linear_repair(model: PreTrainedModel, removed: list[int], batches: list[dict[str, torch.Tensor]], *,
                  ridge: float = DEFAULT_RIDGE, progress: Callable[[int, int], None] | None = None) -> tuple[list[SpanPatch], list[str]]:
    """Cut ``removed`` from ``model`` (a full model, modified in place) span by span, patching each.

    Returns the patches and the surgery's warnings."""
    from compressor.prune.surgery import remove_layers

    adapter = adapter_for_config(model.config)
    check_foldable(adapter, removed)
    if not batches:
        raise BadInput("the linear repair needs calibration data", "pass --data or --profile")
    patches, warnings, offset = [], [], 0
    spans = spans_of(removed)
    total = len(spans) * len(batches)
    for si, span in enumerate(spans):
        i, j = span[0], span[-1]
        fold_at, end_at = i - 1 - offset, j - offset

        def step(done: int, _n: int, si: int = si) -> None:
            if progress:
                progress(si * len(batches) + done, total)

        T, st = fit_span(model, adapter, fold_at, end_at, batches, ridge, step)
        fold(mlp_out_module(get_layers(model, adapter)[fold_at], adapter), adapter.mlp_out_kind, T)
        warnings = remove_layers(model, list(range(i - offset, j - offset + 1)), adapter)
        offset += len(span)
        patches.append(SpanPatch(span, i - 1, f"{adapter.layers_path}.{i - 1}.{adapter.mlp_out}", int(st["tokens"]), ridge,
                                 st["ridge_lambda"], st["error_before"], st["error_after"]))
    return patches, warnings


def linear_repair_streamed(loaded: LoadedModel, removed: list[int], batches: list[dict[str, torch.Tensor]], *,
                           ridge: float = DEFAULT_RIDGE, progress: Callable[[int, int], None] | None = None
                           ) -> tuple[list[SpanPatch], dict[str, torch.Tensor]]:
    """``linear_repair`` one block at a time on a streamed model (``--stream``): the same statistics,
    the same solve, the same fold, nothing cut in memory. Returns the patches and the patched
    tensors by checkpoint key (the MLP output projection of each fold block), for the shard writer.

    Each span is fitted on the stream leaving the blocks before it, already patched (as in memory):
    the fold block runs unpatched to give M and its output, the span's blocks run on that, then the
    fold block runs again with T folded in, and its output goes on. Blocks after the last span never run."""
    import torch

    adapter, stream = loaded.adapter, loaded.stream
    check_foldable(adapter, removed)
    if not batches:
        raise BadInput("the linear repair needs calibration data", "pass --data or --profile")
    spans = spans_of(removed)
    fold_at = {span[0] - 1: span for span in spans}
    last = spans[-1][-1] if spans else -1
    total = last + 1 + len(spans)  # block loads: every block up to the last span, and each fold block twice
    done = 0
    assert stream is not None, "a streamed model has its LayerStream"
    hidden, calls = stream.block_inputs(batches)
    masks = [b["attention_mask"].bool() for b in batches]
    patches: list[SpanPatch] = []
    replace: dict[str, torch.Tensor] = {}

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    with torch.inference_mode():
        i = 0
        while i <= last:
            if i not in fold_at:
                with stream.block(i) as block:
                    hidden = [stream.run_block(block, h, calls[i][b]) for b, h in enumerate(hidden)]
                tick()
                i += 1
                continue
            span = fold_at[i]
            inputs, Ms = list(hidden), []
            with stream.block(i) as block:
                handle = mlp_out_module(block, adapter).register_forward_hook(lambda m, a, o: Ms.append(o))
                try:
                    hidden = [stream.run_block(block, h, calls[i][b]) for b, h in enumerate(hidden)]
                finally:
                    handle.remove()
            prev = list(hidden)
            tick()
            for j in span:
                with stream.block(j) as block:
                    hidden = [stream.run_block(block, h, calls[j][b]) for b, h in enumerate(hidden)]
                tick()
            acc: dict[str, Any] = {}
            for b in range(len(batches)):
                acc = accumulate(acc, Ms[b], prev[b], hidden[b], masks[b].to(Ms[b].device))
            T, st = solve(acc, ridge)
            with stream.block(i) as block:
                proj = mlp_out_module(block, adapter)
                fold(proj, adapter.mlp_out_kind, T)
                hidden = [stream.run_block(block, h, calls[i][b]) for b, h in enumerate(inputs)]
                for name, p in proj.named_parameters():
                    replace[stream.layer_key(i, f"{adapter.mlp_out}.{name}")] = p.detach().clone()
            tick()
            patches.append(SpanPatch(span, i,
                                     f"{adapter.layers_path}.{i}.{adapter.mlp_out}", int(st["tokens"]), ridge,
                                     st["ridge_lambda"], st["error_before"], st["error_after"]))
            i = span[-1] + 1
    return patches, replace
