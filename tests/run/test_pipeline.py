"""The declared pipeline: order derived from what steps consume, entries from what they write,
skips propagated with their reason, declaration errors named."""
from types import SimpleNamespace

import pytest

from compressor.run.pipeline import Step, entries, execute, order


def _step(name, consumes=(), produces=(), **kw):
    def run(ctx, given):
        ctx.ran.append((name, dict(given)))
        return {p: f"{name}:{p}" for p in produces}

    return Step(name, tuple(consumes), tuple(produces), kw.pop("entries", (name,)), run, **kw)


class Ctx:
    def __init__(self, **cfg):
        self.cfg = SimpleNamespace(**cfg)
        self.ran, self.skipped = [], []

    def skip(self, name, why):
        self.skipped.append((name, why))


def test_the_order_follows_what_each_step_consumes_not_where_it_is_declared():
    steps = [_step("bench", ["onnx"]), _step("export", ["slim"], ["onnx"]), _step("prune", [], ["slim"])]
    assert [s.name for s in order(steps)] == ["prune", "export", "bench"]


def test_ties_keep_the_declaration_order():
    steps = [_step("a", [], ["x"]), _step("c", ["x"]), _step("b", ["x"])]
    assert [s.name for s in order(steps)] == ["a", "c", "b"]


def test_a_consumed_result_nobody_produces_and_a_cycle_are_declaration_errors():
    with pytest.raises(ValueError, match="consumes 'ghost', which no step produces"):
        order([_step("a", ["ghost"])])
    with pytest.raises(ValueError, match="cycle: a, b"):
        order([_step("a", ["y"], ["x"]), _step("b", ["x"], ["y"])])


def test_the_run_folder_entries_derive_from_the_steps():
    steps = [_step("a", entries=("x", "y")), _step("b", entries=("y", "z"))]
    assert entries(steps) == ("x", "y", "z")


def test_results_are_passed_explicitly_to_the_steps_that_name_them():
    ctx = Ctx()
    seen = []
    out = execute(ctx, [_step("a", [], ["x"]), _step("b", ["x"], ["y"])], lambda r: seen.append(dict(r)))
    assert ctx.ran == [("a", {}), ("b", {"x": "a:x"})]
    assert out == {"x": "a:x", "y": "b:y"} and seen[-1] == out


def test_a_skipped_step_skips_what_needs_its_results_with_its_reason():
    ctx = Ctx(skip_export=True)
    steps = [_step("verify", [], ["verdict"]),
             _step("export", ["verdict"], ["onnx"], skip=lambda c, g: "--skip-export" if c.cfg.skip_export else None),
             _step("verify-onnx", ["onnx"], ["artifact"]), _step("bench", ["onnx", "extra"], optional=("extra",))]
    execute(ctx, steps, lambda r: None)
    assert [n for n, _ in ctx.ran] == ["verify"]
    assert ctx.skipped == [("export", "--skip-export"), ("verify-onnx", "--skip-export"), ("bench", "--skip-export")]


def test_a_passthrough_hands_on_the_input_of_a_skipped_step():
    ctx = Ctx()
    steps = [_step("prune", [], ["pruned"]),
             _step("repair", ["pruned"], ["slim"], skip=lambda c, g: "--repair none", passthrough={"slim": "pruned"}),
             _step("verify", ["slim"])]
    execute(ctx, steps, lambda r: None)
    assert ctx.skipped == [("repair", "--repair none")]
    assert ctx.ran[-1] == ("verify", {"slim": "prune:pruned"})


def test_inactive_steps_are_not_listed_and_optional_inputs_come_as_none():
    ctx = Ctx(quantize=None)
    steps = [_step("export", [], ["onnx"]), _step("quantize", ["onnx"], ["quantized"], active=lambda c: bool(c.quantize)),
             _step("bench", ["onnx", "quantized"], optional=("quantized",))]
    execute(ctx, steps, lambda r: None)
    assert ctx.skipped == [] and ctx.ran[-1] == ("bench", {"onnx": "export:onnx", "quantized": None})


def test_a_step_may_not_produce_what_it_did_not_declare():
    bad = Step("a", (), (), (), lambda ctx, given: {"surprise": 1})
    with pytest.raises(RuntimeError, match="undeclared results"):
        execute(Ctx(), [bad], lambda r: None)


def test_the_declared_run_has_the_stage_order_and_entries_it_reports():
    from compressor.run.api import RUN_ENTRIES, STEPS

    assert [s.name for s in order(STEPS)] == ["score", "search", "select", "prune", "repair", "verify", "export",
                                               "verify-onnx", "quantize", "verify-quantized", "export-base",
                                               "export-base-ship", "bench"]
    assert RUN_ENTRIES[0] == "run.json" and len(set(RUN_ENTRIES)) == len(RUN_ENTRIES)
    for name in ("scores.json", "model", "cut", "onnx", "onnx-int4", "onnx-base-genai", "bench.json", "reports"):
        assert name in RUN_ENTRIES
