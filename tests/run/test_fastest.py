"""`avss run --search fastest`: the walk over cut x exporter x precision on constructed answers (a gate that
is an oracle), then the whole run on tiny models: what ships is what the search chose and passes on its own."""
import json

import pytest

from compressor.run.fastest import ArtifactCandidate, Cut, FastestSearch, GateOutcome, estimate_bytes
from helpers import error_lines, run

UNCUT = Cut("uncut", 0, ())
K1 = Cut("a", 1, (2,))
K2 = Cut("a", 2, (2, 3))
PRECISIONS = [None, "int8-weights", "int4"]
BENCH = ["--bench-prompt-len", "8", "--bench-new-tokens", "4", "--bench-runs", "2", "--bench-warmup", "1",
         "--bench-rounds", "1"]


def space(cuts=(UNCUT, K1, K2), exporters=("e1",), sweep=False):
    cands = [ArtifactCandidate(c, e, p, r, estimate_bytes(6 - c.k, 100, 50, p))
             for c in cuts for e in exporters for r, p in enumerate(PRECISIONS)]
    return FastestSearch(cands, list(exporters), {e: list(PRECISIONS) for e in exporters}, sweep=sweep)


def oracle(passes):
    """A gate that passes exactly the candidates ``passes(candidate)`` says, and records what it gated."""
    seen = []

    def gate(c):
        seen.append(c.id)
        ok = passes(c)
        return GateOutcome(ok, {"t": 1.0 if ok else 0.5}, {"t": 0.9}, True, c.estimate)

    gate.seen = seen
    return gate


def test_the_walk_tries_each_precisions_uncut_root_first_and_skips_what_the_rules_imply():
    w = space()
    # int4 fails everywhere; int8 passes up to one layer removed; fp32 passes everything
    gate = oracle(lambda c: c.precision is None or (c.precision == "int8-weights" and c.cut.k <= 1))
    w.walk(gate)
    by = {c.id: c for c in w.candidates}
    # the cheapest estimate is the 2-layer int4 cut, but its precision's uncut root is gated first: it fails,
    # so no int4 cut is exported at all (k = 0 is inside every cut)
    assert gate.seen[:2] == ["uncut-e1-int4", "uncut-e1-int8-weights"]
    for cut in ("a-k1", "a-k2"):
        assert by[f"{cut}-e1-int4"].status == "skipped" and by[f"{cut}-e1-int4"].rule == "cut"
        assert by[f"{cut}-e1-int4"].because == "uncut-e1-int4"
    assert by["a-k2-e1-int8-weights"].status == "fail" and by["a-k1-e1-int8-weights"].status == "pass"
    # two passing candidates for the only exporter: the walk stops before any fp32 export
    assert gate.seen == ["uncut-e1-int4", "uncut-e1-int8-weights", "a-k2-e1-int8-weights", "a-k1-e1-int8-weights"]
    assert all(by[f"{c}-e1-fp32"].status == "untried" for c in ("uncut", "a-k1", "a-k2"))
    assert [c.id for c in w.frontier()] == ["a-k1-e1-int8-weights", "uncut-e1-int8-weights"]
    n = w.counts()
    assert (n["gated"], n["pass"], n["fail"], n["skipped"]) == (4, 2, 2, 2)


def test_a_failing_cut_skips_the_cuts_that_contain_it_and_the_lower_precisions():
    w = space()
    # everything passes except the one-layer cut at int8: the two-layer cut (which contains it) is not
    # exported at int8, and the one-layer cut is not exported at int4 either
    gate = oracle(lambda c: not (c.cut == K1 and c.precision == "int8-weights"))
    w.sweep = False
    by = {c.id: c for c in w.candidates}
    w._gate(by["uncut-e1-int8-weights"], gate)
    w._gate(by["a-k1-e1-int8-weights"], gate)
    assert (by["a-k2-e1-int8-weights"].status, by["a-k2-e1-int8-weights"].rule) == ("skipped", "cut")
    assert (by["a-k1-e1-int4"].status, by["a-k1-e1-int4"].rule) == ("skipped", "precision")
    # and what a skipped candidate implies follows: the two-layer int4 cut contains the skipped one-layer one
    assert by["a-k2-e1-int4"].status == "skipped" and by["a-k2-e1-int4"].because in ("a-k1-e1-int4",
                                                                                     "a-k2-e1-int8-weights")
    assert by["uncut-e1-int4"].status == "untried"  # the uncut model is not inside the failing cut


def test_the_fastest_measured_wins_not_the_lowest_estimate():
    w = space(exporters=("e1", "e2"))
    w.walk(oracle(lambda c: c.precision != "int4"))
    front = w.frontier()
    assert {c.exporter for c in front} == {"e1", "e2"} and len(front) == 4  # two per exporter
    for e in ("e1", "e2"):  # an exporter with its two is not gated further while the other one is walked
        assert sum(c.status == "pass" for c in w.candidates if c.exporter == e) == 2
    for c in front:  # e2's kernels are faster, whatever the bytes say
        c.decode_ms = (1.0 if c.exporter == "e1" else 0.5) * (1 + c.estimate / 1e4)
    best = w.choose()
    assert best.exporter == "e2" and best.id == w.chosen_id and best.status == "pass"
    assert "measured" in w.chosen_by


def test_the_uncut_model_wins_when_no_cut_passes():
    w = space()
    w.walk(oracle(lambda c: c.cut == UNCUT and c.precision is None))
    assert w.frontier() and all(c.cut == UNCUT for c in w.frontier())
    w.frontier()[0].decode_ms = 1.0
    assert w.choose().id == "uncut-e1-fp32"
    # a failing int4 candidate is never chosen, however fast it would be
    assert all(c.status != "pass" for c in w.candidates if c.precision == "int4")


