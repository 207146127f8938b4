"""``score_layers``: the library entry point behind ``avss score``."""
from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

from compressor import __version__, diagnostics
from compressor.defaults import RATIO as DEFAULT_RATIO
from compressor.errors import BadInput, compute_error
from compressor.score import methods
from compressor.score.passes import Progress
from compressor.score.report import ScoreReport
from compressor.score.settings import ScorerSettings
from compressor.score.stats import ROBUST_TAU
from compressor.sources.data import CalibrationData, CalibrationSpec
from compressor.sources.models import LoadedModel
from compressor.sources.settings import CalibrationSettings, LoadSettings

# a progress display named by its description (the CLI's progress_bar); it yields a (done, total) callback
ProgressBar = Callable[[str], AbstractContextManager[Progress | None]]


def score_layers(
    loaded: LoadedModel,
    method: str = "avss",
    *,
    mode: str | None = None,
    data: CalibrationData | None = None,
    seed: int = 0,
    tau: float = ROBUST_TAU,
    progress: Progress | None = None,
    objective: str | None = None,
    max_remove: int | None = None,
    protect: list[int] | None = None,
    last_state: str | None = None,
) -> ScoreReport:
    """Score every block of ``loaded``; returns a report whose ``ranking`` is least important first.

    ``objective`` / ``max_remove`` / ``protect``: SLEB's loss (nll, kl), how many removals to compute
    (default: half the layers) and the blocks it may never remove. ``last_state``: ``final-norm`` reads
    the last block's output after the model's final norm, as ShortGPT and PruneMe do (transformers'
    ``hidden_states[-1]``); ``block`` (default) its raw output, like every other block's."""
    scorer = methods.get_scorer(method)
    mode = methods.check_mode(method, mode)
    methods.check_options(method, objective, max_remove, last_state, protect)
    n = loaded.num_layers
    if loaded.streamed and not scorer.streams:
        _refuse_stream(method)
    if scorer.needs_data and data is None:
        raise BadInput(f"--method {method} needs calibration data", "pass --data SOURCE or --profile FILE")
    inputs = methods.ScoreInputs(loaded, data if scorer.needs_data else None, mode, seed, tau, progress,
                                 last_state == "final-norm", objective, max_remove, protect)
    t0 = time.perf_counter()
    try:
        outcome = scorer.compute(inputs)
    except (RuntimeError, MemoryError) as exc:
        known = compute_error(exc, "scoring", "try a smaller --batch-size or --seq-len")
        if known is None:
            raise  # a bug, not a setting: "unexpected …; report it"
        raise known from exc
    seconds = time.perf_counter() - t0
    label = f"{method} ({mode})" if mode else method
    methods.check_finite(outcome, label)
    warnings = list(outcome.warnings) + (list(data.warnings) if data is not None and scorer.needs_data else [])
    report = ScoreReport(
        model=_model_info(loaded), method=method, mode=mode, description=scorer.description, num_layers=n,
        layers=outcome.layers, calibration=data.describe() if data is not None and scorer.needs_data else None,
        default_selection={}, device=loaded.device, dtype=loaded.dtype, seconds=seconds,
        tool_version=__version__, warnings=warnings, extra=outcome.extra,
    )
    if last_state is not None:
        report.extra["last_state"] = last_state
    from compressor.score.select import select_layers

    sel = select_layers(report, ratio=DEFAULT_RATIO)
    report.default_selection = sel.to_dict()
    return report


def _model_info(loaded: LoadedModel) -> dict[str, Any]:
    cfg = loaded.config
    return {
        "spec": loaded.spec,
        "path": loaded.path,
        "model_type": cfg.model_type,
        "architecture": (getattr(cfg, "architectures", None) or [type(loaded.model).__name__])[0],
        "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
    }


def stream_choice(method: str, stream: bool | None) -> bool | None:
    """What to pass the loader for ``method``: a scorer that runs the whole model many times never
    streams (``--stream`` on it is refused now, before the model loads); None lets the loader decide."""
    scorer = methods.get_scorer(method)
    if scorer.streams:
        return stream
    if stream:
        _refuse_stream(method)
    return False


