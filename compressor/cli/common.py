"""Glue shared by CLI shells: flags -> library calls. No torch at import time."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from compressor.errors import BadInput


def calibration_spec(data: Optional[str], profile: Optional[str], samples: Optional[int], seq_len: Optional[int],
                     batch_size: Optional[int], text_field: Optional[str], pack: Optional[bool]) -> Any:
    from compressor.sources.data import CalibrationSpec

    if data and profile:
        raise BadInput("--data and --profile both say where calibration text comes from", "pass only one of them")
    base: dict[str, Any] = {}
    if profile:
        from compressor.profiles import load_profile

        base = load_profile(profile).calibration.model_dump()
    elif data:
        base = {"source": data}
    overrides = {"samples": samples, "seq_len": seq_len, "batch_size": batch_size, "text_field": text_field, "pack": pack}
    base.update({k: v for k, v in overrides.items() if v is not None})
    spec = CalibrationSpec(**base)
    spec.validate()
    return spec, bool(data or profile)


def refuse_existing(paths: list[Optional[str]], force: bool) -> None:
    """Output files, checked before any work: not existing (unless ``force``), and writable where they go."""
    from compressor.files import check_output_file

    for p in paths:
        if p:
            check_output_file(p, "output", force)


def load(model: str, device: str, dtype: str, device_map: Optional[str], allow_pickle: bool, trust_remote_code: bool) -> Any:
    from compressor.cli.output import note
    from compressor.sources.models import load_model

    note(f"loading {model} ...")
    loaded = load_model(model, device=device, dtype=dtype, device_map=device_map, allow_pickle=allow_pickle,
                        trust_remote_code=trust_remote_code)
    note(f"loaded {loaded.config.model_type} with {loaded.num_layers} layers on {loaded.device} ({loaded.dtype})")
    return loaded


def load_for_eval(model: str, device: str, dtype: str, allow_pickle: bool, trust_remote_code: bool,
                  provider: str) -> Any:
    """A model to evaluate: an ONNX export folder runs in ONNX Runtime (what ships is what is gated),
    anything else loads as for every other command."""
    from compressor.cli.output import note
    from compressor.export.ort_model import is_onnx_export

    if not is_onnx_export(model):
        return load(model, device, dtype, None, allow_pickle, trust_remote_code)
    from compressor.export.ort_model import load_onnx_model

    note(f"loading {model} (ONNX export) in ONNX Runtime, provider {provider} ...")
    loaded = load_onnx_model(model, provider=provider, trust_remote_code=trust_remote_code)
    note(f"loaded {loaded.config.model_type} with {loaded.num_layers} layers ({loaded.dtype}, {loaded.device})")
    return loaded


def check_room(out: str, loaded: Any, what: str) -> None:
    """Free space for one checkpoint the size of ``loaded`` (a full disk is found before the compute)."""
    from compressor.files import check_free_space

    check_free_space(Path(out), loaded.weight_bytes, what)


def run_scoring(loaded: Any, method: str, avss_mode: Optional[str], calib: Any, have_data: bool, seed: int,
                **options: Any) -> Any:
    """Calibration (when the method needs it) + scoring with a progress bar; ``options``: the scorer's
    own (``objective``, ``max_remove``, ``protect``, ``last_state``: see ``score_layers``)."""
    from compressor.cli.output import note, progress_bar, warn
    from compressor.score import methods
    from compressor.score.api import score_layers
    from compressor.sources.data import load_calibration

    scorer = methods.get_scorer(method)
    mode = methods.check_mode(method, avss_mode)
    methods.check_options(method, options.get("objective"), options.get("max_remove"), options.get("last_state"))
    data = None
    if scorer.needs_data:
        if not have_data:
            note(f"no --data or --profile given: calibrating on {calib.source} ({calib.split} split)")
        data = load_calibration(calib, loaded.tokenizer, loaded.adapter.family)
        note(f"calibration: {data.tokens} tokens in {len(data.batches)} batches, sha256 {data.sha256[:12]}")
    label = f"{method} ({mode})" if mode else method
    what = scorer.pass_unit
    with progress_bar(f"scoring {label}: {what}") as update:
        report = score_layers(loaded, method, mode=mode, data=data, seed=seed, progress=update, **options)
    cost = (report.extra.get("sleb") or {}).get("cost_vs_forward")
    if cost is not None:
        note(f"sleb: {report.seconds:.1f} s, {cost:.1f}x a plain forward pass over the same calibration data")
    for w in report.warnings:
        warn(w)
    return report


def print_scores(report: Any) -> None:
    from rich.table import Table

    from compressor.cli.output import out
    from compressor.score.report import HEADERS, _stat_keys, to_table_rows

    removed = set(report.default_selection.get("removed", []))
    table = Table(title=f"{report.model.get('spec')}: layer scores, method {report.label}")
    for col in ["layer", "score", "rank", *[HEADERS.get(k, k) for k in _stat_keys(report)], "default cut"]:
        table.add_column(col, justify="right" if col != "default cut" else "left")
    for row in to_table_rows(report, removed):
        table.add_row(*row)
    out.print(table)


def repair_settings(repair: Optional[str], ridge: Optional[float], heal_steps: Optional[int],
                    heal_tokens: Optional[int], heal_lr: Optional[float], seed: int) -> Any:
    """Flags -> RepairSettings (defaults from the library, so CLI and Python agree)."""
    from compressor.repair.api import RepairSettings, parse_method

    defaults = RepairSettings()
    s = RepairSettings(method=repair or "none", ridge=defaults.ridge if ridge is None else ridge,
                       heal_steps=defaults.heal_steps if heal_steps is None else heal_steps,
                       heal_lr=defaults.heal_lr if heal_lr is None else heal_lr, heal_tokens=heal_tokens, seed=seed)
    parse_method(s.method)
    if s.ridge < 0:
        raise BadInput(f"--ridge must be >= 0 (got {s.ridge})", "e.g. --ridge 1e-4")
    if s.heal_steps < 1 or (s.heal_tokens is not None and s.heal_tokens < 1):
        raise BadInput("--heal-steps and --heal-tokens must be at least 1", "e.g. --heal-steps 30")
    if not s.heal_lr > 0:
        raise BadInput(f"--heal-lr must be positive (got {s.heal_lr})", "e.g. --heal-lr 3e-4")
    return s


def repair_progress():
    """A progress display for a repair on stderr: one bar per step (linear patch, distill), the loss shown."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from compressor.cli.output import err

    @contextlib.contextmanager
    def bars():
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=False) as prog:
            tasks: dict[str, Any] = {}

            def update(label: str, done: int, total: int, loss: Optional[float]) -> None:
                if label not in tasks:
                    tasks[label] = prog.add_task(f"repair: {label}", total=total)
                desc = f"repair: {label}" + (f" (loss {loss:.4f})" if loss is not None else "")
                prog.update(tasks[label], completed=done, total=total, description=desc)
            yield update

    return bars()


def print_repair(record: dict[str, Any]) -> None:
    """The repair's evidence on stdout: per-span fit errors, distillation losses."""
    from rich.table import Table

    from compressor.cli.output import note, out

    if record.get("linear"):
        t = Table(title=f"linear patch (ridge {record['linear']['ridge']:g})")
        for col in ("removed span", "folded into", "tokens", "residual error before", "after"):
            t.add_column(col, justify="left" if col in ("removed span", "folded into") else "right")
        for sp in record["linear"]["spans"]:
            t.add_row(str(sp["removed"]), sp["fold_point"], str(sp["tokens"]), f"{sp['error_before']:.4f}",
                      f"{sp['error_after']:.4f}")
        out.print(t)
    d = record.get("distill")
    if d:
        note(f"distill: {d['steps']} of {d['budget_steps']} steps ({'stopped early' if d['stopped_early'] else 'full budget'}), "
             f"held-out loss {d['heldout_loss_before']:.4f} -> {d['heldout_loss_after']:.4f}, held-out KL "
             f"{d['heldout_kl_before']:.4f} -> {d['heldout_kl_after']:.4f}, {d['seconds']:.0f} s")
