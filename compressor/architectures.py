"""Per-architecture knowledge: where the block list lives and which config fields depend on depth.

One registry, so that scoring and surgery agree on what a "layer" is. Paths are relative to
``model.base_model`` so the same adapter serves ``BertModel`` and ``BertForSequenceClassification``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, cast

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn
    from transformers import PretrainedConfig, PreTrainedModel


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
    # linear repair: the block's MLP output projection (relative to the block), whose output is added
    # to the residual stream with nothing in between, so a d x d map folds into it exactly
    mlp_out: str | None = None
    mlp_out_kind: str = "linear"  # "linear": weight [d_out, d_in]; "conv1d" (GPT-2): weight [d_in, d_out]
    no_fold: str = ""  # why a linear patch cannot be folded exactly (then repair refuses it)
    # the norm after the last block (relative to the body); None: the last block's output is final (BERT)
    final_norm: str | None = None
    # the input embeddings (relative to the body), whose [vocab, hidden] shape config.json must match
    embeddings: str | None = "embed_tokens"
    # hybrid models: the layer_types whose blocks keep a fixed-size state (a convolution's or a linear
    # attention's) instead of a KV cache; an exported graph has one past.N.* state input per such block
    state_types: tuple[str, ...] = ()
    # the first transformers major that has the family: 5 means the card's lane (4.57) cannot load it, so
    # nothing that needs Optimum can be offered for it
    since_transformers: int = 4


_ADAPTERS: dict[str, ArchAdapter] = {}


def _register(a: ArchAdapter) -> None:
    _ADAPTERS[a.model_type] = a


_POST_LN = ("post-LN: the block's LayerNorm follows the residual add ({}), so a matrix folded into the MLP "
            "output projection is followed by a nonlinear norm")
_register(ArchAdapter("llama", "decoder", "layers", mlp_out="mlp.down_proj", final_norm="norm"))
_register(ArchAdapter("mistral", "decoder", "layers", mlp_out="mlp.down_proj", final_norm="norm"))
_register(ArchAdapter("qwen2", "decoder", "layers", ("layer_types",), ("max_window_layers",), mlp_out="mlp.down_proj",
                      final_norm="norm"))
_register(ArchAdapter("qwen3", "decoder", "layers", ("layer_types",), ("max_window_layers",), mlp_out="mlp.down_proj",
                      final_norm="norm"))
_register(ArchAdapter("gemma3_text", "decoder", "layers", ("layer_types",),
                      notes="sliding/full attention per layer via layer_types", mlp_out="mlp.down_proj", final_norm="norm",
                      no_fold="Gemma 3 normalises the MLP output (post_feedforward_layernorm) before adding it to "
                              "the residual stream, so a matrix folded into down_proj is followed by a nonlinear norm"))
_register(ArchAdapter("phi3", "decoder", "layers", mlp_out="mlp.down_proj", final_norm="norm"))
# families transformers 5 added (the card's lane refuses them as unknown model types, naming the current lane).
# LFM2-MoE: short-convolution and attention blocks (layer_types), the first num_dense_layers with a dense MLP and
# the rest a routed mixture of experts; each block's conv state and KV cache follow it by layer_idx
_register(ArchAdapter("lfm2_moe", "decoder", "layers", ("layer_types",), ("num_dense_layers",),
                      final_norm="embedding_norm", state_types=("conv",), since_transformers=5,
                      no_fold="LFM2-MoE's feed-forward is a routed mixture of experts (one 3-D expert tensor) in all "
                              "but its first num_dense_layers blocks; a fold into every expert is not built"))
# Qwen3.5 (text): Gated DeltaNet linear-attention blocks and full-attention blocks (layer_types); the MLP output
# is added to the residual stream unnormalised, so the linear patch folds exactly
_register(ArchAdapter("qwen3_5_text", "decoder", "layers", ("layer_types",), mlp_out="mlp.down_proj",
                      final_norm="norm", state_types=("linear_attention",), since_transformers=5))
# GPT-2's Conv1D stores its weight transposed ([d_in, d_out]) and has a bias; dropout is off in eval
_register(ArchAdapter("gpt2", "decoder", "h", index_dependent_flags=("scale_attn_by_inverse_layer_idx",),
                      mlp_out="mlp.c_proj", mlp_out_kind="conv1d", final_norm="ln_f",
                      embeddings="wte"))
# GPT-NeoX (parallel residual: out = x + attn(ln1 x) + mlp(ln2 x)): the MLP output is still added last,
# unnormalised, so "block output - MLP output" is the rest of the block and the fold stays exact
_register(ArchAdapter("gpt_neox", "decoder", "layers", mlp_out="mlp.dense_4h_to_h", final_norm="final_layer_norm",
                      embeddings="embed_in"))
_register(ArchAdapter("bert", "encoder", "encoder.layer", no_fold=_POST_LN.format("output.LayerNorm"),
                      embeddings="embeddings.word_embeddings"))
_register(ArchAdapter("roberta", "encoder", "encoder.layer", no_fold=_POST_LN.format("output.LayerNorm"),
                      embeddings="embeddings.word_embeddings"))
_register(ArchAdapter("distilbert", "encoder", "transformer.layer", no_fold=_POST_LN.format("output_layer_norm"),
                      embeddings="embeddings.word_embeddings"))


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def since_transformers(model_type: str) -> int:
    """The first transformers major with a family we cut (0 for a type not in the registry)."""
    adapter = _ADAPTERS.get(model_type)
    return adapter.since_transformers if adapter is not None else 0


def adapter_for_config(config: PretrainedConfig) -> ArchAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise BadInput(
            f"unsupported architecture {model_type!r}",
            f"supported model types: {', '.join(supported_model_types())}",
        )
    return _ADAPTERS[model_type]


def _config(model: nn.Module) -> PretrainedConfig:
    """A transformers model's config (``nn.Module`` types any attribute as a tensor or a module)."""
    return cast("PretrainedConfig", model.config)


