"""``avss run``'s configuration: one typed record, from a YAML file and/or flags (flags win).

Why a file: CI pipelines keep the run definition under version control and re-run it unchanged;
``--save-config`` writes exactly what was resolved, so a run can be reproduced from its artifacts.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compressor.defaults import BENCH, PROVIDER, RATIO
from compressor.errors import BadInput
from compressor.run.fastest import OBJECTIVES

if TYPE_CHECKING:  # pragma: no cover
    from compressor.export.bench import BenchOptions
    from compressor.repair.settings import RepairSettings

DEFAULT_SEARCH_METHODS = ["avss", "block-influence"]
# with the linear patch the search also tries the cuts chosen for it: ReplaceMe's angular block and the
# spans whose patch leaves the least error (one contiguous block; greedy, several spans)
PATCH_SEARCH_METHODS = ["angular", "patch-residual", "patch-residual-greedy"]


class BenchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    batch_size: int = Field(BENCH["batch_size"], ge=1)
    prompt_len: int = Field(BENCH["prompt_len"], ge=1)
    new_tokens: int = Field(BENCH["new_tokens"], ge=1)
    warmup: int = Field(BENCH["warmup"], ge=0)
    runs: int = Field(BENCH["runs"], ge=1)
    rounds: int = Field(BENCH["rounds"], ge=1)
    threads: Optional[int] = Field(None, ge=1)

    def options(self, provider: str) -> BenchOptions:
        """These settings as the bench's own ``BenchOptions`` (the run's bench and its search's frontier bench)."""
        from compressor.export.bench import BenchOptions

        return BenchOptions(provider=provider, **self.model_dump())