def _refuse_stream(method: str) -> None:
    scorer = methods.get_scorer(method)
    raise BadInput(f"--method {method} {scorer.whole_model}, so it cannot "
                   "stream one block at a time", f"drop --stream, or use --method "
                   f"{methods.names_text(methods.streaming_scorers())}")


def score_model(loaded: LoadedModel, method: str = "avss", *, mode: str | None = None,
                calibration: CalibrationSpec | None = None, calibration_given: bool = True, seed: int = 0,
                bar: ProgressBar | None = None, **options: Any) -> ScoreReport:
    """``score_layers`` with the calibration it needs loaded from ``calibration`` (default spec when
    None) and what a long scoring pass should say on the ``avss`` logger: the data used, SLEB's cost,
    the report's warnings. ``bar(description)``: a progress display; ``options``: see ``score_layers``."""
    from compressor.sources.data import calibration_for

    scorer = methods.get_scorer(method)
    mode = methods.check_mode(method, mode)
    methods.check_options(method, options.get("objective"), options.get("max_remove"), options.get("last_state"))
    data = None
    if scorer.needs_data:
        data = calibration_for(loaded, calibration or CalibrationSpec(), given=calibration_given)
        diagnostics.note(f"calibration: {data.tokens} tokens in {len(data.batches)} batches, sha256 {data.sha256[:12]}")
    label = f"{method} ({mode})" if mode else method
    unit = "blocks (streamed)" if loaded.streamed and scorer.needs_data else scorer.pass_unit
    with (bar or _no_bar)(f"scoring {label}: {unit}") as update:
        report = score_layers(loaded, method, mode=mode, data=data, seed=seed, progress=update, **options)
    cost = (report.extra.get("sleb") or {}).get("cost_vs_forward")
    if cost is not None:
        diagnostics.note(f"sleb: {report.seconds:.1f} s, {cost:.1f}x a plain forward pass over the same calibration data")
    for w in report.warnings:
        diagnostics.warn(w)
    return report


def _no_bar(description: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def score_checkpoint(model: str | LoadedModel, *, scorer: ScorerSettings = ScorerSettings(),
                     protect: str | None = None, calibration: CalibrationSettings = CalibrationSettings(),
                     load: LoadSettings = LoadSettings(), out: str | Path | None = None,
                     plot: str | Path | None = None, force: bool = False,
                     bar: ProgressBar | None = None) -> ScoreReport:
    """``avss score`` as one call: every flag rule checked and every output place checked before the
    model loads, then the scores (``out``: the JSON, ``plot``: the PNG) written. The settings are the
    command's flags, grouped; ``model`` may also be a loaded model. ``load.stream``: True one block at a
    time, False the whole model, None streams when a streaming scorer's model would not fit."""
    from compressor.files import check_output_file
    from compressor.score.report import save_plot

    assert scorer.method is not None
    method = scorer.method
    scorer.check()
    if protect is not None and "protect" not in methods.get_scorer(method).own_options:
        raise BadInput(f"--protect on avss score only applies to --method {methods.names_text(methods.option_scorers('protect'))} "
                       f"(got --method {method}); other scores do not depend on it",
                       "drop --protect here and pass it to avss prune")
    load = load.streaming(stream_choice(method, load.stream))
    for p in (out, plot):
        if p:
            check_output_file(p, "output", force)
    calib = calibration.spec()
    if not isinstance(model, LoadedModel):  # --protect and --max-remove against the config, before the load
        scorer.options(load.num_layers(model), protect)
    loaded = model if isinstance(model, LoadedModel) else load.load(model)
    report = score_model(loaded, method, mode=scorer.mode, calibration=calib, calibration_given=calibration.given,
                         seed=scorer.seed, bar=bar, **scorer.options(loaded.num_layers, protect))
    if out:
        report.save(out)
    if plot:
        save_plot(report, set(report.default_selection["removed"]), plot)
    return report
