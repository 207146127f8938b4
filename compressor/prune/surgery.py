"""Remove blocks and write a checkpoint that plain ``transformers`` loads, with no custom code.

Invariants (each has a test): blocks removed; every ``layer_idx`` renumbered (else the KV cache
indexes past its end); per-layer config lists shrunk; ``num_hidden_layers`` updated; tied
embeddings still tied; safetensors only; tokenizer and generation config copied;
``compression.json`` records what was done. Writes are atomic.

The rules of a cut (which indices are valid, the config edits, the record) live here once; the
shard writer (``prune.shards``), which cuts a checkpoint without building the model, calls them too.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compressor import __version__
from compressor.architectures import ArchAdapter, adapter_for_config, get_layers, set_layers
from compressor.errors import BadInput, RuntimeFailure
from compressor.files import check_output_dir, describe_os_error, replace_dir, staging_dir
from compressor.prune.provenance import COMPRESSION_SCHEMA, current

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from compressor.sources.models import LoadedModel

COMPRESSION_FILE = "compression.json"


def read_compression(folder: str | Path) -> dict[str, Any]:
    """The one reader of a checkpoint's ``compression.json``: {} when there is none; a corrupt one is
    an error naming the file, never a silently missing provenance."""
    f = Path(folder) / COMPRESSION_FILE
    if not f.is_file():
        return {}
    fix = "re-create the model with avss prune, or delete the file"
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{f} is not valid JSON (line {exc.lineno})", fix) from exc
    except UnicodeDecodeError as exc:
        raise BadInput(f"{f} is not UTF-8 text ({exc.reason})", fix) from exc
    except OSError as exc:
        raise BadInput(f"cannot read {f}: {exc.strerror}", "check the file's permissions") from exc
    if not isinstance(d, dict):
        raise BadInput(f"{f} holds a JSON {type(d).__name__}, not an object", fix)
    return d


def kept_layers(removed: list[int], n_old: int) -> list[int]:
    """The blocks a cut keeps (original numbering); refuses indices outside the model and a cut of
    every block. Shared by the in-memory cut and the shard writer, so both refuse alike."""
    bad = [i for i in removed if not 0 <= i < n_old]
    if bad:
        raise BadInput(f"layers {bad} do not exist in a {n_old}-layer model", f"use indices 0..{n_old - 1}")
    keep = [i for i in range(n_old) if i not in set(removed)]
    if not keep:
        raise BadInput(f"cannot remove all {n_old} layers", "remove fewer layers")
    return keep


def cut_config(cfg: PretrainedConfig, keep: list[int], n_old: int, adapter: ArchAdapter) -> list[str]:
    """In place: the config of a model that keeps blocks ``keep`` of ``n_old``. The one place for
    these rules (the in-memory cut and the shard writer both call it). Returns warnings (maths that
    depends on the absolute layer index)."""
    cfg.num_hidden_layers = len(keep)
    for name in adapter.per_layer_lists:
        value = getattr(cfg, name, None)
        if isinstance(value, (list, tuple)) and len(value) == n_old:
            setattr(cfg, name, [value[i] for i in keep])
    for name in adapter.prefix_counts:
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            setattr(cfg, name, sum(1 for i in keep if i < value))
    warnings = []
    for flag in adapter.index_dependent_flags:
        if getattr(cfg, flag, False):
            warnings.append(f"{flag}=True: attention scaling depends on the layer index, so renumbered "
                            "layers compute slightly different values than in the original model")
    return warnings


def remove_layers(model: PreTrainedModel, removed: list[int], adapter: ArchAdapter | None = None) -> list[str]:
    """In place. Returns warnings (e.g. maths that depends on the absolute layer index)."""
    from torch import nn

    adapter = adapter or adapter_for_config(model.config)
    layers = get_layers(model, adapter)
    n_old = len(layers)
    keep = kept_layers(removed, n_old)
    set_layers(model, nn.ModuleList([layers[i] for i in keep]), adapter)
    warnings = cut_config(model.config, keep, n_old, adapter)
    for new_i, block in enumerate(get_layers(model, adapter)):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                setattr(mod, "layer_idx", new_i)  # noqa: B010 - any submodule type
    return warnings


@dataclass
class PruneResult:
    out: Path
    removed: list[int]
    kept: list[int]
    num_layers_before: int
    num_layers_after: int
    parameters_before: int
    parameters_after: int
    warnings: list[str]
    repair: dict[str, Any] | None = None



def prune_model(
    loaded: LoadedModel,
    removed: list[int],
    out: str | Path,
    *,
    force: bool = False,
    provenance: dict[str, Any] | None = None,
    repaired: tuple[LoadedModel, dict[str, Any], list[str]] | None = None,
) -> PruneResult:
    """Remove ``removed`` (0-based, original numbering) from ``loaded`` (a LoadedModel) and save to ``out``.

    Without ``repaired`` the in-memory model is modified: callers that still need the full model must
    reload it. ``repaired``: the slim model already cut and repaired from ``loaded`` (slim LoadedModel,
    repair record, warnings), which is saved instead; ``loaded`` then stays the full model and gives the
    "before" counts. (Prune knows nothing of repairs: the repair floor builds on this one.)
    """
    out = check_output_dir(out, force)
    model = loaded.model
    n_before = int(model.config.num_hidden_layers)
    p_before = int(sum(p.numel() for p in model.parameters()))
    repair_record: dict[str, Any]
    if repaired is not None:
        slim, repair_record, warnings = repaired
        model, tokenizer = slim.model, slim.tokenizer
    else:
        warnings = remove_layers(model, removed, loaded.adapter)
        repair_record = {"method": "none"}
        tokenizer = loaded.tokenizer
    kept = [i for i in range(n_before) if i not in set(removed)]
    p_after = int(sum(p.numel() for p in model.parameters()))
    record = compression_record(spec=loaded.spec, path=loaded.path, model_type=model.config.model_type,
                                num_layers_before=n_before, removed=removed, kept=kept, parameters_before=p_before, parameters_after=p_after,
                                warnings=warnings, provenance=provenance, repair=repair_record)
    save_checkpoint(model, tokenizer, out, record)
    return PruneResult(out, sorted(removed), kept, n_before, len(kept), p_before, p_after, warnings, repair_record)


def compression_record(*, spec: str, path: str, model_type: str, num_layers_before: int, removed: list[int],
                       kept: list[int],
                       parameters_before: int, parameters_after: int, warnings: list[str],
                       provenance: dict[str, Any] | None, repair: dict[str, Any]) -> dict[str, Any]:
    """A cut's ``compression.json``: one builder for every writer of a cut (in memory or shard by shard)."""
    n_before = num_layers_before
    return current({
        "schema_version": COMPRESSION_SCHEMA,
        "tool": "avss-compressor",
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": {"spec": spec, "path": path, "model_type": model_type, "num_layers": n_before,
                       "parameters": parameters_before},
        "removed_layers": sorted(removed),
        "kept_layers": kept,
        "num_layers_before": n_before,
        "num_layers_after": len(kept),
        "parameters_before": parameters_before,
        "parameters_after": parameters_after,
        "indexing": "0-based, original numbering",
        "warnings": warnings,
        **(provenance or {}),
        "repair": repair,
    })


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out: Path,
                    record: dict[str, Any]) -> None:
    """Write a plain ``save_pretrained`` folder (safetensors, tokenizer, compression.json) atomically."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_extras(tmp, tokenizer, record)

    write_folder(out, fill)


def save_extras(folder: Path, tokenizer: PreTrainedTokenizerBase | None, record: dict[str, Any]) -> None:
    """What a checkpoint holds beside its model files: the tokenizer and ``compression.json``."""
    if tokenizer is not None:
        try:
            tokenizer.save_pretrained(str(folder))
        except Exception as exc:  # tokenizers (Rust) reports a full disk as a plain Exception: name the file
            from compressor.errors import os_error_in

            disk = os_error_in(exc)
            if disk is None:
                raise
            raise OSError(disk.errno, disk.strerror, str(folder / "tokenizer.json")) from exc
    (folder / COMPRESSION_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """``fill(staging folder)``, then the folder replaces ``out``: nothing half-written is ever at
    ``out``, and a disk error is our one-line error naming the file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        fill(tmp)
        replace_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (BadInput, KeyboardInterrupt)):
            raise
        if isinstance(exc, OSError):
            known = describe_os_error(exc)  # a full or read-only disk, named as such
            if known is not None:
                raise known from exc
            raise RuntimeFailure(f"writing {out} failed: {exc}", "check free disk space and permissions") from exc
        raise
