"""Damaged weight files are bad input, found before anything loads.

Why our own check: a truncated or overwritten ``model.safetensors`` made transformers raise
"Error while deserializing header: incomplete metadata, file not fully covered", which named neither
the file nor what to do, and came out as an internal error. The safetensors layout is simple enough
to check from its header alone (no tensor is read): an 8-byte little-endian header length, a JSON
header, and tensors whose byte ranges exactly cover the rest of the file. A sharded checkpoint's
index must name shards that exist.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from compressor.errors import BadInput

INDEX = "model.safetensors.index.json"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header's size
# bytes per element of each safetensors dtype code (also sizes a tensor from a header, no data read)
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "U16": 2, "I16": 2,
               "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
               "C64": 8, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}


def tensor_table(f: Path) -> tuple[int, dict[str, dict[str, Any]]] | None:
    """(where the tensor data starts, {name: {dtype, shape, data_offsets}}) from a safetensors file's
    header, without reading or mapping any tensor; None when the header cannot be read (the caller's
    check, ``check_safetensors``, names the damage)."""
    try:
        with f.open("rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= _MAX_HEADER:
                return None
            table = json.loads(fh.read(n))
    except (OSError, ValueError):
        return None
    if not isinstance(table, dict):
        return None
    table.pop("__metadata__", None)
    return 8 + n, table


def safetensors_problem(f: Path) -> str | None:
    """What is wrong with one safetensors file (from its header), or None."""
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"it is {size} bytes long, too short for a safetensors header"
            n = struct.unpack("<Q", head)[0]
            if n > _MAX_HEADER:
                return f"its header length field says {n:,} bytes (corrupted: the file does not start with a header)"
            if 8 + n > size:
                return f"its header says {n:,} bytes but the file has only {size - 8:,} after the length (truncated)"
            raw = fh.read(n)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not valid JSON (corrupted)"
    if not isinstance(header, dict):
        return "its header is not a JSON object (corrupted)"
    data = size - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in entry["data_offsets"])
            count = math.prod(int(d) for d in entry["shape"])
            width = DTYPE_BYTES.get(str(entry["dtype"]))
        except (KeyError, TypeError, ValueError):
            return f"its header entry for {name!r} is malformed (corrupted)"
        if not 0 <= begin <= stop:
            return f"its header gives tensor {name!r} an invalid byte range (corrupted)"
        if width is not None and stop - begin != math.ceil(count * width):
            return f"its header gives tensor {name!r} {stop - begin:,} bytes for {count:,} {entry['dtype']} values (corrupted)"
        end = max(end, stop)
    if end > data:
        return f"its tensors need {end:,} bytes of data but the file holds {data:,} (truncated)"
    if end < data:
        return f"it has {data - end:,} bytes past its last tensor (damaged, or written by an interrupted copy)"
    return None


def check_safetensors(folder: str | Path, fix: str = "re-download or re-save the model (save_pretrained)") -> None:
    """Refuse a model folder whose safetensors files or shard index are damaged: ``BadInput`` (exit 2)
    naming the file and ``fix``."""
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{index} is damaged: it is not a shard index with a weight_map", fix) from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise BadInput(f"{index} names shard {missing[0]}{more}, which is not in {folder}", fix)
    for f in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem is not None:
            raise BadInput(f"the weights file {f} is damaged: {problem}", fix)
