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
from compressor.score.stats import ROBUST_TAU
from compressor.sources.data import CalibrationData, CalibrationSpec
from compressor.sources.models import LoadedModel

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
    from compressor.prune.select import select_layers

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


def scorer_options(method: str, num_layers: int, *, objective: str | None = None, max_remove: int | None = None,
                   last_state: str | None = None, protect: Any = None, rounds: int | None = None) -> dict[str, Any]:
    """``score_layers``' options for ``method`` from user-level values: ``protect`` parsed (first,last |
    indices) for the scorer whose order depends on it; ``rounds`` (the cut's size) as the default
    ``max_remove`` of a scorer that computes removals round by round, so it computes no more than needed."""
    from compressor.prune.select import parse_protect

    scorer = methods.get_scorer(method)
    opts: dict[str, Any] = {"objective": objective, "max_remove": max_remove, "last_state": last_state}
    if "protect" in scorer.own_options:  # e.g. SLEB: its removal order depends on what it may not remove
        opts["protect"] = parse_protect(protect, num_layers)
    if "max_remove" in scorer.own_options and max_remove is None and rounds is not None:
        opts["max_remove"] = rounds
    if "max_remove" in scorer.own_options and opts["max_remove"] is not None:  # before the model loads
        kept = parse_protect(protect, num_layers) + ([0] if scorer.needs_patch else [])
        from compressor.score.sleb import check_max_remove

        check_max_remove(opts["max_remove"], num_layers, kept)
    return opts


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


def score_checkpoint(model: str | LoadedModel, *, method: str = "avss", mode: str | None = None,
                     objective: str | None = None, max_remove: int | None = None, protect: str | None = None,
                     last_state: str | None = None, data: str | None = None, profile: Any = None,
                     samples: int | None = None, seq_len: int | None = None, batch_size: int | None = None,
                     text_field: str | None = None, pack: bool | None = None, seed: int = 0, device: str = "cpu",
                     dtype: str = "auto", device_map: str | None = None, offload_folder: str | None = None, stream: bool | None = None,
                     allow_pickle: bool = False, trust_remote_code: bool = False, out: str | Path | None = None,
                     plot: str | Path | None = None, force: bool = False, bar: ProgressBar | None = None,
                     max_memory: int | None = None) -> ScoreReport:
    """``avss score`` as one call: every flag rule checked and every output place checked before the
    model loads, then the scores (``out``: the JSON, ``plot``: the PNG) written. Arguments are the
    command's flags; ``model`` may also be a loaded model. ``stream``: True one block at a time, False
    the whole model, None streams when a streaming scorer's model would not fit."""
    from compressor.files import check_output_file
    from compressor.profiles import calibration_spec
    from compressor.score.report import save_plot
    from compressor.sources.models import load_model

    scorer = methods.get_scorer(method)
    methods.check_mode(method, mode)
    methods.check_options(method, objective, max_remove, last_state)
    if protect is not None and "protect" not in scorer.own_options:
        raise BadInput(f"--protect on avss score only applies to --method {methods.names_text(methods.option_scorers('protect'))} "
                       f"(got --method {method}); other scores do not depend on it",
                       "drop --protect here and pass it to avss prune")
    stream = stream_choice(method, stream)
    for p in (out, plot):
        if p:
            check_output_file(p, "output", force)
    calib = calibration_spec(data, profile, samples=samples, seq_len=seq_len, batch_size=batch_size,
                             text_field=text_field, pack=pack)
    if not isinstance(model, LoadedModel):  # --protect and --max-remove against the config, before the load
        from compressor.architectures import num_layers
        from compressor.sources.models import load_config, resolve_model_path

        scorer_options(method, num_layers(load_config(resolve_model_path(model)[0], trust_remote_code)),
                       objective=objective, max_remove=max_remove, last_state=last_state, protect=protect)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, announce=True, max_memory=max_memory, stream=stream)
    opts = scorer_options(method, loaded.num_layers, objective=objective, max_remove=max_remove,
                          last_state=last_state, protect=protect)
    report = score_model(loaded, method, mode=mode, calibration=calib, calibration_given=bool(data or profile),
                         seed=seed, bar=bar, **opts)
    if out:
        report.save(out)
    if plot:
        save_plot(report, set(report.default_selection["removed"]), plot)
    return report
