"""Streaming per-block statistics gathered with forward hooks in one pass.

Why streaming: a 30-layer model at batch 8 x 256 tokens would need ~1 GB to keep every block's
activations. Instead each hook reduces its block's input/output to a few scalars *on the block's
own device* (no copies to the CPU; accelerate device maps keep working) and adds them to float64
accumulators. Only the final ``.item()`` crosses devices.

Groups (computed only when a scorer needs them):
- ``official``: the official AVSS code's quantities on the block output, padding included.
- ``stream``: padding-masked, per-token statistics of the block's effect on the RMS-normalised
  residual stream (robust AVSS, block influence).
- ``last_token``: the last real token's hidden state entering every block and leaving the last
  one, for Gromov et al.'s angular distance between any two depths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

OFFICIAL_EPS = 1e-5  # the official code's absolute sparsity threshold
ROBUST_TAU = 0.05  # robust sparsity: |delta_d| < tau on the unit-RMS stream


@dataclass
class StatConfig:
    groups: frozenset[str]
    tau: float = ROBUST_TAU
    # applied to the last block's output before any statistic (``--last-state final-norm``: the model's
    # final norm, as ShortGPT/PruneMe read ``hidden_states[-1]``); None: the raw output, like every block
    last_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


# a torch forward hook registered ``with_kwargs=True``: (module, args, kwargs, output)
ForwardHook = Callable[["nn.Module", tuple[Any, ...], dict[str, Any], Any], None]


def _block_io(args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(h_in, h_out) for any supported block signature.

    Guards the official code's fragile ``output[0]``: some blocks return a tensor, others a tuple.
    """
    if args:
        h_in = args[0]
    else:
        h_in = next((kwargs[k] for k in ("hidden_states", "x", "hidden_state") if k in kwargs), None)
    h_out = output[0] if isinstance(output, (tuple, list)) else output
    return h_in, h_out


