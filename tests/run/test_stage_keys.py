"""Resume keys come from content: changing one input class reruns exactly the stages that read it."""
import json
import shutil

import pytest
import yaml

from compressor.cli.app import main
from helpers import run

UPSTREAM = {"score", "select", "prune", "verify"}


def statuses(out):
    return {s["name"]: s["status"] for s in json.loads((out / "run.json").read_text())["stages"]}


def ran(out):
    return {name for name, status in statuses(out).items() if status == "ran"}


def _write_inputs(folder):
    import pydoc_data.topics as t

    keys = sorted(t.topics)
    calib, task = folder / "calib.txt", folder / "task.txt"
    calib.write_text("\n\n".join(t.topics[k] for k in keys[10:16]), encoding="utf-8")
    task.write_text("\n\n".join(t.topics[k] for k in keys[40:46]), encoding="utf-8")
    prof = {"name": "keys", "model_kind": "causal-lm",
            "calibration": {"source": str(calib), "samples": 4, "seq_len": 64, "batch_size": 4},
            "tasks": [{"name": "ppl", "kind": "perplexity", "data": str(task), "limit": 255, "window": 256,
                       "stride": 256}],
            "gate": {"min_retention": 0.1}, "eval": {"batch_size": 4, "max_length": 256}}
    profile = folder / "profile.yaml"
    profile.write_text(yaml.safe_dump(prof), encoding="utf-8")
    return calib, task, profile, prof


def _argv(model, profile, out, *extra):
    return ["run", str(model), "--profile", str(profile), "--out", str(out), "--num-layers", "1", "--skip-export", *extra]


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory):
    """One finished run that every test copies: inputs in their own files, so each can change one."""
    folder = tmp_path_factory.mktemp("first")
    model = folder / "model"
    shutil.copytree(tiny("llama"), model)
    _, _, profile, _ = _write_inputs(folder)
    with pytest.raises(SystemExit) as e:
        main(_argv(model, profile, folder / "art"))
    assert e.value.code == 0
    return folder


@pytest.fixture
def case(first_run, tmp_path):
    """A copy of the first run, its data and profile rewritten (same content) at new paths: it resumes."""
    model = first_run / "model"  # shared and never modified (see own_model)
    calib, task, profile, prof = _write_inputs(tmp_path)
    out = tmp_path / "art"
    shutil.copytree(first_run / "art", out)

    class Case:
        pass

    c = Case()
    c.model, c.calib, c.task, c.profile, c.prof, c.out = model, calib, task, profile, prof, out

    def go(*extra, capsys):
        code, stdout, err = run(_argv(c.model, c.profile, out, *extra), capsys)
        assert code in (0, 1), err
        return err

    def own_model(capsys):
        """A private copy of the model to edit (its new path reruns prune: compression.json records it)."""
        c.model = tmp_path / "model"
        shutil.copytree(model, c.model)
        c.profile = first_run / "profile.yaml"  # the first run's data files: only the model's path is new
        go(capsys=capsys)

    c.go, c.own_model = go, own_model
    return c


def test_unchanged_inputs_resume_everything(case, capsys):
    """Same content at other paths (a new checkout of the same repository): nothing reruns."""
    case.go(capsys=capsys)
    assert ran(case.out) == set() and statuses(case.out)["verify"] == "resumed"


def test_calibration_data_content(case, capsys):
    text = case.calib.read_text(encoding="utf-8")  # edited in place: same path, new content
    case.calib.write_text("A new first paragraph about the import system and the garbage collector.\n\n" + text,
                          encoding="utf-8")
    err = case.go(capsys=capsys)
    assert ran(case.out) == UPSTREAM
    assert "score: running again (changed: calibration_data)" in err


def test_task_data_content_reruns_only_verify(case, capsys):
    case.task.write_text(case.task.read_text(encoding="utf-8")[:500], encoding="utf-8")
    err = case.go(capsys=capsys)
    assert ran(case.out) == {"verify"}
    assert "verify: running again (changed: tasks)" in err
    report = json.loads((case.out / "report.json").read_text())
    assert report["tasks"][0]["n"] < 255  # the new, shorter data was evaluated, not the old record served


