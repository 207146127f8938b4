"""The repair registry: a repair method is one class here with ``check`` (refuse before any work) and
``apply`` (one step on the model being cut); a ``--repair`` value is one method or several joined by ``+``,
applied in order (``linear+distill``: fold the closed-form patch, then heal from it). ``none`` is the
plain cut. ``repair_cut`` runs a chain on a copy of a model in memory; writing the result is
``compressor.repair.api``'s.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from compressor.errors import BadInput
from compressor.registry import Registry
from compressor.repair.settings import DEFAULT_LR, LOSSES, Progress, RepairSettings

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel

    from compressor.architectures import ArchAdapter
    from compressor.sources.models import LoadedModel


def repair_settings(method: str | None = None, *, ridge: float | None = None, heal_steps: int | None = None,
                    heal_tokens: int | None = None, heal_lr: float | None = None, seed: int = 0,
                    heal_loss: str | None = None, heal_minutes: float | None = None) -> RepairSettings:
    """User-level values (``None``: the default) -> validated ``RepairSettings``, so the CLI and a
    Python caller get the same defaults and the same refusals, before any model loads."""
    defaults = RepairSettings()
    s = RepairSettings(method=method or "none", ridge=defaults.ridge if ridge is None else ridge,
                       heal_steps=defaults.heal_steps if heal_steps is None else heal_steps,
                       heal_lr=heal_lr, heal_tokens=heal_tokens, seed=seed,
                       heal_loss=defaults.heal_loss if heal_loss is None else heal_loss, heal_minutes=heal_minutes)
    parse_method(s.method)
    if not (math.isfinite(s.ridge) and s.ridge >= 0):  # NaN passes a plain `ridge < 0` check
        raise BadInput(f"--ridge must be a finite number >= 0 (got {s.ridge})", "e.g. --ridge 1e-4")
    if s.heal_steps < 1 or (s.heal_tokens is not None and s.heal_tokens < 1):
        raise BadInput("--heal-steps and --heal-tokens must be at least 1", "e.g. --heal-steps 30")
    if s.heal_lr is not None and not (math.isfinite(s.heal_lr) and s.heal_lr > 0):
        raise BadInput(f"--heal-lr must be a finite positive number (got {s.heal_lr})", "e.g. --heal-lr 3e-4")
    if s.heal_loss not in LOSSES:
        raise BadInput(f"unknown --heal-loss {s.heal_loss!r}", f"use one of: {', '.join(LOSSES)}")
    if s.heal_minutes is not None and not (math.isfinite(s.heal_minutes) and s.heal_minutes > 0):
        raise BadInput(f"--heal-minutes must be a finite positive number (got {s.heal_minutes})",
                       "e.g. --heal-minutes 5, or leave it out for no time bound")
    return s


@dataclass(frozen=True)
class RepairEvidence:
    """What one repair step shows a user, without knowing how it is shown: a table (data: the CLI
    prints it on stdout) and/or one line (a diagnostic: stderr). Columns are (header, "left"|"right")."""

    title: str | None = None
    columns: tuple[tuple[str, str], ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    line: str | None = None


@dataclass
class _Ctx:
    student: PreTrainedModel  # the model being cut (in place)
    teacher: PreTrainedModel  # the full model (never modified)
    removed: list[int]
    kept: list[int]
    batches: list[dict[str, torch.Tensor]]
    settings: RepairSettings
    progress: Progress | None
    cut_done: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Repair:
    """One repair method: what it refuses up front (``check``), one step on the model being cut
    (``apply``), and one line from its part of the record (``summary``). Adding a repair is one
    subclass with ``@register``; ``--repair`` choices, their order and --protect follow from these flags."""
    name: ClassVar[str]
    description: ClassVar[str]
    cuts: ClassVar[bool] = False  # it cuts the full model itself, so it must come first in a chain
    streams: ClassVar[bool] = False  # it runs one block at a time on a streamed model (``--stream``)
    patches_spans: ClassVar[bool] = False  # it folds into the block before each removed span: layer 0 stays
    heals: ClassVar[bool] = False  # it trains from the full model: one such step per chain

    def check(self, adapter: ArchAdapter, removed: list[int]) -> None:
        return None

    def apply(self, ctx: _Ctx) -> None:
        raise NotImplementedError

    def apply_streamed(self, loaded: LoadedModel, removed: list[int], batches: list[dict[str, torch.Tensor]],
                       settings: RepairSettings, progress: Progress | None
                       ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """On a streamed model (only when ``streams``): (its record, patched tensors by checkpoint key)."""
        raise NotImplementedError

    def summary(self, part: dict[str, Any]) -> str:
        return ""

    def evidence(self, part: dict[str, Any]) -> RepairEvidence:
        """Its part of the record in full (``summary`` is the one-line version)."""
        return RepairEvidence(line=self.summary(part) or None)


REPAIRS: Registry[Repair] = Registry("--repair step")


def register(cls: type[Repair]) -> type[Repair]:
    """``@register``: a repair class becomes a ``--repair`` step (into the registry as it is now)."""
    return REPAIRS.register(cls)


@register
class LinearRepair(Repair):
    name = "linear"
    description = ("closed-form d x d patch per removed span (ridge least squares on calibration activations), "
                   "folded into the MLP output projection of the kept block before the span; no training")
    cuts = True
    patches_spans = True
    streams = True

    def check(self, adapter: ArchAdapter, removed: list[int]) -> None:
        from compressor.score.patch import check_foldable

        check_foldable(adapter, removed)

    def apply(self, ctx: _Ctx) -> None:
        from compressor.repair.linear import linear_repair

        def prog(done: int, total: int) -> None:
            if ctx.progress:
                ctx.progress("linear patch", done, total, None)

        patches, warnings = linear_repair(ctx.student, ctx.removed, ctx.batches, ridge=ctx.settings.ridge, progress=prog)
        ctx.cut_done = True
        ctx.warnings += warnings
        ctx.record["linear"] = {"ridge": ctx.settings.ridge, "spans": [p.to_dict() for p in patches]}

    def apply_streamed(self, loaded: LoadedModel, removed: list[int], batches: list[dict[str, torch.Tensor]],
                       settings: RepairSettings, progress: Progress | None
                       ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The same patch fitted one block at a time: (record, patched tensors by checkpoint key)."""
        from compressor.repair.linear import linear_repair_streamed

        def prog(done: int, total: int) -> None:
            if progress:
                progress("linear patch (streamed)", done, total, None)

        patches, replace = linear_repair_streamed(loaded, removed, batches, ridge=settings.ridge, progress=prog)
        return {"ridge": settings.ridge, "spans": [p.to_dict() for p in patches]}, replace

    def summary(self, part: dict[str, Any]) -> str:
        sp = part["spans"]
        before = sum(x["error_before"] for x in sp) / len(sp)
        after = sum(x["error_after"] for x in sp) / len(sp)
        return f"{len(sp)} span(s), mean residual error {before:.3f} -> {after:.3f}"

    def evidence(self, part: dict[str, Any]) -> RepairEvidence:
        return RepairEvidence(
            title=f"linear patch (ridge {part['ridge']:g})",
            columns=(("removed span", "left"), ("folded into", "left"), ("tokens", "right"),
                     ("residual error before", "right"), ("after", "right")),
            rows=tuple((str(sp["removed"]), sp["fold_point"], str(sp["tokens"]), f"{sp['error_before']:.4f}",
                        f"{sp['error_after']:.4f}") for sp in part["spans"]))