class _LayerAcc:
    """Float64 scalars on one device."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.dim = 0  # hidden size, recorded by the stream statistics

    def add(self, key: str, value: torch.Tensor) -> None:
        import torch

        v = value.detach().to(dtype=torch.float64)
        if key in self.sums:
            self.sums[key] += v
        else:
            self.sums[key] = v.clone()

    def values(self) -> dict[str, float]:
        return {k: float(v.item()) for k, v in self.sums.items() if v.dim() == 0}


@dataclass
class BatchContext:
    mask: torch.Tensor | None = None  # (B, T) long, CPU
    _per_device: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)

    def mask_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (str(device), str(dtype))
        if key not in self._per_device:
            assert self.mask is not None, "start_batch or select_batch gives the batch's mask first"
            self._per_device[key] = self.mask.to(device=device, dtype=dtype)
        return self._per_device[key]


class StatsCollector:
    """Attach hooks to every block, feed batches, read per-layer statistics."""

    def __init__(self, layers: Iterable[nn.Module], cfg: StatConfig) -> None:
        self.layers = list(layers)
        self.cfg = cfg
        self.acc = [_LayerAcc() for _ in self.layers]
        self.ctx = BatchContext()
        self.handles: list[RemovableHandle] = []
        self.last_tokens: list[torch.Tensor | None] = [None] * (len(self.layers) + 1)
        # (L+1, L+1) float64 sum of angular distances between last-token states
        self.pair_cos: torch.Tensor | None = None
        self.samples = 0
        # streamed passes: every batch open at once
        self._open: dict[int, tuple[BatchContext, list[torch.Tensor | None]]] = {}

    def __enter__(self) -> "StatsCollector":
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def start_batch(self, attention_mask: torch.Tensor) -> None:
        self.ctx = BatchContext(mask=attention_mask)
        self.last_tokens = [None] * (len(self.layers) + 1)

    def select_batch(self, key: int, attention_mask: torch.Tensor) -> None:
        """Streamed passes run block by block, so every batch is open at once: switch to batch ``key``
        (started on first use). Each block still sees the batches in order, so every sum is the
        same as in the model-wide pass."""
        states = self._open
        if key not in states:
            states[key] = (BatchContext(mask=attention_mask), [None] * (len(self.layers) + 1))
        self.ctx, self.last_tokens = states[key]

    def end_batches(self) -> None:
        """Close every batch opened by ``select_batch``, in order."""
        states, self._open = self._open, {}
        for key in sorted(states):
            self.ctx, self.last_tokens = states[key]
            self.end_batch()

    def end_batch(self) -> None:
        if "last_token" in self.cfg.groups:
            import torch

            states = cast("list[torch.Tensor]", self.last_tokens)  # every slot set by the batch's hooks
            dev = states[0].device
            stack = torch.stack([t.to(dev) for t in states])  # (L+1, B, D) float32
            unit = torch.nn.functional.normalize(stack, dim=-1)
            cos = torch.einsum("ibd,jbd->ijb", unit, unit).to(torch.float64).clamp(-1.0, 1.0)
            # Gromov et al. average the angular distance itself over samples, not the cosine
            ang = (torch.arccos(cos) / math.pi).sum(-1)
            self.pair_cos = ang if self.pair_cos is None else self.pair_cos + ang
            self.samples += int(stack.shape[1])

    def _hook(self, index: int) -> ForwardHook:
        groups = self.cfg.groups
        tau = self.cfg.tau

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            import torch

            h_in, h_out = _block_io(args, kwargs, output)
            if index == len(self.layers) - 1 and self.cfg.last_transform is not None:
                h_out = self.cfg.last_transform(h_out)
            acc = self.acc[index]
            acc.batches += 1
            with torch.no_grad():
                if "official" in groups:
                    # Verbatim semantics of shjdjjfi/AVSS: seq-mean pool (padding included), unbiased
                    # variance over the hidden dim, mean over the batch; sparsity over all elements.
                    pooled = h_out.float().mean(dim=1)
                    acc.add("official_variance", pooled.var(dim=-1, unbiased=True).mean())
                    acc.add("official_sparsity", (h_out.abs() < OFFICIAL_EPS).float().mean())
                if "stream" in groups or "last_token" in groups:
                    mask = self.ctx.mask_on(h_out.device, torch.float32)
                if "stream" in groups:
                    assert h_in is not None, "the block was given no hidden states"
                    x = h_in.float()
                    y = h_out.float()
                    d = x.shape[-1]
                    rms_x = x.pow(2).mean(-1, keepdim=True).clamp_min(1e-12).sqrt()
                    rms_y = y.pow(2).mean(-1, keepdim=True).clamp_min(1e-12).sqrt()
                    xn = x / rms_x
                    yn = y / rms_y
                    cos = (xn * yn).mean(-1)  # unit-RMS vectors: dot / D is the cosine
                    delta = yn - xn  # the block's effect on the normalised residual stream
                    dvar = delta.var(dim=-1, unbiased=False)
                    small = (delta.abs() < tau).sum(-1).float()
                    # ||y - x||^2 / D = rms_y^2 + rms_x^2 - 2 rms_x rms_y cos: no extra full-size tensor
                    rx, ry = rms_x.squeeze(-1), rms_y.squeeze(-1)
                    upd = (ry * ry + rx * rx - 2 * rx * ry * cos).clamp_min(0).sqrt() / rx
                    acc.add("tokens", mask.sum())
                    acc.add("cos_sum", (cos * mask).sum())
                    acc.add("delta_var_sum", (dvar * mask).sum())
                    acc.add("delta_small_count", (small * mask).sum())
                    acc.add("rel_update_sum", (upd * mask).sum())
                    acc.add("out_rms_sum", (ry * mask).sum())
                    acc.dim = d
                if "last_token" in groups:
                    assert h_in is not None, "the block was given no hidden states"
                    last = (mask.sum(dim=1).long() - 1).clamp_min(0)
                    rows = torch.arange(h_in.shape[0], device=h_in.device)
                    self.last_tokens[index] = h_in[rows, last.to(h_in.device)].float()
                    if index == len(self.layers) - 1:
                        self.last_tokens[index + 1] = h_out[rows, last.to(h_out.device)].float()

        return hook

    def results(self) -> list[dict[str, float]]:
        out = []
        for acc in self.acc:
            v = acc.values()
            row: dict[str, float] = {}
            if "official_variance" in v:
                row["variance"] = v["official_variance"] / acc.batches
                row["sparsity"] = v["official_sparsity"] / acc.batches
            if "tokens" in v:
                n = max(v["tokens"], 1.0)
                row["tokens"] = v["tokens"]
                row["cosine"] = v["cos_sum"] / n
                row["delta_variance"] = v["delta_var_sum"] / n
                # Laplace-smoothed share: never exactly 0, so the ratio is always finite
                row["delta_sparsity"] = (v["delta_small_count"] + 1.0) / (v["tokens"] * acc.dim + 2.0)
                row["relative_update"] = v["rel_update_sum"] / n
                row["output_rms"] = v["out_rms_sum"] / n
            out.append(row)
        return out

    def angular_matrix(self) -> list[list[float]]:
        """d[l][m] = mean over samples of arccos(cos(h_l, h_m)) / pi, last real token, where h_l is the
        state entering block l (h_L leaves the last block)."""
        if self.pair_cos is None:
            return []
        return cast("list[list[float]]", (self.pair_cos / max(self.samples, 1)).cpu().tolist())
