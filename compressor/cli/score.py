"""Score every transformer layer; least important first. Data (table) on stdout, the rest on stderr."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from compressor.cli import options as o

if TYPE_CHECKING:  # pragma: no cover
    from compressor.score.settings import ScorerSettings
    from compressor.sources.settings import CalibrationSettings, LoadSettings
from compressor.score.methods import names_text, option_scorers


@o.grouped(scorer=o.SCORER, calibration=o.CALIBRATION, load=o.LOAD)
def score(
    model: o.Model,
    out: Annotated[Optional[str], typer.Option("--out", help="Write the scores JSON here.")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write a PNG bar chart here.")] = None,
    method: o.Method = "avss",
    scorer: ScorerSettings = None,  # type: ignore[assignment]
    protect: Annotated[Optional[str], typer.Option("--protect", help=names_text(option_scorers("protect")) + " only: blocks it never removes (first,last | 0-based indices); its order depends on them.")] = None,
    calibration: CalibrationSettings = None,  # type: ignore[assignment]
    seed: o.Seed = 0,
    load: LoadSettings = None,  # type: ignore[assignment]
    force: o.Force = False,
) -> None:
    from compressor.cli import common
    from compressor.cli.output import note, progress_bar
    from compressor.score.api import score_checkpoint

    report = score_checkpoint(model, scorer=scorer, protect=protect, calibration=calibration, load=load, out=out,
                              plot=plot, force=force, bar=progress_bar)
    common.print_scores(report)
    sel = report.default_selection
    note(f"method: {report.label}; ranking (least important first): {report.ranking}")
    note(f"default selection ({sel['rule']} {sel['ratio']} -> {sel['num_layers']} layers) would remove {sel['removed']}")
    if out:
        note(f"wrote {out}")
    if plot:
        note(f"wrote {plot}")
