"""ONNX Runtime GenAI's graph, written one block at a time: the export that fits where the builder does not.

Why: the Model Builder loads the whole model (fp32 with transformers 4.57), keeps every float initializer
and, for int4, materializes the whole float graph as one ModelProto before quantizing it: 4.81x the bf16
checkpoint measured. Its graph code needs none of that: it reads one module at a time. So this writer
runs the builder's own graph code (the same nodes, names, ``genai_config.json`` and tokenizer files:
equal by construction) with three of its steps replaced:

- **weights**: the model it walks is the ``--stream`` skeleton (``meta`` device); each unit it reads (the
  embeddings, one block, the final norm, the LM head) is read from the safetensors shards just before,
  in the dtype ``from_pretrained`` would give it, and released after;
- **storage**: after each unit, its new initializers are written to a spool file and replaced by lazy
  reads of it (the builder's final save then copies them into ``model.onnx.data`` one at a time);
- **quantization**: each new MatMul weight is quantized on its own with ONNX Runtime's block-wise kernel
  (``DefaultWeightOnlyQuantizer``, the builder's own quantizer for int4 and int8 weights), column chunk by
  column chunk, into the MatMulNBits node and initializers the whole-graph pass would make, in its order.

Equality with the builder is tested per family and precision; a quantizer setting the per-weight pass does
not reproduce (``int4-mixed``: k-quant and mixed bit widths) is refused.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer
    from onnxruntime_genai.models.builders.base import Model as BuilderModel  # (it imports it as builders.base)
    from torch import nn

    from compressor.sources.stream import LayerStream

# a quantized column (or row) chunk: bounds the fp32 copy of one weight (an 8 B model's LM head is 2.1 GB in fp32)
CHUNK_BYTES = 256 << 20
SPOOL = "stream.spool"


class _Spool:
    """Initializers written as soon as they are made; the graph keeps lazy reads of them."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = path.open("wb")
        self.offset = 0

    def put(self, data: bytes | memoryview) -> tuple[int, int]:
        start = self.offset
        self.fh.write(data)
        self.offset += len(data)
        return start, len(data)

    def put_tensor(self, t: ir.TensorProtocol) -> tuple[int, int]:
        """``t``'s bytes, written from its own buffer where it has one (``tobytes`` would copy an 8 B model's
        2.1 GB fp32 embedding once more)."""
        import numpy as np
        import onnx_ir as ir

        if t.dtype in (ir.DataType.INT4, ir.DataType.UINT4):  # two values a byte: only tobytes packs them
            return self.put(t.tobytes())
        arr = np.ascontiguousarray(t.numpy())
        return self.put(arr.reshape(-1).view(np.uint8).data)

    def lazy(self, name: str, dtype: ir.DataType, shape: Sequence[int], span: tuple[int, int]) -> ir.LazyTensor:
        """A tensor read back from the spool when the final save asks for it, and dropped after (``shape``: a
        constant's, every dim a number)."""
        import numpy as np
        import onnx_ir as ir

        path, (offset, length) = self.path, span

        def read() -> ir.TensorProtocol:
            with path.open("rb", buffering=0) as fh:
                fh.seek(offset)
                buf = bytearray(length)
                view, got = memoryview(buf), 0
                while got < length:
                    n = fh.readinto(view[got:])
                    if not n:
                        raise OSError(f"{path} ends inside {name}")
                    got += n
            if dtype in (ir.DataType.INT4, ir.DataType.UINT4):
                return ir.PackedTensor(np.frombuffer(buf, dtype=np.uint8), dtype, shape=tuple(shape), name=name)
            return ir.Tensor(np.frombuffer(buf, dtype=dtype.numpy()).reshape(tuple(shape)), dtype=dtype, name=name)

        self.fh.flush()
        return ir.LazyTensor(read, dtype=dtype, shape=ir.Shape(tuple(shape)), name=name)

    def close(self) -> None:
        self.fh.close()


