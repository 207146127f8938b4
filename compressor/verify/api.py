"""``verify``: base and candidate on the same batches, retention per task, one verdict."""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeAlias, cast

from compressor import __version__
from compressor.errors import BadInput, compute_error
from compressor.profiles import Profile
from compressor.sources.cache import cache_dir
from compressor.verify.gate import bootstrap_lower, judge, retention, task_verdict
from compressor.verify.kinds.base import kind as task_kind
from compressor.verify.metrics import NonFiniteOutputs, TaskOutput
from compressor.verify.report import TaskResult, VerifyReport

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from compressor.sources.models import LoadedModel
    from compressor.verify.kinds.base import TaskEntry

StageProgress = Callable[[str], Callable[[int, int], None] | None]


def stream_choice(profile: Profile, stream: bool | None) -> bool | None:
    """The loader's ``stream`` for this profile: every task must run one block at a time (perplexity),
    else the models load whole (``--stream`` with such a task is refused now, before any model loads)."""
    whole = [t for t in profile.tasks if not task_kind(t.kind).streams]
    if not whole:
        return stream
    if stream:
        task_kind(whole[0].kind).check_streams(whole[0])
    return False


def fingerprint(loaded: LoadedModel) -> str:
    """The model's content fingerprint (weights, config, tokenizer, dtype, revision): see ``compressor.fingerprint``."""
    from compressor.fingerprint import model_fingerprint

    return model_fingerprint(loaded)


@dataclass
class Identity:
    """What verify needs of a model besides running it, taken while it is loaded: cached results then
    need no load at all, and what the other side is compared with survives the model's release."""

    spec: str
    path: str
    fingerprint: str
    device: str
    num_layers: int
    kind: str  # architectures.model_kind
    class_name: str
    tokenizer: PreTrainedTokenizerBase  # kept (small): the tokenizer check compares the two sides

    @classmethod
    def of(cls, loaded: LoadedModel) -> "Identity":
        from compressor.architectures import model_kind

        # verify loads every model it evaluates with its tokenizer
        return cls(loaded.spec, str(loaded.path), fingerprint(loaded), str(loaded.device), int(loaded.num_layers),
                   model_kind(loaded.model, loaded.adapter), type(loaded.model).__name__,
                   cast("PreTrainedTokenizerBase", loaded.tokenizer))


@dataclass
class Deferred:
    """A model verify loads only when it must run it, and releases before the other side loads, so the
    peak is one model, not two. ``known``: its identity from an earlier load (then cached results need no
    load); ``release``: called when verify is done with it, so whatever else holds it lets go too."""

    load: Callable[[], LoadedModel]
    known: Identity | None = None
    release: Callable[[], None] | None = None


class _Side:
    """One side of the comparison: a model the caller holds, or a ``Deferred`` one verify holds briefly."""

    def __init__(self, role: str, source: LoadedModel | Deferred):
        self.role = role
        self.deferred = source if isinstance(source, Deferred) else None
        self.loaded: LoadedModel | None = None if isinstance(source, Deferred) else source
        self.id = source.known if isinstance(source, Deferred) else Identity.of(source)

    def model(self) -> LoadedModel:
        if self.loaded is None:
            assert self.deferred is not None
            self.loaded = self.deferred.load()
            if self.id is None:
                self.id = Identity.of(self.loaded)
        return self.loaded

    def identity(self) -> Identity:
        if self.id is None:
            self.model()
        assert self.id is not None
        return self.id

    def release(self) -> None:
        """Drop a deferred model (a model the caller passed in is the caller's to free)."""
        if self.deferred is None:
            return
        self.loaded = None
        if self.deferred.release is not None:
            self.deferred.release()
        free_memory()