class RunConfig(BaseModel):
    """Everything a run depends on. ``model``, ``profile`` and ``out`` are required."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN slips past a range check
    model: str
    profile: str
    out: str
    method: str = "avss"
    avss_mode: Optional[str] = None
    objective: Optional[Literal["nll", "kl"]] = None  # sleb: its loss (default nll)
    last_state: Optional[Literal["block", "final-norm"]] = None  # block-influence, angular, avss
    ratio: Optional[float] = Field(None, gt=0, lt=1)
    num_layers: Optional[int] = Field(None, ge=1)
    # None: a fixed cut; "largest": the largest cut that passes; "fastest": the fastest artifact that passes,
    # over cut x exporter x precision (``compressor.run.fastest``). ``true`` in a file means "largest".
    search: Optional[str] = None
    precisions: Optional[list[str]] = None  # --search fastest: the precisions searched (default: each exporter's)
    search_sweep: bool = False  # --search fastest: gate every candidate, no rule, no stop (the benchmark's yardstick)
    methods: Optional[list[str]] = None  # default: avss, block-influence (+ PATCH_SEARCH_METHODS with linear)
    max_remove: Optional[int] = Field(None, ge=1)
    protect: str = "none"
    min_retention: Optional[float] = Field(None, gt=0, le=2)
    # the repair and its knobs: None is the repair's own default; validated by compressor.repair.methods.repair_settings,
    # the one place that knows them (a new knob is a field here and a keyword there)
    repair: str = "none"
    ridge: Optional[float] = None
    heal_steps: Optional[int] = None
    heal_tokens: Optional[int] = None
    heal_lr: Optional[float] = None
    heal_loss: Optional[str] = None
    heal_minutes: Optional[float] = None
    provider: Literal["auto", "cpu", "cuda"] = PROVIDER  # type: ignore[assignment]
    quantize: Optional[Literal["int8", "int8-weights", "int4", "int4-mixed"]] = None
    # a registered exporter (compressor.export.exporters), checked below; None: Optimum, or with --search fastest
    # every exporter that builds the model
    exporter: Optional[str] = None
    skip_export: bool = False
    skip_bench: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    opset: int = 18
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    max_memory: Optional[str] = None  # e.g. "24GB": what the run may use (default: what is free now)
    # one block at a time (score, linear patch, perplexity verify): True always, False never, None when the
    # base would not fit whole and every step of the run can stream; results are identical either way
    stream: Optional[bool] = None
    bench: BenchSettings = Field(default_factory=BenchSettings)

    def max_memory_bytes(self) -> Optional[int]:
        from compressor.sources.memory import parse_size

        return parse_size(self.max_memory) if self.max_memory is not None else None

    @field_validator("search", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        if v is True:
            return "largest"
        if v is False or v is None:
            return None
        if v not in OBJECTIVES:
            raise ValueError(f"--search has no objective {v!r}; use --search (the largest cut that passes) or "
                             "--search fastest (the fastest artifact that passes)")
        return v

    @model_validator(mode="after")
    def _one_cut_rule(self) -> "RunConfig":
        given = [n for n, v in (("ratio", self.ratio), ("num_layers", self.num_layers)) if v is not None]
        if self.search and given:
            raise ValueError(f"--search finds the cut size itself; it cannot be combined with --{given[0].replace('_', '-')} "
                             f"({given[0]}); drop one of them")
        if len(given) > 1:
            raise ValueError("give only one of ratio and num_layers")
        if not self.search and not given:
            self.ratio = RATIO
        from compressor.errors import BadInput
        from compressor.repair.methods import patches_spans

        try:
            self.repair_settings()  # the repair's own validation: an unknown chain or knob, with the fix
        except BadInput as exc:
            raise ValueError(f"{exc.problem}; {exc.fix}") from None
        if self.methods is None:
            self.methods = list(DEFAULT_SEARCH_METHODS) + (list(PATCH_SEARCH_METHODS) if patches_spans(self.repair) else [])
        if not self.methods:
            raise ValueError("methods must name at least one scorer")
        if self.quantize and self.skip_export:
            raise ValueError("quantize works on the ONNX export; drop skip_export")
        from compressor.export.exporters import get_exporter, names

        if self.exporter is not None and self.exporter not in names():
            raise ValueError(f"unknown exporter {self.exporter!r}; use one of {', '.join(names())}")
        self._check_fastest()
        built = [p or "fp32" for p in get_exporter(self.exporter).precisions]
        if self.quantize not in get_exporter(self.exporter).precisions:
            raise ValueError(f"the {self.exporter} exporter builds {', '.join(built[:-1])} or {built[-1]} graphs, "
                             f"not {self.quantize}; use one of those or another exporter")
        return self

    def _check_fastest(self) -> None:
        from compressor.export.exporters import EXPORTERS

        if self.search != "fastest":
            for name, v in (("precisions", self.precisions), ("search_sweep", self.search_sweep or None)):
                if v is not None:
                    raise ValueError(f"{name} narrows --search fastest's space; add --search fastest or drop it")
            return
        if self.quantize:
            raise ValueError(f"--search fastest searches the precision itself; it cannot be combined with --quantize "
                             f"{self.quantize}: drop --quantize (narrow the space with --precisions)")
        if self.skip_export:
            raise ValueError("--search fastest judges exported artifacts; drop skip_export (or use --search)")
        if self.precisions is not None:
            known = list(dict.fromkeys(p or "fp32" for e in EXPORTERS.values() for p in e.search_precisions))
            bad = [p for p in self.precisions if p not in known]
            if bad or not self.precisions:
                raise ValueError(f"precisions: {', '.join(bad) or 'none given'} is not one of {', '.join(known)}")

    def cut_size(self, layers: int) -> int:
        """How many layers a fixed cut removes from a model of ``layers`` (``--num-layers``, or the ratio
        rounded half up); the one place the run computes it."""
        from compressor.score.select import count_for_ratio

        assert not self.search  # a search finds the size itself
        return self.num_layers if self.num_layers is not None else count_for_ratio(self.ratio or RATIO, layers)

    @property
    def search_methods(self) -> list[str]:
        """The scorers ``--search`` compares (validation fills in the default)."""
        return list(self.methods or [])

    def repair_settings(self) -> RepairSettings:
        """The repair's validated settings (``compressor.repair.settings.RepairSettings``), defaults filled in."""
        from compressor.repair.methods import repair_settings

        return repair_settings(self.repair, ridge=self.ridge, heal_steps=self.heal_steps, heal_tokens=self.heal_tokens,
                               heal_lr=self.heal_lr, seed=self.seed, heal_loss=self.heal_loss,
                               heal_minutes=self.heal_minutes)

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def _validation_error(exc: ValidationError, where: str) -> BadInput:
    e = exc.errors()[0]
    msg = e["msg"].removeprefix("Value error, ")
    if not e["loc"]:  # a rule between settings: its message names them and the fix
        return BadInput(f"{where}: {msg}", "see `avss run --help` and README: avss run")
    loc = ".".join(str(x) for x in e["loc"])
    return BadInput(f"{where}: {loc}: {msg}", "fix that setting (see `avss run --help` and README: avss run)")


def load_run_config(path: str | None, overrides: dict[str, Any]) -> RunConfig:
    """Merge a YAML file (optional) with flag values; ``None`` flag values mean "not given"."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise BadInput(f"config file {path} does not exist", "check the path, or write one with --save-config")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise BadInput(f"{path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the file") from exc
        if not isinstance(loaded, dict):
            raise BadInput(f"{path} must be a YAML mapping of settings", "see README: avss run --config")
        data.update(loaded)
    bench = dict(data.get("bench") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("bench_"):
            bench[key.removeprefix("bench_")] = value
        else:
            data[key] = value
    if bench:
        data["bench"] = bench
    flag_cut = [f"--{k.replace('_', '-')}" for k in ("ratio", "num_layers") if overrides.get(k) is not None]
    # a cut rule on the command line replaces the file's (both at once reach the validator, which refuses them)
    if flag_cut and not overrides.get("search"):
        data["search"] = False
        data.pop("num_layers" if overrides.get("ratio") is not None else "ratio", None)
    if overrides.get("search") and not flag_cut:
        data.pop("ratio", None)
        data.pop("num_layers", None)
    missing = [k for k in ("model", "profile", "out") if not data.get(k)]
    if missing:
        raise BadInput(f"avss run needs {', '.join(missing)}", "pass MODEL, --profile and --out (or set them in --config)")
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise _validation_error(exc, path or "avss run") from exc
