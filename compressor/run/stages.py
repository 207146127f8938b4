"""Resumable stages: each finished stage leaves a record keyed by a hash of its inputs.

Why records, written last: a stage's outputs are written atomically first (files renamed into
place, folders staged beside the target), then its record. A run killed at any point therefore
has, for every stage, either a complete record *and* its outputs, or no record (the stage runs
again). Keys chain (each stage's key includes its upstream keys), so changing the method
recomputes scoring and everything after it, while changing only the bench settings reruns bench.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.files import atomic_write_text

RECORDS = ".avss-run"


def key_of(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    name: str
    key: str
    outputs: list[str]  # paths relative to the run folder
    seconds: float
    result: dict[str, Any] = field(default_factory=dict)


class StageStore:
    def __init__(self, root: Path, force: bool = False):
        self.root = root
        self.dir = root / RECORDS
        self.force = force

    def clean_stale(self) -> list[str]:
        """Remove staging folders/files a killed run left behind (``.name.tmp-*``)."""
        removed = []
        if self.root.is_dir():
            for p in self.root.rglob(".*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(str(p.relative_to(self.root)))
        return removed

    def done(self, name: str, key: str) -> StageRecord | None:
        """The record of a finished stage with this key whose outputs all still exist, else None."""
        if self.force:
            return None
        p = self.dir / f"{name}.json"
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            rec = StageRecord(**d)
        except (OSError, ValueError, TypeError):
            return None
        if rec.key != key or not all((self.root / o).exists() for o in rec.outputs):
            return None
        return rec

    def save(self, name: str, key: str, outputs: list[str], started: float, result: dict[str, Any] | None = None) -> StageRecord:
        rec = StageRecord(name, key, outputs, round(time.perf_counter() - started, 3), result or {})
        atomic_write_text(self.dir / f"{name}.json", json.dumps(rec.__dict__, indent=2, allow_nan=False) + "\n")
        return rec

    def forget(self, name: str) -> None:
        (self.dir / f"{name}.json").unlink(missing_ok=True)
