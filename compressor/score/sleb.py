"""SLEB (Song et al., ICML 2024): remove blocks one at a time, re-measuring after every removal.

One-shot scorers judge every block in the full model; once a block is gone, the others' worth
changes. SLEB's greedy round: for every remaining block, the calibration loss of the current model
with that block skipped too; the cheapest is removed for good. The cuts are nested by construction
(the first k removals are the k-cut), so one run serves every cut size and ``--search``.

Cost: each round runs the current model once with hooks that keep the hidden state entering every
remaining block; a candidate then starts there (a ``_Replay`` module in place of the skipped block
hands the kept state to the rest), so it costs the blocks after it plus the head, not the whole model.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, cast

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from compressor.score.report import ScoreOutcome
    from compressor.sources.data import CalibrationData
    from compressor.sources.models import LoadedModel

OBJECTIVES = ("nll", "kl")
Progress = Callable[[int, int], None]


def _replay_class() -> type[nn.Module]:
    from torch import nn

    class _Replay(nn.Module):
        """Stands in for the first block of a suffix: ignores its input and returns the hidden state
        recorded entering the candidate, in the block's own output format (tensor or tuple)."""

        def __init__(self, block: nn.Module, as_tuple: bool):
            super().__init__()
            self.state: torch.Tensor | None = None
            self.as_tuple = as_tuple
            for attr in ("attention_type", "layer_idx", "is_sliding"):  # read by some bodies per layer
                if hasattr(block, attr):
                    setattr(self, attr, getattr(block, attr))

        def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor | None] | torch.Tensor | None:
            return (self.state,) if self.as_tuple else self.state

    return _Replay


class _Loss:
    """Per-batch objective of a model output: next-token NLL (SLEB) or KL(full || candidate) over real
    tokens for causal LMs; KL of the logits for classifiers."""

    def __init__(self, objective: str, causal: bool):
        self.objective = objective
        self.causal = causal

    def reference(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        import torch.nn.functional as F

        if self.objective == "nll" and self.causal:
            return None
        return F.log_softmax((logits[:, :-1] if self.causal else logits).float(), dim=-1)

    def __call__(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], ref: torch.Tensor | None
                 ) -> tuple[float, float]:
        import torch.nn.functional as F

        mask = batch["attention_mask"].to(logits.device)
        if not self.causal:
            assert ref is not None, "a classifier's objective is the KL to its reference"
            logp = F.log_softmax(logits.float(), dim=-1)
            return float(F.kl_div(logp, ref, log_target=True, reduction="sum")), float(logp.shape[0])
        m = (mask[:, 1:] * mask[:, :-1]).bool()
        lg = logits[:, :-1].float()
        if self.objective == "nll":
            target = batch["input_ids"][:, 1:].to(lg.device)
            nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1), reduction="none")
            return float(nll[m.reshape(-1)].sum()), float(m.sum())
        logp = F.log_softmax(lg, dim=-1)
        assert ref is not None, "the kl objective compares with its reference"
        kl = (ref.exp() * (ref - logp)).sum(-1)
        return float(kl[m].sum()), float(m.sum())


