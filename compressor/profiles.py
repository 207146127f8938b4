"""Task profiles (``profiles/*.yaml``): what "the slim model still does its job" means.

One schema, validated strictly (unknown keys refused) so a typo never silently disables a check.
``calibration`` feeds ``score`` / ``prune``; ``tasks``, ``gate`` and ``eval`` drive ``verify``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compressor.errors import BadInput

CAUSAL_KINDS = ("perplexity", "zero-shot-classification", "multiple-choice", "generation", "lm-eval")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationSection(_Strict):
    source: str = "builtin:python-docs"
    samples: int = Field(32, ge=1)
    seq_len: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    text_field: str = "text"
    pack: bool | None = None


class DataSpec(_Strict):
    """A built-in name or a local .jsonl/.csv/.txt file, with a mapping from our field names to the file's."""

    source: str
    split: Literal["calibration", "evaluation", "train", "test", "all"] | None = None
    fields: dict[str, str] = {}


class _TaskBase(_Strict):
    name: str
    data: Union[str, DataSpec]
    limit: int | None = Field(None, ge=1)
    min_retention: float | None = Field(None, gt=0, le=2)

    def data_spec(self) -> DataSpec:
        return self.data if isinstance(self.data, DataSpec) else DataSpec(source=self.data)


class PerplexityTask(_TaskBase):
    """Rolling windows with a stride over held-out text; ``limit`` counts tokens."""

    kind: Literal["perplexity"]
    metric: Literal["perplexity", "token_accuracy"] = "perplexity"
    window: int = Field(512, ge=8)
    stride: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _stride_fits(self):
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window})")
        return self


class ClassificationTask(_TaskBase):
    kind: Literal["classification"]
    metric: Literal["accuracy", "macro_f1"] = "accuracy"


class ZeroShotTask(_TaskBase):
    """A causal LM picks the label word with the highest likelihood after a prompt."""

    kind: Literal["zero-shot-classification"]
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    template: str = "{text}\nSentiment:"
    labels: dict[int, str]
    few_shot: int = Field(0, ge=0, le=32)

    @model_validator(mode="after")
    def _template_has_text(self):
        if "{text}" not in self.template:
            raise ValueError("template must contain {text}")
        if len(self.labels) < 2:
            raise ValueError("labels needs at least two entries")
        return self


class MultipleChoiceTask(_TaskBase):
    """Log-likelihood of each choice after the prompt, as lm-evaluation-harness's ``multiple_choice``
    (``acc_norm``: per character of the choice; ``acc_bytes``: per UTF-8 byte)."""

    kind: Literal["multiple-choice"]
    metric: Literal["acc", "acc_norm", "acc_bytes"] = "acc_norm"
    template: str = "Context: {context}\nQuestion: {question}\nAnswer:"


class GenerationTask(_TaskBase):
    kind: Literal["generation"]
    metric: Literal["exact_match", "f1", "contains"] = "contains"
    template: str = "Context: {context}\nQuestion: {question}\nAnswer:"
    max_new_tokens: int = Field(16, ge=1, le=512)
    stop: list[str] = ["\n"]


class LmEvalTask(_Strict):
    """A task of lm-evaluation-harness (a registered name, or a YAML task under ``include_path``),
    evaluated by the harness itself on the loaded model. Needs the ``[lm-eval]`` extra. Its data must
    be on disk unless ``allow_download`` is set: a gate never waits on the network."""

    name: str
    kind: Literal["lm-eval"]
    task: str = Field(min_length=1)
    include_path: str | None = None
    num_fewshot: int | None = Field(None, ge=0)
    fewshot_seed: int = 1234  # lm-eval's own default
    limit: int | None = Field(None, ge=1)
    metric: str = Field("acc", min_length=1)
    filter: str = Field("none", min_length=1)  # lm-eval reports a metric per filter ("acc,none")
    min_retention: float | None = Field(None, gt=0, le=2)
    allow_download: bool = False


Task = Annotated[Union[PerplexityTask, ClassificationTask, ZeroShotTask, MultipleChoiceTask, GenerationTask,
                       LmEvalTask],
                 Field(discriminator="kind")]


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
    tasks: list[Task] = []
    gate: GateSection = GateSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _kinds_fit_the_model(self):
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique (repeated: {', '.join(dup)})")
        for t in self.tasks:
            if self.model_kind == "causal-lm" and t.kind == "classification":
                raise ValueError(f"task {t.name!r}: kind classification needs model_kind sequence-classification")
            if self.model_kind == "sequence-classification" and t.kind == "lm-eval":
                raise ValueError(f"task {t.name!r}: lm-evaluation-harness tasks evaluate causal LMs; encoder "
                                 "classifiers are out of its scope (use kind classification)")
            if self.model_kind == "sequence-classification" and t.kind in CAUSAL_KINDS:
                raise ValueError(f"task {t.name!r}: kind {t.kind} needs model_kind causal-lm")
        return self


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
        loc = [str(p) for p in err["loc"]]
        # a discriminated union adds the kind as a path element; show the path a user wrote
        where = ".".join(p for p in loc if p not in CAUSAL_KINDS + ("classification",)) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise BadInput(f"profile {path}: field {where}: {msg}", "see profiles/default.yaml and the README's profile format") from exc
