"""ONNX Runtime GenAI's Model Builder as a second exporter: the artifact edge teams deploy.

Why a second exporter: the builder turns the same checkpoint folder into a graph with fused
GroupQueryAttention, SkipSimplifiedLayerNormalization and (for int4) MatMulNBits, which decodes
several times faster than Optimum's generic graph; gating Optimum's graph and shipping the builder's
would gate something that never ships. So the builder runs on the folder (a subprocess: its progress
bars go to a log in the staging folder, never to our stderr), and its graph is checked against
PyTorch like Optimum's: fp32 logits on a right-padded batch (GroupQueryAttention derives positions
from the mask's sum, so it is exact with right padding and wrong with left), then per sequence a
decode step on the KV cache and greedy tokens. A quantized graph gets a structural check and is
judged on tasks (``avss verify BASE FOLDER``).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from compressor.errors import BadInput, RuntimeFailure

REQUIREMENT = "onnxruntime-genai==0.15.2"  # the newest whose builder imports with transformers 4.57
GENAI_CONFIG = "genai_config.json"
# the pinned builder's model classes among the architectures we prune (builder.py dispatches on these)
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM",
             "Phi3ForCausalLM")
# --quantize -> builder precision and its options: weight-only MatMulNBits, block 32, accuracy level 4
# (int8 compute, as our own weight-only methods use; ONNX Runtime's fast CPU path). int8-weights is the
# builder's 8-bit precision (its int4_* options apply to both bit widths).
_MATMULNBITS = ["int4_block_size=32", "int4_accuracy_level=4"]
PRECISION = {None: ("fp32", []), "int4": ("int4", _MATMULNBITS), "int8-weights": ("int8", _MATMULNBITS)}
CPU_HEAD_MULTIPLE = 16  # ONNX Runtime's CPU GroupQueryAttention: "head_size shall be a multiple of 16"


def is_genai_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / GENAI_CONFIG).is_file()


def builder_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("onnxruntime-genai", "onnxruntime-genai-cuda"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    raise BadInput("--exporter genai needs ONNX Runtime GenAI, which is not installed",
                   f"pip install '{REQUIREMENT}' (or the [cpu] extra), or use --exporter optimum")


def check_supported(config: Any, family: str, quantize: Optional[str]) -> None:
    """Refused up front, before any work: an architecture, a head size or a setting the builder cannot do."""
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if family != "decoder" or arch not in SUPPORTED:
        raise BadInput(f"ONNX Runtime GenAI's builder ({REQUIREMENT}) does not build {arch} models",
                       f"use --exporter optimum (the builder builds {', '.join(SUPPORTED)})")
    if quantize not in PRECISION:
        raise BadInput(f"--exporter genai has no --quantize {quantize}",
                       "use --quantize int4 or int8-weights (the builder's MatMulNBits), or --exporter optimum for "
                       "dynamic int8")
    if quantize == "int8-weights" and getattr(config, "tie_word_embeddings", False):
        raise BadInput("the pinned builder's int8 precision writes an invalid graph for a model with tied "
                       "embeddings (its LM head references a 4-bit initializer it never writes)",
                       "use --quantize int4 with --exporter genai, or --exporter optimum --quantize int8-weights")
    heads = int(getattr(config, "num_attention_heads", 1))
    head = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if head % CPU_HEAD_MULTIPLE:
        raise BadInput(f"the model's attention head size is {head}; ONNX Runtime's GroupQueryAttention on CPU "
                       f"needs a multiple of {CPU_HEAD_MULTIPLE}", "use --exporter optimum for this model")
    missing = [k for k in ("eos_token_id", "bos_token_id") if getattr(config, k, None) is None]
    if missing:
        raise BadInput(f"config.json has no {' or '.join(missing)}, which the builder's genai_config.json needs "
                       "(ONNX Runtime GenAI refuses a null one)", f"set {', '.join(missing)} in config.json")


def _run_builder(src: Path, dst: Path, scratch: Path, quantize: Optional[str]) -> list[str]:
    precision, extra = PRECISION[quantize]
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(dst), "-p", precision,
           "-e", "cpu", "-c", str(scratch / "cache")]
    if extra:
        cmd += ["--extra_options", *extra]
    log = scratch / "builder.log"
    with log.open("w", encoding="utf-8") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = lines[-1][:300] if lines else f"exit status {done.returncode}"
        raise RuntimeFailure(f"ONNX Runtime GenAI's builder failed on {src}: {last}",
                             "re-run with --debug; or use --exporter optimum")
    return cmd


def structural_checks(folder: Path, num_layers: int, quantize: Optional[str]) -> list[dict[str, Any]]:
    """What a quantized graph must show without running: the fused attention per layer, 4-bit weights."""
    import onnx

    from compressor.export.layout import ONNX_FILE

    ops: dict[str, int] = {}
    for node in onnx.load(str(folder / ONNX_FILE), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    checks = [{"name": "GroupQueryAttention per layer", "passed": ops.get("GroupQueryAttention", 0) == num_layers,
               "detail": f"{ops.get('GroupQueryAttention', 0)} for {num_layers} layers"}]
    if quantize:
        checks.append({"name": f"{PRECISION[quantize][0]} weights", "passed": ops.get("MatMulNBits", 0) >= num_layers,
                       "detail": f"{ops.get('MatMulNBits', 0)} MatMulNBits nodes"})
    return checks


def _recorded(cmd: list[str]) -> list[str]:
    """The builder command without this machine's paths (interpreter, source, staging and cache folders)."""
    out, hide = ["python"], {"-i": "SRC", "-o": "OUT", "-c": "CACHE"}
    args = cmd[1:]
    for i, a in enumerate(args):
        out.append(hide[args[i - 1]] if i and args[i - 1] in hide else a)
    return out


