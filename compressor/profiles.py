"""Task profiles (``profiles/*.yaml``): what "the slim model still does its job" means.

One schema, validated strictly (unknown keys refused) so a typo never silently disables a check.
``calibration`` feeds ``score`` / ``prune``; ``tasks``, ``gate`` and ``eval`` drive ``verify``. A task's
entry is its kind's schema (``TaskKind.Entry``), picked by ``kind`` from the registry in
``compressor.verify.kinds``: adding a kind never touches this file.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from compressor.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from compressor.sources.data import CalibrationSpec
    from compressor.verify.kinds.base import TaskEntry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CalibrationSection(_Strict):
    source: str = "builtin:python-docs"
    samples: int = Field(32, ge=1)
    seq_len: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    text_field: str = "text"
    pack: bool | None = None


class GateSection(_Strict):
    min_retention: float = Field(0.90, gt=0, le=2)
    aggregate: Literal["all", "mean"] = "all"
    confidence: float | None = Field(None, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(1000, ge=100)
    # a task whose base model scores 0 (accuracy-like metrics) has no defined retention: by default
    # that is bad input (exit 2); ``report`` keeps it in the reports, marked and not gating
    zero_base: Literal["error", "report"] = "error"
    # which artifacts of ``avss run`` the verdict (and exit code) judges: ``all`` of them (the PyTorch
    # checkpoint, its ONNX export and, with --quantize, the quantized export), or only one
    target: Literal["all", "pytorch", "onnx", "quantized"] = "all"


class EvalSection(_Strict):
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=8)
    seed: int = 0


class Profile(_Strict):
    name: str
    description: str = ""
    model_kind: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    calibration: CalibrationSection = CalibrationSection()
    tasks: list[Any] = []  # each its kind's Entry (_task_entries)
    gate: GateSection = GateSection()
    eval: EvalSection = EvalSection()

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_entries(cls, value: Any) -> Any:
        """Each task validates as its kind's ``Entry``, picked by ``kind`` from the registry as the profile is
        validated: a kind registered at any time is one profiles can name, and importing this module leaves
        the ``compressor.verify`` package unimported (once imported, ``compressor.verify`` names it, not the
        lazily exported function)."""
        from compressor.verify.kinds.base import all_kinds

        return _entries(tuple(k.Entry for k in all_kinds())).validate_python(value)

    @model_validator(mode="after")
    def _kinds_fit_the_model(self) -> Profile:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique (repeated: {', '.join(dup)})")
        from compressor.verify.kinds.base import kind

        for t in self.tasks:
            why = kind(t.kind).misfit(t.name, self.model_kind)
            if why:
                raise ValueError(why)
        return self


@functools.lru_cache
def _entries(entries: tuple[type[TaskEntry], ...]) -> TypeAdapter[list[TaskEntry]]:
    """The registered kinds' entries as one union, told apart by ``kind`` (its error names every kind)."""
    union = Union[entries]  # type: ignore[valid-type]  # built at run time from the registry
    return TypeAdapter(list[Annotated[union, Field(discriminator="kind")]])


def load_profile(path: str | Path) -> Profile:
    import yaml

    from compressor.verify.kinds.base import all_kinds

    path = Path(path)
    if not path.exists():
        raise BadInput(f"profile {path} does not exist", "pass a file such as profiles/default.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BadInput(f"profile {path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the YAML syntax") from exc
    if not isinstance(raw, dict):
        raise BadInput(f"profile {path} must be a YAML mapping", "see profiles/default.yaml for the format")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        # a discriminated union adds the kind as a path element; show the path a user wrote
        tags = {k.name for k in all_kinds()}
        where = ".".join(p for p in loc if p not in tags) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise BadInput(f"profile {path}: field {where}: {msg}", "see profiles/default.yaml and the README's profile format") from exc


def calibration_spec(data: str | None = None, profile: str | Profile | None = None, *, samples: int | None = None,
                     seq_len: int | None = None, batch_size: int | None = None, text_field: str | None = None,
                     pack: bool | None = None) -> CalibrationSpec:
    """A validated calibration spec from a ``data`` source or a ``profile`` (a YAML path or a loaded
    ``Profile``) and the settings given over it: ``CalibrationSettings`` with the profile loaded here."""
    from compressor.sources.settings import CalibrationSettings

    if isinstance(profile, str):
        profile = load_profile(profile) if profile else None
    spec: CalibrationSpec = CalibrationSettings(data, profile, samples, seq_len, batch_size, text_field, pack).spec()
    return spec
