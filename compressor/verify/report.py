"""report.json, report.md (fit for a pull-request comment) and junit.xml: written on pass and fail."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from compressor.files import atomic_write_text

# 2: a task's ``passed`` may be null (aggregate: mean), ``complete``; 3: ``candidate`` may be null with a
# ``failure`` (non-finite outputs), ``own_threshold``, ``ties``
SCHEMA_VERSION = 3


@dataclass
class TaskResult:
    name: str
    kind: str
    metric: str
    base: float
    candidate: float | None  # None: no score (``failure`` says why: the candidate gave NaN/inf outputs)
    retention: float | None  # None: undefined (base scores 0, gate.zero_base: report), or no candidate score
    threshold: float
    passed: bool | None  # None: no threshold of its own under ``aggregate: mean`` (counted in the mean only)
    agreement: float | None  # None: the kind has no answer to agree on (lm-eval loglikelihood_rolling)
    n: int
    higher_is_better: bool
    retention_lower: float | None = None
    base_metrics: dict[str, float] = field(default_factory=dict)
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    own_threshold: bool = False  # the task sets its own min_retention (it then gates even under ``mean``)
    failure: str | None = None  # the task failed without a score (non-finite outputs): never passes
    ties: dict[str, int] | None = None  # predictions that were ties between choices, per model

    @property
    def gated_value(self) -> float | None:
        return self.retention_lower if self.retention_lower is not None else self.retention

    @property
    def verdict_value(self) -> float | None:
        """What the gate weighs: the gated value, 0 for a task that failed without a score, None when
        the task does not gate (base scores 0)."""
        return 0.0 if self.failure else self.gated_value

    def failed_because(self) -> str:
        return (f"{self.name}: {self.failure}" if self.failure
                else f"{self.name} {self.gated_value:.3f} < {self.threshold:.2f}")


@dataclass
class VerifyReport:
    passed: bool
    min_retention: float
    aggregate: str
    aggregate_retention: float
    confidence: float | None
    profile: dict[str, Any]
    base: dict[str, Any]
    candidate: dict[str, Any]
    tasks: list[TaskResult]
    warnings: list[str]
    tool_version: str
    seconds: float
    complete: bool = True  # False: stopped at the first failing task (``stop_at_failure``)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"schema_version": d.pop("schema_version"), **d}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VerifyReport":
        """A report read back (``avss run`` re-judges a resumed verify from its numbers); raises
        ``ValueError`` for anything not written by this schema."""
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not a schema {SCHEMA_VERSION} verify report")
        try:
            fields = {k: v for k, v in d.items() if k != "tasks"}
            return cls(**fields, tasks=[TaskResult(**t) for t in d["tasks"]])
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed verify report ({exc})") from exc

    def judged(self) -> tuple[bool, float]:
        """The verdict this report's numbers give under its own gate (see ``gate.judge``), recomputed."""
        import copy

        from compressor.verify.gate import judge

        return judge(copy.deepcopy(self.tasks), self.min_retention, self.aggregate)

    def failed_tasks(self) -> list[TaskResult]:
        return [t for t in self.tasks if t.passed is False]

    def mean_failed(self) -> bool:
        return self.aggregate == "mean" and self.aggregate_retention < self.min_retention

    def verdict_line(self) -> str:
        if self.passed:
            return f"PASS: {len(self.tasks)} task(s), aggregate retention {self.aggregate_retention:.3f} (gate {self.aggregate}, min {self.min_retention:.2f})"
        parts = [t.failed_because() for t in self.failed_tasks()]
        if self.mean_failed():
            parts.insert(0, f"mean retention {self.aggregate_retention:.3f} < {self.min_retention:.2f}")
        return "FAIL: " + "; ".join(parts)


