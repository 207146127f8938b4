"""Quantize an ONNX export for CPU and edge serving, with ONNX Runtime's own quantization tools.

- ``int8``: dynamic quantization (``quantize_dynamic``): MatMul weights int8 per output channel,
  activations quantized at run time. No calibration data.
- ``int8-weights``: weight-only 8-bit ``MatMulNBits`` (``MatMulNBitsQuantizer``, symmetric, blocks
  of 32 along the input dimension, ``accuracy_level`` 4: the kernel quantizes activation blocks to
  int8 on the fly, ONNX Runtime's fast CPU path);
- ``int4``: the same with 4 bits, what ONNX Runtime recommends for LLMs.

Measured on the built-in SmolLM2 (22-layer cut, default profile), as retention of the fp32 slim
model's results: dynamic int8 0.47 on perplexity, int4 0.65, 8-bit weights 0.99 (0.95 to 1.02 on
every task). Only MatMuls with a constant weight are quantized; the
embedding Gather stays fp32. The result keeps our folder layout (``model.onnx`` +
``model.onnx_data``, config, tokenizer, ``compression.json``) and ``export.json`` records the
settings. Logit parity is the wrong check for a quantized graph: ``structural_check`` runs it once
(outputs, KV-cache count, a greedy generation) and the task gate (``avss verify`` on the folder)
judges its quality.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from compressor.errors import BadInput, RuntimeFailure
from compressor.export import layout

if TYPE_CHECKING:  # pragma: no cover
    import onnx

METHODS = ("int8", "int8-weights", "int4")
BLOCK = 32  # weight-only methods: one scale per 32 input elements of each output column
_BITS = {"int8-weights": 8, "int4": 4}
# MatMulNBits computes in int8 (blocks of activations quantized on the fly): the fast CPU kernel. With
# the fp32 compute (level 0) 8-bit weights decoded 4.8x *slower* than the fp32 graph (ORT 1.32, 2 cores)
ACCURACY_LEVEL = 4
_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja",
         "added_tokens.json", "compression.json")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers log advice and progress on the root logger; our stderr keeps one line per event."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def check_method(method: str | None) -> None:
    if method is not None and method not in METHODS:
        fix = "use --quantize int8, int8-weights or int4"
        raise BadInput(f"unknown --quantize {method!r}" if method != "int4-mixed" else
                       "--quantize int4-mixed is the GenAI builder's (k-quant int4, sensitive layers int8)",
                       fix + (" or add --exporter genai" if method == "int4-mixed" else ""))


def settings(method: str) -> dict[str, Any]:
    """What ``export.json`` records (and what a run's quantize stage is keyed on)."""
    if method == "int8":
        return {"method": "int8", "tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per channel",
                "activations": "int8, quantized at run time", "op_types": ["MatMul"], "embedding": "fp32"}
    return {"method": method, "tool": "onnxruntime.quantization.MatMulNBitsQuantizer", "bits": _BITS[method],
            "block_size": BLOCK, "symmetric": True, "accuracy_level": ACCURACY_LEVEL,
            "activations": "int8 inside the MatMulNBits kernel (accuracy_level 4), fp32 elsewhere",
            "op_types": ["MatMul"], "embedding": "fp32",
            "lm_head": "a tied head is folded and quantized when the embedding is at most half the weights"}


def fold_weight_transposes(graph: onnx.ModelProto, *, dry_run: bool = False) -> int:
    """Replace ``Transpose(constant)`` feeding MatMuls by the transposed constant; returns the bytes of
    the constants folded (``dry_run``: only count them).

    Why: Optimum exports a tied LM head as ``MatMul(x, Transpose(embed_tokens))``. The transpose of
    the largest matrix then runs at every decoding step, and the quantizer, which only takes a
    constant weight, leaves the LM head in fp32. Folded, the LM head is a plain weight (the
    embedding's Gather keeps its fp32 copy, so the file grows by the quantized head). Measured on
    the SmolLM2 default cut: int4 decode 0.528x -> 0.413x of the full fp32 model, file 155 -> 172 MB
    (ONNX Runtime's transformer optimizer does the same fold among its fusions)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = 0
    for node in list(graph.graph.node):
        if node.op_type != "Transpose" or len(node.input) != 1 or node.input[0] not in inits:
            continue
        if not all(c.op_type == "MatMul" and list(c.input).index(node.output[0]) == 1
                   for c in consumers.get(node.output[0], [])):
            continue
        folded += _nbytes(inits[node.input[0]])
        if dry_run:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[node.input[0]])
        graph.graph.initializer.append(numpy_helper.from_array(weight.transpose(perm).copy(), node.output[0]))
        graph.graph.node.remove(node)
    return folded


def _nbytes(tensor: onnx.TensorProto) -> int:
    """A constant's size from its shape and type (no copy of its data: a 7 B graph holds 28 GB of them)."""
    import math

    from onnx.helper import tensor_dtype_to_np_dtype

    return int(math.prod(tensor.dims) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize)


def _weight_bytes(graph: onnx.ModelProto) -> int:
    return sum(_nbytes(t) for t in graph.graph.initializer)


def _quantize_graph(src: Path, dst: Path, method: str, fold_head: bool | None = None) -> dict[str, Any]:
    """``src``/``model.onnx`` (external data beside it) -> ``dst``/model.onnx + model.onnx_data; returns
    what happened to a tied LM head. ``fold_head`` None: fold it when the embedding is at most half the
    weights (otherwise the quantized file could outgrow the fp32 one, as on a tiny test model)."""
    import onnx

    if method == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        scratch = dst / ".quantized"
        scratch.mkdir()
        try:
            quantize_dynamic(str(src / layout.ONNX_FILE), str(scratch / layout.ONNX_FILE),
                             op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                             use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
            layout.store_external_data(scratch / layout.ONNX_FILE, dst)  # its data file, under our layout's name
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return {}
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = onnx.load(str(src / layout.ONNX_FILE), load_external_data=True)
    tied, total = fold_weight_transposes(graph, dry_run=True), _weight_bytes(graph)
    fold = bool(tied) and (fold_head if fold_head is not None else tied <= total / 2)
    if fold:
        fold_weight_transposes(graph)
    q = MatMulNBitsQuantizer(graph, bits=_BITS[method],
                             block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                             op_types_to_quantize=("MatMul",))
    q.process()
    layout.save_with_external_data(q.model.model if hasattr(q.model, "model") else q.model, dst)
    if not tied:
        return {"lm_head_folded": False, "lm_head_detail": "no transposed constant weight"}
    return {"lm_head_folded": fold, "lm_head_detail": f"tied embedding {tied / total:.0%} of the weights: " + (
        "LM head quantized" if fold else "LM head left fp32 (quantizing it would duplicate the embedding)")}


def quantize_export(src: str | Path, out: str | Path, method: str, *, force: bool = False,
                    provider: str = "cpu", fold_head: bool | None = None) -> dict[str, Any]:
    """Quantize the export folder ``src`` into ``out`` (staged beside it, renamed into place)."""
    from compressor.files import check_output_dir, replace_dir, staging_dir

    check_method(method)
    out = check_output_dir(out, force)
    tmp = staging_dir(out)
    try:
        rec = quantize_folder(Path(src), tmp, method, provider, fold_head)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


def structural_check(folder: Path, provider: str = "cpu") -> list[dict[str, Any]]:
    """The quantized graph loads, has the fp32 graph's outputs and KV cache, and decodes a few tokens."""
    import torch

    from compressor.export.ort_model import OrtModelForCausalLM, load_onnx_model

    loaded = load_onnx_model(str(folder), provider=provider)
    checks = []
    m = loaded.model
    outs = m.output_names
    if isinstance(m, OrtModelForCausalLM):
        n_layers = int(loaded.config.num_hidden_layers)
        presents = [o for o in outs if o.startswith("present")]
        checks.append({"name": "kv-cache outputs", "passed": len(presents) == 2 * n_layers,
                       "detail": f"{len(presents)} present.* outputs for {n_layers} layers"})
        ids = torch.tensor([[1, 2, 3, 4]])
        gen = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, eos_token_id=None)
        ok = gen.shape == (1, 8) and bool(torch.isfinite(m(input_ids=ids).logits).all())
        checks.append({"name": "greedy generation (4 tokens)", "passed": ok, "detail": f"tokens {gen[0, 4:].tolist()}"})
    else:
        ids = torch.tensor([[1, 2, 3, 4]])
        logits = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        checks.append({"name": "forward", "passed": bool(torch.isfinite(logits).all()),
                       "detail": f"logits {list(logits.shape)}"})
    return checks


def quantize_folder(src: Path, dst: Path, method: str, provider: str = "cpu",
                    fold_head: bool | None = None) -> dict[str, Any]:
    """Quantize the export in ``src`` into the (empty, staged) folder ``dst``; returns the record it writes."""
    check_method(method)
    src, dst = Path(src), Path(dst)
    if not (src / layout.ONNX_FILE).is_file():
        raise BadInput(f"{src} has no {layout.ONNX_FILE}", "quantize a folder written by `avss export`")
    layout.check_onnx_files(src / layout.ONNX_FILE)
    t0 = time.perf_counter()
    try:
        with _quiet():
            head = _quantize_graph(src, dst, method, fold_head)
    except (BadInput, RuntimeFailure, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizers raise anything on a graph they cannot handle
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RuntimeFailure(f"ONNX Runtime could not quantize {src} to {method}: {first}",
                             "re-run with --debug; try the other --quantize method") from exc
    for name in _COPY:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    seconds = round(time.perf_counter() - t0, 2)
    checks = structural_check(dst, provider)
    if not all(c["passed"] for c in checks):
        bad = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["passed"])
        raise RuntimeFailure(f"the {method} graph does not run like the fp32 one ({bad})",
                             "nothing was written; try the other --quantize method")
    rec: dict[str, Any] = layout.read_record(src)
    rec["parity_fp32"] = rec.pop("parity", None)  # the parity of the graph this one was quantized from
    rec.update(quantization={**settings(method), **head, "seconds": seconds}, structural_checks=checks,
               dtype=f"{method} (weights), fp32 (the rest)",
               files={p.name: p.stat().st_size for p in sorted(dst.iterdir()) if p.is_file()})
    (dst / layout.EXPORT_RECORD).write_text(json.dumps(rec, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return rec
