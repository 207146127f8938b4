"""How a command loads its model and where its calibration text comes from: one record each, built once
by the CLI shell (or a Python caller) and handed down, so a new loading knob is one field here, not a
keyword threaded through every signature."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from compressor.sources.data import CalibrationSpec
    from compressor.sources.models import LoadedModel


@dataclass(frozen=True)
class LoadSettings:
    """Every loader flag a command takes (``max_memory`` in bytes; ``stream``: True one block at a time,
    False never, None when the model would not fit and the command's steps can all stream)."""

    device: str = "cpu"
    dtype: str = "auto"
    device_map: str | None = None
    offload_folder: str | None = None
    stream: bool | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    max_memory: int | None = None

    def streaming(self, stream: bool | None) -> "LoadSettings":
        """These settings with the command's stream choice (a scorer or repair that needs the whole model)."""
        return replace(self, stream=stream)

    def load(self, spec: str, **extra: Any) -> LoadedModel:
        """``spec`` loaded as every command loads it (announced on the ``avss`` logger)."""
        from compressor.sources.models import load_model

        return load_model(spec, device=self.device, dtype=self.dtype, device_map=self.device_map,
                          offload_folder=self.offload_folder, allow_pickle=self.allow_pickle,
                          trust_remote_code=self.trust_remote_code, announce=True, max_memory=self.max_memory,
                          stream=self.stream, **extra)

    def num_layers(self, spec: str) -> int:
        """The model's layer count from its config alone: the checks that must come before the load ask it."""
        from compressor.architectures import num_layers
        from compressor.sources.models import load_config, resolve_model_path

        return num_layers(load_config(resolve_model_path(spec)[0], self.trust_remote_code))


@dataclass(frozen=True)
class CalibrationSettings:
    """Where calibration text comes from (``data``, or a loaded ``profile``: its ``calibration`` section is
    read) and the settings given over it (None: the profile's, else the defaults). The profile arrives
    loaded (``compressor.profiles.load_profile``): this floor reads calibration, it does not parse profiles."""

    data: str | None = None
    profile: Any = None  # a loaded Profile (the CLI hands its --profile path first, for the check below)
    samples: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    text_field: str | None = None
    pack: bool | None = None

    def __post_init__(self) -> None:
        if self.data and self.profile:
            from compressor.errors import BadInput

            raise BadInput("--data and --profile both say where calibration text comes from", "pass only one of them")

    @property
    def given(self) -> bool:
        """Whether the user named the text (else the default source is used, and said so)."""
        return bool(self.data) or self.profile is not None

    def spec(self) -> CalibrationSpec:
        """The validated ``CalibrationSpec`` (a bad setting fails here, before any load)."""
        from compressor.sources.data import CalibrationSpec

        base: dict[str, Any] = {}
        if self.profile is not None:
            if not hasattr(self.profile, "calibration"):
                raise TypeError("CalibrationSettings.profile takes a loaded profile (compressor.profiles.load_profile)")
            base = self.profile.calibration.model_dump()
        elif self.data:
            base = {"source": self.data}
        given = {"samples": self.samples, "seq_len": self.seq_len, "batch_size": self.batch_size,
                 "text_field": self.text_field, "pack": self.pack}
        base.update({k: v for k, v in given.items() if v is not None})
        spec = CalibrationSpec(**base)
        spec.validate()
        return spec