def free_memory() -> None:
    """Return what dropped models held: Python's cycles first, then the CUDA caching allocator's blocks."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _provenance(model: Identity) -> dict[str, Any]:
    """Which scorer and which repair made a candidate (from its compression.json): never hidden, so a
    corrupt record is an error, not an empty provenance."""
    from pathlib import Path

    from compressor.prune.surgery import read_compression

    p = Path(model.path)
    d = read_compression(p) if p.is_dir() else {}
    if not d:
        return {}
    repair = d.get("repair")
    return {"cut": {"method": d.get("label") or d.get("method"), "removed_layers": d.get("removed_layers"),
                    "repair": repair.get("method", "none") if isinstance(repair, dict) else "none"}}


def _check_tokenizers(base: Identity, candidate: Identity, profile: Profile, allow_different: bool) -> str | None:
    """Base and candidate must see the same token ids, or their scores measure different inputs.

    Returns a warning when different tokenizers were allowed (accuracy-like tasks only: per-token
    perplexities over different tokenizations are not comparable, so never for perplexity)."""
    from compressor.fingerprint import tokenizer_identity

    if base.tokenizer is candidate.tokenizer:
        return None
    a, b = tokenizer_identity(base.tokenizer), tokenizer_identity(candidate.tokenizer)
    if a == b:
        return None
    if a["size"] != b["size"] or a["vocab"] != b["vocab"]:
        how = f"different vocabularies ({a['size']} vs {b['size']} tokens)"
    elif a["probe"] != b["probe"]:
        how = "the same vocabulary but a different tokenization of the same text"
    else:
        diff = [k for k in a["special"] if a["special"][k] != b["special"][k]]
        how = "different special tokens (" + ", ".join(f"{k}: {a['special'][k]} vs {b['special'][k]}" for k in diff) + ")"
    what = f"the base model {base.spec} and the candidate {candidate.spec} use different tokenizers: {how}"
    if not allow_different:
        raise BadInput(what, "save the base's tokenizer next to the candidate (tokenizer.save_pretrained), or pass "
                             "--allow-different-tokenizers (accuracy tasks only; never perplexity)")
    ppl = [t.name for t in profile.tasks if task_kind(t.kind).per_token]
    if ppl:
        raise BadInput(f"{what}; profile {profile.name!r} has perplexity task(s) {', '.join(ppl)}, and per-token "
                       "perplexities over different tokenizations are not comparable",
                       "use the same tokenizer for both models, or a profile without perplexity tasks")
    return f"{what}; allowed by --allow-different-tokenizers (accuracy-like tasks only)"


def _check_kind(model: Identity, profile: Profile, role: str) -> None:
    if model.kind != profile.model_kind:
        raise BadInput(f"the {role} model is a {model.class_name}, but profile {profile.name!r} expects a "
                       f"{profile.model_kind} model",
                       "pick the profile that matches the model (e.g. profiles/sentiment-encoder.yaml for classifiers)")


class _Cache:
    def __init__(self, enabled: bool):
        self.dir = cache_dir() / "verify" if enabled else None  # None: --no-cache, $AVSS_CACHE untouched

    def key(self, fp: str, device: str, task: TaskEntry, profile: Profile, data_hash: str) -> str:
        """Model content, where it ran (CPU, CUDA, an ONNX Runtime provider: the numbers differ), task
        definition, evaluation settings, data content and the code that evaluates."""
        from compressor.fingerprint import code_digest, digest_json

        return digest_json({"model": fp, "device": device, "task": task.model_dump(mode="json"),
                            "eval": profile.eval.model_dump(mode="json"), "data": data_hash, "code": code_digest()})

    @staticmethod
    def _payload_digest(records: list[dict[str, Any]], metrics: dict[str, Any]) -> str:
        from compressor.fingerprint import digest_json

        return digest_json({"records": records, "metrics": metrics})

    def get(self, key: str, metric: str) -> TaskOutput | None:
        """A cached result, or None for anything short of an intact entry of the right shape with a
        finite ``metric``: a damaged entry is recomputed, never trusted and never fatal."""
        import math

        if self.dir is None:
            return None
        f = self.dir / f"{key}.json"
        if not f.exists():
            return None
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return None
        if not isinstance(d, dict):
            return None
        records, metrics = d.get("records"), d.get("metrics")
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            return None
        if not isinstance(metrics, dict):
            return None
        value = metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        if d.get("digest") != self._payload_digest(records, metrics):
            return None  # edited (or written by older code): its numbers cannot be vouched for
        return TaskOutput(records, metrics)

    def put(self, key: str, out: TaskOutput) -> None:
        if self.dir is None:
            return
        from compressor.files import atomic_write_text

        # digest what a reader will parse back (tuples become lists, keys become strings)
        payload = json.loads(json.dumps({"records": out.records, "metrics": out.metrics}))
        payload["digest"] = self._payload_digest(payload["records"], payload["metrics"])
        atomic_write_text(self.dir / f"{key}.json", json.dumps(payload))


def _tie_warnings(task: TaskEntry, ties: dict[str, int], n: int) -> list[str]:
    """A task where most predictions are ties measures the argmax's first-of-equals rule, not a model."""
    return [f"task {task.name}: {k} of {n} predictions of the {role} model are ties (choices scored exactly the "
            f"same; the first is taken), so its {task.metric} says little about the model"
            for role, k in ties.items() if k * 2 > n]


