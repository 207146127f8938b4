"""The repair registry and ``repair_cut``: cut a full model and repair it, in memory.

A repair method is one class here with ``check`` (refuse before any work) and ``apply`` (one step on
the model being cut); a ``--repair`` value is one method or several joined by ``+``, applied in
order (``linear+distill``: fold the closed-form patch, then heal from it). ``none`` is the plain cut.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from compressor.errors import BadInput
from compressor.registry import Registry
from compressor.repair.distill import DEFAULT_LR, DEFAULT_STEPS, LOSSES

Progress = Callable[[str, int, int, float | None], None]  # (step label, done, total, loss)
# a progress display for one repair (the CLI's bars): it yields a Progress callback
RepairBars = Callable[[], AbstractContextManager[Progress | None]]


@dataclass(frozen=True)
class RepairSettings:
    """What decides a repair's result (part of every resume and cache key that depends on it)."""

    method: str = "none"
    ridge: float = 1e-4
    heal_steps: int = DEFAULT_STEPS
    heal_lr: float | None = None  # None: the healing method's own default (distill 3e-4, lora 1e-3)
    heal_tokens: int | None = None  # overrides heal_steps: steps = tokens / tokens per batch
    seed: int = 0
    heal_loss: str = "hidden"
    heal_minutes: float | None = None  # wall-time bound on the training (the step budget still applies)

    @property
    def steps(self) -> tuple[str, ...]:
        return () if self.method == "none" else tuple(self.method.split("+"))

    @property
    def enabled(self) -> bool:
        """Whether any repair runs (``--repair none``: the plain cut)."""
        return bool(self.steps)

    @property
    def copies(self) -> int:
        """Copies of the base's weights the work holds in memory: an in-memory repair cuts a copy of the base
        (measured 2.34-2.46x the checkpoint), a plain cut none. The fit check and the choice to stream ask this."""
        return 2 if self.enabled else 1

    def distill_steps(self, batches: list[dict[str, Any]]) -> int:
        """``heal_steps``, or ``heal_tokens`` converted to steps (one calibration batch per step)."""
        if self.heal_tokens is None:
            return self.heal_steps
        per = max(1, int(sum(int(b["attention_mask"].sum()) for b in batches) / max(len(batches), 1)))
        return max(1, self.heal_tokens // per)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ridge": self.ridge, "heal_steps": self.heal_steps, "heal_lr": self.heal_lr,
                "heal_tokens": self.heal_tokens, "seed": self.seed, "heal_loss": self.heal_loss,
                "heal_minutes": self.heal_minutes}


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
    student: Any  # the model being cut (in place)
    teacher: Any  # the full model (never modified)
    removed: list[int]
    kept: list[int]
    batches: list[dict[str, Any]]
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

    def check(self, adapter: Any, removed: list[int]) -> None:
        return None

    def apply(self, ctx: _Ctx) -> None:
        raise NotImplementedError

    def apply_streamed(self, loaded: Any, removed: list[int], batches: list[dict[str, Any]], settings: RepairSettings,
                       progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any]]:
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

    def check(self, adapter: Any, removed: list[int]) -> None:
        from compressor.repair.linear import check_foldable

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

    def apply_streamed(self, loaded: Any, removed: list[int], batches: list[dict[str, Any]], settings: RepairSettings,
                       progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any]]:
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

    def check(self, adapter: Any, removed: list[int]) -> None:
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


def check_repair(settings: RepairSettings, adapter: Any, removed: list[int] | None = None) -> None:
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


def prune_and_repair(loaded: Any, removed: list[int], out: Any, settings: RepairSettings, calibration: Any = None,
                     *, force: bool = False, provenance: dict[str, Any] | None = None,
                     progress: Progress | None = None) -> Any:
    """``prune_model`` with ``settings``' repair (``none``: the plain cut, which modifies ``loaded``);
    ``calibration`` is the ``CalibrationData`` a repair fits on. Returns the ``PruneResult``."""
    from compressor.prune.surgery import prune_model

    if settings.enabled and calibration is None:
        raise BadInput(f"--repair {settings.method} needs calibration data", "pass --data or --profile")
    if getattr(loaded, "streamed", False):
        return _prune_streamed(loaded, removed, out, settings, calibration, force, provenance, progress)
    if not settings.enabled:
        return prune_model(loaded, removed, out, force=force, provenance=provenance)

    def cut(base: Any, rem: list[int]) -> tuple[Any, dict[str, Any], list[str]]:
        slim, record, warnings = repair_cut(base, rem, settings, calibration.batches, progress)
        record["calibration"] = calibration.describe()
        return slim, record, warnings

    return prune_model(loaded, removed, out, force=force, provenance=provenance, cut=cut)


def _prune_streamed(loaded: Any, removed: list[int], out: Any, settings: RepairSettings, calibration: Any, force: bool,
                    provenance: dict[str, Any] | None, progress: Progress | None) -> Any:
    """The cut written shard by shard from the checkpoint, with a streamed repair's patched tensors in it."""
    from compressor.prune.shards import write_cut

    check_streams(settings.method)
    replace: dict[str, Any] = {}
    record: dict[str, Any] | None = None
    if settings.enabled:
        t0 = time.perf_counter()
        parts: dict[str, Any] = {}
        for r in parse_method(settings.method):
            r.check(loaded.adapter, removed)
            part, patched = r.apply_streamed(loaded, sorted(removed), calibration.batches, settings, progress)
            parts[r.name] = part
            replace.update(patched)
        record = {**settings.to_dict(), **parts, "seconds": round(time.perf_counter() - t0, 2), "streamed": True,
                  "calibration": calibration.describe()}
    return write_cut(loaded.path, removed, out, replace=replace, provenance=provenance, repair=record,
                     tokenizer=loaded.tokenizer, spec=loaded.spec, force=force)


