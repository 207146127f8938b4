"""Post-patch residual: what the linear patch cannot reproduce of each contiguous span of blocks.

Why: a scorer that judges blocks in the full model chooses the cut *before* repair, without knowing
what the patch can fix. The linear patch for the span [s..e] (``compressor.repair.linear``) solves a
ridge least-squares problem whose normal equations need only the MLP output M of the fold block
i = s-1 and the residual stream leaving blocks i and e. One calibration pass that keeps those two
activations per block therefore gives the error left after the patch for *every* span of every
length, in closed form: the same statistics, the same solve, the same error as patching the span
(``fit_span``) for each one separately, at the cost of one pass.

The cost of a span is the patched stream's error relative to the true stream leaving the span,
sum ||M T - Y||^2 / sum ||L_e||^2 over real tokens (Y = L_e - L_i + M): how far the residual stream
the next kept block sees is from the one it saw before the cut. The patch's own ``error_after``
(relative to the target Y) is kept too, but it ranks badly across depths: where the fold block's MLP
output is huge (SmolLM2's massive activations around layer 11) it is tiny for any span.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

from compressor.architectures import adapter_for_config, body_of, get_layers, mlp_out_module
from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressor.sources.data import CalibrationData
    from compressor.sources.models import LoadedModel

Progress = Callable[[int, int], None]


def _capture(loaded: LoadedModel, data: CalibrationData) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per batch: every block's MLP output and output on real tokens, in the model's dtype (float64 copies
    are made per use: keeping them would double the memory, about 1 GB at SmolLM2's 32 x 256 tokens)."""
    import torch

    from compressor.architectures import input_device
    from compressor.score.stats import _block_io

    layers = get_layers(loaded.model, loaded.adapter)
    body = body_of(loaded.model, loaded.adapter)
    L = len(layers)
    Ms: list[list[torch.Tensor]] = []
    Ls: list[list[torch.Tensor]] = []
    got: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(mlp_out_module(layer, loaded.adapter).register_forward_hook(
            lambda m, a, o, i=i: got.__setitem__(("M", i), o)))
        handles.append(layer.register_forward_hook(
            lambda m, a, k, o, i=i: got.__setitem__(("L", i), _block_io(a, k, o)[1]), with_kwargs=True))
    dev = input_device(loaded.model)
    try:
        with torch.inference_mode():
            for batch in data.batches:
                got.clear()
                body(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                     use_cache=False)
                mask = batch["attention_mask"].to(dev).bool()
                Ms.append([got[("M", i)][mask] for i in range(L)])
                Ls.append([got[("L", i)][mask] for i in range(L)])
    finally:
        for h in handles:
            h.remove()
    return Ms, Ls


def span_residuals(loaded: LoadedModel, data: CalibrationData, *, ridge: float | None = None,
                   max_span: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Every contiguous span [s..e] (s >= 1, at most ``max_span`` blocks): its cost after the patch.

    Returns ``cost`` and ``error_after`` / ``error_before`` as (L+1) x (L+1) matrices indexed
    [s][e+1] (None where no span: s = 0 has no block before it to fold into), and ``tokens``."""
    import torch

    from compressor.score.patch import DEFAULT_RIDGE, check_foldable, solve

    adapter = adapter_for_config(loaded.model.config)
    check_foldable(adapter, [])
    ridge = DEFAULT_RIDGE if ridge is None else ridge
    L = loaded.num_layers
    max_span = L - 1 if max_span is None else max(1, min(max_span, L - 1))
    if not data.batches:
        raise BadInput("the post-patch residual needs calibration data", "pass --data or --profile")
    Ms, Ls = _capture(loaded, data)
    nb = len(Ms)
    cost: list[list[float | None]] = [[None] * (L + 1) for _ in range(L + 1)]
    after: list[list[float | None]] = [[None] * (L + 1) for _ in range(L + 1)]
    before: list[list[float | None]] = [[None] * (L + 1) for _ in range(L + 1)]
    folds = list(range(0, L - 1))
    total = sum(min(max_span, L - 1 - i) for i in folds)
    done = 0
    tokens = 0
    for i in folds:
        Mi = [Ms[b][i].double() for b in range(nb)]
        Li = [Ls[b][i].double() for b in range(nb)]
        # tensors: there is at least one batch (checked above)
        MtM = cast("torch.Tensor", sum(M.T @ M for M in Mi))
        MtLi = cast("torch.Tensor", sum(M.T @ h for M, h in zip(Mi, Li)))
        for e in range(i + 1, min(L, i + 1 + max_span)):
            MtY = torch.zeros_like(MtM)
            yy = torch.zeros((), dtype=torch.float64)
            ll = torch.zeros((), dtype=torch.float64)
            tokens = 0
            for b in range(nb):
                M, Le = Mi[b], Ls[b][e].double()
                MtY += M.T @ Le
                Y = Le - Li[b] + M
                yy += (Y * Y).sum()
                ll += (Le * Le).sum()
                tokens += int(M.shape[0])
            MtY += MtM - MtLi
            acc = {"MtM": MtM, "MtY": MtY, "yy": yy, "tokens": tokens}
            _, st = solve(acc, ridge)
            s = i + 1
            after[s][e + 1] = st["error_after"]
            before[s][e + 1] = st["error_before"]
            cost[s][e + 1] = st["error_after"] * float(yy) / float(ll) if float(ll) > 0 else 0.0
            done += 1
            if progress:
                progress(done, total)
    return {"cost": cost, "error_after": after, "error_before": before, "tokens": tokens, "ridge": ridge,
            "max_span": max_span}


def span_cost(cost: list[list[float | None]], removed: list[int]) -> float | None:
    """The cost of a cut: the sum of its spans' costs (None if a span cannot be patched or is too long)."""
    from compressor.score.patch import spans_of

    total = 0.0
    for span in spans_of(removed):
        c = cost[span[0]][span[-1] + 1]
        if c is None:
            return None
        total += c
    return total


def greedy_order(cost: list[list[float | None]], num_layers: int, max_remove: int,
                 protect: list[int]) -> tuple[list[int], list[float]]:
    """SLEB-style rounds on the closed-form costs: each round removes the block whose removal, with its
    span patched, leaves the cut's total cost lowest. Nested by construction; never a protected block."""
    removed: list[int] = []
    costs: list[float] = []
    for _ in range(max_remove):
        best: tuple[float, int] | None = None
        for b in range(num_layers):
            if b in removed or b in protect:
                continue
            c = span_cost(cost, sorted(removed + [b]))
            if c is not None and (best is None or (c, b) < best):
                best = (c, b)
        if best is None:
            break
        removed.append(best[1])
        costs.append(best[0])
    return removed, costs
