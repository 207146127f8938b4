"""``prune_checkpoint``: ``avss prune`` as one library call (scores -> selection -> cut -> repair -> save).

Surgery (``prune.surgery``) knows nothing of scores or repairs; this is the layer that puts the steps
together, with every flag rule checked before the model loads, so a Python caller and the CLI refuse
the same inputs with the same messages. Diagnostics go to the ``avss`` logger as they happen.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor import diagnostics
from compressor.defaults import RATIO
from compressor.errors import BadInput
from compressor.repair.settings import RepairSettings
from compressor.score.select import CutSettings
from compressor.score.settings import ScorerSettings
from compressor.sources.settings import CalibrationSettings, LoadSettings

if TYPE_CHECKING:  # pragma: no cover
    from compressor.prune.surgery import PruneResult
    from compressor.repair.settings import RepairBars
    from compressor.score.api import ProgressBar
    from compressor.score.report import ScoreReport
    from compressor.score.select import Selection
    from compressor.sources.models import LoadedModel


@dataclass
class PruneOutcome:
    """What ``prune_checkpoint`` did: the checkpoint written (``result``: layers and parameters before
    and after, the repair record), the scores it was cut by, the selection, the repair settings, the
    provenance written into compression.json, and every warning (each also logged when it arose)."""

    result: PruneResult
    report: ScoreReport
    selection: Selection
    settings: RepairSettings
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return bool(self.settings.enabled)

    @property
    def out(self) -> Path:
        return Path(self.result.out)


def check_prune_options(scores: str | Path | None, scorer: ScorerSettings | None, cut: CutSettings) -> None:
    """The rules between the flags (one source of scores, one cut rule, scorer options only with a
    scorer): refused before anything is read or loaded."""
    method = scorer.method if scorer is not None else None
    if (scores is None) == (method is None):
        raise BadInput("give exactly one of --scores FILE or --method NAME", "e.g. --scores scores.json")
    given = scorer.own if scorer is not None else []
    if scores is not None and given:
        flag = given[0][0]
        if flag == "--avss-mode":
            raise BadInput("--avss-mode applies to --method; a scores file already records its mode",
                           "drop --avss-mode, or score with --method avss --avss-mode ...")
        raise BadInput(f"{flag} applies to --method; a scores file was computed with its own settings",
                       f"drop {flag}, or score now with --method")
    if scorer is not None and method is not None:
        scorer.check()
    cut.check()  # its ranges; against the model once its config is read


def check_scores_match(report: ScoreReport, scores_file: str | Path | None, loaded: LoadedModel,
                       spec: str) -> list[str]:
    """A scores file must score this model (layer count, architecture); scored under another name is
    only a warning (the same model in another folder). Returns the warnings."""
    if report.num_layers != loaded.num_layers:
        raise BadInput(f"{scores_file} scores {report.num_layers} layers but {spec} has {loaded.num_layers}",
                       "score this model first: avss score MODEL --out FILE")
    if report.model.get("model_type") != loaded.config.model_type:
        raise BadInput(f"{scores_file} was computed for a {report.model.get('model_type')} model, not "
                       f"{loaded.config.model_type}", "score this model first")
    if report.model.get("spec") != spec:
        return [f"{scores_file} was computed for {report.model.get('spec')!r}; pruning {spec!r}"]
    return []


def prune_checkpoint(
    model: str | Path | LoadedModel,
    out: str | Path,
    *,
    scores: str | Path | None = None,
    scorer: ScorerSettings | None = None,
    cut: CutSettings = CutSettings(ratio=RATIO),
    calibration: CalibrationSettings = CalibrationSettings(),
    repair: RepairSettings = RepairSettings(),
    load: LoadSettings = LoadSettings(),
    force: bool = False,
    bar: ProgressBar | None = None,
    repair_bars: RepairBars | None = None,
) -> PruneOutcome:
    """``avss prune``: the settings are its flags, grouped (``model``: a spec, or a loaded model, which a
    plain cut modifies). Scores come from ``scores`` (a file from ``avss score``) or are computed now by
    ``scorer``; ``cut`` picks the layers; ``repair`` repairs the cut before it is written. ``load.stream``:
    True scores, repairs and writes the cut one block / one shard at a time (no whole model in memory),
    False never, None when the model would not fit and every step can. ``bar(description)`` /
    ``repair_bars()``: optional progress displays."""
    from compressor.files import check_free_space, check_output_dir
    from compressor.prune.provenance import cut_provenance
    from compressor.repair.api import prune_and_repair
    from compressor.repair.methods import check_repair, protect_for
    from compressor.score.report import ScoreReport
    from compressor.sources.data import calibration_for

    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        diagnostics.warn(msg)

    check_prune_options(scores, scorer, cut)
    method = scorer.method if scorer is not None and not scores else None
    load = load.streaming(_stream_choice(load.stream, method, repair.method))
    check_output_dir(out, force, note=diagnostics.note)
    report = ScoreReport.load(scores) if scores else None
    protect = protect_for(repair, cut.protect)  # widened only by a repair that folds into the block before a span
    if isinstance(model, (str, Path)):  # the cut against the model's config, before it loads
        total = load.num_layers(str(model))
        cut.check(total, protect)
        if scorer is not None and method is not None:  # --protect, --max-remove against the config
            scorer.options(total, cut.protect, rounds=cut.num_layers)
    calib = calibration.spec()
    if isinstance(model, (str, Path)):
        spec = str(model)
        loaded = load.load(spec, copies=repair.copies)
    else:
        loaded, spec = model, model.spec
    check_free_space(Path(out), loaded.weight_bytes, f"the slim checkpoint {out}")
    if repair.enabled:
        check_repair(repair, loaded.adapter)  # an architecture it cannot repair fails before scoring
        if protect != cut.protect:
            diagnostics.note(f"--repair {repair.method} keeps layer 0 (its patch folds into the block before each "
                             "removed span)")
    if report is not None:
        for w in check_scores_match(report, scores, loaded, spec):
            warn(w)
    else:
        from compressor.score.api import score_model

        assert scorer is not None and scorer.method is not None  # exactly one of scores and method (checked above)
        report = score_model(loaded, scorer.method, mode=scorer.mode, calibration=calib,
                             calibration_given=calibration.given, seed=scorer.seed, bar=bar,
                             **scorer.options(loaded.num_layers, protect, rounds=cut.num_layers))
        warnings += report.warnings
    sel = cut.select(report, protect)
    if sel.num_layers > report.num_layers // 2:
        warn(f"this removes {sel.num_layers} of {report.num_layers} layers, more than half of the model")
    diagnostics.note(f"method {report.label}: removing {sel.num_layers} of {report.num_layers} layers {sel.removed} "
                     f"({sel.rule})")
    provenance = cut_provenance(report, sel, scores_file=scores)
    cal = calibration_for(loaded, calib) if repair.enabled else None
    with (repair_bars or contextlib.nullcontext)() as update:
        res = prune_and_repair(loaded, sel.removed, out, repair, cal, force=force, provenance=provenance,
                               progress=update)
    for w in res.warnings:
        warn(w)
    return PruneOutcome(res, report, sel, repair, provenance, warnings)


def _stream_choice(stream: bool | None, method: str | None, repair: str) -> bool | None:
    """The loader's ``stream`` for this prune: a scorer or repair that needs the whole model rules
    streaming out (``--stream`` with one is refused now, before the model loads)."""
    from compressor.repair.methods import stream_choice as repair_choice
    from compressor.score.api import stream_choice as scorer_choice

    return repair_choice(repair, scorer_choice(method, stream) if method is not None else stream)
