"""The exporter registry: one class per way of turning a checkpoint into an ONNX artifact.

Why a registry: ``avss export``, ``avss run`` (its export, quantize and bench stages) and the ONNX
loader each need to know what an exporter builds, what it refuses, and how to name its artifacts.
Each exporter answers those questions itself; no caller compares an exporter's name. Adding one is
one class here (plus its tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

from compressor.errors import BadInput
from compressor.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

    from compressor.sources.models import LoadedModel

OnStart = Optional[Callable[[str], None]]
OnStage = Optional[Callable[[str, float], None]]


@dataclass
class ExportOutcome:
    """What any exporter returns: its record (what ``export.json`` holds of it) plus what a front end shows."""

    out: str
    exporter: str
    record: dict[str, Any]
    num_layers: int
    files: dict[str, int]
    timings: dict[str, float]
    parity: Optional[dict[str, Any]]  # ParityReport.to_dict(); None for a quantized graph (checked on tasks)
    structural_checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    what: str = ""  # e.g. "text-generation-with-past" or "GenAI (onnxruntime-genai==0.15.2)"

    @property
    def model_bytes(self) -> int:
        return sum(v for k, v in self.files.items() if k.startswith("model.onnx"))


class Exporter:
    name: ClassVar[str]
    help: ClassVar[str]
    # the --quantize values it builds (None: the unquantized graph)
    precisions: ClassVar[tuple[Optional[str], ...]]
    # what ``--search fastest`` tries, most precise first (its precision rule reads this order)
    search_precisions: ClassVar[tuple[Optional[str], ...]] = (None,)
    # the bench's full-model reference through this exporter at the shipped precision (a run folder
    # entry), or None when the plain Optimum fp32 reference (``onnx-base``) is the fair comparison
    bench_reference: ClassVar[Optional[str]] = None
    # whether ``device`` is where the model is traced (Optimum) rather than the graph's target (the builder)
    traces_on_device: ClassVar[bool] = False
    # what its quantized artifact starts from: "graph" (the fp32 export) or "checkpoint" (the slim folder)
    quantize_source: ClassVar[str] = "graph"
    # whether it can write its graph one block at a time from the shards (``--stream``)
    streams: ClassVar[bool] = False

    def missing(self) -> Optional[str]:
        """Why this exporter cannot run in this environment (None: it can): asked before any work."""
        return None

    def check_flags(self, *, dtype: str, device: str, quantize: Optional[str], fuse_gate_up: bool = False) -> None:
        """Refuse, before any work, a combination of settings this exporter cannot build."""
        if fuse_gate_up:
            raise BadInput(f"--fuse-gate-up is an option of ONNX Runtime GenAI's builder, not of --exporter {self.name}",
                           "use --exporter genai, or drop --fuse-gate-up")

    def check_stream(self, stream: Optional[bool]) -> None:
        """Refuse ``--stream`` where this exporter needs the whole model."""
        if stream and not self.streams:
            streaming = [n for n, e in EXPORTERS.items() if e.streams]
            raise BadInput(f"--exporter {self.name} needs the whole model in memory and cannot --stream",
                           f"use --exporter {' or '.join(streaming)} with --stream, or drop --stream")

    def check_model(self, config: PretrainedConfig, family: str, quantize: Optional[str]) -> None:
        """Refuse, from the config alone, a model this exporter cannot build."""

    def export(self, model: str | Path | LoadedModel, out: str | Path, *, quantize: Optional[str] = None,
               dtype: str = "fp32", device: str = "cpu", task: str = "auto", opset: int = 18, force: bool = False,
               allow_pickle: bool = False, trust_remote_code: bool = False, provider: str = "cpu",
               stream: bool = False, fuse_gate_up: bool = False, on_start: OnStart = None,
               on_stage: OnStage = None) -> ExportOutcome:
        raise NotImplementedError

    def quantize(self, checkpoint: str | Path, graph: str | Path, out: str | Path, precision: str, *,
                 provider: str = "cpu", allow_pickle: bool = False, trust_remote_code: bool = False,
                 stream: bool = False) -> dict[str, Any]:
        """The shipped quantized artifact, from the slim ``checkpoint`` or its fp32 ``graph`` (whichever this
        exporter starts from); returns its record's ``quantization`` and checks."""
        raise NotImplementedError

    def quantize_inputs(self, precision: str) -> dict[str, Any]:
        """What the quantized artifact depends on besides its source (part of a run stage's key)."""
        return {"exporter": self.name, "quantize": precision}