def fmt_agreement(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _f(v: float | None, nd: int = 4) -> str:
    return "" if v is None else f"{v:.{nd}g}" if abs(v) >= 1000 else f"{v:.{nd}f}"


def to_markdown(r: VerifyReport) -> str:
    head = "✅ passed" if r.passed else "❌ failed"
    lines = [f"### avss verify: {head}", "",
             f"Profile **{r.profile['name']}**: base `{r.base['spec']}` vs candidate `{r.candidate['spec']}` "
             f"({r.candidate.get('num_layers', '?')} of {r.base.get('num_layers', '?')} layers"
             + (f"; cut by {r.candidate['cut']['method']}, removed {r.candidate['cut']['removed_layers']}, "
                f"repair {r.candidate['cut']['repair']}" if r.candidate.get("cut") else "") + ").",
             f"Gate: `{r.aggregate}` tasks at retention ≥ {r.min_retention:.2f}"
             + (f", on the {r.confidence:.0%} bootstrap lower bound" if r.confidence else "") + ".", "",
             "| task | metric | base | candidate | retention | threshold | result | agreement | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in r.tasks:
        ret = _f(t.retention, 3) + (f" (lower {_f(t.retention_lower, 3)})" if t.retention_lower is not None else "")
        lines.append(f"| {t.name} | {t.metric} | {_f(t.base)} | {_f(t.candidate)} | {ret} | {t.threshold:.2f} | "
                     f"{result_word(t.passed, '**FAIL**', t.retention, t.failure)} | {fmt_agreement(t.agreement)} | {t.n} |")
    lines += ["", f"**{r.verdict_line()}**", "",
              "Retention = candidate / base for accuracy-like metrics, base / candidate for perplexity. "
              "Agreement = share of examples (perplexity: tokens) where both models give the same answer."]
    if r.warnings:
        lines += [""] + [f"> warning: {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"


def result_word(passed: bool | None, fail: str = "FAIL", retention: float | None = 0.0,
                failure: str | None = None) -> str:
    if failure:
        return f"{fail} ({failure.split(' (')[0]})"  # e.g. "FAIL (non-finite candidate outputs)"
    if retention is None:
        return "not gated (base 0)"
    return "in mean" if passed is None else "pass" if passed else fail


def to_junit(r: VerifyReport) -> str:
    """One test case per task, plus one for the mean under ``aggregate: mean``: JUnit fails exactly
    when the verdict does."""
    fails = len(r.failed_tasks()) + int(r.mean_failed())
    tests = len(r.tasks) + int(r.aggregate == "mean")
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name={quoteattr("avss-verify." + r.profile["name"])} tests="{tests}" '
           f'failures="{fails}" errors="0" time="{r.seconds:.2f}">']
    if r.aggregate == "mean":
        detail = f"mean of the gated retentions {r.aggregate_retention:.3f}, threshold {r.min_retention:.2f}"
        out.append(f'  <testcase classname={quoteattr("avss." + r.profile["name"])} name="mean retention" time="0.00">')
        if r.mean_failed():
            out.append(f'    <failure message={quoteattr(f"mean retention {r.aggregate_retention:.3f} < {r.min_retention:.2f}")}>{escape(detail)}</failure>')
        out.append(f"    <system-out>{escape(detail)}</system-out>")
        out.append("  </testcase>")
    for t in r.tasks:
        secs = sum(t.seconds.values())
        out.append(f'  <testcase classname={quoteattr("avss." + r.profile["name"])} name={quoteattr(t.name)} time="{secs:.2f}">')
        detail = (f"{t.metric}: base {_f(t.base)}, candidate {_f(t.candidate)}, retention {_f(t.retention, 3)}, "
                  f"threshold {t.threshold:.2f}, agreement {fmt_agreement(t.agreement)}, n {t.n}")
        if t.failure:
            detail += f" (failed: {t.failure})"
        elif t.retention is None:
            detail += " (not gated: the base model scores 0, retention is undefined)"
        elif t.passed is None:
            detail += " (no threshold of its own: counted in the mean)"
        if t.passed is False:
            msg = t.failure or f"retention {t.gated_value:.3f} < {t.threshold:.2f}"
            out.append(f'    <failure message={quoteattr(msg)}>{escape(detail)}</failure>')
        out.append(f"    <system-out>{escape(detail)}</system-out>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def write_reports(r: VerifyReport, report_dir: str | Path) -> dict[str, Path]:
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "report.json", "md": d / "report.md", "junit": d / "junit.xml"}
    atomic_write_text(paths["json"], json.dumps(r.to_dict(), indent=2, allow_nan=False) + "\n")
    md = to_markdown(r)
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["junit"], to_junit(r))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    return paths
