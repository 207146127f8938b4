"""Tiny ONNX exports of the tiny random models, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_onnx(tiny, tmp_path_factory):
    """tiny_onnx(arch, pruned=False) -> export folder (model.onnx, config.json[, compression.json]).

    ``pruned`` removes layer 1 (of 4) before exporting, so ideal layer ratios are 3/4.
    """

    made: dict[tuple[str, bool], Path] = {}

    def get(arch: str, pruned: bool = False) -> Path:
        key = (arch, pruned)
        if key not in made:
            src = tiny(arch)
            if pruned:
                from compressor.prune.surgery import prune_model
                from compressor.sources.models import load_model

                slim = tmp_path_factory.mktemp(f"slim-{arch}") / "model"
                prune_model(load_model(str(src)), [1], slim)
                src = slim
            from compressor.export.convert import export_model

            out = tmp_path_factory.mktemp(f"onnx-{arch}{'-pruned' if pruned else ''}") / "onnx"
            export_model(str(src), out)  # parity-checked; copies compression.json
            made[key] = out
        return made[key]

    return get
