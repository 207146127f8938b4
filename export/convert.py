"""Export a (full or slim) model to ONNX through Hugging Face Optimum, then prove it matches.

Why our own check: Optimum only *warns* when its validation fails (and a pruned model whose
``layer_idx`` was not renumbered exports "successfully"). So the export lands in a temporary folder,
``compressor.export.parity`` compares ONNX Runtime with PyTorch on shapes the exporter never saw, and only a
passing export is moved to ``--out``. A failing one raises ``RuntimeFailure`` (exit 3) and leaves
nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from compressor import __version__, library_versions
from compressor.errors import BadInput, RuntimeFailure
from compressor.export.layout import DATA_FILE, EXPORT_RECORD, ONNX_FILE, store_external_data
from compressor.files import (
    check_free_space,
    check_output_dir,
    describe_os_error,
    os_error_in,
    replace_dir,
    staging_dir,
)
from compressor.prune.surgery import COMPRESSION_FILE

if TYPE_CHECKING:  # pragma: no cover
    from compressor.sources.models import LoadedModel

    from .parity import ParityReport  # relative: mypy reads export/ as the package ``export``

TASKS = ("auto", "text-generation-with-past", "text-classification", "feature-extraction")
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}
EXPORT_SCHEMA = 1

Stage = Callable[[str, float], None]  # (stage name, seconds) -> None, called when a stage ends


@dataclass
class ExportResult:
    out: str
    task: str
    opset: int
    device: str
    dtype: str
    num_layers: int
    files: dict[str, int]  # name -> bytes
    parity: ParityReport
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # with --quantize: the settings and the structural checks

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parity"] = self.parity.to_dict()
        d.pop("quantization", None)
        return d


def resolve_task(task: str, family: str, architectures: list[str] | None) -> str:
    """Decoders export with the KV cache (one merged graph); classifiers keep their head."""
    if task not in TASKS:
        raise BadInput(f"unknown export task {task!r}", f"use one of: {', '.join(TASKS)}")
    if family == "decoder":
        wanted = "text-generation-with-past"
    elif any(a.endswith("ForSequenceClassification") for a in architectures or []):
        wanted = "text-classification"
    else:
        wanted = "feature-extraction"
    if task != "auto" and task != wanted:
        raise BadInput(f"--task {task} does not fit this {family} model (its export task is {wanted})",
                       f"use --task auto or --task {wanted}")
    return wanted


def check_dtype_device(dtype: str, device: str) -> str:
    """fp16 only where it was verified to run: on CUDA, and then every export is run by the parity check.

    On CPU the exporter makes invalid fp16 graphs for some architectures (GPT-2: LayerNormalization
    with mixed float/float16 inputs), so it is refused rather than attempted.
    """
    if dtype not in DTYPES:
        raise BadInput(f"unknown export dtype {dtype!r}", "use --dtype fp32 or fp16 (bf16 cannot be exported)")
    dt = DTYPES[dtype]
    if dt == "float16" and not device.startswith("cuda"):
        raise BadInput("--dtype fp16 export is only supported with --device cuda (CPU fp16 graphs are invalid for "
                       "some architectures)", "export fp32 on CPU, or use --device cuda --dtype fp16 on a GPU machine")
    return dt



@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The TorchScript exporter's TracerWarnings and Optimum's chatter are not for our users; stdout
    stays reserved for data (Optimum prints some messages)."""
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


MIN_OPSET, MAX_OPSET = 14, 23  # Optimum's decoder configs need 14; torch 2.13's exporter stops at 23


def check_export_spec(spec: str, max_memory: int | None = None, trust_remote_code: bool = False,
                      stream: bool | None = False, can_stream: bool = False) -> bool:
    """``avss export``'s memory check, from the spec the user typed (its config and headers only); returns
    whether the export streams (``stream`` None: when only a streamed one fits and the exporter has one)."""
    from compressor.architectures import adapter_for_config
    from compressor.sources.memory import check_export_fits
    from compressor.sources.models import load_config, resolve_model_path

    path, _ = resolve_model_path(spec)
    return check_export_fits(path, adapter_for_config(load_config(path, trust_remote_code)), max_memory,
                             stream=stream, can_stream=can_stream)


def export_bytes(num_parameters: int) -> int:
    """Disk an export needs while it runs: Optimum's graph and our re-saved copy both sit in the
    staging folder, about twice the fp32 weights."""
    return 2 * 4 * num_parameters


def check_opset(opset: int) -> None:
    """Checked before any work (``avss run`` calls it before scoring)."""
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise BadInput(f"--opset {opset} is outside what this exporter supports",
                       f"use --opset {MIN_OPSET}..{MAX_OPSET} (default 18)")


