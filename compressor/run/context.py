"""What every step of a run shares: its settings, its folder and records, the loaded base model, the
events a front end hears, and the one stage runner (resume by content key, else run).

Why one context object: steps are declared as data (``run/steps``) and get their inputs from earlier
steps explicitly; what is neither an input nor an output (the configuration, the profile, the
loaded base, where progress goes) lives here, set once by ``run/prepare.py`` before any step runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from compressor import library_versions
from compressor.errors import EXIT_OK
from compressor.files import atomic_write_text
from compressor.run.config import RunConfig
from compressor.run.stages import Data, Digest, Input, Setting, Stage, StageStore, Stale, input_digests, stage_key

if TYPE_CHECKING:
    from compressor.profiles import Profile
    from compressor.repair.settings import RepairSettings
    from compressor.sources.data import CalibrationData
    from compressor.sources.models import LoadedModel
    from compressor.verify.api import Deferred, Identity
    from compressor.verify.report import VerifyReport

RUN_FILE = "run.json"
RUN_SCHEMA = 1


class Events(Protocol):
    """What a front end (the CLI's progress display) hears from a run."""

    def start(self, stage: str, label: str) -> Optional[Callable[[int, int], None]]: ...
    def end(self, stage: str, status: str, seconds: float, detail: str) -> None: ...
    def note(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...


class Silent:
    def start(self, stage: str, label: str) -> None:
        return None

    def end(self, stage: str, status: str, seconds: float, detail: str) -> None:
        pass

    def note(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass


@dataclass
class StageInfo:
    name: str
    status: str  # ran | resumed | skipped
    seconds: float
    detail: str = ""
    peak_rss_gb: float | None = None  # this process's peak while the stage ran (what to size a machine by)


@dataclass
class RunResult:
    out: str
    config: dict[str, Any]
    stages: list[StageInfo] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    method_label: str = ""
    passed: Optional[bool] = None
    verdict: str = ""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    search: Optional[dict[str, Any]] = None
    repair: Optional[dict[str, Any]] = None
    parity: Optional[dict[str, Any]] = None
    exporter: str = ""  # which exporter wrote onnx/ (and the quantized artifact)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # the gate per shipped artifact
    bench: Optional[dict[str, Any]] = None
    exit_code: int = EXIT_OK
    status: str = "running"
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunContext:
    """Set by ``prepare`` (profile, calibration, gate inputs, repair, protect) and ``load_base`` (base)."""

    profile: Profile
    repair: RepairSettings
    protect: str
    calibration: Data
    calibration_settings: Setting
    gate_inputs: dict[str, Input]

    def __init__(self, cfg: RunConfig, force: bool, events: Events,
                 entries: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())):
        from compressor.export.exporters import get_exporter

        self.cfg, self.ev = cfg, events
        self.out = Path(cfg.out)
        self.store = StageStore(self.out, force)
        self.result = RunResult(str(self.out), cfg.model_dump(mode="json"))
        self.exporter = get_exporter(cfg.exporter)
        self.entries = entries  # (owned, folders, scratch): what claiming the folder may clean
        self.started = self.claimed = False
        self._calib: CalibrationData | None = None
        self._base: LoadedModel | None = None
        self._base_id: Identity | None = None
        self.stream: bool | None = cfg.stream  # resolved by prepare: False when a step needs the whole model

    # --- the base model: held for scoring and cutting, freed by verify, reloaded only if asked for --
    @property
    def base(self) -> LoadedModel:
        """The loaded base; after verify released it, a step that asks for its weights reloads it."""
        if self._base is None:
            c = self.cfg
            self.ev.note(f"loading {c.model} again (a later step needs its weights) ...")
            self._base = self.load(c.model, c.repair_settings().copies)
        return self._base

    @base.setter
    def base(self, loaded: LoadedModel) -> None:
        self._base, self._base_id = loaded, None

    def load(self, spec: str, copies: int = 1) -> LoadedModel:
        """A model as this run loads every model: its device, dtype, memory limit and streaming (with the
        LM head when streamed: verify's perplexity needs it)."""
        from compressor.sources.models import load_model

        c = self.cfg
        return load_model(spec, device=c.device, dtype=c.dtype, allow_pickle=c.allow_pickle,
                          trust_remote_code=c.trust_remote_code, max_memory=c.max_memory_bytes(), stream=self.stream,
                          with_head=self.stream is not False, copies=copies)

    def base_held(self) -> LoadedModel | None:
        """The base if it is in memory now (never reloads it)."""
        return self._base

    def base_identity(self) -> Identity:
        """Who the base is (fingerprint, path, tokenizer, kind), taken once while it is loaded."""
        if self._base_id is None:
            from compressor.verify.api import Identity

            self._base_id = Identity.of(self.base)
        return self._base_id

    def base_input(self) -> Digest:
        """The base as a stage input: its fingerprint (the same digest ``Model(base)`` gives), no weights needed."""
        return Digest(self.base_identity().fingerprint)

    def release_base(self) -> None:
        """Free the base's weights (its identity stays): verify's candidate then loads into that memory."""
        from compressor.verify.api import free_memory

        self.base_identity()
        self._base = None
        free_memory()

    def run_stage(self, stage: Stage) -> dict[str, Any]:
        """Resume ``stage`` if its content key and its outputs are unchanged, else run it."""
        digests = input_digests(stage)
        key = stage_key(stage.name, digests)
        rec = self.store.done(stage.name, key)
        why = ""
        if rec is not None:
            try:
                result = stage.recheck(rec.result) if stage.recheck else rec.result
            except Stale as exc:
                why = str(exc)
            else:
                detail = result.get("detail", "")
                self.ev.end(stage.name, "resumed", 0.0, detail)
                self.result.stages.append(StageInfo(stage.name, "resumed", 0.0, detail))
                return result
        why = why or self.store.why_rerun(stage.name, key, digests)
        if why:
            self.ev.note(f"{stage.name}: running again ({why})")
        from compressor.export.peak_rss import PeakRSS

        t0 = time.perf_counter()
        with PeakRSS(interval=0.05) as peak:  # 20 samples a second: nothing next to a stage's work
            res, detail = stage.work(self.ev.start(stage.name, stage.label))
        res = {**res, "detail": detail}
        saved = self.store.save(stage, key, digests, t0, res)
        self.ev.end(stage.name, "ran", saved.seconds, detail)
        self.result.stages.append(StageInfo(stage.name, "ran", saved.seconds, detail, round(peak.peak / 1e9, 3)))
        return res

    def skip(self, name: str, why: str) -> None:
        self.store.forget(name)
        self.ev.end(name, "skipped", 0.0, why)
        self.result.stages.append(StageInfo(name, "skipped", 0.0, why))

    def write_run_json(self) -> None:
        d = {"schema_version": RUN_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "versions": library_versions(), **self.result.to_dict()}
        atomic_write_text(self.out / RUN_FILE, json.dumps(d, indent=2, allow_nan=False, default=str) + "\n")

    # --- what several steps use ------------------------------------------------------------------
    def calibration_batches(self) -> CalibrationData:
        """The profile's calibration data, tokenized for the base (loaded once per run)."""
        from compressor.profiles import calibration_spec
        from compressor.sources.data import calibration_for

        if self._calib is None:
            self._calib = calibration_for(self.base, calibration_spec(profile=self.profile))
        return self._calib

    def repair_inputs(self) -> dict[str, Input]:
        """What a repaired cut depends on besides the base and the cut (nothing without a repair)."""
        if not self.repair.enabled:
            return {"repair": Setting("none")}
        return {"repair": Setting(self.repair.to_dict()), "calibration": self.calibration_settings,
                "calibration_data": self.calibration}

    def load_candidate(self, folder: Path) -> LoadedModel:
        return self.load(str(folder))

    def verify(self, cand: LoadedModel | Deferred, label: str, stop_at_failure: bool = False,
               release_base: bool = False) -> VerifyReport:
        """``cand`` (loaded, or ``Deferred``: loaded once the base is done) against the base under the
        profile's gate (base results from the verify cache when they are there). ``release_base``: free
        the base before the candidate loads (no later step needs its weights; a search's candidates do)."""
        from compressor.verify.api import Deferred, verify

        def progress(name: str) -> Optional[Callable[[int, int], None]]:
            return self.ev.start("verify", f"{label}: {name}")

        free = release_base or self._base is None  # a base reloaded for a cache miss is freed again
        base = Deferred(lambda: self.base, self.base_identity(), self.release_base if free else None)
        return verify(base, cand, self.profile, profile_path=self.cfg.profile,
                      min_retention=self.cfg.min_retention, progress=progress, stop_at_failure=stop_at_failure)
