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
from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from compressor.repair.api import RepairBars
    from compressor.score.api import ProgressBar


@dataclass
class PruneOutcome:
    """What ``prune_checkpoint`` did: the checkpoint written (``result``: layers and parameters before
    and after, the repair record), the scores it was cut by, the selection, the repair settings, the
    provenance written into compression.json, and every warning (each also logged when it arose)."""

    result: Any  # PruneResult
    report: Any  # ScoreReport
    selection: Any  # Selection
    settings: Any  # RepairSettings
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return bool(self.settings.enabled)

    @property
    def out(self) -> Path:
        return Path(self.result.out)


def check_prune_options(*, scores: Any = None, method: str | None = None, avss_mode: str | None = None,
                        objective: str | None = None, max_remove: int | None = None, last_state: str | None = None,
                        ratio: float | None = None, num_layers: int | None = None, mass: float | None = None) -> None:
    """The rules between the flags (one source of scores, one cut rule, scorer options only with a
    scorer): refused before anything is read or loaded."""
    if (scores is None) == (method is None):
        raise BadInput("give exactly one of --scores FILE or --method NAME", "e.g. --scores scores.json")
    if scores is not None and avss_mode is not None:
        raise BadInput("--avss-mode applies to --method; a scores file already records its mode",
                       "drop --avss-mode, or score with --method avss --avss-mode ...")
    given = [f for f, v in (("--objective", objective), ("--max-remove", max_remove), ("--last-state", last_state))
             if v is not None]
    if scores is not None and given:
        raise BadInput(f"{given[0]} applies to --method; a scores file was computed with its own settings",
                       f"drop {given[0]}, or score now with --method")
    if method is not None:
        from compressor.score import methods

        methods.check_options(method, objective, max_remove, last_state)
    from compressor.prune.select import check_cut_rule

    check_cut_rule(ratio=ratio, num_layers=num_layers, mass=mass)  # its ranges; against the model once its config is read