def _quant_settings(onnx_model: BuilderModel) -> Optional[dict[str, Any]]:
    """The builder's weight quantization, if the per-weight pass reproduces it (None: a float graph)."""
    import onnx_ir as ir

    if onnx_model.onnx_dtype not in {ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT8, ir.DataType.UINT8}:
        return None
    q = onnx_model.quant_attrs
    method = getattr(onnx_model, "quantization_algo", "default")
    reproduced = (not q.get("use_qdq") and method == "default" and q["is_symmetric"] and q.get("algo_config") is None
                  and not getattr(onnx_model, "int4_customized_weight_config", None)
                  and not getattr(onnx_model, "exact_quant_override_names", None)
                  and set(q["op_types_to_quantize"]) <= {"MatMul", "Gather"})
    if not reproduced:
        raise BadInput("the streamed GenAI export quantizes each weight with the builder's default block-wise "
                       f"symmetric method only (this build asks for {method}, asymmetric, mixed bit widths or QDQ)",
                       "use --quantize int4 or int8-weights with streaming, or export without --stream")
    return {"bits": int(q["bits"]), "block_size": int(q.get("matmul_block_size") or q["qdq_block_size"]),
            # the builder's live list: it excludes nodes while it builds them (0.18: each MoE router's MatMul)
            "accuracy_level": q.get("accuracy_level"), "attrs": q,
            "ops": set(q["op_types_to_quantize"])}


