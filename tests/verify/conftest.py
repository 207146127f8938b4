import json

import pytest


@pytest.fixture
def task_files(tmp_path):
    """Small local data files for every task kind (field names deliberately non-canonical where mapped)."""
    import pydoc_data.topics as t

    docs = [t.topics[k] for k in sorted(t.topics)[:6]]
    (tmp_path / "ppl.txt").write_text("\n\n".join(docs), encoding="utf-8")
    pos = ["a wonderful, moving film", "brilliant acting and a great story", "funny and warm", "a delight from start to end"]
    neg = ["a dull, lifeless mess", "boring and far too long", "the worst film of the year", "clumsy and forgettable"]
    rows = [{"sentence": s, "y": 1} for s in pos] + [{"sentence": s, "y": 0} for s in neg]
    (tmp_path / "cls.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 2), encoding="utf-8")
    mc = [{"context": "Anna is a baker in Lyon who wins a contest.", "question": "What is Anna's job?",
           "choices": ["baker", "pilot", "judge", "doctor"], "answer": 0},
          {"context": "The ship sinks near Oslo after a storm.", "question": "Where does the ship sink?",
           "choices": ["Rome", "Oslo", "Cairo", "Lima"], "answer": 1},
          {"context": "Tom adopts a grey cat named Smoke.", "question": "What is the cat called?",
           "choices": ["Ash", "Coal", "Smoke", "Dust"], "answer": 2}]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in mc), encoding="utf-8")
    gen = [{"context": r["context"], "question": r["question"], "answers": [r["choices"][r["answer"]]]} for r in mc]
    (tmp_path / "gen.jsonl").write_text("\n".join(json.dumps(r) for r in gen), encoding="utf-8")
    return tmp_path


def causal_profile(files, **gate):
    return {
        "name": "tiny-causal", "model_kind": "causal-lm",
        "calibration": {"source": str(files / "ppl.txt"), "samples": 2, "seq_len": 16},
        "tasks": [
            {"name": "ppl", "kind": "perplexity", "data": str(files / "ppl.txt"), "limit": 96, "window": 48, "stride": 24},
            {"name": "zs", "kind": "zero-shot-classification",
             "data": {"source": str(files / "cls.jsonl"), "fields": {"text": "sentence", "label": "y"}},
             "labels": {0: " bad", 1: " good"}, "template": "Review: {text}\nVerdict:", "few_shot": 1},
            {"name": "mc", "kind": "multiple-choice", "data": str(files / "mc.jsonl"), "metric": "acc"},
            {"name": "gen", "kind": "generation", "data": str(files / "gen.jsonl"), "max_new_tokens": 4, "metric": "f1"},
        ],
        # a tiny random model scores 0 on some tasks (generation f1): reported, not gated
        "gate": {"min_retention": 0.9, "zero_base": "report", **gate},
        "eval": {"batch_size": 2, "max_length": 128, "seed": 0},
    }


def write_profile(path, data):
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
