"""Repair a pruned checkpoint: a closed-form linear patch (seconds) and/or short distillation healing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from compressor.cli import options as o

if TYPE_CHECKING:  # pragma: no cover
    from compressor.repair.settings import RepairSettings
    from compressor.sources.settings import CalibrationSettings, LoadSettings
from compressor.repair.methods import choices as repair_choices


@o.grouped(settings=o.REPAIR, calibration=o.CALIBRATION, load=o.LOAD.without("device_map", "offload_folder"))
def repair(
    base: Annotated[str, typer.Argument(help="The full model the slim one was pruned from.")],
    slim: Annotated[str, typer.Argument(help="A checkpoint written by `avss prune` (its compression.json names the removed layers).")],
    out: Annotated[str, typer.Option("--out", help="Folder for the repaired checkpoint (atomic write).")],
    repair: Annotated[str, typer.Option("--method", help=", ".join(c for c in repair_choices() if c != "none") + ".")] = "linear",
    settings: RepairSettings = None,  # type: ignore[assignment]
    calibration: CalibrationSettings = None,  # type: ignore[assignment]
    seed: o.Seed = 0,
    load: LoadSettings = None,  # type: ignore[assignment]
    force: o.Force = False,
) -> None:
    from compressor.cli import common
    from compressor.cli.output import note
    from compressor.repair.api import repair_pruned

    record = repair_pruned(base, slim, out, repair=settings, calibration=calibration, load=load, force=force,
                           bars=common.repair_progress)
    common.print_repair(record)
    note(f"wrote {out} (compression.json records the repair: method, settings, per-span errors)")
