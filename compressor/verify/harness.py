"""``kind: lm-eval``: a task of lm-evaluation-harness, evaluated by the harness itself on our loaded model.

CI gates in real teams are written in harness tasks; running the harness (not a re-implementation)
means a gate's number is the number the field reports. The harness is an optional extra, imported only
here and only when a profile has such a task. Its data must be on disk unless the task sets
``allow_download``: the datasets library is switched offline while the task loads, so a missing
dataset fails in a second instead of waiting on the network.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
from typing import TYPE_CHECKING, Any, Iterator, Literal, cast

from pydantic import Field

from compressor.errors import BadInput
from compressor.verify.kinds.base import TaskEntry, TaskKind, register
from compressor.verify.metrics import MC_PREDICTION, FiniteCount, TaskOutput, all_finite, mc_predictions

if TYPE_CHECKING:  # pragma: no cover
    from types import ModuleType

    from lm_eval.api.task import ConfigurableTask

    from compressor.sources.models import LoadedModel
    from compressor.verify.kinds.base import KindProfile, Progress

REQUIREMENT = "lm_eval==0.4.13"
INSTALL = "pip install 'avss-compressor[lm-eval]' (from a checkout: pip install -e '.[lm-eval]')"
OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")


def _harness(task: TaskEntry) -> ModuleType:
    try:
        import lm_eval
    except ImportError as exc:
        raise BadInput(f"task {task.name} is kind lm-eval, which needs lm-evaluation-harness ({REQUIREMENT}); "
                       "it is not installed", f"run: {INSTALL}") from exc
    module: ModuleType = lm_eval  # lm_eval ships no type information
    return module


@contextlib.contextmanager
def _network(allowed: bool) -> Iterator[None]:
    """Offline unless ``allowed``: the datasets library and the Hub client read these flags at call time."""
    if allowed:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved = (dc.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE)
    dc.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE, hc.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The harness logs and draws progress bars for every step; our CLI keeps stderr for its own
    diagnostics (failures still surface: as exceptions, turned into one line by the caller)."""
    import io
    import logging

    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _stable(value: Any) -> Any:
    """A task config as JSON-able data whose digest does not change between runs (a ``!function``
    becomes its source, not its memory address)."""
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if callable(value):
        try:
            return inspect.getsource(value)
        except (OSError, TypeError):
            return getattr(value, "__qualname__", type(value).__name__)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def build_task(task: LmEval.Entry) -> ConfigurableTask:
    """The harness's task object for a profile task, with its data loaded (offline by default)."""
    _harness(task)
    from lm_eval.tasks import TaskManager, get_task_dict

    include = task.include_path
    if include is not None and not os.path.isdir(include):
        raise BadInput(f"task {task.name}: include_path {include} is not a folder",
                       "point include_path at the folder that holds the task's YAML")
    with _quiet(), _network(task.allow_download):
        # a task under include_path is found without indexing the harness's ~15k own tasks (7 s)
        manager = TaskManager(include_path=include, include_defaults=False) if include else None
        if manager is None or task.task not in manager.all_tasks:
            manager = TaskManager(include_path=include)
        if task.task not in manager.all_tasks:
            where = f" or under {include}" if include else " (no include_path given)"
            raise BadInput(f"task {task.name}: lm-eval knows no task {task.task!r} among its own{where}",
                           "check the task name, or set include_path to the folder of your task's YAML")
        try:
            found = get_task_dict([task.task], manager)
        except Exception as exc:  # datasets raises many types for "not on disk"; name the cause, not a traceback
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            how = ("its data is not on disk and downloads are off" if not task.allow_download
                   else "its data could not be loaded")
            raise BadInput(f"task {task.name}: lm-eval task {task.task!r} could not be loaded: {how} ({first})",
                           "use local data (dataset_path: json with data_files), download the dataset into the "
                           "Hugging Face cache beforehand, or set allow_download: true on the task") from exc
    objs = list(found.values())
    if len(objs) != 1 or isinstance(objs[0], dict):
        raise BadInput(f"task {task.name}: lm-eval task {task.task!r} is a group of tasks",
                       "list each of its tasks as its own profile task (each gets its own retention)")
    obj = objs[0]
    kind = obj.OUTPUT_TYPE
    if kind not in OUTPUT_TYPES:
        raise BadInput(f"task {task.name}: lm-eval output type {kind!r} is not supported",
                       f"use a task of output type {', '.join(OUTPUT_TYPES)}")
    metrics = list(obj.aggregation())
    if task.metric not in metrics:
        raise BadInput(f"task {task.name}: lm-eval task {task.task!r} has no metric {task.metric!r}",
                       f"set metric to one of: {', '.join(metrics)}")
    filters = [f.name for f in getattr(obj, "_filters", [])] or ["none"]
    if task.filter not in filters:
        raise BadInput(f"task {task.name}: lm-eval task {task.task!r} has no filter {task.filter!r}",
                       f"set filter to one of: {', '.join(filters)}")
    hib = obj.higher_is_better().get(task.metric, True)
    if hib != LmEval().higher_is_better(task.metric):
        raise BadInput(f"task {task.name}: lm-eval says {task.metric} is {'higher' if hib else 'lower'}-is-better, "
                       "which the gate cannot judge for this metric name",
                       f"gate on another metric of the task ({', '.join(metrics)})")
    return obj


