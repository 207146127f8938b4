"""A run as declared steps: each names what it consumes and produces; the order follows from that.

Why data and not a script: the order, the run folder's entries, which steps a setting skips and
why, and what a skipped step means for the steps after it are all derived from the declarations,
so adding a step is one declaration (plus its work), never an edit of a hand-kept sequence.

A step's results go to the steps that name them, explicitly (no step reads another's attribute).
A step whose required input was not produced is skipped with the reason its producer was skipped
(``--skip-export`` skips the export, hence the ONNX gate and the bench, each saying why).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from compressor.run.config import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    from compressor.run.context import RunContext

Results = dict[str, Any]


def _always(cfg: RunConfig) -> bool:
    return True


def _never(ctx: RunContext, given: Results) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Step:
    name: str
    consumes: tuple[str, ...]  # results of earlier steps this one reads: its place in the order
    produces: tuple[str, ...]  # results it hands on (None when it has nothing to hand on this run)
    entries: tuple[str, ...]  # top-level run-folder entries it may write (the run's RUN_ENTRIES)
    run: Callable[[RunContext, Results], Results]  # (context, the consumed results) -> the produced results
    active: Callable[[RunConfig], bool] = _always  # False: this run has no such step (not listed)
    skip: Callable[[RunContext, Results], Optional[str]] = _never  # why this run skips it (listed as skipped)
    optional: tuple[str, ...] = ()  # consumed results it can do without (None when absent)
    passthrough: dict[str, str] = field(default_factory=dict)  # when skipped: produced <- consumed
    title: Optional[Callable[[RunConfig], str]] = None  # its stage name when it depends on settings

    def stage_name(self, cfg: RunConfig) -> str:
        return self.title(cfg) if self.title else self.name


def order(steps: Iterable[Step]) -> list[Step]:
    """Steps in an order where each comes after every producer of what it consumes; ties keep the
    declaration order. A consumed result nobody produces, or a cycle, is a declaration error."""
    steps = list(steps)
    producers: dict[str, list[int]] = {}
    for i, s in enumerate(steps):
        for r in s.produces:
            producers.setdefault(r, []).append(i)
    after: list[set[int]] = []
    for s in steps:
        unknown = [r for r in s.consumes if r not in producers and r not in s.optional]
        if unknown:
            raise ValueError(f"step {s.name} consumes {unknown[0]!r}, which no step produces")
        after.append({p for r in s.consumes for p in producers.get(r, [])})
    done: list[int] = []
    while len(done) < len(steps):
        ready = [i for i in range(len(steps)) if i not in done and after[i] <= set(done)]
        if not ready:
            raise ValueError("the steps' inputs form a cycle: " + ", ".join(steps[i].name for i in range(len(steps))
                                                                            if i not in done))
        done.append(ready[0])
    return [steps[i] for i in done]


def entries(steps: Iterable[Step]) -> tuple[str, ...]:
    """Every top-level entry the steps may write, in declaration order."""
    return tuple(dict.fromkeys(e for s in steps for e in s.entries))


def execute(ctx: RunContext, steps: Iterable[Step], on_result: Callable[[Results], None]) -> Results:
    """Run this configuration's steps in order; ``on_result`` sees the results after every step."""
    results: Results = {}
    missing_because: dict[str, str] = {}
    for step in order(s for s in steps if s.active(ctx.cfg)):
        given = {r: results.get(r) for r in step.consumes}
        absent = [r for r in step.consumes if given[r] is None and r not in step.optional]
        for r in absent:
            if r not in missing_because:
                raise RuntimeError(f"step {step.name}: its input {r!r} was never produced (a declaration error)")
        why = missing_because[absent[0]] if absent else step.skip(ctx, given)
        if why:
            ctx.skip(step.stage_name(ctx.cfg), why)
            for r in step.produces:
                source = step.passthrough.get(r)
                if source is not None and given.get(source) is not None:
                    results[r] = given[source]
                else:
                    missing_because[r] = why
            continue
        produced = step.run(ctx, given)
        unknown = set(produced) - set(step.produces)
        if unknown:
            raise RuntimeError(f"step {step.name} produced undeclared results {sorted(unknown)}")
        results.update(produced)
        on_result(results)
    return results
