"""How an exported folder is laid out and stored, shared by export and bench.

Why external data always: a single-file ``model.onnx`` loads to 1.7-1.85x its size in RSS and
creates sessions ~3x slower than the same graph with its weights in ``model.onnx_data`` (1.06x).
Optimum switches to external data only above ~2 GB, so a full and a pruned model could otherwise
be stored differently and the benchmark would compare file layouts, not models.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

ONNX_FILE = "model.onnx"
DATA_FILE = "model.onnx_data"
EXPORT_RECORD = "export.json"
EXTERNAL_THRESHOLD = 1024  # bytes: every tensor larger than this goes to model.onnx_data


def onnx_path(folder: str | Path) -> Path:
    """The model file inside an export folder (or the file itself)."""
    p = Path(folder)
    return p / ONNX_FILE if p.is_dir() else p


def check_onnx_files(model_file: str | Path, fix: str = "re-export it with `avss export`") -> None:
    """Refuse a damaged ``model.onnx`` or external data file before ONNX Runtime reads it: ``BadInput``
    (exit 2) naming the file and ``fix``. Reads the graph without its weights, then checks that every
    external tensor's file exists and holds its byte range (a truncated ``model.onnx_data`` would
    otherwise be an ONNX Runtime error that names no file)."""
    import onnx

    from compressor.errors import BadInput

    model_file = Path(model_file)
    try:
        m = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"the ONNX model {model_file} is damaged: it cannot be parsed ({first[:200]})", fix) from exc
    sizes: dict[str, int | None] = {}
    for t in m.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        name = info.get("location", "")
        f = model_file.parent / name
        if name not in sizes:
            sizes[name] = f.stat().st_size if name and f.is_file() else None
        size = sizes[name]
        if size is None:
            raise BadInput(f"the ONNX model {model_file} keeps tensor {t.name!r} in {f}, which is missing", fix)
        try:
            end = int(info.get("offset", 0)) + int(info["length"])
        except (KeyError, ValueError):
            continue  # no length recorded: ONNX Runtime reads to the end of the file
        if end > size:
            raise BadInput(f"the ONNX external data file {f} is damaged: tensor {t.name!r} needs bytes up to "
                           f"{end:,} but the file has {sizes[name]:,} (truncated)", fix)


def model_bytes(model_file: str | Path) -> int:
    """The graph file plus every external data file it names (ours: model.onnx_data; the GenAI builder's:
    model.onnx.data)."""
    import onnx

    model_file = Path(model_file)
    names: set[str] = {e.value for t in onnx.load(str(model_file), load_external_data=False).graph.initializer
             if t.data_location == onnx.TensorProto.EXTERNAL for e in t.external_data if e.key == "location"}
    return model_file.stat().st_size + sum((model_file.parent / n).stat().st_size for n in names
                                           if (model_file.parent / n).is_file())


def uses_external_data(model_file: str | Path) -> bool:
    """True when every large initializer lives in external data (no weights inside the protobuf)."""
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > EXTERNAL_THRESHOLD:
            return False
    return True


def has_kv_cache(model_file: str | Path) -> bool:
    """A decoder export with the KV cache (``past_key_values.*`` inputs), as the bench worker decides it."""
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    return any(i.name.startswith("past_key_values") for i in m.graph.input)


def store_external_data(src: str | Path, dst_dir: str | Path) -> Path:
    """Write ``src`` (a .onnx file, weights inline or external) to ``dst_dir/model.onnx`` + ``model.onnx_data``.

    ``dst_dir`` must not be the folder that holds ``src``'s external data (the data is read lazily).
    """
    import onnx

    return save_with_external_data(onnx.load(str(src), load_external_data=True), dst_dir)


def save_with_external_data(model: onnx.ModelProto, dst_dir: str | Path) -> Path:
    """Save a loaded ``ModelProto`` as ``dst_dir/model.onnx`` + ``model.onnx_data`` (our one layout)."""
    import onnx

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = dst_dir / ONNX_FILE
    for stale in (out, dst_dir / DATA_FILE):
        if stale.exists():
            stale.unlink()
    # Mark the tensors ourselves: save_model(save_as_external_data=True, location=...) checks whether
    # ``location`` exists relative to the *current directory* and raises FileExistsError when it is
    # run from inside an export folder.
    from onnx.external_data_helper import set_external_data

    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > EXTERNAL_THRESHOLD:
            set_external_data(t, DATA_FILE)
    onnx.save_model(model, str(out))
    if (dst_dir / DATA_FILE).exists():
        os.chmod(dst_dir / DATA_FILE, 0o644)
    return out


def count_parameters(model_file: str | Path) -> int:
    """Weights in the graph (initializers), without loading them: tied weights count once."""
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    total = 0
    for t in m.graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        total += n
    return total


def _read_object(f: Path) -> dict[str, Any]:
    """A JSON object file of an export folder ({} when absent); a damaged one is exit 2 naming it."""
    from compressor.errors import BadInput

    if not f.exists():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{f} is not valid JSON ({exc})", "re-export the model with `avss export`") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{f} is not a JSON object", "re-export the model with `avss export`")
    return data


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json as a dict ({} when absent)."""
    return _read_object(Path(folder) / "config.json")


def read_record(folder: str | Path) -> dict[str, Any]:
    """The folder's export.json (what was exported, parity, quantization) as a dict ({} when absent)."""
    return _read_object(Path(folder) / EXPORT_RECORD)


def read_num_layers(folder: str | Path) -> int | None:
    """``num_hidden_layers`` (or GPT-2's ``n_layer``) from the folder's config.json."""
    data = read_config(folder)
    for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if isinstance(data.get(key), int):
            return int(data[key])
    return None


GENAI_CONFIG = "genai_config.json"  # what marks a folder written by ONNX Runtime GenAI's Model Builder


def is_genai_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / GENAI_CONFIG).is_file()


def genai_kv_shape(folder: str | Path) -> tuple[int, int] | None:
    """(kv heads, head size) from a GenAI folder's ``genai_config.json``: the empty past's shape, which
    the graph leaves symbolic."""
    f = Path(folder) / GENAI_CONFIG
    if not f.is_file():
        return None
    try:
        dec = json.loads(f.read_text(encoding="utf-8"))["model"]["decoder"]
        return int(dec["num_key_value_heads"]), int(dec["head_size"])
    except (ValueError, KeyError, TypeError):
        from compressor.errors import BadInput

        raise BadInput(f"{f} is damaged: it has no model.decoder num_key_value_heads/head_size",
                       "re-export it with `avss export --exporter genai`") from None
