"""Task kinds' data rules, word for word, and the registry: one class makes a kind."""
import pytest

from compressor.errors import BadInput
from compressor.verify.kinds.base import kind as kind_


def examples(kind, source, fields=None, split=None):
    return kind_(kind).examples(str(source), split, fields or {})


@pytest.mark.parametrize("kind,source,problem,fix", [
    ("classification", "builtin:python-docs", "builtin:python-docs is plain text and only fits perplexity tasks",
     "use builtin:rt-sentiment or builtin:rt-qa"),
    ("generation", "builtin:mixed", "builtin:mixed is plain text and only fits perplexity tasks",
     "use builtin:rt-sentiment or builtin:rt-qa"),
    ("multiple-choice", "builtin:rt-sentiment",
     "builtin:rt-sentiment is labelled text and does not fit multiple-choice tasks",
     "use it with classification or zero-shot-classification"),
    ("perplexity", "builtin:rt-qa", "builtin:rt-qa does not fit perplexity tasks", "use it with multiple-choice or generation"),
    ("zero-shot-classification", "builtin:rt-qa", "builtin:rt-qa does not fit zero-shot-classification tasks",
     "use it with multiple-choice or generation"),
    ("classification", "builtin:nope", "unknown built-in evaluation data builtin:nope",
     "use one of: builtin:rt-sentiment, builtin:rt-qa, builtin:python-docs, builtin:rt-plots"),
])
def test_builtin_data_fits_only_its_kinds(kind, source, problem, fix):
    with pytest.raises(BadInput) as e:
        examples(kind, source)
    assert (e.value.problem, e.value.fix) == (problem, fix)


@pytest.mark.parametrize("kind,name,content,problem,fix", [
    ("multiple-choice", "a.txt", "x", "multiple-choice data must be .jsonl or .csv (got a.txt)", "convert the file"),
    ("generation", "e.jsonl", "", "data file {path} is empty", "add examples"),
    ("generation", "q.jsonl", '{"q": "x"}\n', "{path} record 1 has no field 'question' (fields: q)",
     "map it in the task's data.fields, e.g. fields: {question: your_field}"),
    ("multiple-choice", "mc.csv", "context,question,choices,answer\nc,q,a|b|c,5\n",
     "{path} record 1: answer 5 is not an index into its choices", "use a 0-based index"),
    ("classification", "bad.csv", "text,label\nhi,x\n",
     "{path} record 1: invalid literal for int() with base 10: 'x'", "labels and answers must be integers"),
    ("zero-shot-classification", "nolabel.jsonl", '{"text": "hi"}\n', "{path} record 1 has no field 'label' (fields: text)",
     "map it in the task's data.fields, e.g. fields: {label: your_field}"),
])
def test_data_files_are_checked_against_their_kind(tmp_path, kind, name, content, problem, fix):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInput) as e:
        examples(kind, path)
    assert (e.value.problem, e.value.fix) == (problem.format(path=path), fix)


def test_records_are_mapped_defaulted_and_coerced(tmp_path):
    mc = tmp_path / "mc.csv"
    mc.write_text("q,opts,gold\nWhere?,Rome | Oslo,1\n", encoding="utf-8")
    got = examples("multiple-choice", mc, {"question": "q", "choices": "opts", "answer": "gold"})
    assert got == [{"context": "", "question": "Where?", "choices": ["Rome", "Oslo"], "answer": 1}]
    gen = tmp_path / "gen.jsonl"
    gen.write_text('{"context": "c", "question": "q", "answers": "a|b", "extra": 1}\n', encoding="utf-8")
    assert examples("generation", gen) == [{"context": "c", "question": "q", "answers": ["a", "b"]}]
    cls = tmp_path / "cls.jsonl"
    cls.write_text('{"s": "good", "y": "1"}\n', encoding="utf-8")
    assert examples("classification", cls, {"text": "s", "label": "y"}) == [{"text": "good", "label": 1}]
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"body": "one"}\n{"body": "two"}\n', encoding="utf-8")
    assert examples("perplexity", docs, {"text": "body"}) == ["one", "two"]


