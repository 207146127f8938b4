"""What every task kind shares: the profile entry it extends, the ``TaskKind`` base class, and the
registry that profiles, data loading and ``verify`` ask, so that none of them knows a kind by name.

Apart from the kinds' own modules so that a kind imports this and nothing imports a kind: adding one is
a class in its own module (and a line in ``kinds/__init__.py``, which fixes the order profiles list them).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Union, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from compressor.errors import BadInput
from compressor.registry import Registry
from compressor.verify.examples import load_examples
from compressor.verify.metrics import MC_PREDICTION, TaskOutput

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from compressor.sources.models import LoadedModel

    class EvalSettings(Protocol):
        """A profile's ``eval`` section (``compressor.profiles.EvalSection``)."""

        batch_size: int
        max_length: int
        seed: int

    class KindProfile(Protocol):
        """What a kind reads of the profile it evaluates under (``compressor.profiles.Profile``, whose module
        imports this one)."""

        @property
        def eval(self) -> EvalSettings: ...

Progress = Callable[[int, int], None]

# ---------------------------------------------------------------- profile entries

class TaskEntry(BaseModel):
    """A task as a profile writes it. Strict (unknown keys refused, NaN and inf too), so a typo never silently
    disables a check."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    if TYPE_CHECKING:  # every kind's entry has these; each kind declares them as fields, in its own order
        kind: str
        metric: str
        limit: int | None
        min_retention: float | None


class DataSpec(BaseModel):
    """A built-in name or a local .jsonl/.csv/.txt file, with a mapping from our field names to the file's."""

    model_config = ConfigDict(extra="forbid")

    source: str
    split: Literal["calibration", "evaluation", "train", "test", "all"] | None = None
    fields: dict[str, str] = {}


class DataEntry(TaskEntry):
    """The entry of a kind whose examples come from ``data`` (read by the kind's data rules)."""

    data: Union[str, DataSpec]
    limit: int | None = Field(None, ge=1)
    min_retention: float | None = Field(None, gt=0, le=2)

    def data_spec(self) -> DataSpec:
        return self.data if isinstance(self.data, DataSpec) else DataSpec(source=self.data)


# ---------------------------------------------------------------- the kinds (registry)