class _Healing(Repair):
    """Training from the full model (``compressor.repair.distill``); subclasses say what trains."""
    trainable: ClassVar[str]
    default_lr: ClassVar[float]
    heals = True

    def check(self, adapter: ArchAdapter, removed: list[int]) -> None:
        if adapter.family != "decoder":
            raise BadInput(f"--repair {self.name} is implemented for decoder models, not {adapter.model_type}",
                           "use --repair none for encoders")

    def apply(self, ctx: _Ctx) -> None:
        from compressor.repair.distill import distill

        if not ctx.cut_done:
            ctx.warnings += _cut(ctx)
        s = ctx.settings
        steps = s.distill_steps(ctx.batches)

        def prog(done: int, total: int, loss: float) -> None:
            if ctx.progress:
                ctx.progress(self.name, done, total, loss)

        ctx.student, rec = distill(ctx.student, ctx.teacher, ctx.kept, ctx.removed, ctx.batches, steps=steps,
                                   lr=s.heal_lr or self.default_lr, seed=s.seed, loss=s.heal_loss,
                                   trainable=self.trainable, minutes=s.heal_minutes, progress=prog)
        ctx.record[self.name] = rec.to_dict()

    def summary(self, part: dict[str, Any]) -> str:
        loss = f" ({part['objective']} loss)" if "objective" in part else ""
        return (f"{part['steps']} steps{loss}, held-out KL {part['heldout_kl_before']:.3f} -> "
                f"{part['heldout_kl_after']:.3f}")

    def evidence(self, part: dict[str, Any]) -> RepairEvidence:
        d = part
        ended = ("stopped early" if d["stopped_early"] else
                 f"time budget {d['budget_minutes']:g} min" if d.get("stopped_by_budget") else "full budget")
        how = f" ({d['objective']} loss, {d['trainable']})" if "objective" in d else ""
        return RepairEvidence(line=(
            f"{self.name}{how}: {d['steps']} of "
            f"{d['budget_steps']} steps ({ended}), held-out loss {d['heldout_loss_before']:.4f} -> "
            f"{d['heldout_loss_after']:.4f}, held-out KL {d['heldout_kl_before']:.4f} -> {d['heldout_kl_after']:.4f}, "
            f"{d['seconds']:.0f} s"))


