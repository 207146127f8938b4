"""Calibration text -> token batches, with a hash so reports say exactly what was measured.

Built-in sources are split into fixed, disjoint halves: the first half of the documents is the
``calibration`` split (scoring), the second half the ``evaluation`` split (verify), so scoring never
sees evaluation text.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compressor import diagnostics
from compressor.errors import BadInput
from compressor.sources import builtins

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from compressor.sources.models import LoadedModel

Split = Literal["calibration", "evaluation", "all"]


@dataclass(frozen=True)
class CalibrationSpec:
    """What to feed the model while scoring."""

    source: str = "builtin:python-docs"
    samples: int = 32
    seq_len: int = 256
    batch_size: int = 8
    text_field: str = "text"
    pack: bool | None = None  # None: pack for decoders, one document per row for encoders
    split: Split = "calibration"

    def validate(self) -> None:
        for name in ("samples", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})",
                               f"pass a positive --{name.replace('_', '-')}")


@dataclass
class CalibrationData:
    spec: CalibrationSpec
    batches: list[dict[str, torch.Tensor]]  # input_ids / attention_mask tensors (CPU, int64)
    tokens: int  # real (unpadded) tokens
    sha256: str
    packed: bool
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.spec.source,
            "split": self.spec.split,
            "samples": sum(int(b["input_ids"].shape[0]) for b in self.batches),
            "seq_len": self.spec.seq_len,
            "batch_size": self.spec.batch_size,
            "packed": self.packed,
            "tokens": self.tokens,
            "sha256": self.sha256,
        }


def read_documents(source: str, text_field: str = "text", split: Split = "calibration",
                   role: str = "calibration data") -> list[str]:
    """Documents of a source; built-ins honour ``split``; local files are used whole. ``role`` names
    what the text is for (calibration data, perplexity task data) in the error a user reads."""
    if source == "builtin:mixed":
        return mix_by_characters([read_documents(f"builtin:{n}", text_field, split, role) for n in builtins.MIXED])
    if builtins.is_builtin(source):
        # de-duplicate first: several pydoc topics share one text, which would leak across the split
        docs = list(dict.fromkeys(builtins.builtin_text(builtins.builtin_name(source))))
        half = len(docs) // 2
        docs = {"calibration": docs[:half], "evaluation": docs[half:], "all": docs}[split]
    else:
        docs = _read_file(Path(source).expanduser(), text_field)
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise BadInput(f"{role} {source} is empty", "pass a file with text in it")
    return docs


def mix_by_characters(sources: list[list[str]]) -> list[str]:
    """Interleave documents so every prefix holds about as much text of each source: the next document
    always comes from the source with the fewest characters so far (long Python-doc topics and short
    plot summaries would otherwise not mix in a packed calibration window)."""
    queues = [list(docs) for docs in sources]
    chars = [0] * len(queues)
    out: list[str] = []
    while any(queues):
        i = min((k for k in range(len(queues)) if queues[k]), key=lambda k: (chars[k], k))
        doc = queues[i].pop(0)
        chars[i] += len(doc)
        out.append(doc)
    return out


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInput(f"data file {path} does not exist", "check the path, or use a builtin: source")
    if path.is_dir():
        raise BadInput(f"{path} is a folder", "pass a .txt, .jsonl or .csv file")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .csv file as dicts: the one reader for calibration and evaluation files."""
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise BadInput(f"{path}:{n} is a JSON {type(row).__name__}, not an object", "one JSON object per line")
                    rows.append(row)
            return rows
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as fh:
                return list(csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} is not UTF-8 text ({exc.reason})", "convert it to UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON Lines (line {exc.lineno}: {exc.msg})", "fix the file") from exc
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from exc
    raise BadInput(f"unsupported data file type {suffix!r} ({path})", "use .txt, .jsonl or .csv")


def _read_file(path: Path, text_field: str) -> list[str]:
    _check_file(path)
    if path.suffix.lower() in (".txt", ".md", ".text"):
        try:
            return path.read_text(encoding="utf-8").split("\n\n")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{path} is not UTF-8 text ({exc.reason})", "convert it to UTF-8") from exc
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from exc
    rows = read_records(path)
    noun = "column" if path.suffix.lower() == ".csv" else "field"
    for n, row in enumerate(rows, 1):
        if text_field not in row:
            raise BadInput(f"{path}:{n} has no {noun} {text_field!r} ({noun}s: {', '.join(map(str, row))})",
                           f"pass --text-field with the right {noun} name")
    return [str(r[text_field]) for r in rows]


def pad_right(rows: list[list[int]], pad_id: int = 0, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for token rows, right-padded to ``width`` (default: the longest row).

    Right padding keeps every real token at its own position, so causal models see exactly the
    same prefix with or without padding.
    """
    import torch

    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    return ids, mask


def load_calibration(spec: CalibrationSpec, tokenizer: PreTrainedTokenizerBase,
                     family: str = "decoder") -> CalibrationData:
    """Tokenize, batch, and hash calibration text."""
    spec.validate()
    docs = read_documents(spec.source, spec.text_field, spec.split)
    pack = spec.pack if spec.pack is not None else family == "decoder"
    warnings: list[str] = []
    rows: list[list[int]] = []
    if pack:
        sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        stream: list[int] = []
        need = spec.samples * spec.seq_len
        for d in docs:
            stream.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
            if sep is not None:
                stream.append(sep)
            if len(stream) >= need:
                break
        rows = [stream[i:i + spec.seq_len] for i in range(0, min(len(stream), need), spec.seq_len)]
        rows = [r for r in rows if len(r) >= 2]
    else:
        for d in docs[: spec.samples]:
            ids = tokenizer(d, truncation=True, max_length=spec.seq_len)["input_ids"]
            if len(ids) >= 1:
                rows.append(ids)
    if not rows:
        raise BadInput(f"calibration data {spec.source} produced no tokens", "pass more text")
    if len(rows) < spec.samples:
        warnings.append(f"calibration data has only {len(rows)} of the {spec.samples} requested samples")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    digest = hashlib.sha256(f"seq_len={spec.seq_len};pack={pack}".encode())
    tokens = 0
    for i in range(0, len(rows), spec.batch_size):
        chunk = rows[i:i + spec.batch_size]
        ids, mask = pad_right(chunk, pad_id)
        for r in chunk:
            digest.update(json.dumps(r).encode())
        tokens += int(mask.sum())
        batches.append({"input_ids": ids, "attention_mask": mask})
    return CalibrationData(spec, batches, tokens, digest.hexdigest(), pack, warnings)


def calibration_for(loaded: LoadedModel, spec: CalibrationSpec, *, given: bool = True) -> CalibrationData:
    """``spec``'s text as ``loaded`` reads it (its tokenizer; packed for decoders unless the spec says).
    ``given=False``: nobody chose the text, so the default is named on the ``avss`` logger."""
    if not given:
        diagnostics.note(f"no --data or --profile given: calibrating on {spec.source} ({spec.split} split)")
    assert loaded.tokenizer is not None, "calibration reads the text with the model's tokenizer"
    return load_calibration(spec, loaded.tokenizer, loaded.adapter.family)
