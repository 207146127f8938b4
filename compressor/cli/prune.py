"""Remove the least important layers and write a checkpoint that loads with plain transformers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from compressor.cli import options as o

if TYPE_CHECKING:  # pragma: no cover
    from compressor.repair.settings import RepairSettings
    from compressor.score.settings import ScorerSettings
    from compressor.sources.settings import CalibrationSettings, LoadSettings


@o.grouped(scorer=o.SCORER, calibration=o.CALIBRATION, repair_settings=o.REPAIR, load=o.LOAD)
def prune(
    model: o.Model,
    out: Annotated[str, typer.Option("--out", help="Folder for the slim checkpoint (atomic write).")],
    scores: Annotated[Optional[str], typer.Option("--scores", help="A scores JSON from `avss score`.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Score now with this method instead of --scores.")] = None,
    scorer: ScorerSettings = None,  # type: ignore[assignment]
    ratio: Annotated[Optional[float], typer.Option("--ratio", callback=o.finite("--ratio"), help="Remove round-half-up(ratio x layers) layers.")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="Remove exactly this many layers.")] = None,
    mass: Annotated[Optional[float], typer.Option("--mass", callback=o.finite("--mass"), help="Remove the lowest layers whose normalised scores sum to <= MASS (sorted first).")] = None,
    mass_order: Annotated[str, typer.Option("--mass-order", help="sorted (correct) or depth (the official AVSS code's bug, for comparison).")] = "sorted",
    protect: Annotated[str, typer.Option("--protect", help="Never remove these: first,last | none | 0-based indices.")] = "none",
    calibration: CalibrationSettings = None,  # type: ignore[assignment]
    seed: o.Seed = 0,
    repair: o.Repair = None,
    repair_settings: RepairSettings = None,  # type: ignore[assignment]
    load: LoadSettings = None,  # type: ignore[assignment]
    force: o.Force = False,
) -> None:
    from rich.table import Table

    from compressor.cli import common
    from compressor.cli.output import note, progress_bar
    from compressor.cli.output import out as stdout
    from compressor.prune.api import prune_checkpoint
    from compressor.score.select import CutSettings

    cut = CutSettings(ratio, num_layers, mass, mass_order, protect)
    done = prune_checkpoint(model, out, scores=scores, scorer=scorer, cut=cut, calibration=calibration,
                            repair=repair_settings, load=load, force=force, bar=progress_bar,
                            repair_bars=common.repair_progress)
    res = done.result
    if done.repaired:
        common.print_repair(res.repair or {})
    t = Table(title=f"pruned {model} -> {out}")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("layers", str(res.num_layers_before), str(res.num_layers_after))
    t.add_row("parameters", f"{res.parameters_before:,}", f"{res.parameters_after:,}")
    t.add_row("removed (0-based)", "", str(res.removed))
    stdout.print(t)
    note(f"wrote {out} (compression.json records the method, scores and removed layers)")
