"""Content digests, in one place: every resume key and every cache key is built from these.

Why content and not names: a path, a Hub id or a version string can stay the same while what it
points at changes (a calibration file edited in place, a metric fixed in the code, a bf16 load of
the same folder). Each digest below covers everything the result it keys was computed from.
Digests of files are memoised per (path, size, mtime, inode), so a search that fingerprints the
same base model many times reads it once.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    class Fingerprinted(Protocol):
        """What a fingerprint reads of a loaded model (``compressor.sources.models.LoadedModel``, a floor above
        this one)."""

        path: str
        dtype: str
        model: PreTrainedModel
        tokenizer: PreTrainedTokenizerBase | None

# Files of a model folder that decide what the model computes: config, weights, tokenizer, generation
# defaults. Anything else (README, compression.json provenance, images) does not change an output.
_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                "chat_template.jinja", "chat_template.json", "genai_config.json")
_MODEL_SUFFIXES = (".safetensors", ".bin", ".model", ".tiktoken", ".onnx", ".onnx_data")
_MODEL_ENDINGS = (".onnx.data",)  # the GenAI builder's external data file (its suffix alone is ".data")

_FILE_MEMO: dict[tuple[str, int, int, int], str] = {}
_CODE: dict[str, str] = {}


def digest_json(value: Any) -> str:
    """Digest of a JSON-able value (settings, records); key order does not matter."""
    blob = json.dumps(value, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_digest(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _FILE_MEMO:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_MEMO[memo] = h.hexdigest()
    return _FILE_MEMO[memo]


def path_digest(path: str | Path) -> str | None:
    """A file's digest, or a folder's (every file below it, by relative name); None if it is missing."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if not p.is_dir():
        return None
    h = hashlib.sha256(b"dir")
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode("utf-8") + b"\0" + file_digest(f).encode() + b"\0")
    return h.hexdigest()


def code_digest() -> str:
    """Digest of this tool's own source (every .py of ``compressor`` and ``compressor.export``), its
    packaged data and the versions of the libraries that compute numbers (torch, transformers, ...):
    a fix to a metric, or an upgrade, changes every key instead of serving results of older code."""
    if "all" not in _CODE:
        import importlib.util

        import compressor
        from compressor import library_versions

        roots = [Path(compressor.__file__).parent]
        # where compressor.export's files are, found without importing it (a lower floor reads, never uses, it)
        spec = importlib.util.find_spec("compressor.export")
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(p) for p in spec.submodule_search_locations]
        h = hashlib.sha256(json.dumps(library_versions(), sort_keys=True).encode())
        for root in dict.fromkeys(r.resolve() for r in roots):
            for f in sorted(root.rglob("*")):
                if f.is_file() and f.suffix in (".py", ".jsonl") and "__pycache__" not in f.parts:
                    h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE["all"] = h.hexdigest()
    return _CODE["all"]


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder (named by its commit) of a Hub model transformers already loaded."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a Hub id): the caller falls back to the weights
        return None


def model_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and (f.name in _MODEL_FILES or f.suffix in _MODEL_SUFFIXES
                                or f.name.endswith(_MODEL_ENDINGS))]


def model_fingerprint(loaded: Fingerprinted) -> str:
    """What a model computes: config, weights, tokenizer and generation files, *and* the dtype it was
    loaded in (fp32 and bf16 of one folder are different models). A Hub model is fingerprinted from
    its local snapshot (the folder's name is the revision), never from its id."""
    p = Path(loaded.path)
    revision = None
    if not p.is_dir():
        snap = hub_snapshot(loaded.path)
        if snap is None:
            return _in_memory_fingerprint(loaded)
        p, revision = snap, snap.name
    h = hashlib.sha256(b"model-v2")
    for f in model_files(p):
        h.update(f.name.encode() + b"\0" + file_digest(f).encode() + b"\0")
    h.update(f"dtype={loaded.dtype};revision={revision}".encode())
    return h.hexdigest()


def _in_memory_fingerprint(loaded: Fingerprinted) -> str:
    """Fallback for a model with no folder on disk: hash its weights and vocabulary as loaded."""
    h = hashlib.sha256(b"memory-v1")
    h.update(json.dumps(loaded.model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(loaded.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    if loaded.tokenizer is not None:
        h.update(json.dumps(sorted(loaded.tokenizer.get_vocab().items())).encode())
    h.update(f"dtype={loaded.dtype}".encode())
    return h.hexdigest()


_PROBE = ("Hello world! The QUICK brown fox's 3.14 jumps, café naïve 東京 x=f(y)\n\tdef  __init__(self):"
          " <|endoftext|> [CLS] </s>")
_SPECIALS = ("bos", "eos", "unk", "sep", "cls", "pad", "mask")


_VOCAB_MEMO: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, tuple[int, str]]" = weakref.WeakKeyDictionary()


def _vocab_digest(tok: PreTrainedTokenizerBase) -> str:
    """Digest of the sorted vocabulary (~0.15 s for 49k tokens), memoised per tokenizer object and size:
    a search verifies the same base model many times."""
    n = len(tok)
    try:
        hit = _VOCAB_MEMO.get(tok)
    except TypeError:  # not weak-referenceable: no memo
        hit = None
    if hit and hit[0] == n:
        return hit[1]
    d = digest_json(sorted(tok.get_vocab().items()))
    try:
        _VOCAB_MEMO[tok] = (n, d)
    except TypeError:
        pass
    return d


def tokenizer_identity(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a tokenizer does, not which files hold it: its vocabulary (with added tokens), how it
    encodes a fixed probe text (normalisation, pre-tokenisation, special tokens it adds) and its
    special token ids. Two tokenizers with equal identities give every task the same token ids."""
    probe = {"plain": tok(_PROBE, add_special_tokens=False)["input_ids"],
             "special": tok(_PROBE, add_special_tokens=True)["input_ids"]}
    return {"size": len(tok), "vocab": _vocab_digest(tok), "probe": digest_json(probe),
            "special": {name: getattr(tok, f"{name}_token_id", None) for name in _SPECIALS}}


def data_digest(value: Any) -> str:
    """Digest of loaded data (documents, examples): what a stage read, not where it read it from."""
    return digest_json(value)
