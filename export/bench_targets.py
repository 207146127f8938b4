"""The models ``avss bench`` measures: each path resolved to its ONNX file and folder, and a model whose weights
sit inside ``model.onnx`` re-saved with external data first (the two layouts differ ~1.7x in RSS and ~3x in
session time, ``compressor.export.layout``), so a comparison measures the graphs, not their storage."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, cast

from compressor.errors import BadInput, RuntimeFailure
from compressor.export import layout


@dataclass
class Target:
    path: str  # as the user gave it
    model_file: Path  # the original .onnx
    folder: Path  # holds config.json / compression.json
    measured: Path  # what the worker loads (the original or the restaged copy)
    restaged: bool = False


def resolve(path: str) -> Target:
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{path} does not exist", "give an export folder (from `avss export`) or a .onnx file")
    model_file = layout.onnx_path(p)
    if p.is_dir() and not model_file.is_file():
        raise BadInput(f"{path} has no {layout.ONNX_FILE}", "give a folder written by `avss export`, or the .onnx file")
    if p.is_file() and p.suffix != ".onnx":
        raise BadInput(f"{path} is not a .onnx file", "give an export folder or a .onnx file")
    layout.check_onnx_files(model_file)
    return Target(path, model_file, p if p.is_dir() else p.parent, model_file)


def restage(targets: list[Target], staging: Path, say: Callable[[str], None]) -> None:
    """Point every target whose weights are inside its .onnx at a copy in ``staging`` with external data."""
    for i, t in enumerate(targets):
        if not _uses_external_data(t):
            say(f"{t.path}: weights are inside {t.model_file.name}; re-saving with external data for a fair comparison")
            t.measured, t.restaged = _store_external(t, staging / str(i)), True


def _uses_external_data(t: Target) -> bool:
    try:
        return cast(bool, layout.uses_external_data(t.model_file))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise BadInput(f"{t.model_file} cannot be read as an ONNX model ({type(exc).__name__}: {exc})",
                       "re-export it with `avss export`") from exc


def _store_external(t: Target, folder: Path) -> Path:
    try:
        return cast(Path, layout.store_external_data(t.model_file, folder))
    except OSError as exc:
        raise RuntimeFailure(f"re-saving {t.model_file} with external data in {folder.parent} failed: {exc}",
                             "free disk space there, or point TMPDIR at a larger disk") from exc