@register
class DistillRepair(_Healing):
    name = "distill"
    description = ("short healing from the full model: the blocks next to each cut train (in full) on --heal-loss "
                   "(hidden: relative MSE of hidden states at the cut points and final norm; kl: top-64 KL of the "
                   "next-token distribution), early-stopped on held-out calibration")
    trainable = "neighbours"
    default_lr = DEFAULT_LR


@register
class LoraRepair(_Healing):
    name = "lora"
    description = ("LoRA healing (peft, rank 8 on every linear layer of every kept block) on --heal-loss, merged "
                   "back into plain weights; early-stopped on held-out calibration")
    trainable = "lora"
    default_lr = 1e-3


def choices() -> tuple[str, ...]:
    """Every valid ``--repair``: none, each method, and each chain whose cutting method comes first."""
    out = ["none"]
    for k in range(1, len(REPAIRS) + 1):
        for chain in itertools.permutations(REPAIRS.values(), k):
            if not any(r.cuts for r in chain[1:]) and sum(r.heals for r in chain) <= 1:
                out.append("+".join(r.name for r in chain))
    return tuple(out)


def parse_method(method: str) -> list[Repair]:
    if method == "none":
        return []
    steps = method.split("+")
    if method not in choices():
        healing = [s for s in steps if s in REPAIRS and REPAIRS[s].heals]
        if len(healing) > 1:
            raise BadInput(f"--repair {method} heals twice ({' and '.join(healing)}); one healing step per repair",
                           f"use --repair {'+'.join(s for s in steps if s not in healing[1:])}, or run avss repair "
                           "again on its output")
        cutting = [s for s in steps[1:] if s in REPAIRS and REPAIRS[s].cuts]
        if cutting and len(set(steps)) == len(steps) and all(s in REPAIRS for s in steps):
            raise BadInput(f"{cutting[0]} must come first in --repair (it cuts the full model span by span)",
                           f"use --repair {'+'.join([cutting[0], *[s for s in steps if s != cutting[0]]])}")
        raise BadInput(f"unknown --repair {method!r}", f"use one of: {', '.join(choices())}")
    return [REPAIRS[s] for s in steps]


