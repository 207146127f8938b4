"""How a cut was chosen, as ``compression.json`` records it: one shape for every writer.

``avss prune`` and ``avss run`` used to build two different dicts under one schema version; a reader
could not know which keys to expect. Now every key is always there, ``None`` where it does not apply
(no scores file in a run, no run settings in a plain prune).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from compressor.score.report import ScoreReport
    from compressor.score.select import Selection

# 2: a "repair" record (method, settings, per-span patches, distillation)
# 3: the cut's provenance has one shape: every PROVENANCE_KEYS key, None where it does not apply
COMPRESSION_SCHEMA = 3
# the keys cut_provenance always writes (prune_model adds base_model, removed_layers, repair, ...)
PROVENANCE_KEYS = ("method", "mode", "label", "selection", "scores", "ranking", "calibration", "scores_file", "run")


def cut_provenance(report: ScoreReport, selection: Selection | dict[str, Any] | None = None, *,
                   scores_file: str | Path | None = None, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance of a cut from its parts: ``report`` (the ``ScoreReport`` it was ranked by),
    ``selection`` (a ``Selection`` or its dict; ``None`` when the layers were given, not selected),
    ``scores_file`` (the scores JSON it was read from, as given), ``run`` (``avss run``'s settings)."""
    if selection is not None and not isinstance(selection, dict):
        selection = selection.to_dict()
    return {
        "method": report.method,
        "mode": report.mode,
        "label": report.label,
        "selection": dict(selection) if selection is not None else None,
        "scores": [{"index": l.index, "score": l.score} for l in report.layers],
        "ranking": list(report.ranking),
        "calibration": report.calibration,
        "scores_file": str(scores_file) if scores_file is not None else None,
        "run": dict(run) if run is not None else None,
    }


def current(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (a ``compression.json`` of any schema) under the current one: the provenance keys an
    older record lacks as ``None``, and this ``schema_version``. Every write goes through it, so a
    rewritten record (``avss repair``) never claims an old schema over new keys."""
    out = {"schema_version": COMPRESSION_SCHEMA, **record}
    out["schema_version"] = COMPRESSION_SCHEMA
    for k in PROVENANCE_KEYS:
        out.setdefault(k, None)
    return out
