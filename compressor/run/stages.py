"""Declared stages: each names its inputs, one function turns their *content* into its resume key.

A stage is ``Stage(name, label, inputs, outputs, work)``. ``inputs`` maps a name to one of
``Setting`` (a JSON value), ``Files`` (a file or folder, by content digest), ``Model`` (a loaded
model, by ``compressor.fingerprint.model_fingerprint``) or ``Data`` (data as a loader returns it,
by digest). ``stage_key`` hashes the stage's name, every input's digest and the tool's code digest:
adding a stage never means writing a key by hand, and nothing can be keyed on a path or a name
that may point at changed content.

Why records, written last: a stage's outputs are written atomically first (files renamed into
place, folders staged beside the target), then its record, which holds the key, each input's digest
(so a rerun can say what changed) and each output's digest. A stage is resumed only when its key
matches *and* every recorded output is still there with the recorded digest; an edited or deleted
output reruns the stage. A run killed at any point therefore resumes correctly.

Why records carry a digest of their own content (as verify-cache entries do): a record is what a
resumed stage returns, so an edited or damaged one (``"passed": true`` typed into ``verify.json``)
would otherwise decide the run. A record that does not match its digest is not trusted: the stage
runs again, with a note. A stage may also ``recheck`` a resumed result against its outputs (the
verify stages re-judge their report's numbers), so the verdict is never read from a record alone.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compressor import fingerprint
from compressor.errors import BadInput
from compressor.files import FolderLock, atomic_write_text, check_target, check_writable, clean_leftovers, remove_path
from compressor.fingerprint import data_digest, digest_json, model_fingerprint, path_digest

if TYPE_CHECKING:  # pragma: no cover
    from compressor.sources.models import LoadedModel

RECORDS = ".avss-run"
RECORD_SCHEMA = 3  # 3: every record carries the digest of its own content


@dataclass(frozen=True)
class Setting:
    value: Any

    def digest(self) -> str:
        return digest_json(self.value)


@dataclass(frozen=True)
class Files:
    path: Path

    def digest(self) -> str:
        return path_digest(self.path) or "missing"


@dataclass(frozen=True)
class Model:
    loaded: LoadedModel

    def digest(self) -> str:
        return model_fingerprint(self.loaded)


@dataclass(frozen=True)
class Digest:
    """A model by a fingerprint taken while it was loaded (the run's base, which verify frees)."""

    value: str

    def digest(self) -> str:
        return self.value


class Data:
    """Data by content, loaded lazily and digested once (a task file edited in place changes it)."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self._digest: str | None = None

    def digest(self) -> str:
        if self._digest is None:
            self._digest = data_digest(self._load())
        return self._digest


Input = Setting | Files | Model | Digest | Data
Progress = Callable[[int, int], None]  # (done, total)
Work = Callable[[Progress | None], tuple[dict[str, Any], str]]


@dataclass
class Stage:
    name: str
    label: str
    inputs: dict[str, Input]
    outputs: tuple[str, ...]  # paths relative to the run folder, written by ``work``
    work: Work  # progress callback -> (result dict, one-line detail)
    # a resumed result -> the result to use (re-derived from the outputs), or raise ``Stale`` to rerun
    recheck: Callable[[dict[str, Any]], dict[str, Any]] | None = None


class Stale(Exception):
    """A resumed result that does not follow from the stage's outputs: the stage runs again."""


def record_digest(record: dict[str, Any]) -> str:
    """The digest a stage record carries of its own content (everything but the digest)."""
    return digest_json({k: v for k, v in record.items() if k != "digest"})


def input_digests(stage: Stage) -> dict[str, str]:
    return {name: inp.digest() for name, inp in sorted(stage.inputs.items())}


def stage_key(name: str, digests: dict[str, str]) -> str:
    """The one key function: stage name, every input's content digest and the code digest."""
    return digest_json({"stage": name, "inputs": digests, "code": fingerprint.code_digest()})[:32]


@dataclass
class StageRecord:
    name: str
    key: str
    inputs: dict[str, str]
    outputs: dict[str, str]  # relative path -> content digest
    seconds: float
    result: dict[str, Any] = field(default_factory=dict)
    schema: int = RECORD_SCHEMA


class StageStore:
    def __init__(self, root: Path, force: bool = False):
        self.root = root
        self.dir = root / RECORDS
        self.force = force

    def check(self) -> bool:
        """Refuse an ``--out`` this tool must not write into; True when it is an existing run folder.

        Why: a run writes, replaces and cleans entries in its folder. A folder that is neither new,
        empty nor a run folder (``.avss-run/`` inside) holds someone else's files, which a run must
        never mix with its own or remove.
        """
        out = self.root
        check_target(out, "--out")
        if out.exists() and not out.is_dir():
            raise BadInput(f"--out {out} is a file, not a folder", "choose a new folder (or an earlier run's) for --out")
        if out.is_dir() and not self.dir.is_dir() and any(out.iterdir()):
            raise BadInput(f"--out {out} is not empty and is not an avss run folder (it has no {RECORDS}/)",
                           "choose a new or empty folder for --out; a run only resumes in a folder an earlier "
                           "`avss run` made")
        check_writable(out)
        return out.is_dir() and self.dir.is_dir()

    def claim(self, owned: tuple[str, ...], folders: tuple[str, ...] = (), scratch: tuple[str, ...] = ()) -> list[str]:
        """Create and lock the run folder, then clean what a killed run left in it (one line each).

        Only this tool's own entries are touched: staging entries and hidden old copies named for the
        run's outputs (``owned``) at the top level, hidden leftovers at any depth inside the record
        folder and the run's own ``folders``, and its ``scratch`` folders (removed whole). Nothing else.
        """
        self.check()
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(exist_ok=True)
        self.lock = FolderLock(self.dir / "lock", f"run folder {self.root}").acquire()
        notes = []
        if self.lock.previous:
            notes.append(f"took over the run folder's lock from pid {self.lock.previous.get('pid')}, "
                         "which is no longer running")
        for name in owned:
            notes += clean_leftovers(self.root / name, any_owner=True)
        for name in scratch:
            if (self.root / name).exists():
                remove_path(self.root / name)
                notes.append(f"removed {name}/, the scratch folder of an interrupted run")
        for sub in (RECORDS, *folders):  # wholly ours: at any depth (reports/onnx/.report.json.tmp-…)
            d = self.root / sub
            for p in sorted(d.rglob(".*")) if d.is_dir() and not d.is_symlink() else []:
                if (".tmp-" in p.name or ".old-" in p.name) and (p.exists() or p.is_symlink()):
                    remove_path(p)
                    notes.append(f"removed {p.relative_to(self.root).as_posix()}, left by an interrupted run")
        return notes

    def release(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def load(self, name: str) -> StageRecord | None:
        return self._read(name)[0]

    def _read(self, name: str) -> tuple[StageRecord | None, str]:
        """(record, why it cannot be used): a missing record is (None, ""), an unusable one names why."""
        f = self.dir / f"{name}.json"
        if not f.exists():
            return None, ""
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
            digest = d.pop("digest", None) if isinstance(d, dict) else None
            rec = StageRecord(**d)
        except (OSError, ValueError, TypeError):
            return None, "its record is damaged"
        if rec.schema != RECORD_SCHEMA or not isinstance(rec.outputs, dict):
            return None, "its record was written by an older version"
        if digest != record_digest(d):
            return None, "its record was edited or damaged (its digest does not match)"
        return rec, ""

    def done(self, name: str, key: str) -> StageRecord | None:
        """The record of a finished stage with this key whose outputs are all unchanged, else None."""
        if self.force:
            return None
        rec = self.load(name)
        if rec is None or rec.key != key:
            return None
        if any(path_digest(self.root / rel) != digest for rel, digest in rec.outputs.items()):
            return None
        return rec

    def why_rerun(self, name: str, key: str, digests: dict[str, str]) -> str:
        """Why a stage that has a record runs again (for the progress note); '' if it never ran."""
        if self.force:
            return "--force"
        rec, unusable = self._read(name)
        if rec is None:
            return unusable
        changed = sorted(k for k in set(digests) | set(rec.inputs) if digests.get(k) != rec.inputs.get(k))
        if changed:
            return "changed: " + ", ".join(changed)
        if rec.key != key:
            return "the tool's code or libraries changed"
        edited = [rel for rel, d in rec.outputs.items() if path_digest(self.root / rel) != d]
        return f"output changed or missing: {', '.join(edited)}" if edited else ""

    def save(self, stage: Stage, key: str, digests: dict[str, str], started: float,
             result: dict[str, Any]) -> StageRecord:
        outputs = {}
        for rel in stage.outputs:
            d = path_digest(self.root / rel)
            if d is None:
                raise RuntimeError(f"stage {stage.name} did not write its declared output {rel}")
            outputs[rel] = d
        rec = StageRecord(stage.name, key, digests, outputs, round(time.perf_counter() - started, 3), result)
        # digest what a reader parses back (tuples become lists, keys strings), as the verify cache does
        d = json.loads(json.dumps(rec.__dict__, allow_nan=False))
        atomic_write_text(self.dir / f"{stage.name}.json",
                          json.dumps({**d, "digest": record_digest(d)}, indent=2, allow_nan=False) + "\n")
        return StageRecord(**d)

    def forget(self, name: str) -> None:
        (self.dir / f"{name}.json").unlink(missing_ok=True)