def sleb_order(loaded: LoadedModel, data: CalibrationData, max_remove: int, protect: list[int], objective: str = "nll",
               progress: Progress | None = None) -> dict[str, Any]:
    """Greedy removal order (up to ``max_remove`` blocks) and the loss after each removal.

    Returns ``order``, ``loss_after`` (the calibration loss once the first k blocks are gone),
    ``base_loss``, per-round candidate losses, and the cost: seconds against the first round's
    plain pass (the full model over the same calibration data, hooks included).
    """
    import torch

    from compressor.architectures import get_layers, model_kind, running_blocks, set_layers
    from compressor.score.passes import forward_kwargs

    model, adapter = loaded.model, loaded.adapter
    kind = model_kind(model, adapter)
    causal, classifier = kind == "causal-lm", kind == "sequence-classification"
    if not (causal or classifier):
        raise BadInput("--method sleb needs a model with a head (a causal LM or a sequence classifier); this is "
                       f"a bare {type(model).__name__}", "use --method leave-one-out or block-influence")
    if objective not in OBJECTIVES:
        raise BadInput(f"unknown --objective {objective!r}", f"use one of: {', '.join(OBJECTIVES)}")
    if classifier and objective == "nll":
        raise BadInput("--objective nll needs a causal LM; a classifier's calibration text has no labels",
                       "use --objective kl (KL of the full model's logits)")
    layers = get_layers(model, adapter)
    L = len(layers)
    free = [i for i in range(L) if i not in set(protect)]
    check_max_remove(max_remove, L, list(protect))
    loss_fn = _Loss(objective, causal)
    Replay = _replay_class()
    batches = list(data.batches)
    refs: list[torch.Tensor | None] = []
    t0 = time.perf_counter()
    first_pass = 0.0
    kept = list(range(L))
    order: list[int] = []
    loss_after: list[float] = []
    rounds: list[dict[str, float]] = []
    base_loss = 0.0
    tuple_out: dict[int, bool] = {}
    total_rounds = max_remove
    try:
        with torch.inference_mode():
            for r in range(max_remove):
                cands = [b for b in kept if b in free]
                sums = {b: 0.0 for b in cands}
                count = 0.0
                current = 0.0
                for bi, batch in enumerate(batches):
                    kw = forward_kwargs(loaded, batch)
                    # the current model once, keeping the state entering every remaining block
                    states: dict[int, torch.Tensor] = {}
                    handles = []
                    for b in kept:
                        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], b: int = b) -> None:
                            h = args[0] if args else kwargs.get("hidden_states")
                            states[b] = cast("torch.Tensor", h)  # every supported block is handed its hidden states

                        def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, b: int = b) -> None:
                            tuple_out[b] = isinstance(out, (tuple, list))

                        handles.append(layers[b].register_forward_pre_hook(pre, with_kwargs=True))
                        handles.append(layers[b].register_forward_hook(post, with_kwargs=True))
                    t = time.perf_counter()
                    try:
                        with running_blocks(model, adapter, [layers[b] for b in kept], kept):
                            out = model(**kw)
                    finally:
                        for h in handles:
                            h.remove()
                    if r == 0:
                        first_pass += time.perf_counter() - t
                        refs.append(loss_fn.reference(out.logits, batch))
                    s, n = loss_fn(out.logits, batch, refs[bi])
                    current += s
                    count += n
                    del out
                    for b in cands:
                        pos = kept.index(b)
                        replay = Replay(layers[b], tuple_out.get(b, False))
                        replay.state = states[b]
                        rest = kept[pos + 1:]
                        with running_blocks(model, adapter, [replay] + [layers[q] for q in rest], [b, *rest]):
                            s, _ = loss_fn(model(**kw).logits, batch, refs[bi])
                        sums[b] += s
                    states.clear()
                    if progress:
                        progress(r * len(batches) + bi + 1, total_rounds * len(batches))
                losses = {b: v / max(count, 1.0) for b, v in sums.items()}
                if r == 0:
                    base_loss = current / max(count, 1.0)
                best = min(cands, key=lambda b: (losses[b], b))
                order.append(best)
                loss_after.append(losses[best])
                rounds.append({str(b): v for b, v in losses.items()})
                kept.remove(best)
    finally:
        set_layers(model, layers, adapter)
    seconds = time.perf_counter() - t0
    return {"objective": objective, "order": order, "loss_after": loss_after, "base_loss": base_loss,
            "max_remove": max_remove, "protect": list(protect), "rounds": rounds, "seconds": seconds,
            "plain_pass_seconds": first_pass, "cost_vs_forward": seconds / first_pass if first_pass else None}


def sleb_outcome(result: dict[str, Any], num_layers: int) -> ScoreOutcome:
    """Scores whose ascending order is the removal order: removed blocks score their round (1, 2, ...),
    the rest follow by their loss in the last round (cheapest first), protected blocks last."""
    from compressor.score.report import LayerScore, ScoreOutcome

    order = result["order"]
    last = {int(b): v for b, v in result["rounds"][-1].items()} if result["rounds"] else {}
    rest = sorted((b for b in range(num_layers) if b not in order and b in last), key=lambda b: (last[b], b))
    prot = [b for b in range(num_layers) if b not in order and b not in last]
    rank = order + rest + prot
    layers = []
    for pos, b in enumerate(rank):
        stats: dict[str, Any] = {"objective": result["objective"]}
        if b in order:
            stats.update({"round": order.index(b) + 1, "loss_after_removal": result["loss_after"][order.index(b)]})
        elif b in last:
            stats["loss_if_removed_next"] = last[b]
        else:
            stats["protected"] = True
        first = result["rounds"][0].get(str(b)) if result["rounds"] else None
        if first is not None:
            stats["loss_if_removed_first"] = first  # round 1 = leave-one-out on this objective
        layers.append(LayerScore(b, float(pos + 1), stats))
    layers.sort(key=lambda l: l.index)
    extra = {"sleb": {k: result[k] for k in ("objective", "order", "loss_after", "base_loss", "max_remove",
                                              "protect", "seconds", "plain_pass_seconds", "cost_vs_forward")}}
    return ScoreOutcome(layers, extra=extra)


def check_max_remove(max_remove: int, n: int, protect: list[int], why: str = "") -> None:
    """The rounds a nested scorer computes fit the model: at least 1, fewer than its layers, no more than
    the unprotected ones (asked before any load, from the config, and again by the scorer)."""
    free = n - len(set(protect))
    if not 1 <= max_remove <= free or max_remove >= n:
        raise BadInput(f"--max-remove {max_remove} is out of range for a {n}-layer model with {n - free} "
                       f"protected layer(s){why}", f"use 1..{min(free, n - 1)}")