def test_profile_gate_reruns_only_verify_and_calibration_section_reruns_score(case, capsys):
    case.prof["gate"]["min_retention"] = 0.2
    case.profile.write_text(yaml.safe_dump(case.prof), encoding="utf-8")
    case.go(capsys=capsys)
    assert ran(case.out) == {"verify"}
    case.prof["calibration"]["samples"] = 3
    case.profile.write_text(yaml.safe_dump(case.prof), encoding="utf-8")
    case.go(capsys=capsys)
    assert ran(case.out) == UPSTREAM


def test_model_weights(case, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    case.own_model(capsys)
    f = case.model / "model.safetensors"  # the private copy
    tensors = load_file(str(f))
    name = next(k for k in tensors if "layers.0.mlp.down_proj" in k)
    tensors[name] = tensors[name] * 1.5
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
    assert torch.is_tensor(tensors[name])
    case.go(capsys=capsys)
    assert ran(case.out) == UPSTREAM


def test_tokenizer_files(case, capsys):
    case.own_model(capsys)
    cfg = case.model / "tokenizer_config.json"
    d = json.loads(cfg.read_text())
    d["model_max_length"] = 1234
    cfg.write_text(json.dumps(d), encoding="utf-8")
    case.go(capsys=capsys)
    # scoring reruns (the model is different) but writes identical scores here, so the selection,
    # keyed on the scores' content, is resumed; the cut model and its verdict are recomputed
    assert ran(case.out) == {"score", "prune", "verify"}


def test_dtype(case, capsys):
    case.go("--dtype", "bfloat16", capsys=capsys)
    assert ran(case.out) == UPSTREAM
    comp = json.loads((case.out / "model" / "config.json").read_text())
    assert comp.get("torch_dtype", comp.get("dtype")) == "bfloat16"  # never a resumed fp32 model/


def test_tool_version(case, capsys, monkeypatch):
    import compressor.fingerprint as fp

    monkeypatch.setattr(fp, "code_digest", lambda: "a-newer-build")
    err = case.go(capsys=capsys)
    assert ran(case.out) == UPSTREAM
    assert "the tool's code or libraries changed" in err


def test_edited_output_reruns_its_stage(case, capsys):
    scores = case.out / "scores.json"
    d = json.loads(scores.read_text())
    for layer in d["layers"]:  # make the last layer look least important
        layer["score"] = 0.0 if layer["index"] == 3 else 1.0
    scores.write_text(json.dumps(d), encoding="utf-8")
    err = case.go(capsys=capsys)
    assert "score" in ran(case.out) and "output changed or missing: scores.json" in err
    r = json.loads((case.out / "run.json").read_text())
    comp = json.loads((case.out / "model" / "compression.json").read_text())
    assert comp["removed_layers"] == r["removed"] == json.loads(scores.read_text())["ranking"][:1]


def test_search_and_fixed_cut_never_share_a_verify_record(case, capsys):
    """A search that picks the same cut as a fixed run writes a different report.md: verify reruns."""
    code, _, err = run(["run", str(case.model), "--profile", str(case.profile), "--out", str(case.out),
                        "--search", "--methods", "block-influence", "--max-remove", "1", "--skip-export"], capsys)
    assert code == 0, err
    assert "Search: the largest cut" in (case.out / "report.md").read_text()
    removed = json.loads((case.out / "run.json").read_text())["removed"]
    code, _, err = run(["run", str(case.model), "--profile", str(case.profile), "--out", str(case.out),
                        "--method", "block-influence", "--num-layers", "1", "--skip-export"], capsys)
    assert code == 0, err
    assert json.loads((case.out / "run.json").read_text())["removed"] == removed
    assert statuses(case.out)["verify"] == "ran"
    assert "Search: the largest cut" not in (case.out / "report.md").read_text()


def test_repair_settings_rerun_the_repair_and_what_follows(case, capsys):
    err = case.go("--repair", "linear", capsys=capsys)
    assert ran(case.out) >= {"prune", "repair", "verify"}
    assert "keeps layer 0" in err
    r = json.loads((case.out / "run.json").read_text())
    assert r["repair"]["method"] == "linear" and r["repair"]["linear"]["spans"]
    comp = json.loads((case.out / "model" / "compression.json").read_text())
    assert comp["repair"]["method"] == "linear" and 0 not in comp["removed_layers"]
    assert json.loads((case.out / "cut" / "compression.json").read_text())["repair"]["method"] == "none"
    err = case.go("--repair", "linear", "--ridge", "0.01", capsys=capsys)
    assert ran(case.out) == {"repair", "verify"} and "repair: running again (changed: repair)" in err
