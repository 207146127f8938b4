"""Will it fit? Memory needs estimated from a checkpoint's safetensors headers, before anything loads.

Why up front: an 8 B checkpoint loaded in fp32 on a 24 GB machine is killed by the kernel minutes in,
with no message. Reading the headers takes milliseconds and gives the parameter counts exactly, so
each command can refuse with the numbers (and the flag that would fit) instead.

The factors were measured once, on a 1.17 B Llama on CPU:
a plain ``from_pretrained`` plus one forward peaks at 1.21x the weights in their load dtype (fp32
and bf16 alike); an Optimum export with its parity pass peaks at 2.34x the fp32 weights (rounded up
to 2.4 here). Sizes are decimal GB, as ``df`` and vendors' spec sheets give them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from compressor.architectures import ArchAdapter

LOAD_FACTOR = 1.21  # peak RSS of from_pretrained + one forward / the weights at the load dtype (notes §2)
EXPORT_FACTOR = 2.4  # peak RSS of an export with its parity pass / the fp32 weights (notes §2: 2.34x)

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``24GB`` (10^9), ``24GiB`` (2^30), ``512MB``, ``1.5GB`` or plain bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m[2].lower() if m else ""
    if m is None or unit not in _UNITS or float(m[1]) <= 0:
        raise BadInput(f"--max-memory {text!r} is not a memory size",
                       "write it like 24GB, 24GiB, 512MB or a number of bytes")
    return int(float(m[1]) * _UNITS[unit])


def gb(n: int | float) -> str:
    """Bytes as people read them in a message: ``9.4 GB``."""
    return f"{n / 1e9:.1f} GB"


def available_bytes(device: str, max_memory: int | None = None) -> int:
    """What a command may use: ``max_memory`` when given, else free RAM on CPU or free memory on the GPU."""
    if max_memory is not None:
        return int(max_memory)
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class CheckpointSize:
    """Parameter counts of a checkpoint by part, from its headers (no tensor is read)."""

    total: int
    block: int  # the largest single block
    blocks: int  # how many blocks
    body: int  # outside the blocks: embeddings, final norm, pooler
    head: int  # task head (lm_head, classifier); 0 for a tied LM head, which is not stored
    dtype: str  # the stored dtype (of most parameters)

    def bytes(self, dtype: str) -> int:
        """The whole model's weights at ``dtype`` (``float32``, ``float16``, ``bfloat16``)."""
        return self.total * ITEMSIZE[dtype]

    def slim(self, kept_blocks: int) -> CheckpointSize:
        """The same model with ``kept_blocks`` blocks, each as large as the largest (an upper bound)."""
        return CheckpointSize(self.body + self.head + self.block * kept_blocks, self.block, kept_blocks, self.body,
                              self.head, self.dtype)


def local_folder(path: str) -> Path | None:
    """The folder holding a model's files: itself, or a Hub id's local snapshot; None when neither exists."""
    p = Path(path)
    if p.is_dir():
        return p
    from compressor.fingerprint import hub_snapshot

    return hub_snapshot(path)


def checkpoint_size(path: str, adapter: ArchAdapter) -> CheckpointSize | None:
    """The sizes of a model folder (or a cached Hub snapshot); None when it has no safetensors weights
    (pickle weights, or a Hub model not downloaded yet): then nothing is estimated."""
    from compressor.architectures import key_part
    from compressor.sources.integrity import check_safetensors

    folder = local_folder(path)
    checkpoint = check_safetensors(folder) if folder is not None else None  # a damaged file: refused, named
    if checkpoint is None:
        return None
    blocks: dict[int, int] = {}
    body = head = 0
    by_dtype: dict[str, int] = {}
    for key, t in checkpoint.tensors.items():
        by_dtype[t.dtype.name] = by_dtype.get(t.dtype.name, 0) + t.numel
        part, i = key_part(key, adapter)
        if part == "block" and i is not None:
            blocks[i] = blocks.get(i, 0) + t.numel
        elif part == "head":
            head += t.numel
        else:
            body += t.numel
    return CheckpointSize(sum(blocks.values()) + body + head, max(blocks.values(), default=0), len(blocks), body,
                          head, max(by_dtype, key=lambda k: by_dtype[k]))


def need_in_memory(size: CheckpointSize, dtype: str, copies: int = 1) -> int:
    """One model loaded at ``dtype`` and run forward (scoring, pruning, one side of verify); ``copies``: how
    many copies the work holds (an in-memory repair cuts a copy of the base: 2, measured 2.34-2.46x)."""
    return int(size.bytes(dtype) * LOAD_FACTOR * copies)


def need_streamed(size: CheckpointSize, dtype: str, activations_bytes: int) -> int:
    """One block at a time: the largest block, the body and head, and the activations kept between blocks."""
    return int((size.block + size.body + size.head) * ITEMSIZE[dtype] * LOAD_FACTOR) + int(activations_bytes)


def need_export(size: CheckpointSize) -> int:
    """An ONNX export (traced in fp32, graph written, parity run): on CPU, in RAM."""
    return int(size.bytes("float32") * EXPORT_FACTOR)


STREAM_EXPORT_FACTOR = 3.0  # peak of a streamed GenAI export / its largest unit in fp32 (+ the baseline below)
STREAM_EXPORT_BASE = 10**9  # torch, transformers, ONNX Runtime and the builder imported