def export_model(
    model: str | Path | LoadedModel,
    out: str | Path,
    *,
    task: str = "auto",
    opset: int = 18,
    device: str = "cpu",
    dtype: str = "fp32",
    force: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    on_stage: Optional[Stage] = None,
    on_start: Optional[Callable[[str], None]] = None,
    quantize: Optional[str] = None,
) -> ExportResult:
    """Export ``model`` (a spec like ``builtin:smollm2-135m`` / a folder, or a ``LoadedModel``) to ``out``.

    A ``LoadedModel`` is exported exactly as it is in memory, which is how a broken in-memory
    surgery is caught by the parity check. Raises ``RuntimeFailure`` when parity does not hold.
    """
    from compressor.export import parity

    out = check_output_dir(out, force)
    dt = check_dtype_device(dtype, device)
    check_opset(opset)
    from compressor.export.quantize import check_method

    check_method(quantize)
    if quantize and dt != "float32":
        raise BadInput(f"--quantize {quantize} starts from the fp32 graph, not {dtype}", "drop --dtype or --quantize")
    from compressor.export.runtime import RuntimeSetupError, check_runtime_install, cuda_in_build

    try:
        check_runtime_install()  # the parity check needs ONNX Runtime: fail before the slow part
    except RuntimeSetupError as exc:
        raise exc.as_avss_error() from exc
    timings: dict[str, float] = {}
    warns: list[str] = []

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)
        if on_stage:
            on_stage(name, timings[name])

    def start(name: str) -> float:
        if on_start:
            on_start(name)
        return time.perf_counter()

    from compressor.sources.models import LoadedModel, load_model

    t0 = start("load")
    if isinstance(model, LoadedModel):
        loaded = model
        if loaded.dtype != dt:
            raise BadInput(f"the model in memory is {loaded.dtype} but --dtype {dtype} was asked",
                           f"load it with dtype={dt!r}")
    else:
        loaded = load_model(str(model), device=device, dtype=dt, allow_pickle=allow_pickle,
                            trust_remote_code=trust_remote_code)
    stage("load", t0)
    check_free_space(out, export_bytes(loaded.num_parameters), f"the ONNX export {out}")
    cfg = loaded.config
    real_task = resolve_task(task, loaded.adapter.family, getattr(cfg, "architectures", None))
    num_layers = int(cfg.num_hidden_layers)
    export_device = "cuda" if str(loaded.device).startswith("cuda") else "cpu"

    tmp = staging_dir(out)
    raw = tmp / "optimum"
    final = tmp / "final"
    try:
        t0 = start("export")
        from optimum.exporters.onnx import onnx_export_from_model

        with _quiet_exporter():
            try:
                onnx_export_from_model(loaded.model, str(raw), task=real_task, opset=int(opset), device=export_device,
                                       do_validation=False)  # our parity check below replaces it
            except Exception as exc:  # noqa: BLE001 - the exporter raises anything
                disk = os_error_in(exc)
                if disk is not None:  # a full or read-only disk, not a version problem
                    raise disk from exc
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise RuntimeFailure(f"Optimum could not export this {cfg.model_type} model: {first}",
                                     "re-run with --debug for the traceback; check the pins in README (transformers<4.58)") from exc
        stage("export", t0)

        t0 = start("store")
        store_external_data(raw / ONNX_FILE, final)
        for f in sorted(raw.iterdir()):
            if f.name not in (ONNX_FILE, DATA_FILE) and f.is_file():
                shutil.copy2(f, final / f.name)
        if loaded.tokenizer is not None and not (final / "tokenizer_config.json").exists():
            loaded.tokenizer.save_pretrained(str(final))
        src = Path(loaded.path)
        if src.is_dir() and (src / COMPRESSION_FILE).exists():
            shutil.copy2(src / COMPRESSION_FILE, final / COMPRESSION_FILE)
        stage("store", t0)

        t0 = start("parity")
        parity_provider = "cpu"
        if export_device == "cuda":
            if cuda_in_build():
                parity_provider = "cuda"
            else:
                warns.append("the installed onnxruntime has no CUDA provider, so the parity check ran the "
                             "exported graph on CPU (install onnxruntime-gpu to check it on CUDA)")
        try:
            report = parity.check_parity(loaded.model, final, real_task, dtype=dt, num_layers=num_layers,
                                         provider=parity_provider)
        except RuntimeSetupError as exc:
            raise exc.as_avss_error() from exc
        stage("parity", t0)
        files = {f.name: f.stat().st_size for f in sorted(final.iterdir()) if f.is_file()}
        result = ExportResult(str(out), real_task, int(opset), export_device, dt, num_layers, files, report, timings,
                              warns)
        if report.reference_nonfinite:
            raise BadInput(f"{loaded.spec} gives NaN/inf logits in PyTorch itself, so no export can match it",
                           "its weights are broken: check them (re-download or re-save "
                           "the model, or re-run the repair that wrote them); nothing was written")
        if not report.passed:
            raise RuntimeFailure(f"parity check failed: {report.summary()}",
                                 "the ONNX graph does not compute what the PyTorch model computes; nothing was "
                                 "written (re-run with --debug, or check the pruning: was layer_idx renumbered?)")
        record = {"schema_version": EXPORT_SCHEMA, "tool": "avss-compressor", "tool_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "exporter": {"name": "optimum", "label": "onnx"},
                  "source": {"spec": loaded.spec, "path": loaded.path}, "versions": library_versions(),
                  **result.to_dict()}
        record.pop("out", None)
        (final / EXPORT_RECORD).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        result.files[EXPORT_RECORD] = (final / EXPORT_RECORD).stat().st_size
        if quantize:
            from compressor.export.quantize import quantize_folder

            t0 = start("quantize")
            qdir = tmp / "quantized"
            qdir.mkdir()
            rec = quantize_folder(final, qdir, quantize, provider=parity_provider)
            result.quantization = {"settings": rec["quantization"], "structural_checks": rec["structural_checks"]}
            result.files = dict(rec["files"])
            stage("quantize", t0)
            final = qdir
        replace_dir(final, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        known = describe_os_error(exc)
        if known is not None:
            raise known from exc
        raise RuntimeFailure(f"writing {out} failed: {exc}", "check free disk space and permissions") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
