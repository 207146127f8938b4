"""One integrity rule on every path: a header that shares, skips or repeats bytes, a tensor stored twice
across shards, a dtype code we do not know or cannot compute in, are refused (exit 2, naming the file
and the tensor) by the in-memory load, the streamed load, the shard writer and the memory estimate
alike, before any work, and nothing is written."""
import json
import shutil
import struct

import pytest

from compressor.errors import BadInput
from helpers import error_lines, run

V, K = "model.layers.1.self_attn.v_proj.weight", "model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _edit_header(f, edit):
    """Rewrite a safetensors file's JSON header with ``edit(header)``; the data bytes stay as they are."""
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    text = edit(header)
    blob = (text if isinstance(text, str) else json.dumps(header, separators=(",", ":"))).encode()
    blob += b" " * (-len(blob) % 8)
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _v_reads_k(header):
    header[V]["data_offsets"] = list(header[K]["data_offsets"])


def _gap(header):
    """The last tensor moved 16 bytes on: bytes nobody owns, then a file 16 bytes short."""
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    b, e = header[last]["data_offsets"]
    header[last]["data_offsets"] = [b + 16, e + 16]


def _unknown_dtype(header):
    header[V]["dtype"] = "F9"


def _twice_in_header(header):
    """The same key twice in one header (JSON keeps only the last: the first copy's bytes would be ignored)."""
    body = json.dumps({k: v for k, v in header.items() if k != V}, separators=(",", ":"))
    first = json.dumps({V: header[K]}, separators=(",", ":"))[1:-1]
    second = json.dumps({V: header[V]}, separators=(",", ":"))[1:-1]
    return "{" + first + "," + body[1:-1] + "," + second + "}"


DAMAGE = {
    "v_proj reads k_proj's bytes": (_v_reads_k, f"gives tensors {K!r} and {V!r} overlapping bytes"),
    "bytes nobody owns": (_gap, "bytes before tensor"),
    "unknown dtype code": (_unknown_dtype, f"gives tensor {V!r} the unknown dtype code 'F9'"),
    "a key twice in one header": (_twice_in_header, f"it lists {V!r} twice"),
}


def _commands(model, tmp_path, scores):
    out = tmp_path / "slim"
    return {
        "score (in memory)": ["score", str(model), "--method", "last-k", "--no-stream"],
        "score --stream": ["score", str(model), "--method", "block-influence", "--stream"],
        "prune --stream (shard writer)": ["prune", str(model), "--scores", str(scores), "--num-layers", "1",
                                          "--stream", "--out", str(out)],
        "prune (in memory)": ["prune", str(model), "--scores", str(scores), "--num-layers", "1", "--no-stream",
                              "--out", str(out)],
    }


@pytest.fixture
def scores(tiny, tmp_path, capsys):
    f = tmp_path / "scores.json"
    code, _, err = run(["score", str(tiny("llama")), "--method", "last-k", "--out", str(f)], capsys)
    assert code == 0, err
    return f


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_header_is_refused_on_every_path(damage, tiny, tmp_path, scores, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny("llama"), model)
    edit, words = DAMAGE[damage]
    _edit_header(model / "model.safetensors", edit)
    for name, argv in _commands(model, tmp_path, scores).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        (line,) = error_lines(err)
        assert f"the weights file {model / 'model.safetensors'} is damaged" in line and words in line, (name, line)
        assert "Traceback" not in err and "unexpected" not in err, (name, err)
        assert not (tmp_path / "slim").exists(), name
    from compressor.architectures import adapter_for_config
    from compressor.sources.memory import checkpoint_size
    from compressor.sources.models import load_config

    with pytest.raises(BadInput, match="is damaged"):  # the memory estimate reads the same rule
        checkpoint_size(str(model), adapter_for_config(load_config(str(tiny("llama")))))


@pytest.fixture
def sharded(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(tiny("llama"))).save_pretrained(str(model), max_shard_size="2MB")
    for f in tiny("llama").glob("tok*"):
        shutil.copy2(f, model / f.name)
    return model


def _shard_of(model, key):
    return json.loads((model / "model.safetensors.index.json").read_text())["weight_map"][key]


