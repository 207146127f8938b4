"""A cut written with its repair: ``prune_and_repair`` (the cut in memory or shard by shard, repaired, saved)
and ``avss repair`` as one call (``repair_pruned``: a pruned checkpoint repaired into a new folder). The
methods themselves are ``compressor.repair.methods``'; this module is where they meet the checkpoint files.
"""
from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.errors import BadInput
from compressor.repair.methods import _Ctx, check_streams, choices, parse_method, repair_cut, stream_choice
from compressor.repair.settings import Progress, RepairBars, RepairSettings

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressor.prune.surgery import PruneResult
    from compressor.sources.data import CalibrationData
    from compressor.sources.models import LoadedModel
    from compressor.sources.settings import CalibrationSettings, LoadSettings


def prune_and_repair(loaded: LoadedModel, removed: list[int], out: str | Path, settings: RepairSettings,
                     calibration: CalibrationData | None = None, *, force: bool = False,
                     provenance: dict[str, Any] | None = None, progress: Progress | None = None) -> PruneResult:
    """``prune_model`` with ``settings``' repair (``none``: the plain cut, which modifies ``loaded``);
    ``calibration`` is the ``CalibrationData`` a repair fits on. Returns the ``PruneResult``."""
    from compressor.files import check_output_dir
    from compressor.prune.surgery import prune_model

    if settings.enabled and calibration is None:
        raise BadInput(f"--repair {settings.method} needs calibration data", "pass --data or --profile")
    if getattr(loaded, "streamed", False):
        return _prune_streamed(loaded, removed, out, settings, calibration, force, provenance, progress)
    if not settings.enabled:
        return prune_model(loaded, removed, out, force=force, provenance=provenance)
    check_output_dir(out, force)  # before minutes of repair
    assert calibration is not None  # a repair without it was refused above
    slim, record, warnings = repair_cut(loaded, removed, settings, calibration.batches, progress)
    record["calibration"] = calibration.describe()
    return prune_model(loaded, removed, out, force=force, provenance=provenance, repaired=(slim, record, warnings))


def _prune_streamed(loaded: LoadedModel, removed: list[int], out: str | Path, settings: RepairSettings,
                    calibration: CalibrationData | None, force: bool, provenance: dict[str, Any] | None,
                    progress: Progress | None) -> PruneResult:
    """The cut written shard by shard from the checkpoint, with a streamed repair's patched tensors in it."""
    from compressor.prune.shards import write_cut

    check_streams(settings.method)
    replace: dict[str, torch.Tensor] = {}
    record: dict[str, Any] | None = None
    if settings.enabled:
        assert calibration is not None  # a repair without it was refused by prune_and_repair
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


def repair_checkpoint(base: LoadedModel, slim_path: str, settings: RepairSettings, calibration: CalibrationData,
                      out: str, *, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
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


def repair_pruned(base: str | Path | LoadedModel, slim: str, out: str, *,
                  repair: RepairSettings = RepairSettings(method="linear"),
                  calibration: CalibrationSettings | None = None, load: LoadSettings | None = None, force: bool = False,
                  bars: RepairBars | None = None) -> dict[str, Any]:
    """``avss repair`` as one call: settings, output folder and calibration checked before ``base``
    (a spec, or a loaded model) loads, then ``repair_checkpoint``. ``calibration`` and ``load`` are the
    command's ``CalibrationSettings`` and ``LoadSettings`` (defaults when None); returns the repair record
    written into ``out``'s compression.json."""
    from compressor import diagnostics
    from compressor.files import check_free_space, check_output_dir
    from compressor.sources.data import calibration_for
    from compressor.sources.settings import CalibrationSettings, LoadSettings

    if not repair.enabled:
        raise BadInput("--method none repairs nothing", f"use one of: {', '.join(choices()[1:])}")
    calibration = calibration or CalibrationSettings()
    load = load or LoadSettings()
    load = load.streaming(stream_choice(repair.method, load.stream))
    check_output_dir(out, force, note=diagnostics.note)
    calib = calibration.spec()
    loaded = base if not isinstance(base, (str, Path)) else load.load(str(base), copies=repair.copies)
    check_free_space(Path(out), loaded.weight_bytes, f"the repaired checkpoint {out}")
    cal = calibration_for(loaded, calib, given=calibration.given)
    with (bars or _no_bars)() as update:
        return repair_checkpoint(loaded, slim, repair, cal, out, force=force, progress=update)


def _no_bars() -> AbstractContextManager[None]:
    return contextlib.nullcontext()
