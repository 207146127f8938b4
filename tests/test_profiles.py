"""Profile schema: shipped profiles load; errors name the file, the field and what was expected."""
from pathlib import Path

import pytest

from compressor.errors import BadInput
from compressor.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_profiles_load():
    for p in sorted((ROOT / "profiles").glob("*.yaml")):
        prof = load_profile(p)
        assert prof.name and prof.calibration.samples >= 1


@pytest.mark.parametrize("text,needle", [
    ("name: x\ncalibrashun: {}\n", "calibrashun: Extra inputs are not permitted"),
    ("name: x\ncalibration: {samples: 0}\n", "calibration.samples"),
    ("name: x\nmodel_kind: seq2seq\n", "model_kind"),
    ("description: no name\n", "field name"),
    ("- a list\n", "must be a YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: x\ntasks: [{name: a, kind: perplexity, data: builtin:python-docs, windw: 5}]\n", "tasks.0.windw: Extra inputs"),
    ("name: x\ntasks: [{name: a, kind: summarize, data: f.txt}]\n", "tasks.0"),
    ("name: x\ntasks: [{name: a, kind: zero-shot-classification, data: builtin:rt-sentiment}]\n", "tasks.0.labels: Field required"),
    ("name: x\ntasks: [{name: a, kind: perplexity, data: d.txt, window: 16, stride: 32}]\n", "stride (32) must not exceed window (16)"),
    ("name: x\ntasks: [{name: a, kind: perplexity, data: d.txt}, {name: a, kind: perplexity, data: e.txt}]\n", "task names must be unique"),
    ("name: x\ntasks: [{name: a, kind: classification, data: d.jsonl}]\n", "needs model_kind sequence-classification"),
    ("name: x\ngate: {min_retention: 0.9, aggregate: any}\n", "gate.aggregate"),
    ("name: x\ngate: {confidence: 0.3}\n", "gate.confidence"),
])
def test_profile_errors(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(BadInput) as e:
        load_profile(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_score_takes_calibration_from_a_profile(tiny, tmp_path, text_file, capsys):
    from compressor.cli.app import main

    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: t\ncalibration: {{source: {text_file}, samples: 3, seq_len: 24, batch_size: 2}}\n")
    with pytest.raises(SystemExit) as e:
        main(["score", str(tiny("llama")), "--profile", str(prof), "--out", str(tmp_path / "s.json")])
    assert e.value.code == 0
    import json

    cal = json.loads((tmp_path / "s.json").read_text())["calibration"]
    assert cal["source"] == str(text_file) and cal["samples"] == 3 and cal["seq_len"] == 24
    with pytest.raises(SystemExit) as e:
        main(["score", str(tiny("llama")), "--profile", str(prof), "--data", str(text_file)])
    assert e.value.code == 2


@pytest.mark.parametrize("text,message", [
    ("model_kind: sequence-classification\ntasks: [{name: a, kind: perplexity, data: d.txt}]\n",
     "field (top level): task 'a': kind perplexity needs model_kind causal-lm"),
    ("model_kind: sequence-classification\ntasks: [{name: a, kind: lm-eval, task: t}]\n",
     "field (top level): task 'a': lm-evaluation-harness tasks evaluate causal LMs; encoder classifiers are out of "
     "its scope (use kind classification)"),
    ("model_kind: sequence-classification\ntasks: [{name: a, kind: classification, data: d.jsonl}, "
     "{name: b, kind: multiple-choice, data: d.jsonl}]\n",
     "field (top level): task 'b': kind multiple-choice needs model_kind causal-lm"),
    ("tasks: [{name: a, kind: classification, data: d.jsonl}]\n",
     "field (top level): task 'a': kind classification needs model_kind sequence-classification"),
    ("tasks: [{name: a, kind: summarize, data: f.txt}]\n",
     "field tasks.0: Input tag 'summarize' found using 'kind' does not match any of the expected tags: 'perplexity', "
     "'classification', 'zero-shot-classification', 'multiple-choice', 'generation', 'lm-eval'"),
    ("tasks: [{name: a, data: f.txt}]\n", "field tasks.0: Unable to extract tag using discriminator 'kind'"),
    ("tasks: [{name: a, kind: perplexity, data: d.txt, window: 4}]\n",
     "field tasks.0.window: Input should be greater than or equal to 8"),
    ("tasks: [{name: a, kind: lm-eval, task: t, data: d}]\n", "field tasks.0.data: Extra inputs are not permitted"),
    ("tasks: [{name: a, kind: lm-eval, task: ''}]\n", "field tasks.0.task: String should have at least 1 character"),
    ("tasks: [{name: a, kind: zero-shot-classification, data: d, labels: {0: a}}]\n",
     "field tasks.0: labels needs at least two entries"),
    ("tasks: [{name: a, kind: zero-shot-classification, data: d, labels: {0: a, 1: b}, template: x}]\n",
     "field tasks.0: template must contain {text}"),
    ("tasks: [{name: a, kind: generation, data: {source: d, split: nope}}]\n",
     "field tasks.0.data.str: Input should be a valid string"),
    ("tasks: [{name: a, kind: multiple-choice, data: d, metric: f1}]\n",
     "field tasks.0.metric: Input should be 'acc', 'acc_norm' or 'acc_bytes'"),
])
def test_task_entry_errors_word_for_word(tmp_path, text, message):
    """Each kind's schema and model-kind rule, as the user reads them (the kind's tag never in the path)."""
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\n" + text)
    with pytest.raises(BadInput) as e:
        load_profile(p)
    assert e.value.problem == f"profile {p}: {message}"
    assert e.value.fix == "see profiles/default.yaml and the README's profile format"


def test_task_entries_keep_their_fields_and_order(tmp_path):
    """The parsed entries dump as before (verify's cache keys and run.json read them)."""
    p = tmp_path / "p.yaml"
    p.write_text("name: x\ntasks:\n"
                 "  - {name: p, kind: perplexity, data: d.txt}\n"
                 "  - {name: z, kind: zero-shot-classification, data: {source: d.jsonl, fields: {text: s}}, "
                 "labels: {0: ' no', 1: ' yes'}}\n"
                 "  - {name: h, kind: lm-eval, task: t}\n")
    dumped = [t.model_dump(mode="json") for t in load_profile(p).tasks]
    assert dumped[0] == {"name": "p", "data": "d.txt", "limit": None, "min_retention": None, "kind": "perplexity",
                         "metric": "perplexity", "window": 512, "stride": 256}
    assert list(dumped[0]) == ["name", "data", "limit", "min_retention", "kind", "metric", "window", "stride"]
    assert list(dumped[1]) == ["name", "data", "limit", "min_retention", "kind", "metric", "template", "labels", "few_shot"]
    assert dumped[1]["data"] == {"source": "d.jsonl", "split": None, "fields": {"text": "s"}}
    assert list(dumped[2]) == ["name", "kind", "task", "include_path", "num_fewshot", "fewshot_seed", "limit", "metric",
                               "filter", "min_retention", "allow_download"]