def test_nothing_passes_gives_the_least_bad_gated_candidate():
    w = space()
    w.walk(oracle(lambda c: False))
    assert not w.frontier() and w.choose() is None and w.chosen is None
    assert w.fallback().status == "fail"


def test_the_sweep_gates_every_candidate():
    w = space(sweep=True)
    gate = oracle(lambda c: c.precision is None)
    w.walk(gate)
    assert len(gate.seen) == len(w.candidates) == 9
    assert not any(c.status == "skipped" for c in w.candidates)
    assert len(w.frontier()) == 3  # every passing one is benched


def test_the_estimate_orders_precisions_and_cuts():
    assert estimate_bytes(30, 100, 50, "int4") < estimate_bytes(30, 100, 50, "int8-weights") < estimate_bytes(
        30, 100, 50, None)
    assert estimate_bytes(28, 100, 50, "int4") < estimate_bytes(30, 100, 50, "int4")


# --- the whole run on tiny models ------------------------------------------------------------------
@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
@pytest.mark.optimum  # the run's exports (or this candidate) go through Optimum
def test_fastest_ships_what_it_chose_and_it_passes_verify_on_its_own(tiny, tmp_path, ppl_profile, capsys):
    model, profile, out = tiny("llama-gqa16"), ppl_profile(0.5), tmp_path / "art"
    argv = ["run", str(model), "--profile", str(profile), "--out", str(out), "--search", "fastest",
            "--methods", "block-influence", *BENCH]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    s = json.loads((out / "search.json").read_text())
    r = json.loads((out / "run.json").read_text())
    chosen = s["chosen"]
    assert s["objective"] == "fastest" and set(s["rules"]) == {"pytorch", "cut", "precision"}
    assert chosen["status"] == "pass" and chosen["decode_ms"] is not None and "measured" in s["chosen_by"]
    assert s["reference"]["id"] == "uncut-optimum-fp32" and s["reference"]["decode_ms"] > 0
    benched = [c for c in s["candidates"] if c["decode_ms"] is not None]
    assert chosen["decode_ms"] == min(c["decode_ms"] for c in benched)
    assert {c["exporter"] for c in benched} == {"optimum", "genai"}  # the estimate cannot rank exporters
    # what ships is what the search chose: its cut, exporter and precision (recorded in run.json's config)
    assert r["removed"] == chosen["cut"]["removed"]
    assert (r["config"]["exporter"], r["config"]["quantize"] or "fp32") == (chosen["exporter"], chosen["precision"])
    shipped = out / ("onnx" if chosen["precision"] == "fp32" else f"onnx-{chosen['precision']}")
    assert shipped.is_dir() and r["passed"] is True
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and not (out / ".search").exists()
    assert "Search: the fastest artifact that passes" in (out / "report.md").read_text()
    assert f"search fastest: chose {chosen['id']} by measured decode" in stdout
    assert f"shipped: {chosen['exporter']} {chosen['precision']}" in stdout
    # the shipped artifact passes the same gate on its own
    code, _, err = run(["verify", str(model), str(shipped), "--profile", str(profile)], capsys)
    assert code == 0, err
    # resume redoes nothing: every stage, every candidate's gate and the frontier bench come from their records
    code, _, err = run(argv, capsys)
    assert code == 0, err
    again = json.loads((out / "run.json").read_text())
    assert {st["status"] for st in again["stages"]} <= {"resumed", "skipped"}
    assert json.loads((out / "search.json").read_text())["chosen"]["id"] == chosen["id"]


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
def test_fastest_ships_the_uncut_model_when_no_cut_passes(tiny, tmp_path, ppl_profile, capsys):
    # a gate no cut can meet: the uncut GenAI int8-weights graph of this tied-embedding model (its head is
    # stored apart for the builder) still keeps retention at 0.999 (parity in tasks), and ships
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama-gqa16")), "--profile", str(ppl_profile(0.999)), "--out", str(out),
                        "--search", "fastest", "--methods", "block-influence", "--exporter", "genai",
                        "--precisions", "int8-weights", "--skip-bench"], capsys)
    assert code == 0, err
    s = json.loads((out / "search.json").read_text())
    assert s["pytorch_failed"] and s["counts"]["skipped_pytorch"] == len(s["pytorch_failed"])
    assert s["chosen"]["id"] == "uncut-genai-int8-weights" and "estimate" in s["chosen_by"]
    assert s["chosen"]["retention"]["ppl"] >= 0.999
    assert "--skip-bench: the search chose by its estimate" in err
    comp = json.loads((out / "model/compression.json").read_text())
    assert comp["removed_layers"] == [] and comp["num_layers_after"] == 3
    assert json.loads((out / "onnx-int8-weights/export.json").read_text())["quantization"]["untied_head"] is True


@pytest.mark.parametrize("extra, message", [
    (["--search", "quickest"], "--search has no objective 'quickest'"),
    (["--search", "fastest", "--quantize", "int4"], "cannot be combined with --quantize int4"),
    (["--search", "fastest", "--precisions", "int2"], "precisions: int2 is not one of fp32, int8-weights, int4"),
    (["--search", "--precisions", "int4"], "narrows --search fastest's space"),
])
def test_bad_search_settings_are_refused_before_any_work(tiny, tmp_path, ppl_profile, capsys, extra, message):
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama-gqa16")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                        *extra], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_an_empty_search_space_is_refused_before_any_work(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"  # the GenAI builder does not build GPT-2: with --exporter genai nothing is left
    code, _, err = run(["run", str(tiny("gpt2")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                        "--search", "fastest", "--exporter", "genai"], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "--search fastest has nothing to search" in err, err
    assert not out.exists()