def _runs(folder: Path) -> dict[str, Any]:
    """The graph loads in ONNX Runtime and gives finite logits for a short prompt (a builder precision can
    write a graph that references a missing initializer: 0.15.2's int8 with tied embeddings does)."""
    import numpy as np

    from compressor.export.runtime import RuntimeSetupError, empty_past_shape, make_session

    try:
        sess = make_session(str(folder / "model.onnx"), "cpu").session
        feed: dict[str, Any] = {"input_ids": np.array([[1, 2, 3, 4]], np.int64),
                                "attention_mask": np.ones((1, 4), np.int64)}
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values"):
                feed[i.name] = np.zeros(empty_past_shape(i.shape, 1, genai_kv_shape(folder)),
                                        np.float16 if "float16" in i.type else np.float32)
        logits = sess.run(["logits"], feed)[0]
        ok = bool(np.isfinite(logits).all())
        return {"name": "runs in ONNX Runtime", "passed": ok, "detail": "finite logits for a 4-token prompt" if ok
                else "NaN/inf logits for a 4-token prompt"}
    except (RuntimeSetupError, Exception) as exc:  # noqa: BLE001 - whatever ONNX Runtime says is the detail
        first = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
        return {"name": "runs in ONNX Runtime", "passed": False, "detail": first[:300]}