def test_builtin_data_in_each_kinds_shape():
    mc = examples("multiple-choice", "builtin:rt-qa")
    assert set(mc[0]) == {"context", "question", "choices", "answer"}
    gen = examples("generation", "builtin:rt-qa")
    assert set(gen[0]) == {"context", "question", "answers"} and gen[0]["answers"] == [mc[0]["choices"][mc[0]["answer"]]]
    assert all(isinstance(d, str) for d in examples("perplexity", "builtin:rt-plots")[:3])
    assert set(examples("classification", "builtin:rt-sentiment")[0]) == {"text", "label"}


# ---------------------------------------------------------------- the registry: one class makes a kind

@pytest.fixture
def word_count():
    """A kind defined here, in one class: its entry, model kind, data rules and evaluation. The model
    plays no part (it counts words), which keeps the test about the plumbing."""
    from typing import Literal

    from pydantic import Field

    from compressor.verify.kinds.base import DataEntry, TaskKind, register, unregister
    from compressor.verify.metrics import TaskOutput, cls_metrics

    @register
    class WordCount(TaskKind):
        name = "word-count"
        example_fields = {"text": str, "words": int}
        builtin_shapes = frozenset({"labelled-text"})

        class Entry(DataEntry):
            kind: Literal["word-count"]
            metric: Literal["accuracy"] = "accuracy"
            at_most: int = Field(100, ge=1)

        def from_builtin(self, shape, rows):
            return [{"text": r["text"], "words": len(r["text"].split())} for r in rows]

        def check(self, example, where):
            if example["words"] < 0:
                raise BadInput(f"{where}: words must not be negative", "count again")

        def evaluate(self, loaded, task, items, shots, profile, progress):
            recs = [{"pred": min(len(e["text"].split()), task.at_most), "label": e["words"]} for e in items]
            return TaskOutput(recs, cls_metrics(recs))

        metrics_of = staticmethod(cls_metrics)

    try:
        yield WordCount
    finally:
        unregister("word-count")


def _profile_file(tmp_path, task, **top):
    import yaml

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "wc", **top, "tasks": [task]}), encoding="utf-8")
    return p


def test_a_kind_registered_in_one_class_is_a_kind_profiles_and_data_know(word_count, tmp_path):
    from compressor.profiles import load_profile
    from compressor.verify.kinds import base as T

    data = tmp_path / "wc.jsonl"
    data.write_text('{"t": "one two", "n": "2"}\n{"t": "three", "n": 1}\n', encoding="utf-8")
    task = {"name": "wc", "kind": "word-count", "data": {"source": str(data), "fields": {"text": "t", "words": "n"}}}
    prof = load_profile(_profile_file(tmp_path, task))
    (entry,) = prof.tasks
    assert isinstance(entry, word_count.Entry) and entry.at_most == 100
    # its schema, with the path a user wrote (the kind's tag left out)
    with pytest.raises(BadInput) as e:
        load_profile(_profile_file(tmp_path, {**task, "at_most": 0}))
    assert "field tasks.0.at_most: Input should be greater than or equal to 1" in e.value.problem
    # its model kind (causal-lm by default)
    with pytest.raises(BadInput) as e:
        load_profile(_profile_file(tmp_path, task, model_kind="sequence-classification"))
    assert e.value.problem.endswith("field (top level): task 'wc': kind word-count needs model_kind causal-lm")
    # the union lists it with the others
    with pytest.raises(BadInput) as e:
        load_profile(_profile_file(tmp_path, {**task, "kind": "nope"}))
    assert "'generation', 'lm-eval', 'word-count'" in e.value.problem
    # its data rules: fields mapped and typed, its own check, the built-in shape it reads
    items, _ = T.kind("word-count").load(entry, prof)
    assert items == [{"text": "one two", "words": 2}, {"text": "three", "words": 1}]
    data.write_text('{"t": "x", "n": -1}\n', encoding="utf-8")
    with pytest.raises(BadInput, match=r"record 1: words must not be negative"):
        T.kind("word-count").load(entry, prof)
    assert examples("word-count", "builtin:rt-sentiment")[0]["words"] >= 1
    with pytest.raises(BadInput) as e:  # the other kinds' data rules name it where it fits
        examples("multiple-choice", "builtin:rt-sentiment")
    assert e.value.fix == "use it with classification or zero-shot-classification or word-count"


