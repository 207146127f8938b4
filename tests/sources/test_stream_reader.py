"""The streamed reader: a tensor read at another dtype is converted chunk by chunk, with the same values."""
import pytest


@pytest.mark.parametrize("shape", [(37, 5), (3, 4, 6), (11,), ()])
def test_a_tensor_read_at_another_dtype_equals_the_whole_conversion(shape, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from compressor.sources import stream

    torch.manual_seed(0)
    t = torch.randn(shape).to(torch.bfloat16)
    save_file({"w": t, "other": torch.ones(2, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(stream, "READ_CHUNK", 24)  # a few rows at a time
    reader = stream.ShardReader(tmp_path)
    got = reader.get_many(["w"], dtype=torch.float32)["w"]
    assert got.dtype == torch.float32 and tuple(got.shape) == shape and torch.equal(got, t.float())
    assert torch.equal(reader.get_many(["w"])["w"], t)  # at its own dtype: as stored
