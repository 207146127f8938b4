"""The scores file: one JSON document a user, `prune` and CI can all read."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import BadInput

SCHEMA_VERSION = 1


@dataclass
class LayerScore:
    index: int
    score: float
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "score": self.score, **self.stats}


@dataclass
class ScoreReport:
    model: dict[str, Any]
    method: str
    mode: str | None
    description: str
    num_layers: int
    layers: list[LayerScore]
    calibration: dict[str, Any] | None
    default_selection: dict[str, Any]
    device: str
    dtype: str
    seconds: float
    tool_version: str
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def ranking(self) -> list[int]:
        """Least important first; ties broken by layer index so the order is deterministic."""
        return [l.index for l in sorted(self.layers, key=lambda l: (l.score, l.index))]

    @property
    def label(self) -> str:
        """Method name that never hides which AVSS variant produced a result."""
        return f"{self.method} ({self.mode})" if self.mode else self.method

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool_version": self.tool_version,
            "model": self.model,
            "method": self.method,
            "mode": self.mode,
            "label": self.label,
            "description": self.description,
            "num_layers": self.num_layers,
            "calibration": self.calibration,
            "layers": [l.to_dict() for l in self.layers],
            "ranking": self.ranking,
            "default_selection": self.default_selection,
            "device": self.device,
            "dtype": self.dtype,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
            **({"extra": self.extra} if self.extra else {}),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        from compressor.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreReport":
        layers = []
        for row in d["layers"]:
            row = dict(row)
            idx, score = int(row.pop("index")), float(row.pop("score"))
            layers.append(LayerScore(idx, score, row))
        return cls(
            model=d["model"], method=d["method"], mode=d.get("mode"), description=d.get("description", ""),
            num_layers=int(d["num_layers"]), layers=layers, calibration=d.get("calibration"),
            default_selection=d.get("default_selection", {}), device=d.get("device", "?"),
            dtype=d.get("dtype", "?"), seconds=float(d.get("seconds", 0.0)),
            tool_version=d.get("tool_version", "?"), warnings=list(d.get("warnings", [])),
            extra=dict(d.get("extra", {})), schema_version=int(d["schema_version"]),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ScoreReport":
        path = Path(path)
        if not path.exists():
            raise BadInput(f"scores file {path} does not exist", "run `avss score ... --out FILE` first")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("schema_version") != SCHEMA_VERSION:
                raise BadInput(f"{path} has schema_version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}",
                               "re-run `avss score` with this version of the tool")
            rep = cls.from_dict(d)
        except BadInput:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{path} is not a valid scores file ({type(exc).__name__}: {exc})",
                           "re-run `avss score ... --out FILE`") from exc
        if sorted(l.index for l in rep.layers) != list(range(rep.num_layers)):
            raise BadInput(f"{path} does not score layers 0..{rep.num_layers - 1} exactly once", "re-run `avss score`")
        if any(not math.isfinite(l.score) for l in rep.layers):
            raise BadInput(f"{path} contains non-finite scores", "re-run `avss score`")
        return rep



def to_table_rows(report: ScoreReport, removed: set[int]) -> list[list[str]]:
    rank = {idx: r for r, idx in enumerate(report.ranking)}
    rows = []
    keys = _stat_keys(report)
    for l in report.layers:
        rows.append([str(l.index), f"{l.score:.6g}", str(rank[l.index] + 1),
                     *[_fmt(l.stats.get(k)) for k in keys], "remove" if l.index in removed else ""])
    return rows


def _stat_keys(report: ScoreReport) -> list[str]:
    preferred = ["variance", "sparsity", "delta_variance", "delta_sparsity", "cosine", "relative_update",
                 "angular_distance", "loss_increase", "sparsity_zero"]
    present = {k for l in report.layers for k in l.stats}
    return [k for k in preferred if k in present][:5]


HEADERS = {"variance": "variance", "sparsity": "sparsity", "delta_variance": "Δ variance",
           "delta_sparsity": "Δ sparsity", "cosine": "cos(in,out)", "relative_update": "‖Δh‖/‖h‖",
           "angular_distance": "angular", "loss_increase": "Δ loss", "sparsity_zero": "S=0"}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def save_plot(report: ScoreReport, removed: set[int], path: str | Path) -> Path:
    """Bar chart of scores; bars the default selection would remove are highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    xs = [l.index for l in report.layers]
    ys = [l.score for l in report.layers]
    colors = ["#d62728" if i in removed else "#1f77b4" for i in xs]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(xs) + 2), 3.6), dpi=110)
    ax.bar(xs, ys, color=colors)
    positive = [y for y in ys if y > 0]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 30 and all(y > 0 for y in ys):
        ax.set_yscale("log")
    for i in removed:
        ax.annotate("x", (i, ys[i]), ha="center", va="bottom", color="#d62728", fontsize=7)
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("importance score")
    sel = report.default_selection
    rule = sel.get("rule") if sorted(removed) == sorted(sel.get("removed", [])) else "this cut"
    ax.set_title(f"{report.model.get('spec')}: {report.label}; red = removed ({rule}, {len(removed)} layers)",
                 fontsize=8)
    ax.set_xticks(xs)
    ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    from compressor.files import atomic_write_figure

    return atomic_write_figure(fig, path)


def dump(report: ScoreReport) -> dict[str, Any]:
    return asdict(report)


@dataclass
class ScoreOutcome:
    """What a scorer computes: one score per layer, warnings, and extra data for the report."""
    layers: list[LayerScore]
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
