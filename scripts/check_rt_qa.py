#!/usr/bin/env python
"""Validate the builtin:rt-qa multiple-choice set (compressor/verify/data/rt_qa.jsonl).

Checks that every record is well formed, that every context is a verbatim
summary from the *evaluation* split of builtin:rt-plots (and never from the
calibration split), that answer positions are balanced, and warns when a
correct answer shares no word of 4+ letters with its context.

Usage: python scripts/check_rt_qa.py [path/to/rt_qa.jsonl]
Exits non-zero on failure.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from compressor.sources.data import read_documents

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "compressor" / "verify" / "data" / "rt_qa.jsonl"
MIN_RECORDS = 60
MIN_SHARE, MAX_SHARE = 0.15, 0.35
MAX_PER_CONTEXT = 2
REQUIRED_KEYS = {"id", "doc_index", "context", "question", "choices", "answer"}
WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str, min_len: int = 4) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if len(w) >= min_len}


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_PATH
    errors: list[str] = []
    warnings: list[str] = []

    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                errors.append(f"line {lineno}: invalid JSON ({e})")

    evaluation = read_documents("builtin:rt-plots", split="evaluation")
    calibration = set(read_documents("builtin:rt-plots", split="calibration"))
    evaluation_set = set(evaluation)

    if len(records) < MIN_RECORDS:
        errors.append(f"only {len(records)} records (need >= {MIN_RECORDS})")

    ids = Counter(r.get("id") for r in records)
    for rid, n in ids.items():
        if n > 1:
            errors.append(f"duplicate id {rid!r} ({n} times)")

    positions: Counter[int] = Counter()
    per_context: Counter[str] = Counter()
    for r in records:
        rid = r.get("id", "?")
        missing = REQUIRED_KEYS - r.keys()
        if missing:
            errors.append(f"{rid}: missing keys {sorted(missing)}")
            continue
        ctx, choices, ans, di = r["context"], r["choices"], r["answer"], r["doc_index"]

        if not isinstance(ctx, str) or not ctx:
            errors.append(f"{rid}: empty context")
            continue
        if ctx not in evaluation_set:
            errors.append(f"{rid}: context is not an element of the evaluation split")
        if not isinstance(di, int) or not 0 <= di < len(evaluation) or evaluation[di] != ctx:
            errors.append(f"{rid}: docs[doc_index={di}] != context")
        if ctx in calibration:
            errors.append(f"{rid}: context appears in the calibration split")
        per_context[ctx] += 1

        if not isinstance(r["question"], str) or not r["question"].strip():
            errors.append(f"{rid}: empty question")
        if (not isinstance(choices, list) or len(choices) != 4
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            errors.append(f"{rid}: choices must be 4 non-empty strings")
            continue
        if len({c.strip().lower() for c in choices}) != 4:
            errors.append(f"{rid}: choices are not distinct")
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans <= 3:
            errors.append(f"{rid}: answer {ans!r} not in 0..3")
            continue
        positions[ans] += 1

        if not (words(choices[ans]) & words(ctx)):
            warnings.append(f"{rid}: correct answer {choices[ans]!r} shares no word of >= 4 letters with the context")

    for ctx, n in per_context.items():
        if n > MAX_PER_CONTEXT:
            errors.append(f"{n} questions share one context (max {MAX_PER_CONTEXT}): {ctx[:60]!r}...")

    total = sum(positions.values())
    print(f"records: {len(records)}")
    print(f"distinct contexts: {len(per_context)}")
    print("answer positions: " + ", ".join(
        f"{p}={positions[p]} ({positions[p] / total:.0%})" if total else f"{p}=0" for p in range(4)))
    for p in range(4):
        share = positions[p] / total if total else 0.0
        if not MIN_SHARE <= share <= MAX_SHARE:
            errors.append(f"answer position {p} share {share:.1%} outside [{MIN_SHARE:.0%}, {MAX_SHARE:.0%}]")

    for w in warnings:
        print(f"WARNING {w}")
    for e in errors:
        print(f"ERROR {e}")
    print("FAIL" if errors else "OK", f"({len(errors)} errors, {len(warnings)} warnings)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
