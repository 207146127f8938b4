"""Task profiles (``profiles/*.yaml``): what "the slim model still does its job" means.

This module owns the schema. The ``calibration`` section is used by ``score`` / ``prune`` today;
``tasks``, ``gate`` and ``eval`` are validated for shape here and interpreted by ``verify``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor.errors import BadInput


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationSection(_Strict):
    source: str = "builtin:python-docs"
    samples: int = Field(32, ge=1)
    seq_len: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    text_field: str = "text"
    pack: bool | None = None


class Profile(_Strict):
    name: str
    description: str = ""
    model_kind: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    calibration: CalibrationSection = CalibrationSection()
    tasks: list[dict[str, Any]] = []
    gate: dict[str, Any] = {}
    eval: dict[str, Any] = {}


def load_profile(path: str | Path) -> Profile:
    import yaml

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
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise BadInput(f"profile {path}: field {where}: {err['msg']}", "see profiles/default.yaml for the format") from exc