MODEL_KINDS = ("causal-lm", "sequence-classification", "bare")  # a profile's model_kind is one of the first two


def model_kind(model: PreTrainedModel, adapter: ArchAdapter | None = None) -> str:
    """What a loaded model computes, from its head: ``causal-lm`` (a decoder with an LM head),
    ``sequence-classification``, or ``bare`` (no head). The one answer for every caller that picks a
    loss, a task kind or a check by it (the family alone says decoder, not whether there is a head)."""
    adapter = adapter or adapter_for_config(model.config)
    if adapter.family == "decoder" and model.get_output_embeddings() is not None:
        return "causal-lm"
    if "ForSequenceClassification" in type(model).__name__:
        return "sequence-classification"
    return "bare"


def body_of(model: nn.Module, adapter: ArchAdapter | None = None) -> nn.Module:
    """The module that owns the block list (the bare transformer without a task head).

    ``base_model`` is not enough: e.g. Gemma3ForCausalLM declares prefix ``language_model`` but
    stores its body as ``model``.
    """
    from torch import nn

    adapter = adapter or adapter_for_config(_config(model))
    for root in (getattr(model, "base_model", None), getattr(model, "model", None), model):
        obj: nn.Module | None = root
        for part in adapter.layers_path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return cast("nn.Module", root)
    raise BadInput(
        f"could not find the block list {adapter.layers_path!r} in this {adapter.model_type} model",
        "the checkpoint layout is not the standard transformers one; file an issue with its config.json",
    )


def final_norm_of(model: nn.Module, adapter: ArchAdapter | None = None) -> Callable[[Tensor], Tensor]:
    """The module applied to the last block's output (identity for encoders, whose last block is final)."""
    adapter = adapter or adapter_for_config(_config(model))
    if adapter.final_norm is None:
        return lambda h: h
    obj: nn.Module = body_of(model, adapter)
    for part in adapter.final_norm.split("."):
        obj = getattr(obj, part)
    return obj