def need_export_streamed(size: CheckpointSize) -> int:
    """The streamed GenAI export: one unit (a block, the embeddings or the LM head) in fp32 at a time, its
    quantized copy and chunk buffers, plus the imports (``benchmarks/genai_stream.py`` measures it)."""
    unit = max(size.block, size.body, size.head)
    return int(unit * 4 * STREAM_EXPORT_FACTOR) + STREAM_EXPORT_BASE


def need_verify(size: CheckpointSize, dtype: str) -> int:
    """verify holds one model at a time (the base is freed before the candidate loads)."""
    return need_in_memory(size, dtype)


def check_fits(need: int, available: int, what: str, fix: str, capped: bool = False) -> None:
    """Refuse ``what`` when its need exceeds what is available, with both numbers."""
    if need > available:
        have = f"--max-memory allows {gb(available)}" if capped else f"{gb(available)} is free"
        raise BadInput(f"{what} needs about {gb(need)}; {have}", fix)


_MORE = "--max-memory SIZE if more memory can be freed for it"


def check_load_fits(path: str, adapter: ArchAdapter, dtype: str, device: str, max_memory: int | None = None,
                    copies: int = 1) -> None:
    """Before ``from_pretrained``: refuse a load that cannot fit, naming the half-precision load that would.
    Skipped (silently: nothing to estimate from) without safetensors headers, and for an accelerate device map."""
    if device == "auto-map":
        return
    size = checkpoint_size(path, adapter)
    if size is None:
        return
    need = need_in_memory(size, dtype, copies)
    free = available_bytes(device, max_memory)
    half = size.dtype if size.dtype in ("float16", "bfloat16") else "bfloat16"
    half_need = need_in_memory(size, half, copies)
    if dtype == "float32" and half_need <= free:
        fix = f"pass --dtype {half} (needs about {gb(half_need)}), or --stream where the command has it, or {_MORE}"
    else:
        fix = f"free memory or use a machine with more, or --stream where the command has it (or {_MORE})"
    where = "" if device == "cpu" else f" on {device}"
    what = f"loading {path} in {dtype}{where}" + (f" (the repair holds {copies} copies)" if copies > 1 else "")
    check_fits(need, free, what, fix, capped=max_memory is not None)


# what a streamed pass keeps between blocks: calibration activations (a few copies of samples x seq x
# hidden floats); 1 GB covers 4 copies of 64 x 512 x 8192 fp32, well above the defaults
STREAM_ACTIVATIONS = 10**9


def stream_reason(path: str, adapter: ArchAdapter, dtype: str, device: str, max_memory: int | None = None,
                  copies: int = 1) -> str | None:
    """One line saying why a load streams (the whole model would not fit, one block would); None: load it whole."""
    if device == "auto-map":
        return None
    size = checkpoint_size(path, adapter)
    if size is None:
        return None
    need, free = need_in_memory(size, dtype, copies), available_bytes(device, max_memory)
    if need <= free:
        return None
    have = f"--max-memory allows {gb(free)}" if max_memory is not None else f"{gb(free)} is free"
    return (f"loading {path} whole in {dtype} needs about {gb(need)} and {have}: streaming one block at a time "
            f"(about {gb(need_streamed(size, dtype, STREAM_ACTIVATIONS))}; --no-stream refuses instead)")


def check_stream_fits(path: str, adapter: ArchAdapter, dtype: str, device: str, max_memory: int | None = None) -> None:
    """Before a streamed load: one block, the embeddings and head, and the activations must fit."""
    size = checkpoint_size(path, adapter)
    if size is None or device == "auto-map":
        return
    half = size.dtype if size.dtype in ("float16", "bfloat16") else "bfloat16"
    fix = (f"pass --dtype {half}, or {_MORE}" if dtype == "float32" else f"use a machine with more memory (or {_MORE})")
    check_fits(need_streamed(size, dtype, STREAM_ACTIVATIONS), available_bytes(device, max_memory),
               f"streaming {path} in {dtype} (one block at a time)", fix, capped=max_memory is not None)


def check_export_fits(path: str, adapter: ArchAdapter, max_memory: int | None = None, what: str = "",
                      stream: bool | None = False, can_stream: bool = False) -> bool:
    """Before an export: its fp32 trace, graph and parity pass must fit in RAM; streamed (``stream``; None:
    when the whole export would not fit and the exporter ``can_stream``), one unit at a time must. Returns
    whether the export streams."""
    size = checkpoint_size(path, adapter)
    if size is None:
        return bool(stream)
    free, capped = available_bytes("cpu", max_memory), max_memory is not None
    streamed = need_export_streamed(size)
    if stream is None:
        stream = can_stream and need_export(size) > free and streamed <= free
    if stream:
        check_fits(streamed, free, what or f"exporting {path} to ONNX one block at a time",
                   f"export on a machine with more memory (or {_MORE})", capped=capped)
        return True
    fix = (f"add --stream (one block at a time: about {gb(streamed)})" if can_stream and streamed <= free
           else "export on a machine with more memory")
    check_fits(need_export(size), free, what or f"exporting {path} to ONNX (fp32)", f"{fix} (or {_MORE})",
               capped=capped)
    return False