def export_genai(model: str, out: str | Path, *, quantize: Optional[str] = None, force: bool = False,
                 allow_pickle: bool = False, trust_remote_code: bool = False,
                 on_start: Optional[Callable[[str], None]] = None,
                 on_stage: Optional[Callable[[str, float], None]] = None) -> dict[str, Any]:
    """Build ``model`` (a folder or ``builtin:``) with the Model Builder into ``out``; returns ``export.json``.

    fp32 is parity-checked against PyTorch (``RuntimeFailure`` and nothing written if it does not
    hold); int4 is checked structurally. The folder also gets ``config.json``, so ``avss verify``
    and ``avss bench`` take it like an Optimum export."""
    from compressor import __version__, library_versions
    from compressor.export import parity
    from compressor.export.layout import EXPORT_RECORD, check_onnx_files
    from compressor.files import check_free_space, check_output_dir, replace_dir, staging_dir
    from compressor.architectures import adapter_for_config
    from compressor.sources.models import load_config, load_model, resolve_model_path

    out = check_output_dir(out, force)
    version = builder_version()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        if on_start:
            on_start(name)
        t0 = time.perf_counter()
        res = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        if on_stage:
            on_stage(name, timings[name])
        return res

    # what the builder cannot build is refused from the config alone, before any weights load
    path, is_local = resolve_model_path(model)
    config = load_config(path, trust_remote_code)
    check_supported(config, adapter_for_config(config).family, quantize)
    if not is_local:
        raise BadInput(f"{model} is not a local folder; the builder reads a checkpoint folder",
                       "download it first (huggingface-cli download) and pass the folder")
    src = Path(path)
    loaded = timed("load", lambda: load_model(model, dtype="float32", allow_pickle=allow_pickle,
                                              trust_remote_code=trust_remote_code))
    check_free_space(out, 2 * loaded.weight_bytes, f"the GenAI export {out}")
    num_layers = int(loaded.config.num_hidden_layers)
    tmp = staging_dir(out)
    final, scratch = tmp / "final", tmp / "scratch"
    scratch.mkdir()
    try:
        cmd = timed("build", lambda: _run_builder(src, final, scratch, quantize))
        for name in ("config.json", "generation_config.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, final / name)
        check_onnx_files(final / "model.onnx")
        checks = structural_checks(final, num_layers, quantize) + [_runs(final)]
        report = None
        if quantize is None:
            report = timed("parity", lambda: parity.check_genai_parity(loaded.model, final, num_layers=num_layers))
            if report.reference_nonfinite:
                raise BadInput(f"{model} gives NaN/inf logits in PyTorch itself, so no export can match it",
                               "its weights are broken: check them; nothing was written")
            if not report.passed:
                raise RuntimeFailure(f"parity check failed: {report.summary()}",
                                     "the builder's graph does not compute what the PyTorch model computes for this "
                                     "architecture; nothing was written (use --exporter optimum)")
        bad = [c for c in checks if not c["passed"]]
        if bad:
            raise RuntimeFailure(f"the builder's graph fails a structural check: {bad[0]['name']} ({bad[0]['detail']})",
                                 "use --exporter optimum")
        files = {f.name: f.stat().st_size for f in sorted(final.iterdir()) if f.is_file()}
        record = {"schema_version": 1, "tool": "avss-compressor", "tool_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "exporter": {"name": "genai", "package": f"onnxruntime-genai=={version}",
                               "command": _recorded(cmd)},
                  "source": {"spec": loaded.spec, "path": loaded.path}, "versions": library_versions(),
                  "task": "text-generation-with-past", "num_layers": num_layers,
                  "dtype": "float32", "quantization": ({"method": quantize, "settings": PRECISION[quantize][1]}
                                                       if quantize else None),
                  "parity": report.to_dict() if report is not None else None, "structural_checks": checks,
                  "files": files, "timings": timings}
        (final / EXPORT_RECORD).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        replace_dir(final, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def genai_kv_shape(folder: str | Path) -> tuple[int, int] | None:
    """(kv heads, head size) from a GenAI folder's ``genai_config.json``: the empty past's shape, which
    the graph leaves symbolic."""
    f = Path(folder) / GENAI_CONFIG
    if not f.is_file():
        return None
    try:
        dec = json.loads(f.read_text(encoding="utf-8"))["model"]["decoder"]
        return int(dec["num_key_value_heads"]), int(dec["head_size"])
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{f} is damaged: it has no model.decoder num_key_value_heads/head_size",
                       "re-export it with `avss export --exporter genai`") from None
