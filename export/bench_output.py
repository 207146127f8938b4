"""Where ``avss bench`` writes its report and how: the output paths (checked before measuring), bench.json
and the latency box plots, each written atomically."""
from __future__ import annotations

import json
from pathlib import Path

from compressor.errors import BadInput
from compressor.export import layout
from compressor.export.bench_report import BenchReport
from compressor.files import atomic_write_figure, atomic_write_text, check_output_file


def output_paths(json_path: str | None, plot_path: str | None, force: bool) -> tuple[Path | None, Path | None]:
    """Resolve the outputs before measuring (the plot defaults to the --json path with .png) and refuse
    to overwrite existing files without ``force``."""
    j = Path(json_path) if json_path else None
    p = Path(plot_path) if plot_path else (j.with_suffix(".png") if j else None)
    if j is not None and p is not None and j.resolve() == p.resolve():
        raise BadInput(f"--json and --plot are both {j}", "give the plot a .png name")
    for f, flag in ((j, "--json"), (p, "--plot")):
        if f is not None:
            check_output_file(f, flag, force)
    return j, p


def write_json(report: BenchReport, path: str | Path) -> Path:
    """bench.json, written atomically (temporary file + rename)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def _label(path: str) -> str:
    """A short axis label: the folder name for ``.../model.onnx``, else the last path component."""
    p = Path(path)
    return (p.parent.name if p.name == layout.ONNX_FILE else p.name) or path


def save_plot(report: BenchReport, path: str | Path) -> Path:
    """Box plots of the pooled latency samples per model (prefill and per-token decode, or per batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = [_label(m.path) for m in report.models]
    keys = [("prefill_ms", "prefill (ms)"), ("decode_ms", "decode (ms / token)")]
    if report.models[0].kind == "encoder":
        keys = [("batch_ms", "forward pass (ms / batch)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(max(5.0, 1.6 * len(names) + 2) * len(keys), 3.8), dpi=110,
                             squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        ax.boxplot([m.samples[key] for m in report.models], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=7, rotation=15)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    s = report.settings
    fig.suptitle(f"{report.provider}, batch {s['batch_size']}, prompt {s['prompt_len']}, "
                 f"{s['threads']} threads, {s['runs']} runs x {s['rounds']} rounds", fontsize=9)
    fig.tight_layout()
    return atomic_write_figure(fig, path)
