"""``kind: lm-eval``: lm-evaluation-harness runs its own task on our loaded models, offline, gated and
cached like our kinds; and our multiple-choice kind computes what the harness computes, per question."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from compressor.errors import BadInput
from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.api import check_task_data, verify
from helpers import error_lines, run
from verify.conftest import write_profile

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests/verify/lm_eval_task"  # relative, as a profile in a repository would name it
MINI = f"{TASKS}/rt_qa_mini.jsonl"


@pytest.fixture(autouse=True)
def at_root(tmp_path, monkeypatch):
    """lm-eval reads a task's data_files relative to the working directory; own verify cache."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def harness_task(**extra):
    return {"name": "rt-qa-harness", "kind": "lm-eval", "task": "avss_rt_qa_mini", "include_path": TASKS,
            "metric": "acc_norm", **extra}


def profile(*tasks, **gate):
    return Profile.model_validate({
        "name": "harness", "model_kind": "causal-lm",
        "calibration": {"source": "builtin:python-docs", "samples": 2, "seq_len": 16},
        "tasks": list(tasks) or [harness_task()],
        "gate": {"min_retention": 0.9, **gate}, "eval": {"batch_size": 4, "max_length": 512, "seed": 0}})


OURS = {"name": "rt-qa", "kind": "multiple-choice", "data": MINI, "metric": "acc_norm"}


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


@pytest.fixture(scope="module")
def slim(llama, tmp_path_factory):
    from compressor.prune.surgery import prune_model

    out = tmp_path_factory.mktemp("harness") / "slim"
    prune_model(llama, [2], out)
    return load_model(str(out))


@pytest.mark.slow  # lm-evaluation-harness itself: its task index and real harness runs
def test_the_harness_gates_caches_and_agrees_with_our_kind_per_question(llama, slim):
    from compressor.verify.harness import harness_metrics

    prof = profile(harness_task(), OURS)
    rep = verify(llama, slim, prof)
    h, ours = rep.tasks
    assert (h.kind, h.n, ours.n) == ("lm-eval", 12, 12)
    # the same numbers from the harness and from our KV-sharing kind, for both models
    for m in ("acc", "acc_norm", "acc_bytes"):
        assert h.base_metrics[m] == ours.base_metrics[m], m
        assert h.candidate_metrics[m] == ours.candidate_metrics[m], m
    assert h.retention == pytest.approx(ours.retention) and h.agreement == pytest.approx(ours.agreement)
    assert h.passed == (h.retention >= 0.9)
    # per question, and the metrics recomputed from the harness's per-document values
    items, shots = check_task_data(prof)[0][0][1:]
    from compressor.verify.kinds.base import kind

    for model in (llama, slim):
        out = kind("lm-eval").evaluate(model, prof.tasks[0], items, shots, prof, None)
        mine = kind("multiple-choice").evaluate(model, prof.tasks[1], *check_task_data(prof)[0][1][1:], prof, None)
        for a, b in zip(out.records, mine.records):
            assert (a["pred"], a["pred_norm"], a["pred_bytes"]) == (b["pred"], b["pred_norm"], b["pred_bytes"])
        assert harness_metrics(out.records) == pytest.approx(out.metrics)
    again = verify(llama, slim, prof)
    assert again.tasks[0].cached == {"base": True, "candidate": True}
    assert again.tasks[0].candidate == h.candidate


@pytest.mark.slow  # lm-evaluation-harness itself: its task index and real harness runs
def test_a_failing_harness_task_fails_the_gate_through_the_cli(tiny, tmp_path, capsys):
    prof = write_profile(tmp_path / "p.yaml", profile(harness_task(min_retention=2.0)).model_dump(mode="json"))
    code, out, err = run(["verify", str(tiny("llama")), str(tiny("llama")), "--profile", str(prof),
                          "--report-dir", str(tmp_path / "rep")], capsys)
    assert code == 1, err
    assert "rt-qa-harness" in out and "FAIL" in out
    assert (tmp_path / "rep" / "junit.xml").read_text().count("<failure") == 1


def test_our_encoding_is_the_harness_encoding(llama):
    """BOS as the tokenizer asks (SmolLM2's adds <|im_start|>), trailing context spaces moved to the
    continuation, whole-string encoding split at the context: token for token, lm-eval's _encode_pair."""
    from lm_eval.models.huggingface import HFLM

    from compressor.verify.loglik import encode_pair, leading_special

    tok = llama.tokenizer
    assert leading_special(tok) == [tok.bos_token_id]
    lm = HFLM(pretrained=llama.model, tokenizer=tok, backend="causal", batch_size=1)
    for ctx, cont in [("Question: Who?\nAnswer:", " Geoffrey Buonardi"), ("Answer: ", "a monkey"),
                      ("Café au lait\nAnswer:", " naïve – déjà vu"), (tok.bos_token + "Hi", " there"),
                      ("x  ", " y")]:
        assert encode_pair(tok, ctx, cont) == tuple(lm._encode_pair(ctx, cont)), (ctx, cont)


