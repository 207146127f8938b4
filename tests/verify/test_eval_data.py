"""Built-in evaluation data: the project-written rt-qa set is well-formed and leak-free."""
from collections import Counter

from compressor.sources.data import read_documents
from compressor.verify.examples import rt_qa
from compressor.verify.kinds.base import kind


def test_rt_qa_is_well_formed_and_from_the_evaluation_half():
    rows = rt_qa()
    assert len(rows) >= 60 and len({r["id"] for r in rows}) == len(rows)
    ev = read_documents("builtin:rt-plots", split="evaluation")
    cal = set(read_documents("builtin:rt-plots", split="calibration"))
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4
        assert ev[r["doc_index"]] == r["context"] and r["context"] not in cal
    positions = Counter(r["answer"] for r in rows)
    assert all(0.15 <= positions[i] / len(rows) <= 0.35 for i in range(4))


def test_rt_qa_as_generation_and_rt_sentiment_splits():
    gen = kind("generation").examples("builtin:rt-qa", None, {})
    assert gen[0]["answers"] == [rt_qa()[0]["choices"][rt_qa()[0]["answer"]]]
    test = kind("classification").examples("builtin:rt-sentiment", None, {})
    train = kind("zero-shot-classification").examples("builtin:rt-sentiment", "train", {})
    assert len(test) == 2000 and not {e["text"] for e in test} & {e["text"] for e in train}
