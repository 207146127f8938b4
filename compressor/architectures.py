"""Per-architecture knowledge: where the block list lives and which config fields depend on depth.

One registry, so that scoring and surgery agree on what a "layer" is. Paths are relative to
``model.base_model`` so the same adapter serves ``BertModel`` and ``BertForSequenceClassification``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class ArchAdapter:
    """What surgery and hooks need to know about one ``config.model_type``."""

    model_type: str
    family: str  # "decoder" (causal LM) or "encoder"
    layers_path: str  # relative to model.base_model
    # config lists with one entry per layer, subset to the kept layers on removal
    per_layer_lists: tuple[str, ...] = ()
    # config ints that count "the first N layers" and must be recounted (e.g. Qwen2 max_window_layers)
    prefix_counts: tuple[str, ...] = ()
    # config flags that make the maths depend on the absolute layer index (renumbering changes results)
    index_dependent_flags: tuple[str, ...] = ()
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_ADAPTERS: dict[str, ArchAdapter] = {}


def _register(a: ArchAdapter) -> None:
    _ADAPTERS[a.model_type] = a


_register(ArchAdapter("llama", "decoder", "layers"))
_register(ArchAdapter("mistral", "decoder", "layers"))
_register(ArchAdapter("qwen2", "decoder", "layers", ("layer_types",), ("max_window_layers",)))
_register(ArchAdapter("qwen3", "decoder", "layers", ("layer_types",), ("max_window_layers",)))
_register(ArchAdapter("gemma3_text", "decoder", "layers", ("layer_types",),
                      notes="sliding/full attention per layer via layer_types"))
_register(ArchAdapter("phi3", "decoder", "layers"))
_register(ArchAdapter("gpt2", "decoder", "h", index_dependent_flags=("scale_attn_by_inverse_layer_idx",)))
_register(ArchAdapter("gpt_neox", "decoder", "layers"))
_register(ArchAdapter("bert", "encoder", "encoder.layer"))
_register(ArchAdapter("roberta", "encoder", "encoder.layer"))
_register(ArchAdapter("distilbert", "encoder", "transformer.layer"))


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for_config(config: Any) -> ArchAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise BadInput(
            f"unsupported architecture {model_type!r}",
            f"supported model types: {', '.join(supported_model_types())}",
        )
    return _ADAPTERS[model_type]


def body_of(model: "nn.Module", adapter: ArchAdapter | None = None) -> Any:
    """The module that owns the block list (the bare transformer without a task head).

    ``base_model`` is not enough: e.g. Gemma3ForCausalLM declares prefix ``language_model`` but
    stores its body as ``model``.
    """
    from torch import nn

    adapter = adapter or adapter_for_config(model.config)
    for root in (getattr(model, "base_model", None), getattr(model, "model", None), model):
        obj: Any = root
        for part in adapter.layers_path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return root
    raise BadInput(
        f"could not find the block list {adapter.layers_path!r} in this {adapter.model_type} model",
        "the checkpoint layout is not the standard transformers one; file an issue with its config.json",
    )


def get_layers(model: "nn.Module", adapter: ArchAdapter | None = None) -> "nn.ModuleList":
    """The ModuleList of transformer blocks."""
    obj = body_of(model, adapter)
    for part in (adapter or adapter_for_config(model.config)).layers_path.split("."):
        obj = getattr(obj, part)
    return obj


def set_layers(model: "nn.Module", layers: "nn.ModuleList", adapter: ArchAdapter | None = None) -> None:
    adapter = adapter or adapter_for_config(model.config)
    obj = body_of(model, adapter)
    *parents, last = adapter.layers_path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, layers)


def num_layers(config: Any) -> int:
    return int(config.num_hidden_layers)