def check_streams(method: str) -> None:
    """Refuse, before any model loads, a repair that needs the whole model with ``--stream``."""
    whole = [r.name for r in parse_method(method) if not r.streams]
    if whole:
        names = [r.name for r in REPAIRS.values() if r.streams]
        raise BadInput(f"--repair {whole[0]} trains on the whole model, so it cannot stream one block at a time",
                       f"drop --stream, or use --repair {' or '.join(names)} (then --repair {whole[0]} with avss "
                       "repair on a machine with the memory)")


def streams(method: str) -> bool:
    return all(r.streams for r in parse_method(method))


def stream_choice(method: str, stream: bool | None) -> bool | None:
    """The loader's ``stream`` for this repair, in the shape score's and verify's ``stream_choice`` share: a
    repair that trains on the whole model never streams (``--stream`` with it is refused now); None lets the
    loader decide."""
    if streams(method):
        return stream
    if stream:
        check_streams(method)
    return False


def patches_spans(method: str) -> bool:
    """Whether this --repair folds a patch into the block before each removed span."""
    return any(r.patches_spans for r in parse_method(method))


def describe(rec: dict[str, Any]) -> str:
    """One line from a repair record: what each step did and measured."""
    parts = [rec.get("method", "none")]
    parts += [REPAIRS[name].summary(rec[name]) for name in REPAIRS if rec.get(name)]
    if "seconds" in rec:
        parts.append(f"{rec['seconds']:.0f} s")
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


def evidence(rec: dict[str, Any]) -> list[RepairEvidence]:
    """Each step's evidence from a repair record, in registry order (what ``avss prune --repair`` and
    ``avss repair`` show after the work)."""
    return [REPAIRS[name].evidence(rec[name]) for name in REPAIRS if rec.get(name)]


def check_repair(settings: RepairSettings, adapter: ArchAdapter, removed: list[int] | None = None) -> None:
    """Everything that can be refused without touching the model (``removed`` may be unknown yet)."""
    for r in parse_method(settings.method):
        r.check(adapter, removed or [])


def protect_for(settings: RepairSettings, protect: str) -> str:
    """The --protect a repair needs: the linear patch folds into the block *before* each span, so
    with ``linear`` layer 0 is always kept (added to --protect, and said so by the caller)."""
    if not patches_spans(settings.method):
        return protect
    items = [p.strip() for p in (protect or "").split(",") if p.strip() and p.strip().lower() != "none"]
    if "first" in items or "0" in items:
        return protect
    return ",".join(["first", *items])


def _cut(ctx: _Ctx) -> list[str]:
    from compressor.prune.surgery import remove_layers

    ctx.cut_done = True
    return remove_layers(ctx.student, ctx.removed)


def repair_cut(base: LoadedModel, removed: list[int], settings: RepairSettings, batches: list[dict[str, torch.Tensor]],
               progress: Progress | None = None) -> tuple[LoadedModel, dict[str, Any], list[str]]:
    """A new LoadedModel: ``base`` with ``removed`` cut and repaired (``base`` is not modified).

    Returns (slim LoadedModel, repair record for compression.json, warnings).
    """
    from compressor.sources.models import LoadedModel

    steps = parse_method(settings.method)
    for r in steps:
        r.check(base.adapter, removed)
    t0 = time.perf_counter()
    student = copy.deepcopy(base.model)
    kept = [i for i in range(base.num_layers) if i not in set(removed)]
    ctx = _Ctx(student, base.model, sorted(removed), kept, batches, settings, progress)
    for r in steps:
        r.apply(ctx)
    if not ctx.cut_done:
        ctx.warnings += _cut(ctx)
    record = {**settings.to_dict(), **ctx.record, "seconds": round(time.perf_counter() - t0, 2)}
    # not the base's folder: a fingerprint of this model must hash its own (repaired) weights
    slim = LoadedModel(f"{base.spec} (cut, {settings.method})", f"{base.path}#in-memory-cut", ctx.student, base.tokenizer,
                       base.adapter, base.device, base.dtype)
    return slim, record, ctx.warnings