def repair_cut(base: Any, removed: list[int], settings: RepairSettings, batches: list[dict[str, Any]],
               progress: Progress | None = None) -> tuple[Any, dict[str, Any], list[str]]:
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


def repair_checkpoint(base: Any, slim_path: str, settings: RepairSettings, calibration: Any, out: str, *,
                      force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """``avss repair``: repair a checkpoint written by ``avss prune`` (its compression.json says which
    layers of ``base`` were removed) into ``out``. ``linear`` is fitted on ``base`` (it needs the full
    model's activations); ``distill`` alone heals the slim weights as they are (e.g. after linear)."""
    from compressor.files import check_output_dir
    from compressor.prune.provenance import current
    from compressor.prune.surgery import COMPRESSION_FILE, read_compression, save_checkpoint

    out_p = check_output_dir(out, force)
    prov = read_compression(slim_path)  # a corrupt record is an error naming the file
    try:
        removed = [int(i) for i in prov["removed_layers"]]
        n_before = int(prov["num_layers_before"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{slim_path} has no readable {COMPRESSION_FILE} naming its removed layers",
                       "pass a checkpoint written by `avss prune` (or `avss run`'s model/ folder)") from exc
    if n_before != base.num_layers or prov.get("base_model", {}).get("model_type") not in (None, base.config.model_type):
        raise BadInput(f"{slim_path} was cut from a {n_before}-layer {prov.get('base_model', {}).get('model_type')} "
                       f"model, but the base is a {base.num_layers}-layer {base.config.model_type}",
                       "pass the base model the slim one was pruned from")
    steps = parse_method(settings.method)
    if not steps:
        raise BadInput("--method none repairs nothing", f"use one of: {', '.join(choices()[1:])}")
    for r in steps:
        r.check(base.adapter, removed)
    keep = {k: v for k, v in prov.items() if k not in ("repair", "created", "parameters_after", "warnings")}
    if steps[0].cuts:  # it cuts the full model itself: cut the base again, then repair
        if prov.get("repair", {}).get("method", "none") != "none":
            keep["repaired_from"] = {"previous_repair": prov["repair"]}
        res = prune_and_repair(base, removed, out_p, settings, calibration, force=True, provenance=keep,
                               progress=progress)
        return res.repair or {}
    # healing alone: heal the slim checkpoint's own weights (already cut) from the base
    from compressor.sources.models import load_model

    slim = load_model(slim_path, device=base.device, dtype=base.dtype)
    if slim.num_layers != base.num_layers - len(removed):
        raise BadInput(f"{slim_path} has {slim.num_layers} layers, but its {COMPRESSION_FILE} says "
                       f"{base.num_layers - len(removed)}", "re-run avss prune")
    kept = [i for i in range(base.num_layers) if i not in set(removed)]
    ctx = _Ctx(slim.model, base.model, sorted(removed), kept, calibration.batches, settings, progress, cut_done=True)
    for r in steps:
        r.apply(ctx)
    previous = prov.get("repair", {"method": "none"})
    method = settings.method if previous.get("method", "none") == "none" else f"{previous['method']}+{settings.method}"
    record = {**previous, **settings.to_dict(), "method": method, **ctx.record, "calibration": calibration.describe()}
    save_checkpoint(ctx.student, slim.tokenizer, out_p, current({**prov, "repair": record}))
    return record


def repair_pruned(base: Any, slim: str, out: str, *, repair: RepairSettings = RepairSettings(method="linear"),
                  calibration: Any = None, load: Any = None, force: bool = False,
                  bars: RepairBars | None = None) -> dict[str, Any]:
    """``avss repair`` as one call: settings, output folder and calibration checked before ``base``
    (a spec, or a loaded model) loads, then ``repair_checkpoint``. ``calibration`` and ``load`` are the
    command's ``CalibrationSettings`` and ``LoadSettings`` (defaults when None); returns the repair record
    written into ``out``'s compression.json."""
    from pathlib import Path

    from compressor import diagnostics
    from compressor.files import check_free_space, check_output_dir
    from compressor.sources.data import calibration_for
    from compressor.sources.settings import CalibrationSettings, LoadSettings

    if not repair.enabled:
        raise BadInput("--method none repairs nothing", f"use one of: {', '.join(choices()[1:])}")
    calibration = calibration or CalibrationSettings()
    load = (load or LoadSettings()).streaming(stream_choice(repair.method, (load or LoadSettings()).stream))
    check_output_dir(out, force, note=diagnostics.note)
    calib = calibration.spec()
    loaded = base if not isinstance(base, (str, Path)) else load.load(str(base), copies=repair.copies)
    check_free_space(Path(out), loaded.weight_bytes, f"the repaired checkpoint {out}")
    cal = calibration_for(loaded, calib, given=calibration.given)
    with (bars or _no_bars)() as update:
        return repair_checkpoint(loaded, slim, repair, cal, out, force=force, progress=update)


def _no_bars() -> AbstractContextManager[None]:
    return contextlib.nullcontext()
