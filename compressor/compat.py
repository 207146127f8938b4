"""Where the two lanes differ, decided once: the card's lane (transformers 4.57, Optimum) and the current
lane (transformers 5, ONNX Runtime GenAI 0.18, no Optimum). The rest of the code asks here and never
compares versions itself. Reads package metadata, so asking costs no import of transformers.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.core_model_loading import WeightConverter

# why Optimum is not in the current lane (said once, by every refusal)
OPTIMUM_CAP = "optimum-onnx 0.1.0 (its only release) caps transformers below 4.58"


# ONNX Runtime GenAI per lane: 0.15.2 is the newest whose Model Builder imports with transformers 4.57; 0.18.0's
# imports transformers-5-only classes (pyproject.toml's `cpu` and `current-cpu` extras pin the same)
GENAI = {"card": "0.15.2", "current": "0.18.0"}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _major(version: str | None) -> int:
    try:
        return int((version or "0").split(".")[0])
    except ValueError:
        return 0


@lru_cache(maxsize=1)
def lane() -> str:
    """``card`` (transformers 4.x) or ``current`` (transformers 5.x)."""
    return "current" if _major(_version("transformers")) >= 5 else "card"


def optimum_missing() -> str | None:
    """Why the Optimum exporter cannot run here (None: it can)."""
    if lane() == "current":
        return f"{OPTIMUM_CAP}, and this is the current lane (transformers {_version('transformers')})"
    if _version("optimum-onnx") is None:
        return "optimum-onnx is not installed"
    return None


def unknown_model_type_fix() -> str:
    """What to do about a model type this transformers does not know: in the card's lane, families added in
    transformers 5 (Gemma 4, Qwen3.5, ...) need the current lane."""
    if lane() == "card":
        return ("if it is a family transformers 5 added, use the current lane (make install LANE=current); if it "
                "ships its own code, pass --trust-remote-code")
    return "if it ships its own code, pass --trust-remote-code; else it needs a newer transformers than this lane's"


def transformers_version() -> str:
    return _version("transformers") or "?"


def genai_requirement() -> str:
    """The builder this lane pins, as pip names it (what messages tell a user to install)."""
    return f"onnxruntime-genai=={GENAI[lane()]}"


def versions() -> dict[str, str | None]:
    """The versions that decide a result or what can run, for ``avss --version`` and the records."""
    names = ("torch", "transformers", "huggingface_hub", "optimum", "optimum-onnx", "onnxruntime", "onnxruntime-gpu",
             "onnxruntime-genai", "onnxruntime-genai-cuda", "lm_eval", "peft")
    return {n: v for n in names if (v := _version(n)) is not None}


def generation_settings_in_config(config: PretrainedConfig) -> dict[str, Any]:
    """Generation settings left in a model config, which ``save_pretrained`` moves to generation_config.json:
    transformers 4.57 asks the config for them; 5 keeps none there (and has no such method)."""
    ask = getattr(type(config), "_get_non_default_generation_parameters", None)
    return dict(ask(config)) if ask is not None else {}


def lane_folder(name: str) -> str:
    """A built-in model's cache folder for this lane: each lane converts (or trains) its own, because the files
    a transformers version writes are not read the same by the other (5 writes ``rope_parameters``, which 4.57
    ignores, silently falling back to its default RoPE base)."""
    return name if lane() == "card" else f"{name}-transformers5"


def builder_load_dtype(config: PretrainedConfig) -> str:
    """The dtype ONNX Runtime GenAI's builder gets its weights in (its ``from_pretrained`` passes none): fp32 with
    transformers 4.57, the checkpoint's own dtype with transformers 5 (whose default is "auto"). The streamed
    writer reads each block in it, so it hands the builder's graph code the same tensors."""
    if lane() == "card":
        return "float32"
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(stored).replace("torch.", "")


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A model loaded from GGUF, as a plain (unquantized) model that ``save_pretrained`` writes: transformers 5
    keeps the GGUF loader's quantization record on the model and then refuses to serialize it."""
    if getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None:
        return model
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF model copy: missing {missing}, unexpected {unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain


def stored_layout(model: PreTrainedModel, keys: set[str]
                  ) -> tuple[dict[str, str], dict[str, tuple[WeightConverter, dict[str, list[str]]]]]:
    """How the checkpoint's keys become ``model``'s parameter names, as its ``from_pretrained`` does it:
    ({name: stored key}, {name: (converter, {source pattern: stored keys in order})}). transformers 5 renames
    (GPT-NeoX's ``embed_out`` is its ``lm_head``) and converts (LFM2-MoE stores one w1/w2/w3 per expert, its
    model one 3-D tensor per block) with its own transforms, used here; 4.57 loads every key by its name."""
    if lane() == "card":
        return {k: k for k in keys}, {}
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    plain: dict[str, str] = {}
    grouped: dict[str, tuple[WeightConverter, dict[str, list[str]]]] = {}
    for key in sorted(keys, key=dot_natural_key):  # expert 2 before expert 10
        name, pattern = rename_source_key(key, renamings, converters)
        if pattern is None:
            plain[name] = key
            continue
        converter = next(c for c in converters if pattern in c.source_patterns)
        entry = grouped.setdefault(name, (converter, {p: [] for p in converter.source_patterns}))
        entry[1][pattern].append(key)
    return plain, grouped