def get_layers(model: "nn.Module", adapter: ArchAdapter | None = None) -> "nn.ModuleList":
    """The ModuleList of transformer blocks."""
    obj = body_of(model, adapter)
    for part in (adapter or adapter_for_config(_config(model))).layers_path.split("."):
        obj = getattr(obj, part)
    return cast("nn.ModuleList", obj)


def set_layers(model: "nn.Module", layers: "nn.ModuleList", adapter: ArchAdapter | None = None) -> None:
    adapter = adapter or adapter_for_config(_config(model))
    obj = body_of(model, adapter)
    *parents, last = adapter.layers_path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, layers)


@contextlib.contextmanager
def running_blocks(model: "nn.Module", adapter: ArchAdapter, modules: list[nn.Module],
                   blocks: list[int]) -> Iterator[None]:
    """Run ``modules`` (standing for the model's blocks ``blocks``, numbered as in the uncut model) in place of
    its blocks, with the per-layer config lists (``layer_types``) narrowed to the same blocks; restored after.
    Why: transformers 5 picks a block's attention mask (sliding or full) by its position in
    ``config.layer_types``, 4.57 by the block's own attribute; narrowing serves both."""
    from torch import nn

    cfg = model.config
    old = get_layers(model, adapter)
    saved = {name: getattr(cfg, name) for name in adapter.per_layer_lists
             if isinstance(getattr(cfg, name, None), (list, tuple)) and len(getattr(cfg, name)) == len(old)}
    set_layers(model, nn.ModuleList(modules), adapter)
    for name, full in saved.items():
        setattr(cfg, name, [full[b] for b in blocks])
    try:
        yield
    finally:
        set_layers(model, old, adapter)
        for name, full in saved.items():
            setattr(cfg, name, full)


# task heads as saved at the top level of a checkpoint (``lm_head.weight``, ``classifier.bias``): what a
# memory estimate counts apart from the body (a tied LM head is not stored, so it counts nothing)
HEAD_MODULES = ("lm_head", "embed_out", "classifier", "pre_classifier", "score", "cls", "qa_outputs")


def key_part(key: str, adapter: ArchAdapter) -> tuple[str, int | None]:
    """Which part of the model a saved tensor belongs to, from its name alone: ``("block", i)`` under the
    block list, ``("head", None)`` for a task head, else ``("body", None)`` (embeddings, final norm,
    pooler). Works with and without the body's prefix (``model.layers.3.`` and ``layers.3.``)."""
    import re

    m = re.search(r"(?:^|\.)" + re.escape(adapter.layers_path) + r"\.(\d+)\.", key)
    if m:
        return "block", int(m[1])
    if key.split(".", 1)[0] in HEAD_MODULES:
        return "head", None
    return "body", None


def num_layers(config: PretrainedConfig) -> int:
    return int(config.num_hidden_layers)


def kv_layers(config: PretrainedConfig, adapter: ArchAdapter | None = None) -> int:
    """How many blocks keep a KV cache: all of them, except a hybrid's state blocks (``state_types``). What an
    exported graph's ``past_key_values.*`` inputs and fused attention nodes are counted against."""
    adapter = adapter or adapter_for_config(config)
    types = getattr(config, "layer_types", None)
    if not adapter.state_types or not isinstance(types, (list, tuple)):
        return num_layers(config)
    return sum(1 for t in types if t not in adapter.state_types)


def mlp_out_module(block: "nn.Module", adapter: ArchAdapter) -> "nn.Module":
    """The MLP output projection of one block (for the linear repair's fold)."""
    obj: nn.Module | None = block
    for part in (adapter.mlp_out or "").split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise BadInput(f"this {adapter.model_type} block has no {adapter.mlp_out!r}",
                           "the checkpoint layout is not the standard transformers one; use --repair distill")
    return cast("nn.Module", obj)


def input_device(model: PreTrainedModel) -> torch.device:
    """Where a model's input tensors go: its input embedding's device (one rule for scoring, repair and
    verify; an ONNX model answers the CPU: ``export.ort_model``)."""
    return cast("torch.Tensor", model.get_input_embeddings().weight).device
