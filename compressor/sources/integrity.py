"""A checkpoint's safetensors files, read and checked from their headers before anything loads.

Why one reader with one rule: the in-memory load, the streamed load, the shard writer and the memory
estimate all read these headers. When only the in-memory path (through the safetensors library) checked
them, a header that gave ``v_proj`` the bytes of ``k_proj`` was refused there and streamed into a
valid-looking cut elsewhere. Every reader now asks ``Checkpoint.open``, which refuses (exit 2, naming the
file and the tensor) anything that is not exactly one well-formed copy of each tensor:

- a file: an 8-byte little-endian header length, a JSON object with no key twice, each entry a known
  dtype, a shape of non-negative ints and a byte range of exactly that many bytes; the ranges, sorted,
  start at 0, neither overlap nor leave gaps, and end where the file ends;
- a folder: the files transformers would load (``model.safetensors`` first, else the index's shards),
  each tensor in exactly one of them and, with an index, in the shard the index names;
- a dtype avss cannot compute in (8-, 6- and 4-bit floats, complex numbers) is refused by name, never
  met later as a KeyError.

``DTYPES`` is the one table of safetensors dtype codes (size, torch name, whether we compute in it).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FIX = "re-download or re-save the model (save_pretrained)"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header's size


@dataclass(frozen=True)
class Dtype:
    """One safetensors dtype code."""

    code: str  # as written in a header, e.g. "BF16"
    bits: int  # per element
    name: str  # torch's name for it (``torch.<name>``), also how messages and records spell it
    computable: bool  # avss loads and computes in it (an fp8 or fp4 tensor needs its scales: refused)

    @property
    def floating(self) -> bool:
        return self.code.startswith(("F", "BF")) and self.computable

    def torch(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.name)
        return dtype

    def nbytes(self, numel: int) -> int:
        return numel * self.bits // 8


# in safetensors' own enum order: a file's tensors are laid out by this order (descending), then by name
DTYPES: dict[str, Dtype] = {d.code: d for d in (
    Dtype("BOOL", 8, "bool", True), Dtype("F4", 4, "float4_e2m1fn_x2", False),
    Dtype("F6_E2M3", 6, "float6_e2m3", False), Dtype("F6_E3M2", 6, "float6_e3m2", False),
    Dtype("U8", 8, "uint8", True), Dtype("I8", 8, "int8", True), Dtype("F8_E5M2", 8, "float8_e5m2", False),
    Dtype("F8_E4M3", 8, "float8_e4m3fn", False), Dtype("F8_E8M0", 8, "float8_e8m0fnu", False),
    Dtype("I16", 16, "int16", True), Dtype("U16", 16, "uint16", True), Dtype("F16", 16, "float16", True),
    Dtype("BF16", 16, "bfloat16", True), Dtype("I32", 32, "int32", True), Dtype("U32", 32, "uint32", True),
    Dtype("F32", 32, "float32", True), Dtype("C64", 64, "complex64", False), Dtype("F64", 64, "float64", True),
    Dtype("I64", 64, "int64", True), Dtype("U64", 64, "uint64", True))}
DTYPE_ORDER = list(DTYPES)


def dtype_for_torch(dtype: torch.dtype) -> Dtype:
    """The safetensors code of a torch dtype (``torch.bfloat16`` -> BF16)."""
    name = str(dtype).removeprefix("torch.")
    found = next((d for d in DTYPES.values() if d.name == name), None)
    if found is None:
        raise BadInput(f"safetensors has no dtype for {name}", "use float32, float16 or bfloat16")
    return found


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a header describes it: where its bytes are and what they hold."""

    key: str
    file: Path
    dtype: Dtype
    shape: tuple[int, ...]
    offset: int  # of its first byte in ``file`` (the header included)
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Damaged(Exception):
    """What is wrong with one file (the caller names the file and the fix)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise Damaged(f"it lists {k!r} twice (corrupted: only one of the two copies would be used)")
        seen[k] = v
    return seen


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(v)
    return v


def read_header(f: Path) -> list[StoredTensor]:
    """Every tensor of one safetensors file, checked (see the module docstring); raises ``Damaged``
    (what is wrong, for ``BadInput``) or ``BadInput`` for a dtype avss cannot compute in."""
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise Damaged(f"it is {size} bytes long, too short for a safetensors header")
            n = struct.unpack("<Q", head)[0]
            if n > _MAX_HEADER:
                raise Damaged(f"its header length field says {n:,} bytes (corrupted: the file does not start with "
                              "a header)")
            if 8 + n > size:
                raise Damaged(f"its header says {n:,} bytes but the file has only {size - 8:,} after the length "
                              "(truncated)")
            raw = fh.read(n)
    except OSError as exc:
        raise Damaged(f"it cannot be read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError):
        raise Damaged("its header is not valid JSON (corrupted)") from None
    if not isinstance(header, dict):
        raise Damaged("its header is not a JSON object (corrupted)")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict):
        raise Damaged("its header's __metadata__ is not a JSON object (corrupted)")
    start, data = 8 + n, size - 8 - n
    tensors = []
    for key, entry in header.items():
        try:
            code = entry["dtype"]
            shape = tuple(_int(d) for d in entry["shape"])
            begin, stop = (_int(x) for x in entry["data_offsets"])
            if not isinstance(code, str) or len(entry["data_offsets"]) != 2:
                raise TypeError(code)
        except (KeyError, TypeError, ValueError):
            raise Damaged(f"its header entry for tensor {key!r} is malformed (corrupted)") from None
        dtype = DTYPES.get(code)
        if dtype is None:
            raise Damaged(f"its header gives tensor {key!r} the unknown dtype code {code!r} (corrupted, or written "
                          "by a newer safetensors)")
        count = math.prod(shape)
        if stop < begin or stop - begin != count * dtype.bits / 8:
            raise Damaged(f"its header gives tensor {key!r} {stop - begin:,} bytes for {count:,} {code} values "
                          "(corrupted)")
        tensors.append(StoredTensor(key, f, dtype, shape, start + begin, stop - begin))
    at, last = start, None
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        if t.offset < at:
            raise Damaged(f"its header gives tensors {last!r} and {t.key!r} overlapping bytes (corrupted: one "
                          "would read the other's data)")
        if t.offset > at:
            raise Damaged(f"it has {t.offset - at:,} bytes before tensor {t.key!r} that no tensor owns (corrupted)")
        at, last = t.offset + t.nbytes, t.key
    if at > size:
        raise Damaged(f"its tensors need {at - start:,} bytes of data but the file holds {data:,} (truncated)")
    if at < size:
        raise Damaged(f"it has {size - at:,} bytes past its last tensor (damaged, or written by an interrupted copy)")
    return tensors


@dataclass(frozen=True)
class Checkpoint:
    """The safetensors weights of a model folder, every tensor once, checked (``open``)."""

    folder: Path
    files: tuple[Path, ...]
    tensors: dict[str, StoredTensor]  # in file order, then by offset

    @classmethod
    def open(cls, folder: str | Path, fix: str = FIX) -> Checkpoint:
        """Read and check every header; ``BadInput`` (exit 2) naming the file, the tensor and ``fix``."""
        folder = Path(folder)
        files, where = weight_files(folder, fix)
        tensors: dict[str, StoredTensor] = {}
        for f in files:
            try:
                found = read_header(f)
            except Damaged as exc:
                raise BadInput(f"the weights file {f} is damaged: {exc}", fix) from None
            for t in sorted(found, key=lambda t: t.offset):
                if t.key in tensors:
                    raise BadInput(f"the weights of {folder} store tensor {t.key!r} twice, in {tensors[t.key].file.name} "
                                   f"and {f.name} (damaged: which copy loads depends on the reader)", fix)
                if where is not None and where.get(t.key) != f.name:
                    said = (f"names {where[t.key]} for it" if t.key in where else "does not list it")
                    raise BadInput(f"{folder / INDEX} does not match the shards: {f.name} holds tensor {t.key!r} but "
                                   f"the index {said}", fix)
                tensors[t.key] = t
        if where is not None:
            lost = [k for k in where if k not in tensors]
            if lost:
                raise BadInput(f"{folder / INDEX} lists tensor {lost[0]!r} in {where[lost[0]]}, which does not hold "
                               f"it{f' ({len(lost)} such tensors)' if len(lost) > 1 else ''}", fix)
        odd = next((t for t in tensors.values() if not t.dtype.computable), None)
        if odd is not None:
            raise BadInput(f"the weights file {odd.file} stores tensor {odd.key!r} as {odd.dtype.code} "
                           f"({odd.dtype.name}), a dtype avss cannot compute in (a quantized checkpoint needs its "
                           "scales applied)", "dequantize the checkpoint to bfloat16, float16 or float32 and "
                                              "save it with save_pretrained")
        return cls(folder, tuple(files), tensors)

    def by_file(self) -> dict[Path, list[StoredTensor]]:
        out: dict[Path, list[StoredTensor]] = {f: [] for f in self.files}
        for t in self.tensors.values():
            out[t.file].append(t)
        return out


def weight_files(folder: Path, fix: str = FIX) -> tuple[list[Path], dict[str, str] | None]:
    """The files a load reads, as transformers chooses them (``model.safetensors`` first, else the index's
    shards), and the index's map of tensor to shard (None without an index)."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE], None
    index = folder / INDEX
    if not index.is_file():
        raise BadInput(f"{folder} has neither {SINGLE} nor {INDEX}",
                       "pass a folder written by save_pretrained with safetensors weights")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)["weight_map"]
    except Damaged as exc:
        raise BadInput(f"{index} is damaged: {exc}", fix) from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise BadInput(f"{index} is damaged: it is not a shard index with a weight_map", fix) from None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise BadInput(f"{index} is damaged: its weight_map is not a map of tensor names to shard files", fix)
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if Path(s).name != s or s in ("", ".", "..")]
    if outside:
        raise BadInput(f"{index} names shard {outside[0]!r}, which is not a file name in {folder} (a path elsewhere "
                       "would read files outside the model)", fix)
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BadInput(f"{index} names shard {missing[0]}{more}, which is not in {folder}", fix)
    return [folder / s for s in shards], weight_map


def safetensors_problem(f: Path) -> str | None:
    """What is wrong with one safetensors file (from its header), or None."""
    try:
        read_header(f)
    except Damaged as exc:
        return str(exc)
    return None


def check_safetensors(folder: str | Path, fix: str = FIX) -> Checkpoint | None:
    """Refuse a model folder whose safetensors weights or shard index are damaged (``Checkpoint.open``);
    None for a folder without safetensors weights (pickle weights, allowed by ``--allow-pickle``)."""
    folder = Path(folder)
    if not ((folder / SINGLE).is_file() or (folder / INDEX).is_file()):
        return None
    return Checkpoint.open(folder, fix)