def test_harness_data_not_on_disk_fails_fast_offline(tiny, tmp_path, capsys, monkeypatch):
    """Refused from what is on disk, without a connection attempt (a retrying download would hang for minutes)."""
    import socket

    def no_network(*a, **kw):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    prof = write_profile(tmp_path / "p.yaml", profile(harness_task(task="avss_hub_only", metric="acc")).model_dump(mode="json"))
    code, _, err = run(["verify", str(tiny("llama")), str(tiny("llama")), "--profile", str(prof)], capsys)
    assert code == 2, err
    [line] = error_lines(err)
    assert "avss_hub_only" in line and "not on disk and downloads are off" in line and "allow_download" in line
    assert "Traceback" not in err


@pytest.mark.slow  # lm-evaluation-harness itself: its task index and real harness runs
@pytest.mark.parametrize("task, problem", [
    (harness_task(task="no_such_task"), "lm-eval knows no task 'no_such_task'"),
    (harness_task(metric="f1"), "has no metric 'f1'; set metric to one of: acc, acc_norm, acc_bytes"),
    (harness_task(filter="strict-match"), "has no filter 'strict-match'"),
    (harness_task(include_path="tests/no/such/folder"), "include_path tests/no/such/folder is not a folder"),
])
def test_bad_harness_tasks_are_bad_input_before_any_model_loads(task, problem):
    with pytest.raises(BadInput) as e:
        check_task_data(profile(task))
    assert problem in str(e.value)


def test_without_the_extra_the_profile_names_the_pip_command(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    prof = write_profile(tmp_path / "p.yaml", profile().model_dump(mode="json"))
    code, _, err = run(["verify", str(tiny("llama")), str(tiny("llama")), "--profile", str(prof)], capsys)
    assert code == 2
    [line] = error_lines(err)
    assert "needs lm-evaluation-harness" in line and "pip install 'avss-compressor[lm-eval]'" in err


def test_an_encoder_profile_with_a_harness_task_is_refused(tmp_path, tiny, capsys):
    data = profile().model_dump(mode="json")
    data["model_kind"] = "sequence-classification"
    prof = write_profile(tmp_path / "p.yaml", data)
    code, _, err = run(["verify", str(tiny("bert")), str(tiny("bert")), "--profile", str(prof)], capsys)
    assert code == 2
    assert "encoder classifiers are out of its scope" in error_lines(err)[0]


def test_the_example_profile_validates_and_its_task_loads():
    from compressor.profiles import load_profile

    prof = load_profile(ROOT / "profiles" / "lm-eval.yaml")
    (task, items, _), (ours, mine, _) = check_task_data(prof)[0]
    assert task.kind == "lm-eval" and len(items) == len(mine) == 72
    assert [d["question"] for d in items] == [e["question"] for e in mine]  # the same questions as builtin:rt-qa


@pytest.mark.slow  # lm-evaluation-harness itself: its task index and real harness runs
@pytest.mark.optimum  # the run's exports (or this candidate) go through Optimum
def test_the_harness_evaluates_an_onnx_candidate_like_its_pytorch_source(llama, tiny_onnx):
    """The artifact that ships, through the harness: HFLM drives our ONNX Runtime model (positional
    input_ids, .device, tie_weights), and every answer equals the PyTorch model's."""
    from compressor.export.ort_model import load_onnx_model

    rep = verify(llama, load_onnx_model(str(tiny_onnx("llama"))), profile())
    [t] = rep.tasks
    assert t.agreement == 1.0 and t.candidate_metrics == pytest.approx(t.base_metrics)


@pytest.mark.slow  # lm-evaluation-harness itself: its task index and real harness runs
def test_a_nan_candidate_fails_a_harness_task_and_a_nan_base_is_bad_input(llama, tmp_path):
    """The harness's own multiple-choice log-likelihoods are checked like ours (all NaN used to tie and pass)."""
    import torch

    broken = load_model(llama.path)
    with torch.no_grad():
        for p in broken.model.model.layers[1].parameters():
            p.fill_(float("nan"))
    nan = load_model(str(tiny_copy(broken, tmp_path / "nan")))
    rep = verify(llama, nan, profile())
    (t,) = rep.tasks
    assert rep.passed is False and t.passed is False and t.candidate is None
    assert t.failure == "non-finite candidate outputs (NaN/inf) on 12 of 12 documents"
    with pytest.raises(BadInput, match="the base model .* gives non-finite outputs"):
        verify(nan, llama, profile())


def tiny_copy(loaded, folder):
    loaded.model.save_pretrained(str(folder))
    loaded.tokenizer.save_pretrained(str(folder))
    return folder