class HarnessDocs(list[Any]):
    """The documents the harness evaluates (so the data digest covers their content), holding the
    task object they came from: base and candidate are evaluated on exactly these."""

    def __init__(self, docs: list[Any], task_obj: ConfigurableTask) -> None:
        super().__init__(docs)
        self.task_obj = task_obj


def _docs(obj: ConfigurableTask, limit: int | None) -> list[Any]:
    docs = list(obj.eval_docs)
    return [_stable(dict(d)) for d in (docs[:limit] if limit else docs)]


def _aggregation_names(obj: ConfigurableTask) -> dict[str, str]:
    from lm_eval.api.registry import AGGREGATION_REGISTRY

    names = {fn: name for name, fn in AGGREGATION_REGISTRY.items()}
    return {m: names.get(fn, "mean") for m, fn in obj.aggregation().items()}


def _records(obj: ConfigurableTask, samples: list[dict[str, Any]], filt: str) -> list[dict[str, Any]]:
    agg = _aggregation_names(obj)
    out = []
    # a NaN log-likelihood is no score (generate_until: the harness's generate keeps no logits to check)
    finite = FiniteCount("documents")
    for s in sorted((s for s in samples if s.get("filter", "none") == filt), key=lambda s: s["doc_id"]):
        rec: dict[str, Any] = {"doc_id": s["doc_id"], "values": {m: s[m] for m in s["metrics"] if m in s},
                               "aggregation": {m: agg.get(m, "mean") for m in s["metrics"]}}
        resps = s["filtered_resps"]
        if obj.OUTPUT_TYPE == "multiple_choice":
            lls = [float(r[0]) for r in resps]
            finite.see(all_finite(lls))
            rec.update(mc_predictions(lls, obj.doc_to_choice(s["doc"])))
            rec["lls"] = lls
        elif obj.OUTPUT_TYPE == "loglikelihood":
            finite.see(all_finite([float(resps[0][0])]))
            rec["pred"] = bool(resps[0][1])  # the continuation is the greedy one
        elif obj.OUTPUT_TYPE == "loglikelihood_rolling":
            finite.see(all_finite([float(r[0] if isinstance(r, (list, tuple)) else r) for r in resps]))
        elif obj.OUTPUT_TYPE == "generate_until":
            rec["pred"] = resps[0] if isinstance(resps, list) else resps
        out.append(rec)
    finite.check()
    return out


