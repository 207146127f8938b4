"""Write a cut checkpoint from the source's safetensors, one tensor at a time, without building the model.

Why: the in-memory cut (``surgery.prune_model``) holds the whole model, which a large checkpoint
does not fit. A plain cut only drops blocks and renumbers the rest, so it can stream: each kept
tensor's bytes are copied from its source file in 16 MB chunks (never a whole tensor in memory, never a
mapping that would count the file into the process), under its ``<body>.<layers>.N.`` key renumbered,
into output shards no larger than the input's largest, laid out exactly as ``save_file`` lays them out. The config edits, the refusal of bad indices, the
warnings and the compression record are surgery's, so both writers cut alike; this module only
moves tensors and copies the files ``save_pretrained`` would write beside them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compressor.architectures import ArchAdapter, adapter_for_config, num_layers
from compressor.errors import BadInput
from compressor.files import check_output_dir
from compressor.prune.surgery import (
    PruneResult,
    compression_record,
    cut_config,
    kept_layers,
    save_extras,
    write_folder,
)
from compressor.sources.integrity import DTYPE_ORDER, INDEX, SINGLE, Checkpoint, Dtype, StoredTensor

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

_METADATA = {"format": "pt"}  # what save_pretrained writes into every safetensors header


@dataclass
class WrittenCut(PruneResult):
    """A ``PruneResult`` (so a caller of either writer reads the same fields) plus what was written."""

    files: list[str] = field(default_factory=list)  # the weight files in ``out`` (shards, then the index)
    bytes: int = 0  # their total size on disk


def write_cut(src: str | Path, removed: list[int], out: str | Path, *,
              replace: dict[str, torch.Tensor] | None = None, provenance: dict[str, Any] | None = None,
              repair: dict[str, Any] | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
              spec: str | None = None, force: bool = False) -> WrittenCut:
    """Cut blocks ``removed`` (0-based, original numbering) from the checkpoint folder ``src`` into ``out``.

    ``replace``: original-numbering key -> new tensor for a kept tensor (e.g. a linear patch folded
    into one block's MLP output projection), same shape, written in the source tensor's dtype.
    ``provenance`` and ``repair`` go into compression.json as ``prune_model`` writes them (``repair``
    defaults to the plain cut). ``tokenizer``: the one to save (e.g. a ``LoadedModel``'s, as the
    in-memory cut does); ``None`` loads the source's own. ``spec``: the name the record gives the
    base model (default: ``src``).
    """
    out = check_output_dir(out, force)
    folder, config, adapter, cls, checkpoint, params = _source(src)
    tensors = list(checkpoint.tensors.values())
    n_old = num_layers(config)
    keep = kept_layers(removed, n_old)
    layer_key = _layer_key(tensors, adapter, n_old, folder)
    renumber = {old: new for new, old in enumerate(keep)}
    tied = _tied_keys(config, cls)

    def target(key: str) -> str | None:
        """The key in the cut checkpoint, or None where the tensor is dropped."""
        if key in tied:
            return None
        m = layer_key.match(key)
        if m is None:
            return key
        i = int(m["index"])
        return f"{m['prefix']}{renumber[i]}.{m['rest']}" if i in renumber else None

    plan = [(t, new) for t in tensors if (new := target(t.key)) is not None]  # (source tensor, key in the cut)
    patches = _check_replace(replace or {}, tensors, target, folder)
    shards = _shards(plan, max(f.stat().st_size for f in checkpoint.files))
    names = [SINGLE] if len(shards) == 1 else [f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                                               for i in range(1, len(shards) + 1)]
    p_before = sum(t.numel for t in tensors if t.key not in tied and t.key in params)
    p_after = sum(t.numel for t, _ in plan if t.key in params)
    generation = _generation_config(folder, config, cls)
    config.dtype = _main_dtype(plan)  # as save_pretrained records the dtype it saved
    config.architectures = [cls.__name__]
    warnings = cut_config(config, keep, n_old, adapter)
    record = compression_record(spec=spec or str(src), path=str(folder), model_type=config.model_type,
                                num_layers_before=n_old, removed=removed, kept=keep, parameters_before=p_before,
                                parameters_after=p_after, warnings=warnings, provenance=provenance,
                                repair=repair or {"method": "none"})
    if tokenizer is None:
        tokenizer = _tokenizer(folder)

    def fill(tmp: Path) -> None:
        for name, shard in zip(names, shards):
            _write_shard(tmp / name, shard, patches)  # bytes copied: no tensor of the shard in memory
        if len(names) > 1:
            index = {"metadata": {"total_parameters": p_after, "total_size": sum(t.nbytes for t, _ in plan)},
                     "weight_map": {new: name for name, shard in zip(names, shards) for _, new in shard}}
            (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        config.save_pretrained(str(tmp))
        if generation is not None:
            generation.save_pretrained(str(tmp))
        save_extras(tmp, tokenizer, record)

    write_folder(out, fill)
    written = names + ([INDEX] if len(names) > 1 else [])
    return WrittenCut(out, sorted(removed), keep, n_old, len(keep), p_before, p_after, warnings, record["repair"],
                      files=written, bytes=sum((out / n).stat().st_size for n in written))


_COPY_CHUNK = 16 * 2**20  # bytes per read while copying a tensor: memory stays this, whatever the tensor


def _write_shard(path: Path, shard: list[tuple[StoredTensor, str]], patches: dict[str, torch.Tensor]) -> None:
    """One output file in safetensors' own layout (8-byte header length, compact JSON header padded with
    spaces to 8 bytes, then the tensors ordered by dtype as safetensors orders them, then by name), each
    kept tensor's bytes copied from its source file in chunks and each patched tensor serialized in its
    source dtype: byte-identical to what ``save_file`` writes for the same tensors."""
    import struct

    order = sorted(shard, key=lambda item: (-DTYPE_ORDER.index(item[0].dtype.code), item[1]))
    header: dict[str, Any] = {"__metadata__": _METADATA}
    at = 0
    for t, new in order:
        header[new] = {"dtype": t.dtype.code, "shape": list(t.shape), "data_offsets": [at, at + t.nbytes]}
        at += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for t, _new in order:
            if t.key in patches:
                out.write(_tensor_bytes(patches[t.key], t.dtype))
                continue
            with t.file.open("rb") as src:
                src.seek(t.offset)
                left = t.nbytes
                while left:
                    chunk = src.read(min(left, _COPY_CHUNK))
                    if not chunk:
                        raise BadInput(f"{t.file} ends inside tensor {t.key}", "re-download or re-save the model")
                    out.write(chunk)
                    left -= len(chunk)


def _tensor_bytes(value: torch.Tensor, dtype: Dtype) -> bytes:
    import torch

    t = value.to(dtype.torch()).contiguous()
    return bytes(t.view(torch.uint8).numpy().tobytes()) if t.numel() else b""


def _source(src: str | Path) -> tuple[Path, PretrainedConfig, ArchAdapter, type[PreTrainedModel], Checkpoint, set[str]]:
    """The local folder, its config, adapter, model class (the class names the head's tied keys) and
    checked weights, and the stored keys of its parameters; the config is checked against the weights' shapes as
    the streamed load checks it."""
    from compressor.sources.models import check_weights_safety, load_config, model_class_for, resolve_model_path

    path, is_local = resolve_model_path(str(src))
    if not is_local:
        raise BadInput(f"{src} is not a local folder; the shard writer reads the safetensors files on disk",
                       "download the model first (e.g. huggingface-cli download) and pass its folder")
    config = load_config(path)
    adapter = adapter_for_config(config)
    check_weights_safety(path, True, False)
    cls = model_class_for(config, adapter.family)
    mapping = getattr(cls, "_model_mapping", None)  # an Auto class (config without `architectures`): the real one
    if mapping is not None:
        cls = mapping[type(config)]
    from compressor.sources.stream import build_stream

    # the headers checked (Checkpoint.open), and every name and shape against config.json; no weight is read
    stream = build_stream(path, config, cls, adapter, "cpu", None)
    # what counts as a parameter: the stored keys the model's parameters come from (a stored buffer such as
    # LFM2-MoE's expert_bias is not one, as the in-memory cut counts ``model.parameters()``)
    params = set(stream.names.values()) | {k for _, src in stream.converted.values() for ks in src.values() for k in ks}
    return Path(path), config, adapter, cls, stream.reader.checkpoint, params


def _layer_key(tensors: list[StoredTensor], adapter: ArchAdapter, n_layers: int,
               folder: Path) -> re.Pattern[str]:
    """The pattern of block keys as this checkpoint spells them: ``<body prefix><layers_path>.N.<rest>``.

    The registry's ``layers_path`` says where blocks live under the body; the body's own prefix
    (``model.``, ``transformer.``, ``gpt_neox.``, none for a bare model) is the one whose block indices
    are exactly 0..num_hidden_layers-1 (a nested list, e.g. a vision tower's, is not the body's).
    """
    found: dict[str, set[int]] = {}
    scan = re.compile(rf"^((?:[^.]+\.)*?){re.escape(adapter.layers_path)}\.(\d+)\.")
    for t in tensors:
        m = scan.match(t.key)
        if m:
            found.setdefault(m[1], set()).add(int(m[2]))
    fits = [p for p, idx in found.items() if idx == set(range(n_layers))]
    if len(fits) != 1:
        seen = ", ".join(f"{p}{adapter.layers_path}.N. ({len(i)} blocks)" for p, i in sorted(found.items())) or "none"
        raise BadInput(f"{folder}: cannot tell which tensors are the {n_layers} blocks of this {adapter.model_type} "
                       f"checkpoint (keys like {seen})", "the checkpoint layout is not the standard transformers one; "
                       "use the in-memory cut, or file an issue with its tensor names")
    return re.compile(rf"^(?P<prefix>{re.escape(fits[0])}{re.escape(adapter.layers_path)}\.)(?P<index>\d+)\.(?P<rest>.+)$")


def _tied_keys(config: PretrainedConfig, cls: type[PreTrainedModel]) -> set[str]:
    """Keys save_pretrained leaves out because they share the input embeddings (e.g. ``lm_head.weight``)."""
    if not getattr(config, "tie_word_embeddings", False):
        return set()
    return {k for k in (getattr(cls, "_tied_weights_keys", None) or []) if isinstance(k, str)}


def _check_replace(replace: dict[str, torch.Tensor], tensors: list[StoredTensor], target: Callable[[str], str | None],
                   folder: Path) -> dict[str, torch.Tensor]:
    """Refuse a replacement for a tensor that is not written or whose shape differs; returns them on the CPU."""
    shapes = {t.key: t.shape for t in tensors}
    fix = "give original-numbering keys of kept tensors, each with its tensor's shape"
    out = {}
    for key, value in replace.items():
        if key not in shapes:
            raise BadInput(f"replace names {key!r}, which {folder} does not hold", fix)
        if target(key) is None:
            raise BadInput(f"replace names {key!r}, which the cut does not write (a removed block, or tied to the "
                           "input embeddings)", fix)
        if tuple(value.shape) != shapes[key]:
            raise BadInput(f"replace gives {key!r} shape {list(value.shape)}, but the checkpoint's is "
                           f"{list(shapes[key])}", fix)
        out[key] = value.detach().cpu()
    return out


def _shards(plan: list[tuple[StoredTensor, str]], limit: int) -> list[list[tuple[StoredTensor, str]]]:
    """Greedy groups in source order whose files (header included, estimated from above) stay within
    ``limit`` bytes, the input's largest file; a lone tensor is never split."""
    base = 8 + len(json.dumps({"__metadata__": _METADATA})) + 8  # length field, metadata, padding
    digits = len(str(limit))
    shards: list[list[tuple[StoredTensor, str]]] = [[]]
    size = base
    for t, new in plan:
        entry = len(json.dumps({new: {"dtype": t.dtype.code, "shape": list(t.shape), "data_offsets": [0, 0]}}))
        grow = entry + 2 * digits + t.nbytes
        if shards[-1] and size + grow > limit:
            shards.append([])
            size = base
        shards[-1].append((t, new))
        size += grow
    return shards


def _main_dtype(plan: list[tuple[StoredTensor, str]]) -> str:
    """The floating dtype holding most of the weights (a mixed checkpoint keeps each tensor's own)."""
    weight: dict[str, int] = {}
    for t, _ in plan:
        if t.dtype.floating:
            weight[t.dtype.name] = weight.get(t.dtype.name, 0) + t.nbytes
    return max(weight, key=lambda d: weight[d]) if weight else "float32"


def _generation_config(folder: Path, config: PretrainedConfig, cls: type[PreTrainedModel]) -> GenerationConfig | None:
    """What save_pretrained writes as generation_config.json: the source's, else one made from the
    config, with generation settings left in the config moved into it (as transformers moves them)."""
    from transformers import GenerationConfig

    if not cls.can_generate():
        return None
    try:
        gen = GenerationConfig.from_pretrained(str(folder))
    except OSError:
        gen = GenerationConfig.from_model_config(config)
    from compressor.compat import generation_settings_in_config

    misplaced = generation_settings_in_config(config)
    for name, value in misplaced.items():
        setattr(gen, name, value)
        setattr(config, name, None)
    return gen


def _tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(folder))
        return tokenizer
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is the same problem for the user
        raise BadInput(f"{folder} has no usable tokenizer ({str(exc).splitlines()[0]})",
                       "save the tokenizer next to the model (tokenizer.save_pretrained), or pass tokenizer=") from exc
