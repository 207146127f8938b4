"""config.json's fields we rely on, checked before transformers builds anything.

Why: transformers takes ``"num_hidden_layers": "four"`` (or ``"4"``, ``null``, ``4.0``) without a word and
fails later, deep in model construction ("'str' object cannot be interpreted as an integer"), after a
load has started; a layer count that disagrees with the weights builds a different model. Every reader
(the in-memory and streamed loads, the shard writer, the memory estimate, the ONNX loader) reads the
config through ``sources.models.load_config``, which asks this module first (exit 2, naming config.json
and the field).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

    from compressor.architectures import ArchAdapter
    from compressor.sources.integrity import Checkpoint

CONFIG = "config.json"
# whole numbers > 0 that every supported architecture needs (null is refused too)
REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads")
# whole numbers > 0 where given (null means "the architecture's default" for these)
OPTIONAL = ("num_key_value_heads", "intermediate_size", "head_dim", "vocab_size", "max_position_embeddings")
_FIX = "fix config.json (or re-save the model with save_pretrained)"


def _json_name(model_type: Any, field: str) -> str:
    """How config.json spells a standard field for this model type (GPT-2: ``n_layer``, DistilBERT: ``n_layers``)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type] if isinstance(model_type, str) and model_type in CONFIG_MAPPING else None
    return str(getattr(cls, "attribute_map", {}).get(field, field))


def _describe(value: Any) -> str:
    return "null" if value is None else json.dumps(value)


def check_config_json(folder: Path) -> None:
    """Refuse a config.json that is not JSON, or whose counts are not whole positive numbers; silent for a
    folder without one (the loader says what is missing)."""
    f = folder / CONFIG
    if not f.is_file():
        return
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadInput(f"the config file {f} is damaged: it is not valid JSON",
                       "re-download or re-save the model (save_pretrained)") from None
    except OSError as exc:
        raise BadInput(f"the config file {f} cannot be read ({exc.strerror or exc})", "check its permissions") from None
    if not isinstance(raw, dict):
        raise BadInput(f"the config file {f} is damaged: it is not a JSON object", _FIX)
    model_type = raw.get("model_type")
    for field in REQUIRED + OPTIONAL:
        name = _json_name(model_type, field)
        if name not in raw or (raw[name] is None and field in OPTIONAL):
            continue
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadInput(f"{f}: {name} is {_describe(value)}, not a whole number above 0",
                           f"write it as a plain integer matching the weights (e.g. \"{name}\": 4); {_FIX}")
    layer_types = raw.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list)
                                    or not all(isinstance(t, str) for t in layer_types)):
        raise BadInput(f"{f}: layer_types is {_describe(layer_types)[:60]}, not a list of attention type names",
                       f"give one name per layer (e.g. \"full_attention\"); {_FIX}")
    layers = _json_name(model_type, "num_hidden_layers")
    if layer_types is not None and isinstance(raw.get(layers), int) and len(layer_types) != raw[layers]:
        raise BadInput(f"{f}: layer_types has {len(layer_types)} entries but {layers} is {raw[layers]}",
                       f"give one entry per layer; {_FIX}")


def check_config_against_weights(config: PretrainedConfig, adapter: ArchAdapter, folder: Path,
                                 checkpoint: Checkpoint | None) -> None:
    """The loaded config against what the weights hold: one entry per layer in every per-layer list, a
    block count equal to the weights' blocks, and input embeddings of [vocab_size, hidden_size]."""
    from compressor.architectures import key_part, num_layers

    f = folder / CONFIG
    n = num_layers(config)
    layers_field = _json_name(config.model_type, "num_hidden_layers")
    for name in adapter.per_layer_lists:
        value = getattr(config, name, None)
        if value is not None and len(value) != n:
            raise BadInput(f"{f}: {name} has {len(value)} entries but {layers_field} is {n}",
                           f"give one entry per layer; {_FIX}")
    if checkpoint is None:
        return
    blocks = sorted({i for k in checkpoint.tensors if (i := key_part(k, adapter)[1]) is not None})
    if blocks != list(range(n)):
        held = f"{len(blocks)} blocks ({blocks[0]}..{blocks[-1]})" if blocks else "no blocks"
        raise BadInput(f"{f}: {layers_field} is {n} but the weights hold {held}",
                       f"make {layers_field} match the weights; {_FIX}")
    if adapter.embeddings is None:
        return
    suffix = f"{adapter.embeddings}.weight"
    emb = next((t for k, t in checkpoint.tensors.items() if k == suffix or k.endswith(f".{suffix}")), None)
    want = (getattr(config, "vocab_size", None), getattr(config, "hidden_size", None))
    if emb is not None and None not in want and emb.shape != want:
        hidden = _json_name(config.model_type, "hidden_size")
        raise BadInput(f"{f}: vocab_size {want[0]} and {hidden} {want[1]} do not match the input embeddings "
                       f"{emb.key} {list(emb.shape)} in the weights", f"make them match the weights; {_FIX}")
