"""``score_layers``: the library entry point behind ``avss score``."""
from __future__ import annotations

import time
from typing import Any

from compressor import __version__
from compressor.errors import BadInput, compute_error
from compressor.score import methods
from compressor.score.passes import Progress
from compressor.score.report import ScoreReport
from compressor.score.stats import ROBUST_TAU
from compressor.sources.data import CalibrationData
from compressor.sources.models import LoadedModel

DEFAULT_RATIO = 0.25


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
