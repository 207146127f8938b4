"""`avss run`: the whole pipeline on tiny models, resume, search with a known answer, config, exit codes."""
import json

import pytest
import yaml

from helpers import run

BENCH = ["--bench-prompt-len", "8", "--bench-new-tokens", "4", "--bench-runs", "2", "--bench-warmup", "1", "--bench-rounds", "1"]
LAYOUT = ["scores.json", "scores.png", "model/config.json", "model/compression.json", "report.json", "report.md",
          "junit.xml", "onnx/model.onnx", "onnx/model.onnx_data", "onnx/export.json", "reports/onnx/report.json",
          "onnx-base/model.onnx", "bench.json", "bench.png", "run.json"]


@pytest.mark.optimum
def test_run_end_to_end(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, stdout, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                             "--num-layers", "1", *BENCH], capsys)
    assert code == 0, err
    for f in LAYOUT:
        assert (out / f).exists(), f
    r = json.loads((out / "run.json").read_text())
    assert r["exit_code"] == 0 and r["status"] == "passed" and r["passed"] is True
    assert [s["name"] for s in r["stages"]] == ["score", "select", "prune", "repair", "verify", "export", "verify-onnx",
                                                "export-base", "bench"]
    (art,) = r["artifacts"]  # the ONNX export is gated as it ships, in ONNX Runtime
    assert art["artifact"] == "onnx" and art["passed"] is True and (out / "reports/onnx/junit.xml").is_file()
    assert art["tasks"][0]["vs_slim"]["retention"] == pytest.approx(1.0, abs=1e-3)
    assert {s["name"]: s["status"] for s in r["stages"]}["repair"] == "skipped"  # --repair none is the default
    assert all(s["status"] == "ran" for s in r["stages"] if s["name"] != "repair")
    assert r["config"]["num_layers"] == 1 and r["config"]["method"] == "avss"
    assert r["method_label"] == "avss (robust)"  # never hide which AVSS produced the cut
    assert {"torch", "transformers", "onnxruntime", "avss-compressor"} <= set(r["versions"])
    comp = json.loads((out / "model/compression.json").read_text())
    assert comp["removed_layers"] == r["removed"] and comp["num_layers_after"] == 3
    assert r["parity"]["passed"]
    bench = json.loads((out / "bench.json").read_text())
    assert [m["layers"] for m in bench["models"]] == [4, 3]
    assert bench["ratios"][0]["layer_ratio"] == pytest.approx(0.75)
    assert "avss run" in stdout and "PASS" in stdout
    assert not list(out.rglob(".*.tmp-*"))
    from compressor.run.api import RUN_ENTRIES
    from compressor.run.stages import RECORDS

    # the names whose leftovers a run may clean are exactly the names it writes
    assert {p.name for p in out.iterdir()} <= {*RUN_ENTRIES, RECORDS}


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
@pytest.mark.optimum  # the run's exports (or this candidate) go through Optimum
def test_resume_after_interruption(tiny, tmp_path, ppl_profile, capsys, monkeypatch):
    import compressor.export.convert as convert

    out = tmp_path / "art"
    argv = ["run", str(tiny("qwen2")), "--profile", str(ppl_profile(0.5)), "--out", str(out), "--num-layers", "1",
            "--skip-bench"]
    real = convert.export_model

    def killed(model, dest, **kw):
        # the export stage dies half-way: a staging folder is left, as after `kill -9`
        (out / ".onnx.tmp-dead").mkdir()
        (out / ".onnx.tmp-dead" / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "export_model", killed)
    code, _, err = run(argv, capsys)
    assert code == 130 and "interrupted" in err, err
    r = json.loads((out / "run.json").read_text())
    assert r["status"] == "interrupted" and [s["name"] for s in r["stages"]] == ["score", "select", "prune", "repair", "verify"]
    assert not (out / "onnx").exists()
    monkeypatch.setattr(convert, "export_model", real)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    r = json.loads((out / "run.json").read_text())
    status = {s["name"]: s["status"] for s in r["stages"]}
    assert status == {"score": "resumed", "select": "resumed", "prune": "resumed", "repair": "skipped", "verify": "resumed",
                      "export": "ran", "verify-onnx": "ran", "export-base": "skipped", "bench": "skipped"}
    assert "left by an interrupted" in err and not (out / ".onnx.tmp-dead").exists()
    assert (out / "onnx" / "model.onnx").is_file()
    # a changed setting reruns only what depends on it; --force reruns everything
    code, _, err = run(argv[:-1] + ["--skip-bench", "--opset", "17"], capsys)
    status = {s["name"]: s["status"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert code == 0 and status["verify"] == "resumed" and status["export"] == "ran"
    code, _, err = run(argv + ["--force"], capsys)
    status = {s["name"]: s["status"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert code == 0 and status["score"] == "ran" and status["prune"] == "ran"


IDENTITY = (1, 3, 4)


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory, decoder_tokenizer):
    """A 6-layer Llama that memorised a text with layers 1, 3, 4 held at identity (zero output
    projections): removing exactly those three changes nothing; removing any other layer breaks it."""
    import pydoc_data.topics as t

    import torch
    import transformers as tf

    from compressor.files import build_once
    from helpers import shared_dir
    from tiny_models import tiny_config

    def train_into(folder):
        cfg, _ = tiny_config("llama")
        cfg.num_hidden_layers = 6
        torch.manual_seed(0)
        m = tf.LlamaForCausalLM(cfg)

        def rezero():
            with torch.no_grad():
                for i in IDENTITY:
                    m.model.layers[i].self_attn.o_proj.weight.zero_()
                    m.model.layers[i].mlp.down_proj.weight.zero_()

        text = "\n\n".join(t.topics[k] for k in sorted(t.topics)[40:46])
        ids = decoder_tokenizer(text, return_tensors="pt").input_ids[:, :128]  # memorised in a third of 256's time
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        rezero()
        m.train()
        for _ in range(160):
            loss = m(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            rezero()
        assert loss.item() < 1.0
        m.eval().save_pretrained(str(folder))
        decoder_tokenizer.save_pretrained(str(folder))

    # built once per run, shared by the pytest-xdist workers
    folder = build_once(shared_dir(tmp_path_factory, "identity") / "model", lambda p: (p / "config.json").is_file(),
                        train_into)
    return folder


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
@pytest.mark.optimum  # the run's exports (or this candidate) go through Optimum
def test_search_finds_the_known_answer(identity_model, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, stdout, err = run(["run", str(identity_model), "--profile", str(ppl_profile(0.99)), "--out", str(out),
                             "--search", "--methods", "block-influence,avss", "--max-remove", "5", "--skip-bench"],
                            capsys)
    assert code == 0, err
    s = json.loads((out / "search.json").read_text())
    assert s["best"] == {"block-influence": 3, "avss": 3}
    assert s["chosen"]["k"] == 3 and sorted(s["chosen"]["removed"]) == list(IDENTITY)
    tried = sorted(c["k"] for c in s["candidates"] if c["method"] == "block-influence")
    assert tried == [1, 2, 3, 4]  # gallop 1, 2, 4 (fails), then bisect to 3
    stages = [st["name"] for st in json.loads((out / "run.json").read_text())["stages"]]
    reused = [c for c in s["candidates"] if c["method"] == "avss" and f"search-avss-k{c['k']}" not in stages]
    assert reused  # here both scorers propose the same cuts
    for c in reused:  # a cut another scorer already verified is not cut, repaired and verified again
        assert any(o["method"] == "block-influence" and sorted(o["removed"]) == sorted(c["removed"])
                   for o in s["candidates"]) and f"search avss k={c['k']}: the same cut as" in err
    assert json.loads((out / "model/compression.json").read_text())["removed_layers"] == list(IDENTITY)
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert "Search: the largest cut that passes" in (out / "report.md").read_text()
    r = json.loads((out / "run.json").read_text())
    assert r["passed"] and r["tasks"][0]["retention"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.optimum
def test_search_with_no_passing_cut_exits_1(identity_model, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, _, err = run(["run", str(identity_model), "--profile", str(ppl_profile(0.99)), "--out", str(out),
                        "--search", "--methods", "block-influence", "--protect", "1,3,4", "--skip-export"], capsys)
    assert code == 1
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "no cut passes the gate" in errors[0]
    s = json.loads((out / "search.json").read_text())
    assert s["chosen"] is None and s["best"] == {"block-influence": 0}
    assert [c["k"] for c in s["candidates"]] == [1]  # the smallest cut already fails: stop there
    assert (out / "report.md").exists() and (out / "junit.xml").exists()


@pytest.mark.optimum
def test_failing_gate_still_writes_everything(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, stdout, err = run(["run", str(tiny("gpt2")), "--profile", str(ppl_profile(2.0)), "--out", str(out),
                             "--ratio", "0.25", *BENCH], capsys)
    assert code == 1
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "retention gate failed (ppl" in errors[0] and "Traceback" not in err
    for f in LAYOUT:
        assert (out / f).exists(), f
    r = json.loads((out / "run.json").read_text())
    assert r["exit_code"] == 1 and r["status"] == "gate failed" and r["passed"] is False
    assert "<failure" in (out / "junit.xml").read_text()


def test_config_round_trip_and_flags_win(tmp_path, ppl_profile):
    from compressor.run.config import load_run_config

    prof = str(ppl_profile(0.9))
    cfg = load_run_config(None, {"model": "builtin:smollm2-135m", "profile": prof, "out": "o", "num_layers": 3,
                                 "bench_runs": 4, "methods": None})
    f = tmp_path / "run.yaml"
    f.write_text(cfg.to_yaml(), encoding="utf-8")
    again = load_run_config(str(f), {})
    assert again == cfg and again.bench.runs == 4 and again.ratio is None
    flagged = load_run_config(str(f), {"ratio": 0.5, "out": "other", "bench_warmup": 0})
    assert flagged.ratio == 0.5 and flagged.num_layers is None and flagged.out == "other"
    assert flagged.bench.warmup == 0 and flagged.bench.runs == 4
    searching = load_run_config(str(f), {"search": True})
    assert searching.search and searching.num_layers is None


def test_save_config_from_the_cli_then_reuse_it(tiny, tmp_path, ppl_profile, capsys):
    saved = tmp_path / "run.yaml"
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                        "--num-layers", "1", "--skip-export", "--save-config", str(saved)], capsys)
    assert code == 0, err
    d = yaml.safe_load(saved.read_text())
    assert d["num_layers"] == 1 and d["skip_export"] is True and d["model"] == str(tiny("llama"))
    code, _, err = run(["run", "--config", str(saved)], capsys)
    assert code == 0, err
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert {s["name"]: s["status"] for s in stages}["verify"] == "resumed"


@pytest.mark.parametrize("argv,needle", [
    (["run", "builtin:smollm2-135m", "--out", "x"], "needs profile"),
    (["run", "builtin:smollm2-135m", "--profile", "p.yaml", "--out", "x", "--search", "--ratio", "0.2"],
     "--search finds the cut size itself"),
    (["run", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["run", "builtin:smollm2-135m", "--profile", "p.yaml", "--out", "x", "--provider", "tpu"], "provider"),
])
def test_bad_run_input(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2, err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
@pytest.mark.optimum  # the run's exports (or this candidate) go through Optimum
def test_bf16_run_exports_fp32_reference(tiny, tmp_path, ppl_profile, capsys):
    """Score/verify in bf16 (the CUDA default); the full model is re-loaded in fp32 for its export."""
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                        "--num-layers", "1", "--dtype", "bfloat16", *BENCH], capsys)
    assert code == 0, err
    for d in ("onnx", "onnx-base"):
        rec = json.loads((out / d / "export.json").read_text())
        assert rec["dtype"] == "float32" and rec["parity"]["passed"]


def test_search_checks_max_remove_against_protect_before_any_work(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", str(out), "--search",
                        "--methods", "block-influence", "--max-remove", "3", "--protect", "0,1"], capsys)
    assert code == 2, err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "--max-remove 3 is more than the 2 layer(s)" in errors[0]
    assert not out.exists()  # refused before scoring: nothing written


def test_search_on_a_one_layer_model_is_bad_input(tmp_path, ppl_profile, decoder_tokenizer, capsys):
    from tiny_models import build_tiny

    folder = build_tiny("llama", tmp_path / "one", decoder_tokenizer)
    cfg = json.loads((folder / "config.json").read_text())
    import transformers as tf

    cfg_obj = tf.LlamaConfig(**{**cfg, "num_hidden_layers": 1})
    tf.LlamaForCausalLM(cfg_obj).save_pretrained(str(folder))
    out = tmp_path / "art"
    code, _, err = run(["run", str(folder), "--profile", str(ppl_profile(0.5)), "--out", str(out), "--search",
                        "--methods", "block-influence"], capsys)
    assert code == 2 and "--search has no layer to remove" in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.optimum
def test_search_scans_non_nested_angular_cuts_upwards(identity_model, tmp_path, ppl_profile, capsys):
    """angular cuts are contiguous blocks (k=3 need not contain k=2): scan 1, 2, 3, ... to the first
    failure instead of galloping and bisecting, which assumes nested cuts."""
    out = tmp_path / "art"
    code, _, err = run(["run", str(identity_model), "--profile", str(ppl_profile(0.99)), "--out", str(out),
                        "--search", "--methods", "angular", "--max-remove", "5", "--skip-export"], capsys)
    assert code == 0, err
    s = json.loads((out / "search.json").read_text())
    tried = sorted(c["k"] for c in s["candidates"])
    assert s["best"] == {"angular": 2} and tried == [1, 2, 3]  # 3 contiguous layers always break the model
    assert s["chosen"]["removed"] == [3, 4]
    assert "linear scan" in s["strategy"]


@pytest.mark.slow  # a whole `avss run` scenario (see pyproject.toml: the slow tier)
@pytest.mark.optimum  # the run's exports (or this candidate) go through Optimum
def test_quantized_run_gates_and_benches_three_artifacts(tiny, tmp_path, ppl_profile, capsys):
    out = tmp_path / "art"
    code, stdout, err = run(["run", str(tiny("llama")), "--profile", str(ppl_profile(0.5)), "--out", str(out),
                             "--num-layers", "1", "--quantize", "int8", *BENCH], capsys)
    assert code == 0, err
    r = json.loads((out / "run.json").read_text())
    assert [a["artifact"] for a in r["artifacts"]] == ["onnx", "onnx-int8"] and all(a["passed"] for a in r["artifacts"])
    assert json.loads((out / "onnx-int8/export.json").read_text())["quantization"]["method"] == "int8"
    assert (out / "reports/onnx-int8/report.md").is_file()
    bench = json.loads((out / "bench.json").read_text())
    assert [m["layers"] for m in bench["models"]] == [4, 3, 3] and len(bench["ratios"]) == 2
    assert bench["models"][2]["file_mb"] < bench["models"][1]["file_mb"]
    assert "verify onnx-int8/ in ONNX Runtime" in stdout
    prof = yaml.safe_load(ppl_profile(0.5).read_text())
    prof["gate"]["target"] = "quantized"
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(prof))
    code, _, err = run(["run", str(tiny("llama")), "--profile", str(tmp_path / "q.yaml"), "--out", str(tmp_path / "x"),
                        "--num-layers", "1"], capsys)
    assert code == 2 and "pass --quantize int8" in err


def test_gate_target_decides_which_artifacts_the_verdict_judges():
    from compressor.run.api import gated_verdict

    arts = [{"kind": "onnx", "passed": True}, {"kind": "quantized", "passed": False}]
    assert gated_verdict("all", True, arts) is False  # the default: every artifact the run wrote must pass
    assert gated_verdict("pytorch", True, arts) is True and gated_verdict("onnx", True, arts) is True
    assert gated_verdict("quantized", True, arts) is False and gated_verdict("all", False, arts[:1]) is False