def task_data_digest(profile: Profile) -> str:
    """Digest of every task's evaluation examples and few-shot pool, as ``verify`` loads them."""
    from compressor.fingerprint import data_digest

    return data_digest({t.name: _examples(t, profile) for t in profile.tasks})


TaskData: TypeAlias = "tuple[list[tuple[TaskEntry, list[Any], list[Any]]], list[str]]"


def check_task_data(profile: Profile) -> TaskData:
    """Every task's (task, examples, few-shot pool), and the calibration-overlap warnings: the CLI
    calls this before loading any model, so a missing or malformed data file fails in a second, and
    hands the result to ``verify`` (``task_data=``), which would otherwise load it itself."""
    loaded = [(task, *_examples(task, profile)) for task in profile.tasks]
    return loaded, calibration_overlap(profile, {t.name: items for t, items, _ in loaded})


def _data_hash(items: list[Any], shots: list[Any]) -> str:
    from compressor.fingerprint import data_digest

    return data_digest([items, shots])


def _examples(task: TaskEntry, profile: Profile) -> tuple[list[Any], list[Any]]:
    """(evaluation examples, few-shot pool)."""
    items, shots = task_kind(task.kind).load(task, profile)
    if not items:
        raise BadInput(f"task {task.name}: no evaluation examples", "check the task's data and limit")
    return items, shots


def calibration_overlap(profile: Profile, task_items: dict[str, list[Any]]) -> list[str]:
    """Warn when evaluation text also appears in the calibration data (hash check)."""
    from compressor.sources.data import read_documents

    cal = profile.calibration
    try:
        docs = read_documents(cal.source, cal.text_field, "calibration")
    except BadInput as exc:  # the profile names data it cannot read: say so, never skip the check quietly
        raise BadInput(f"profile {profile.name!r}: its calibration source cannot be read for the overlap check "
                       f"({exc.problem})", exc.fix or "fix calibration.source in the profile") from exc
    cal_hashes = {hashlib.sha256(d.strip().encode()).hexdigest() for d in docs}
    out = []
    for name, items in task_items.items():
        texts = [i if isinstance(i, str) else (i.get("context") or i.get("text") or "") for i in items]
        hits = sum(hashlib.sha256(t.strip().encode()).hexdigest() in cal_hashes for t in texts if t)
        if hits:
            out.append(f"task {name}: {hits} evaluation text(s) also appear in the calibration data ({cal.source}); "
                       "scores were tuned on what is being evaluated")
    return out


def check_gate(profile: Profile, min_retention: float | None = None) -> float:
    """What ``verify`` refuses about the gate itself (no tasks, a threshold out of range), for every
    caller to ask before any work (``avss run``'s pre-flight, the CLI); returns the gate's floor."""
    floor = min_retention if min_retention is not None else profile.gate.min_retention
    if not (math.isfinite(floor) and 0 < floor <= 2):
        raise BadInput(f"--min-retention must be in (0, 2] (got {floor})", "e.g. --min-retention 0.9")
    if not profile.tasks:
        raise BadInput(f"profile {profile.name!r} has no tasks, so there is nothing to gate",
                       "add tasks to the profile (see profiles/default.yaml)")
    return floor