def test_verify_runs_a_registered_kind_end_to_end(word_count, tiny, tmp_path, monkeypatch):
    from compressor.profiles import load_profile
    from compressor.sources.models import load_model
    from compressor.verify.api import verify

    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "wc.jsonl"
    data.write_text('{"text": "one two", "words": 2}\n{"text": "a b c", "words": 3}\n', encoding="utf-8")
    text = tmp_path / "cal.txt"
    text.write_text("calibration text that is not the task's", encoding="utf-8")
    prof = load_profile(_profile_file(tmp_path, {"name": "wc", "kind": "word-count", "data": str(data)},
                                      calibration={"source": str(text)}))
    llama = load_model(str(tiny("llama")))
    rep = verify(llama, llama, prof)
    (res,) = rep.tasks
    assert (res.kind, res.metric, res.base, res.retention, res.n, res.agreement) == ("word-count", "accuracy", 1.0, 1.0,
                                                                                      2, 1.0)
    assert rep.passed


def test_unregistering_a_kind_takes_it_out_of_profiles(word_count, tmp_path):
    from compressor.profiles import load_profile
    from compressor.verify.kinds import base as T

    T.unregister("word-count")
    try:
        with pytest.raises(BadInput) as e:
            load_profile(_profile_file(tmp_path, {"name": "wc", "kind": "word-count", "data": "x.jsonl"}))
        assert "Input tag 'word-count' found" in e.value.problem
        assert e.value.problem.endswith("expected tags: 'perplexity', 'classification', 'zero-shot-classification', "
                                        "'multiple-choice', 'generation', 'lm-eval'")
        assert set(T.KINDS) == {"perplexity", "classification", "zero-shot-classification", "multiple-choice",
                                "generation", "lm-eval"}
    finally:
        T.register(word_count)  # the fixture unregisters it


def test_a_kind_must_name_its_tag_in_its_entry():
    from typing import Literal

    from compressor.verify.kinds.base import DataEntry, TaskKind, register

    class Mislabelled(TaskKind):
        name = "mislabelled"

        class Entry(DataEntry):
            kind: Literal["something-else"]

    with pytest.raises(TypeError, match=r"Mislabelled.Entry must declare kind: Literal\['mislabelled'\]"):
        register(Mislabelled)
    with pytest.raises(TypeError, match="must declare kind"):
        register(type("NoEntry", (TaskKind,), {"name": "no-entry"}))


def test_no_code_outside_the_kinds_names_a_kind():
    """Kind names appear only in the kinds' own modules (the ``verify/kinds`` package, harness.py, and
    metrics.py, whose perplexity metric shares the kind's name): everything else asks the registry, so a
    new kind touches nothing else."""
    import ast
    from pathlib import Path

    from compressor.verify.kinds import base as T

    root = Path(__file__).resolve().parents[2]
    names = {k.name for k in T.all_kinds()}
    verify = root / "compressor" / "verify"
    own = {*(verify / "kinds").glob("*.py"), verify / "harness.py", verify / "metrics.py"}
    found = []
    for base in (root / "compressor", root / "export"):
        for f in sorted(base.rglob("*.py")):
            if f in own:
                continue
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{f.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not found, found