class TaskKind:
    """One task kind, whole: its profile entry, the model it evaluates, what its data must hold, how a
    model is evaluated on it, the metrics of per-example records, and how often two models agree.
    ``@register`` makes it a kind that profiles can name; nothing else knows kinds by name."""

    name = ""
    # the pydantic model of its profile entry; declares ``kind: Literal[name]``, the tag profiles dispatch on
    Entry: type[TaskEntry] = TaskEntry
    model_kind = "causal-lm"  # the profile ``model_kind`` whose models it evaluates
    lower_is_better: frozenset[str] = frozenset()  # this kind's metrics where lower is better
    per_token = False  # its scores are per token: base and candidate must share a tokenizer

    # data rules, applied by ``verify.examples``: an example's fields (canonical names; str, int or list, a
    # list written "a|b" in CSV), those a file may leave out (with their value then), whether examples
    # are plain-text documents (the one field) instead of records, the built-in data shapes it reads
    example_fields: dict[str, type] = {}
    optional_fields: dict[str, Any] = {}
    documents = False
    builtin_shapes: frozenset[str] = frozenset()

    def misfit(self, task_name: str, model_kind: str) -> str | None:
        """Why a task of this kind cannot be in a profile of ``model_kind`` models (None: it can)."""
        if model_kind == self.model_kind:
            return None
        return f"task {task_name!r}: kind {self.name} needs model_kind {self.model_kind}"

    def higher_is_better(self, metric: str) -> bool:
        """The metric's direction, declared by the kind that computes it (retention flips for lower)."""
        return metric not in self.lower_is_better

    def examples(self, source: str, split: str | None, fields: dict[str, str]) -> list[Any]:
        """All examples of a task of this kind (no limit applied), checked against its data rules."""
        return load_examples(self, source, split, fields, all_kinds())

    def from_builtin(self, shape: str, rows: list[Any]) -> list[Any]:
        """Built-in rows as this kind's examples: documents as they are, records cut to its fields."""
        return rows if self.documents else [{k: r[k] for k in self.example_fields} for r in rows]

    def check(self, example: dict[str, Any], where: str) -> None:
        """This kind's own rule on one example read from a file (raises BadInput); none by default."""

    def load(self, task: TaskEntry, profile: KindProfile) -> tuple[list[Any], list[Any]]:
        """(evaluation examples, few-shot pool), read before any model loads."""
        spec = cast("DataEntry", task).data_spec()  # a kind that reads no ``data`` overrides this
        items = self.examples(spec.source, spec.split, spec.fields)
        return (items[: task.limit] if task.limit else items), []

    # most kinds are one evaluator ``f(model, tok, task, items, batch_size, max_length, progress)`` and
    # one metrics function of the records; a kind that needs more overrides the methods below
    evaluator: Callable[..., TaskOutput] | None = None
    metrics_of: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None
    # it can run on a streamed model (``--stream``: one block at a time over all its inputs); False: it
    # needs the whole model (generation decodes token by token, classifiers have their own heads)
    streams: ClassVar[bool] = False

    def check_streams(self, task: TaskEntry) -> None:
        """Refuse ``task`` on a streamed model when this kind needs the whole model."""
        if not self.streams:
            raise BadInput(f"task {task.name} (kind {self.name}) needs the whole model in memory, so it cannot run "
                           f"streamed; only {', '.join(k.name for k in KINDS.values() if k.streams)} tasks run one "
                           "block at a time", "drop --stream (on a machine with the memory), or gate on a profile "
                           "of perplexity tasks")

    def evaluate(self, loaded: LoadedModel, task: TaskEntry, items: list[Any], shots: list[Any], profile: KindProfile,
                 progress: Progress | None) -> TaskOutput:
        evaluator = type(self).evaluator
        if evaluator is None:
            raise NotImplementedError(f"{type(self).__name__} declares no evaluator")
        return evaluator(loaded.model, loaded.tokenizer, task, items, profile.eval.batch_size,
                         profile.eval.max_length, progress)

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        metrics_of = type(self).metrics_of
        if metrics_of is None:
            raise NotImplementedError(f"{type(self).__name__} declares no metrics")
        return metrics_of(records)

    def agreement(self, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> float | None:
        """Share of examples where both models give the same answer (None: the kind has no answer)."""
        pairs = [(rb["pred"], rc["pred"]) for rb, rc in zip(base, cand)]
        return cast("float", sum(a == b for a, b in pairs) / max(len(pairs), 1))

    def count(self, records: list[dict[str, Any]]) -> int:
        """What ``n`` means in a report: examples (perplexity: scored tokens)."""
        return len(records)

    def ties(self, metric: str, records: list[dict[str, Any]]) -> int | None:
        """Examples whose prediction was a tie between choices (None: the kind has no choices). Multiple
        choice (ours and lm-eval's) records a tie per prediction; ``metric`` says which one it reads."""
        if not records or "tie" not in records[0]:
            return None
        key = MC_PREDICTION.get(metric, "pred")
        return sum(bool(r["tie"][key] if isinstance(r["tie"], dict) else r["tie"]) for r in records)


def _declares_its_kind(cls: type) -> None:
    tag = cls.Entry.model_fields.get("kind")  # type: ignore[attr-defined]
    if tag is None or get_args(tag.annotation) != (cls.name,):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}.Entry must declare kind: Literal[{cls.name!r}] (profiles find a task's "  # type: ignore[attr-defined]
                        "kind by it)")


KINDS: Registry[TaskKind] = Registry("task kind", check=_declares_its_kind)

# kinds that live with an optional dependency, loaded by name (no import cycle) when first asked for;
# importing one is cheap, its dependency loads only when a task of it runs
PLUGIN_KINDS = {"lm-eval": "compressor.verify.harness"}


def register(cls: type[TaskKind]) -> type[TaskKind]:
    """``@register``: a task kind becomes a ``kind:`` profiles can name (into the registry as it is now)."""
    return KINDS.register(cls)


def unregister(name: str) -> None:
    del KINDS[name]


def kind(name: str) -> TaskKind:
    if name not in KINDS and name in PLUGIN_KINDS:
        import importlib

        importlib.import_module(PLUGIN_KINDS[name])  # its @register adds it
    return KINDS.find(name)


def all_kinds() -> list[TaskKind]:
    """Every kind, plugins included, in registration order (the order a profile error lists them)."""
    for name in PLUGIN_KINDS:
        kind(name)
    return list(KINDS.values())