def verify(
    base: LoadedModel | Deferred,
    candidate: LoadedModel | Deferred,
    profile: Profile,
    *,
    profile_path: str = "",
    min_retention: float | None = None,
    use_cache: bool = True,
    progress: StageProgress | None = None,
    stop_at_failure: bool = False,
    allow_different_tokenizers: bool = False,
    task_data: TaskData | None = None,
) -> VerifyReport:
    """Evaluate two models on every task of ``profile`` and apply the gate.

    ``base`` and ``candidate`` are loaded models or ``Deferred`` ones: the base's results (computed or
    cached) come first, then a deferred base is released, and only then does a deferred candidate
    load, so the peak is one model.
    ``stop_at_failure``: stop at the first task that fails on its own (``--search`` puts the cheapest,
    most sensitive task first); the report then says ``complete: false``.
    ``allow_different_tokenizers``: accept base and candidate tokenizers that differ, for profiles
    without perplexity tasks only.
    """
    t0 = time.perf_counter()
    gate = profile.gate
    floor = check_gate(profile, min_retention)
    sides = {"base": _Side("base", base), "candidate": _Side("candidate", candidate)}
    warnings: list[str] = []
    provenance: dict[str, Any] = {}

    def check_pair() -> None:
        """Kinds, tokenizers and provenance: as soon as both identities are known (before any compute
        when neither side is deferred)."""
        nonlocal provenance
        b, c = sides["base"].identity(), sides["candidate"].identity()
        _check_kind(c, profile, "candidate")
        tokenizer_warning = _check_tokenizers(b, c, profile, allow_different_tokenizers)
        warnings[:0] = [tokenizer_warning] if tokenizer_warning else []
        provenance = _provenance(c)  # a corrupt compression.json fails before the candidate's compute

    paired = all(s.id is not None for s in sides.values())
    if sides["base"].id is not None:
        _check_kind(sides["base"].id, profile, "base")
    if paired:
        check_pair()
    cache = _Cache(use_cache)
    loaded_tasks, overlap = task_data if task_data is not None else check_task_data(profile)  # before compute
    warnings += overlap
    outs: dict[str, dict[str, TaskOutput]] = {t.name: {} for t, _, _ in loaded_tasks}
    cached: dict[str, dict[str, bool]] = {t.name: {} for t, _, _ in loaded_tasks}
    secs: dict[str, dict[str, float]] = {t.name: {} for t, _, _ in loaded_tasks}

    def run_task(role: str, task: TaskEntry, items: list[Any], shots: list[Any]) -> None:
        """One side's result on one task, from the cache or computed (loading a deferred model then)."""
        side = sides[role]
        ident = side.identity()
        key = cache.key(ident.fingerprint, ident.device, task, profile, _data_hash(items, shots))
        t = time.perf_counter()
        hit = cache.get(key, task.metric)
        cached[task.name][role] = hit is not None
        if hit is None:
            cb = progress(f"{task.name} [{role}]") if progress else None
            model = side.model()
            if getattr(model, "streamed", False):
                task_kind(task.kind).check_streams(task)  # a library caller's streamed model (the CLI checks first)
            try:
                hit = task_kind(task.kind).evaluate(model, task, items, shots, profile, cb)
            except NonFiniteOutputs:
                secs[task.name][role] = round(time.perf_counter() - t, 3)
                raise
            except (RuntimeError, MemoryError) as exc:
                known = compute_error(exc, f"task {task.name} on the {role} model",
                                      "lower eval.batch_size or eval.max_length in the profile")
                if known is None:
                    raise  # a bug, not a setting: "unexpected …; report it"
                raise known from exc
            cache.put(key, hit)
        outs[task.name][role] = hit
        secs[task.name][role] = round(time.perf_counter() - t, 3)

    if sides["base"].id is None:
        _check_kind(sides["base"].identity(), profile, "base")
    for task, items, shots in loaded_tasks:  # the base on every task first: the reference, then freed
        try:
            run_task("base", task, items, shots)
        except NonFiniteOutputs as exc:
            raise BadInput(f"task {task.name}: the base model {sides['base'].identity().spec} gives {exc.what()}, "
                           "so there is no reference to compare the candidate with",
                           "check the base model's weights (re-download or re-save it); a float16 load "
                           "that overflows needs --dtype float32 or bfloat16") from exc
    sides["base"].release()
    if not paired:
        check_pair()
    results: list[TaskResult] = []
    for task, items, shots in loaded_tasks:
        broken: NonFiniteOutputs | None = None
        try:
            run_task("candidate", task, items, shots)
        except NonFiniteOutputs as exc:
            broken = exc
        task_outs, task_cached, task_secs = outs[task.name], cached[task.name], secs[task.name]
        kind = task_kind(task.kind)
        threshold = task.min_retention if task.min_retention is not None else floor
        b = task_outs["base"].metrics[task.metric]
        ties = {role: n for role, o in task_outs.items() if (n := kind.ties(task.metric, o.records)) is not None}
        warnings += _tie_warnings(task, ties, kind.count(task_outs["base"].records))
        if broken is not None:  # no score: the task fails, whatever the other tasks say
            results.append(TaskResult(
                name=task.name, kind=task.kind, metric=task.metric, base=b, candidate=None, retention=None,
                threshold=threshold, passed=None, agreement=None, n=kind.count(task_outs["base"].records),
                higher_is_better=kind.higher_is_better(task.metric), base_metrics=task_outs["base"].metrics,
                cached=task_cached, seconds=task_secs, own_threshold=task.min_retention is not None,
                failure=broken.what("candidate"), ties=ties or None))
            if task_verdict(results[-1], floor, gate.aggregate) is False and stop_at_failure:
                break
            continue
        c = task_outs["candidate"].metrics[task.metric]
        degenerate = kind.higher_is_better(task.metric) and b <= 0
        if degenerate and gate.zero_base == "error":
            raise BadInput(f"task {task.name}: the base model scores {b:g} on {task.metric}, so retention "
                           "(candidate / base) is undefined and the task cannot gate anything",
                           "drop the task, give it data the base model can do, or set gate.zero_base: report "
                           "to keep it in the reports without gating")
        if degenerate:
            warnings.append(f"task {task.name}: the base model scores {b:g} on {task.metric}; retention is "
                            "undefined, so this task is reported but does not gate (gate.zero_base: report)")
        ret = None if degenerate else retention(kind.higher_is_better(task.metric), b, c)
        lower = None
        if gate.confidence and not degenerate:
            lower = bootstrap_lower(task.kind, task.metric, task_outs["base"].records, task_outs["candidate"].records,
                                    gate.confidence, gate.bootstrap_samples, profile.eval.seed)
        n = kind.count(task_outs["base"].records)
        results.append(TaskResult(
            name=task.name, kind=task.kind, metric=task.metric, base=b, candidate=c, retention=ret,
            threshold=threshold, passed=None,
            agreement=kind.agreement(task.metric, task_outs["base"].records, task_outs["candidate"].records),
            n=n, higher_is_better=kind.higher_is_better(task.metric), retention_lower=lower,
            base_metrics=task_outs["base"].metrics, candidate_metrics=task_outs["candidate"].metrics, cached=task_cached, seconds=task_secs,
            own_threshold=task.min_retention is not None, ties=ties or None))
        if task_verdict(results[-1], floor, gate.aggregate) is False and stop_at_failure:
            break
    b_id, c_id = sides["base"].identity(), sides["candidate"].identity()
    sides["candidate"].release()
    try:
        passed, agg = judge(results, floor, gate.aggregate)
    except ValueError:
        raise BadInput(f"profile {profile.name!r}: no task has a defined retention (the base model scores 0 on "
                       "every accuracy-like task), so nothing can be gated",
                       "give the profile tasks the base model can do") from None
    return VerifyReport(
        passed=passed, min_retention=floor, aggregate=gate.aggregate, aggregate_retention=agg,
        confidence=gate.confidence, profile={"name": profile.name, "path": profile_path},
        base={"spec": b_id.spec, "fingerprint": b_id.fingerprint, "num_layers": b_id.num_layers},
        candidate={"spec": c_id.spec, "fingerprint": c_id.fingerprint, "num_layers": c_id.num_layers, **provenance},
        tasks=results, warnings=warnings, tool_version=__version__, seconds=time.perf_counter() - t0,
        complete=len(results) == len(profile.tasks))
