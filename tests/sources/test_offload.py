"""``--device-map auto`` with ``--max-memory`` and ``--offload-folder``: accelerate's route for a model
larger than the devices, the weights that fit nowhere offloaded to disk (here on CPU alone)."""
from __future__ import annotations

import pytest

from compressor.errors import BadInput
from compressor.sources.data import CalibrationSpec, calibration_for
from compressor.sources.models import load_model


def test_offloaded_blocks_score_as_in_memory(tiny, tmp_path):
    from compressor.score.api import score_layers

    folder = str(tiny("llama"))
    full = load_model(folder)
    block = sum(p.numel() * 4 for p in full.model.model.layers[0].parameters())
    # room for the embeddings and about one block: the rest goes to the offload folder
    cap = sum(p.numel() * 4 for p in full.model.model.embed_tokens.parameters()) + 2 * block
    offloaded = load_model(folder, device_map="auto", max_memory=cap, offload_folder=str(tmp_path / "off"))
    assert "disk" in set(offloaded.model.hf_device_map.values())  # (read back from the safetensors files themselves)
    data = calibration_for(full, CalibrationSpec(samples=4, seq_len=32, batch_size=4))
    a = score_layers(full, "block-influence", data=data)
    b = score_layers(offloaded, "block-influence", data=data)
    assert max(abs(x.score - y.score) for x, y in zip(a.layers, b.layers)) <= 1e-5


def test_offload_folder_needs_a_device_map(tiny, tmp_path):
    with pytest.raises(BadInput, match="--offload-folder is where --device-map auto"):
        load_model(str(tiny("llama")), offload_folder=str(tmp_path / "off"))