def test_a_tensor_listed_twice_in_the_index_is_refused(sharded, tmp_path, scores, capsys):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    other = next(s for s in sorted(set(data["weight_map"].values())) if s != data["weight_map"][V])
    text = json.dumps(data)
    text = text.replace('"weight_map": {', '"weight_map": {' + json.dumps(V) + ": " + json.dumps(other) + ", ", 1)
    index.write_text(text)
    for name, argv in _commands(sharded, tmp_path, scores).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        (line,) = error_lines(err)
        assert f"{index} is damaged: it lists {V!r} twice" in line, (name, line)
        assert not (tmp_path / "slim").exists()


def test_a_tensor_in_two_shards_is_refused(sharded, tmp_path, scores, capsys):
    """A shard that also holds a tensor of another shard: streamed readers kept the last copy, the shard
    writer copied both."""
    from safetensors.torch import load_file, save_file

    home = _shard_of(sharded, V)
    other = next(f for f in sorted(sharded.glob("model-*.safetensors")) if f.name != home)
    extra = load_file(str(other))
    extra[V] = load_file(str(sharded / home))[V] * 0  # a different tensor under the same name
    save_file(extra, str(other), metadata={"format": "pt"})
    for name, argv in _commands(sharded, tmp_path, scores).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        (line,) = error_lines(err)
        assert V in line and other.name in line and ("twice" in line or "does not match the shards" in line), line
        assert not (tmp_path / "slim").exists()


def test_an_index_listing_a_tensor_its_shard_lacks_is_refused(sharded, capsys):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.layers.9.mlp.up_proj.weight"] = data["weight_map"][V]
    index.write_text(json.dumps(data))
    code, _, err = run(["score", str(sharded), "--method", "last-k", "--stream"], capsys)
    assert code == 2 and "lists tensor 'model.layers.9.mlp.up_proj.weight'" in err and "does not hold it" in err, err


def test_an_index_naming_a_file_outside_the_folder_is_refused(sharded, tmp_path, capsys):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    home = data["weight_map"][V]
    shutil.copy2(sharded / home, tmp_path / home)
    data["weight_map"] = {k: (f"../{v}" if v == home else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    code, _, err = run(["score", str(sharded), "--method", "last-k"], capsys)
    assert code == 2 and f"names shard '../{home}', which is not a file name in" in err, err


def test_an_8bit_float_tensor_is_refused_by_name(tiny, tmp_path, scores, capsys):
    """A dtype avss cannot compute in (fp8 needs its scales) is refused up front, not a KeyError later."""
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny("llama"), model)
    weights = load_file(str(model / "model.safetensors"))
    weights[V] = weights[V].to(torch.float8_e4m3fn)
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    for name, argv in _commands(model, tmp_path, scores).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        (line,) = error_lines(err)
        assert f"stores tensor {V!r} as F8_E4M3 (float8_e4m3fn), a dtype avss cannot compute in" in line, line
        assert line.endswith("dequantize the checkpoint to bfloat16, float16 or float32 and save it with "
                             "save_pretrained")


def test_the_table_reads_every_dtype_safetensors_writes(tmp_path):
    """The one dtype table sizes and orders every tensor safetensors writes (C64 and unsigned included)."""
    import torch
    from safetensors.torch import save_file

    from compressor.sources.integrity import DTYPE_ORDER, read_header

    names = ["bool", "uint8", "int8", "float8_e5m2", "float8_e4m3fn", "int16", "uint16", "float16", "bfloat16",
             "int32", "uint32", "float32", "complex64", "float64", "int64", "uint64"]
    save_file({f"t{i}": torch.zeros(3, dtype=getattr(torch, n)) for i, n in enumerate(names)}, str(tmp_path / "x"))
    found = read_header(tmp_path / "x")
    assert {t.dtype.name for t in found} == set(names)
    laid_out = [t.dtype.code for t in sorted(found, key=lambda t: t.offset)]
    assert laid_out == sorted(laid_out, key=DTYPE_ORDER.index, reverse=True)  # safetensors' own order


def test_a_shape_that_config_json_does_not_give_is_refused_when_streamed(tiny, tmp_path, scores, capsys):
    """The streamed paths compare every tensor's shape with the model config.json describes, as the
    in-memory load does (they used to load whatever shape the header gave)."""
    model = tmp_path / "model"
    shutil.copytree(tiny("llama"), model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    for name, argv in _commands(model, tmp_path, scores).items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        (line,) = error_lines(err)
        assert "do not have the shape its config.json gives" in line and "[64, 32] in the weights vs [48, 32]" in line
        assert not (tmp_path / "slim").exists()