class _Writer:
    """Stands in for the Hugging Face model the builder walks (``self.weights``): the ``--stream`` skeleton,
    whose units are read just before the builder maps them and written out and released after."""

    def __init__(self, onnx_model: BuilderModel, stream: LayerStream, spool: _Spool):
        self._onnx = onnx_model
        self._stream = stream
        self._spool = spool
        self._quant = _quant_settings(onnx_model)
        self._ort: DefaultWeightOnlyQuantizer | None = None  # ONNX Runtime's quantizer (``_quantizer``)
        self._seen_nodes: set[int] = set()
        self._written: set[str] = set()
        self.quantized: list[str] = []  # the quantized initializers, in the whole-graph pass's order
        self.units = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream.model, name)

    # -- what the builder iterates ------------------------------------------------------------------
    def modules(self) -> Iterator[nn.Module]:
        from compressor.architectures import body_of, get_layers

        model, adapter = self._stream.model, self._stream.adapter
        body, layers = body_of(model, adapter), get_layers(model, adapter)
        head = model.get_output_embeddings()
        units: dict[int, str] = {id(m): f"{self._stream.layers_prefix}{i}." for i, m in enumerate(layers)}
        names = {id(m): n for n, m in model.named_modules()}
        for m in body.children():
            if m is not layers:
                units[id(m)] = f"{names[id(m)]}."
        if head is not None:
            units[id(head)] = f"{names[id(head)]}."
        for module in model.modules():
            prefix = units.get(id(module))
            if prefix is not None:
                self._load(prefix, module, head_unit=module is head)
            yield module
            if prefix is not None:
                self._flush()
                self._stream.release(module)
                self.units += 1

    # -- one unit -----------------------------------------------------------------------------------
    def _load(self, prefix: str, module: nn.Module, head_unit: bool) -> None:
        stream = self._stream
        if head_unit and f"{prefix}weight" not in stream.names:  # tied: the head is the input embedding
            embed = stream.model.get_input_embeddings()
            key = next(stream.key(f"{n}.weight") for n, m in stream.model.named_modules() if m is embed)
            stream._set(module, "weight", stream.reader.get_many([key], dtype=stream.dtype)[key])
            return
        stream.load_params(prefix, module)

    def _flush(self) -> None:
        graph = self._onnx.model.graph
        if self._quant is not None:
            exclude = set(self._quant["attrs"].get("nodes_to_exclude") or ())
            for node in list(graph):
                if id(node) in self._seen_nodes:
                    continue
                self._seen_nodes.add(id(node))
                if node.domain or node.op_type not in self._quant["ops"] or node.name in exclude:
                    continue
                if node.op_type == "MatMul":
                    self._quantize_matmul(graph, node)
                elif self._quant["bits"] == 4:  # the pass quantizes a Gather's table to 4 bits only
                    self._quantize_gather(graph, node)
        for name, value in list(graph.initializers.items()):
            if name in self._written:
                continue
            t = value.const_value
            span = self._spool.put_tensor(t)
            value.const_value = self._spool.lazy(name, t.dtype, t.shape, span)
            self._written.add(name)
        from compressor.sources.stream import _trim

        _trim()

    def _quantizer(self) -> DefaultWeightOnlyQuantizer:
        """ONNX Runtime's own quantizer at the builder's settings (made once, on the first quantized weight)."""
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            DefaultWeightOnlyQuantizer,
        )

        q = self._quant
        assert q is not None
        if self._ort is None:
            self._ort = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(
                block_size=q["block_size"], is_symmetric=True, accuracy_level=q["accuracy_level"], bits=q["bits"]))
        return self._ort

    @staticmethod
    def _float_weight(value: ir.Value | None) -> npt.NDArray[np.float32] | None:
        """The float array the whole-graph pass would read back from the initializer (the builder's lazy cast
        and transpose evaluated), or None where it would skip the node."""
        import numpy as np

        if value is None or not value.is_initializer() or value.const_value is None:
            return None
        if len(value.const_value.shape) != 2:
            return None
        full = value.const_value.numpy()
        if full.dtype != np.float32:
            raise BadInput(f"the streamed GenAI export quantizes fp32 weights, and {value.name} is {full.dtype}",
                           "export without --stream")
        return full

    def _replace(self, graph: ir.Graph, node: ir.Node, op: str, inputs: list[ir.Value | None],
                 tensors: Sequence[ir.Tensor[np.ndarray] | ir.PackedTensor[np.ndarray]], attrs: dict[str, int],
                 weight: ir.Value) -> None:
        """``node`` replaced by ``op`` as the pass does: its new initializers appended (in the pass's order),
        attributes sorted as ``onnx.helper.make_node`` writes them, the weight dropped."""
        import onnx_ir as ir

        assert self._quant is not None
        bits = self._quant["bits"]
        values = []
        for t in tensors:
            value = ir.Value(name=t.name, type=ir.TensorType(t.dtype), shape=ir.Shape(t.shape), const_value=t)
            graph.register_initializer(value)
            self.quantized.append(str(t.name))
            values.append(value)
        new = ir.node(op, inputs=[values.pop(0) if x is None else x for x in inputs] + values,
                      attributes=dict(sorted(attrs.items())), domain="com.microsoft", name=f"{node.name}_Q{bits}",
                      num_outputs=1)
        ir.convenience.replace_nodes_and_values(graph, node, [node], [new], [node.outputs[0]], [new.outputs[0]])
        assert weight.name is not None  # an initializer is named
        graph.initializers.pop(weight.name)
        weight.const_value = None  # the builder keeps its values by name: drop the float weight it holds
        self._seen_nodes.add(id(new))

    def _quantize_matmul(self, graph: ir.Graph, node: ir.Node) -> None:
        """A MatMul's constant weight as ONNX Runtime's pass quantizes it (MatMulNBits: the same kernel, names,
        attributes), computed on column chunks: each column's blocks are independent."""
        import numpy as np
        import onnx_ir as ir

        b = node.inputs[1]
        full = self._float_weight(b)
        if full is None or b is None:  # (no input: no weight either)
            return
        q, quantizer = self._quant, self._quantizer()
        assert q is not None
        rows, cols = full.shape
        step = max(1, CHUNK_BYTES // max(1, rows * 4))
        parts = [quantizer.qbits_block_quant(np.ascontiguousarray(full[:, c0:c0 + step])) for c0 in range(0, cols, step)]
        del full
        bits = q["bits"]
        tensors = [ir.Tensor(np.concatenate([p[0] for p in parts]), name=f"{b.name}_Q{bits}"),
                   ir.Tensor(np.concatenate([p[1] for p in parts]), name=f"{b.name}_scales")]
        attrs = {"K": rows, "N": cols, "bits": bits, "block_size": q["block_size"]}
        if q["accuracy_level"]:
            attrs["accuracy_level"] = q["accuracy_level"]
        self._replace(graph, node, "MatMulNBits", [node.inputs[0], None], tensors, attrs, b)

    def _quantize_gather(self, graph: ir.Graph, node: ir.Node) -> None:
        """An embedding table as the pass quantizes a Gather's (GatherBlockQuantized, 4 bits along axis 1),
        computed on row chunks: each row's blocks are independent."""
        import numpy as np
        import onnx_ir as ir

        data = node.inputs[0]
        full = self._float_weight(data)
        if full is None or data is None:  # (no input: no weight either)
            return
        q, quantizer = self._quant, self._quantizer()
        assert q is not None
        rows, cols = full.shape
        step = max(2, CHUNK_BYTES // max(1, cols * 4)) // 2 * 2  # whole bytes per chunk: two 4-bit values each
        parts = [quantizer.quantize_ndarray(full[r0:r0 + step], 1, q["block_size"], True)
                 for r0 in range(0, rows, step)]
        del full
        tensors: list[ir.Tensor[np.ndarray] | ir.PackedTensor[np.ndarray]] = [
            ir.PackedTensor(np.concatenate([p[0] for p in parts]), ir.DataType.INT4, shape=[rows, cols],
                            name=f"{data.name}_Q4"),
            ir.Tensor(np.concatenate([p[1] for p in parts]), name=f"{data.name}_scales")]
        axis = node.attributes.get("axis")
        attrs = {"gather_axis": axis.value if axis is not None else 0, "quantize_axis": 1,
                 "block_size": q["block_size"]}
        self._replace(graph, node, "GatherBlockQuantized", [None, node.inputs[1]], tensors, attrs, data)

    def finish(self) -> ir.Model:
        """The graph as the whole-graph pass leaves it: the kept initializers in their order, then the quantized
        ones in node order."""
        model: ir.Model = self._onnx.model
        graph = model.graph
        moved = [graph.initializers.pop(n) for n in self.quantized]
        for value in moved:
            graph.register_initializer(value)
        if self._quant is not None:
            model.opset_imports.setdefault("com.microsoft", 1)
        return model


@contextlib.contextmanager
def streaming_builder(src: Path, scratch: Path, load_dtype: str) -> Iterator[list[_Writer]]:
    """The builder's ``load_weights`` and ``to_nbits`` replaced by the streamed ones while the block runs;
    ``load_dtype``: what the builder's own ``from_pretrained`` would give it (``compat.builder_load_dtype``)."""
    import torch
    from onnxruntime_genai.models import builder
    from transformers import AutoModelForCausalLM

    from compressor.architectures import adapter_for_config
    from compressor.sources.models import load_config
    from compressor.sources.stream import build_stream

    writers: list[_Writer] = []
    spool = _Spool(scratch / SPOOL)
    # the builder imports its classes as a top-level ``builders`` package: patch the class it really uses
    base = next(c for c in builder.LlamaModel.__mro__ if c.__name__ == "Model")
    saved = base.load_weights, base.to_nbits

    def load_weights(self: BuilderModel, input_path: str) -> _Writer:
        config = load_config(str(src), False)
        stream = build_stream(str(src), config, AutoModelForCausalLM, adapter_for_config(config), "cpu",
                              getattr(torch, load_dtype))
        writer = _Writer(self, stream, spool)
        writers.append(writer)
        return writer

    def to_nbits(self: BuilderModel) -> ir.Model:
        return writers[-1].finish()

    base.load_weights, base.to_nbits = load_weights, to_nbits
    try:
        yield writers
    finally:
        base.load_weights, base.to_nbits = saved
        spool.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(spool.path)