class OptimumExporter(Exporter):
    name = "optimum"
    help = "optimum (any supported model)"
    precisions = (None, "int8", "int8-weights", "int4")
    # dynamic int8 is left out: it quantizes activations too, so it is not "less precise" than int8-weights
    # on one scale, and the precision rule needs one order
    search_precisions = (None, "int8-weights", "int4")
    traces_on_device = True

    def missing(self) -> Optional[str]:
        from compressor.compat import optimum_missing

        return optimum_missing()

    def check_flags(self, *, dtype: str, device: str, quantize: Optional[str], fuse_gate_up: bool = False) -> None:
        from compressor.export.convert import check_dtype_device
        from compressor.export.quantize import check_method

        super().check_flags(dtype=dtype, device=device, quantize=quantize, fuse_gate_up=fuse_gate_up)
        check_method(quantize)
        dt = check_dtype_device(dtype, device)
        if quantize and dt != "float32":
            raise BadInput(f"--quantize {quantize} starts from the fp32 graph, not {dtype}", "drop --dtype or --quantize")

    def export(self, model: str | Path | LoadedModel, out: str | Path, *, quantize: Optional[str] = None,
               dtype: str = "fp32", device: str = "cpu", task: str = "auto", opset: int = 18, force: bool = False,
               allow_pickle: bool = False, trust_remote_code: bool = False, provider: str = "cpu",
               stream: bool = False, fuse_gate_up: bool = False, on_start: OnStart = None,
               on_stage: OnStage = None) -> ExportOutcome:
        from compressor.export.convert import export_model

        self.check_stream(stream)
        Exporter.check_flags(self, dtype=dtype, device=device, quantize=quantize, fuse_gate_up=fuse_gate_up)  # the builder's
        res = export_model(model, out, task=task, opset=opset, device=device, dtype=dtype, force=force,
                           allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, on_start=on_start,
                           on_stage=on_stage, quantize=quantize)
        q = res.quantization or {}
        return ExportOutcome(res.out, self.name, res.to_dict(), res.num_layers, res.files, res.timings,
                             res.parity.to_dict(), q.get("structural_checks", []), res.warnings, res.task)

    def quantize(self, checkpoint: str | Path, graph: str | Path, out: str | Path, precision: str, *,
                 provider: str = "cpu", allow_pickle: bool = False, trust_remote_code: bool = False,
                 stream: bool = False) -> dict[str, Any]:
        from compressor.export.quantize import quantize_export

        self.check_stream(stream)
        rec: dict[str, Any] = quantize_export(graph, out, precision, force=True, provider=provider)
        return rec

    def quantize_inputs(self, precision: str) -> dict[str, Any]:
        from compressor.export.quantize import settings

        return {"exporter": self.name, "quantize": settings(precision)}


class GenAIExporter(Exporter):
    name = "genai"
    help = ("genai (ONNX Runtime GenAI's Model Builder: fused decoder graph for edge serving; "
            "Llama, Mistral, Qwen2/3, Phi-3; LFM2-MoE in the current lane)")
    precisions = (None, "int4", "int8-weights", "int4-mixed")
    search_precisions = (None, "int8-weights", "int4-mixed", "int4")
    bench_reference = "onnx-base-genai"
    quantize_source = "checkpoint"
    streams = True

    def check_flags(self, *, dtype: str, device: str, quantize: Optional[str], fuse_gate_up: bool = False) -> None:
        from compressor.export.genai import check_options, check_precision, check_target

        check_precision(quantize)
        check_target(dtype, device, quantize)
        check_options(quantize, fuse_gate_up)

    def check_model(self, config: PretrainedConfig, family: str, quantize: Optional[str]) -> None:
        from compressor.export.genai import builder_version, check_supported

        builder_version()
        check_supported(config, family, quantize)

    def export(self, model: str | Path | LoadedModel, out: str | Path, *, quantize: Optional[str] = None,
               dtype: str = "fp32", device: str = "cpu", task: str = "auto", opset: int = 18, force: bool = False,
               allow_pickle: bool = False, trust_remote_code: bool = False, provider: str = "cpu",
               stream: bool = False, fuse_gate_up: bool = False, on_start: OnStart = None,
               on_stage: OnStage = None) -> ExportOutcome:
        from compressor.export.genai import export_genai

        rec = export_genai(str(model), out, quantize=quantize, dtype=dtype, device=device, force=force,
                           allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, stream=stream,
                           fuse_gate_up=fuse_gate_up, on_start=on_start, on_stage=on_stage)
        return ExportOutcome(str(out), self.name, rec, rec["num_layers"], rec["files"], rec["timings"], rec["parity"],
                             rec["structural_checks"], rec["warnings"], f"GenAI ({rec['exporter']['package']})")

    def quantize(self, checkpoint: str | Path, graph: str | Path, out: str | Path, precision: str, *,
                 provider: str = "cpu", allow_pickle: bool = False, trust_remote_code: bool = False,
                 stream: bool = False) -> dict[str, Any]:
        rec = self.export(checkpoint, out, quantize=precision, force=True, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, stream=stream).record
        return {"quantization": rec["quantization"], "structural_checks": rec["structural_checks"], "files": rec["files"]}

    def quantize_inputs(self, precision: str) -> dict[str, Any]:
        from compressor.export.genai import PRECISION

        return {"exporter": self.name, "quantize": precision, "builder": list(PRECISION[precision])}


EXPORTERS: Registry[Exporter] = Registry("--exporter")
EXPORTERS.register(OptimumExporter)
EXPORTERS.register(GenAIExporter)


def names() -> list[str]:
    return list(EXPORTERS)


def available() -> list[str]:
    """The exporters that can run here, in registry order (the card's lane: both; the current lane: genai)."""
    return [n for n, e in EXPORTERS.items() if e.missing() is None]


def default_name() -> str:
    """The first exporter that runs here: Optimum in the card's lane (the user asked for export through it),
    the builder in the current lane, where Optimum cannot be installed."""
    found = available()
    return found[0] if found else next(iter(EXPORTERS))


def get_exporter(name: Optional[str]) -> Exporter:
    """The exporter called ``name`` (None: the default here); an unknown name is refused with the choices, one
    that cannot run here with why and what to use instead (exit 2, before any work)."""
    chosen = EXPORTERS.find(name or default_name())
    why = chosen.missing()
    if why is not None:
        others = [n for n in available() if n != chosen.name]
        fix = (f"use --exporter {' or '.join(others)}" if others else "install an exporter") + (
            ", or the card's lane (make install) for Optimum" if chosen.name == "optimum" else "")
        raise BadInput(f"--exporter {chosen.name} cannot run here: {why}", fix)
    return chosen


def help_text() -> str:
    return " or ".join(e.help for e in EXPORTERS.values())