def harness_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The task's metrics recomputed from per-document values with the harness's own aggregations
    (what the bootstrap resamples; equal to what the harness reports for the full set)."""
    if not records:
        return {}
    from lm_eval.api.registry import get_aggregation

    out = {}
    for m, name in records[0]["aggregation"].items():
        values = [r["values"][m] for r in records if m in r["values"]]
        if not values:
            continue
        values = [tuple(v) if isinstance(v, list) else v for v in values]
        fn = get_aggregation(name)
        out[m] = float(fn(values)) if fn else sum(values) / len(values)
    return out


@register
class LmEval(TaskKind):
    name = "lm-eval"
    # the harness's lower-is-better metrics the gate can judge (build_task checks each task against them)
    lower_is_better = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})

    class Entry(TaskEntry):
        """A task of lm-evaluation-harness (a registered name, or a YAML task under ``include_path``),
        evaluated by the harness itself on the loaded model. Needs the ``[lm-eval]`` extra. Its data must
        be on disk unless ``allow_download`` is set: a gate never waits on the network."""

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

    def misfit(self, task_name: str, model_kind: str) -> str | None:
        if model_kind == self.model_kind:
            return None
        return (f"task {task_name!r}: lm-evaluation-harness tasks evaluate causal LMs; encoder classifiers are out "
                "of its scope (use kind classification)")

    def load(self, task: TaskEntry, profile: KindProfile) -> tuple[list[Any], list[Any]]:
        task = cast("LmEval.Entry", task)  # the registry hands each kind its own Entry
        lm_eval = _harness(task)
        obj = build_task(task)
        # the few-shot pool and the task's whole definition are part of what a result depends on
        pool: list[Any] = []
        if task.num_fewshot or obj.config.num_fewshot:
            with contextlib.suppress(Exception):
                pool = [_stable(dict(d)) for d in obj.fewshot_docs() or []]
        definition = {"config": _stable(obj.dump_config()), "fewshot_pool": pool, "harness": lm_eval.__version__}
        return HarnessDocs(_docs(obj, task.limit), obj), [definition]

    def evaluate(self, loaded: LoadedModel, task: TaskEntry, items: list[Any], shots: list[Any], profile: KindProfile,
                 progress: Progress | None) -> TaskOutput:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        task = cast("LmEval.Entry", task)  # the registry hands each kind its own Entry
        obj = copy.deepcopy(items.task_obj) if isinstance(items, HarnessDocs) else build_task(task)
        if progress:
            progress(0, 1)
        with _quiet(), _network(task.allow_download):
            lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, backend="causal",
                      batch_size=profile.eval.batch_size, max_length=profile.eval.max_length)
            # the task object is built already: an empty manager spares simple_evaluate indexing ~15k tasks
            res = lm_eval.simple_evaluate(model=lm, tasks=[obj], num_fewshot=task.num_fewshot, limit=task.limit,
                                          task_manager=TaskManager(include_defaults=False),
                                          log_samples=True, bootstrap_iters=0, fewshot_random_seed=task.fewshot_seed)
        if progress:
            progress(1, 1)
        name = obj.config.task
        reported = res["results"][name]
        metrics = {m: float(reported[f"{m},{task.filter}"]) for m in obj.aggregation()
                   if isinstance(reported.get(f"{m},{task.filter}"), (int, float))}
        records = _records(obj, res["samples"][name], task.filter)
        if not records or task.metric not in metrics or not math.isfinite(metrics[task.metric]):
            raise BadInput(f"task {task.name}: lm-eval returned no {task.metric!r} for filter {task.filter!r}",
                           f"the task reports: {', '.join(k for k in reported if ',' in k)}")
        return TaskOutput(records, metrics)

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return harness_metrics(records)

    def agreement(self, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> float | None:
        if not base or "pred" not in base[0]:
            return None  # loglikelihood_rolling: a score per document, no answer to agree on
        key = MC_PREDICTION.get(metric, "pred")
        key = key if key in base[0] else "pred"
        return cast("float", sum(rb[key] == rc[key] for rb, rc in zip(base, cand)) / max(len(base), 1))