def check_scores_match(report: Any, scores_file: Any, loaded: Any, spec: str) -> list[str]:
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
    model: Any,
    out: str | Path,
    *,
    scores: str | Path | None = None,
    method: str | None = None,
    avss_mode: str | None = None,
    objective: str | None = None,
    max_remove: int | None = None,
    last_state: str | None = None,
    ratio: float | None = None,
    num_layers: int | None = None,
    mass: float | None = None,
    mass_order: str = "sorted",
    protect: str = "none",
    data: str | None = None,
    profile: Any = None,
    samples: int | None = None,
    seq_len: int | None = None,
    batch_size: int | None = None,
    text_field: str | None = None,
    pack: bool | None = None,
    seed: int = 0,
    repair: str | None = None,
    ridge: float | None = None,
    heal_steps: int | None = None,
    heal_tokens: int | None = None,
    heal_lr: float | None = None,
    heal_loss: str | None = None,
    heal_minutes: float | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    device_map: str | None = None, offload_folder: str | None = None,
    stream: bool | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    force: bool = False,
    bar: ProgressBar | None = None,
    repair_bars: RepairBars | None = None,
    max_memory: int | None = None,
) -> PruneOutcome:
    """``avss prune``: arguments are its flags (``model``: a spec, or a loaded model, which a plain cut
    modifies). Scores come from ``scores`` (a file from ``avss score``) or are computed now with
    ``method``; exactly one of ``ratio``, ``num_layers``, ``mass`` picks the cut; ``repair`` repairs it
    before it is written. ``stream``: True scores, repairs and writes the cut one block / one shard at a
    time (no whole model in memory), False never, None when the model would not fit and every step can.
    ``bar(description)`` / ``repair_bars()``: optional progress displays."""
    from compressor.files import check_free_space, check_output_dir
    from compressor.profiles import calibration_spec
    from compressor.prune.provenance import cut_provenance
    from compressor.prune.select import select_layers
    from compressor.repair.api import check_repair, protect_for, prune_and_repair, repair_settings
    from compressor.score.report import ScoreReport
    from compressor.sources.data import calibration_for
    from compressor.sources.models import load_model

    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        diagnostics.warn(msg)

    check_prune_options(scores=scores, method=method, avss_mode=avss_mode, objective=objective, max_remove=max_remove,
                        last_state=last_state, ratio=ratio, num_layers=num_layers, mass=mass)
    settings = repair_settings(repair, ridge=ridge, heal_steps=heal_steps, heal_tokens=heal_tokens, heal_lr=heal_lr,
                               seed=seed, heal_loss=heal_loss, heal_minutes=heal_minutes)
    stream = _stream_choice(stream, method if not scores else None, settings.method)
    check_output_dir(out, force, note=diagnostics.note)
    report = ScoreReport.load(scores) if scores else None
    if isinstance(model, (str, Path)):  # the cut against the model's config, before it loads
        from compressor.architectures import num_layers as layers_of
        from compressor.prune.select import check_cut_rule
        from compressor.sources.models import load_config, resolve_model_path

        total = layers_of(load_config(resolve_model_path(str(model))[0], trust_remote_code))
        check_cut_rule(ratio=ratio, num_layers=num_layers, mass=mass, mass_order=mass_order, total=total,
                       protect=protect_for(settings, protect) if settings.enabled else protect)
        if method is not None:
            from compressor.score.api import scorer_options

            scorer_options(method, total, objective=objective, max_remove=max_remove, last_state=last_state,
                           protect=protect, rounds=num_layers)  # --protect, --max-remove against the config
    calib = calibration_spec(data, profile, samples=samples, seq_len=seq_len, batch_size=batch_size,
                             text_field=text_field, pack=pack)
    if isinstance(model, (str, Path)):
        spec = str(model)
        loaded = load_model(spec, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder, allow_pickle=allow_pickle,
                            trust_remote_code=trust_remote_code, announce=True, max_memory=max_memory, stream=stream,
                            copies=settings.copies)
    else:
        loaded, spec = model, model.spec
    check_free_space(Path(out), loaded.weight_bytes, f"the slim checkpoint {out}")
    if settings.enabled:
        check_repair(settings, loaded.adapter)  # an architecture it cannot repair fails before scoring
        if protect_for(settings, protect) != protect:
            diagnostics.note(f"--repair {settings.method} keeps layer 0 (its patch folds into the block before each "
                             "removed span)")
            protect = protect_for(settings, protect)
    if report is not None:
        for w in check_scores_match(report, scores, loaded, spec):
            warn(w)
    else:
        from compressor.score.api import score_model, scorer_options

        assert method is not None  # exactly one of scores and method (checked above)
        opts = scorer_options(method, loaded.num_layers, objective=objective, max_remove=max_remove,
                              last_state=last_state, protect=protect, rounds=num_layers)
        report = score_model(loaded, method, mode=avss_mode, calibration=calib, calibration_given=bool(data or profile),
                             seed=seed, bar=bar, **opts)
        warnings += report.warnings
    sel = select_layers(report, ratio=ratio, num_layers=num_layers, mass=mass, mass_order=mass_order, protect=protect)
    if sel.num_layers > report.num_layers // 2:
        warn(f"this removes {sel.num_layers} of {report.num_layers} layers, more than half of the model")
    diagnostics.note(f"method {report.label}: removing {sel.num_layers} of {report.num_layers} layers {sel.removed} "
                     f"({sel.rule})")
    provenance = cut_provenance(report, sel, scores_file=scores)
    cal = calibration_for(loaded, calib) if settings.enabled else None
    with (repair_bars or contextlib.nullcontext)() as update:
        res = prune_and_repair(loaded, sel.removed, out, settings, cal, force=force, provenance=provenance,
                               progress=update)
    for w in res.warnings:
        warn(w)
    return PruneOutcome(res, report, sel, settings, provenance, warnings)


def _stream_choice(stream: bool | None, method: str | None, repair: str) -> bool | None:
    """The loader's ``stream`` for this prune: a scorer or repair that needs the whole model rules
    streaming out (``--stream`` with one is refused now, before the model loads)."""
    from compressor.repair.api import stream_choice as repair_choice
    from compressor.score.api import stream_choice as scorer_choice

    return repair_choice(repair, scorer_choice(method, stream) if method is not None else stream)
