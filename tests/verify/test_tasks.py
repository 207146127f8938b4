"""Every task kind, checked against direct computations on tiny models."""
import math

import pytest
import torch
import torch.nn.functional as F

from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.kinds.base import KINDS, kind
from compressor.verify.kinds.classification import eval_classification, eval_zero_shot, few_shot_prefix, pick_shots
from compressor.verify.kinds.generation import eval_generation
from compressor.verify.kinds.multiple_choice import eval_multiple_choice
from compressor.verify.kinds.perplexity import eval_perplexity
from compressor.verify.loglik import loglikelihoods
from compressor.verify.metrics import cls_metrics, normalize, token_f1
from verify.conftest import causal_profile


@pytest.fixture
def llama(tiny):
    return load_model(str(tiny("llama")))


def _task(files, name):
    return next(t for t in Profile.model_validate(causal_profile(files)).tasks if t.name == name)


def test_perplexity_rolling_windows_match_a_direct_computation(llama, task_files):
    task = _task(task_files, "ppl")
    docs = kind("perplexity").examples(str(task_files / "ppl.txt"), None, {})
    out = eval_perplexity(llama.model, llama.tokenizer, task, docs, batch_size=3, max_length=128)
    assert sum(r["n"] for r in out.records) == task.limit  # every token after the first scored exactly once
    # direct: same windows, one at a time
    ids = []
    for d in docs:
        ids += llama.tokenizer(d, add_special_tokens=False)["input_ids"] + [llama.tokenizer.eos_token_id]
    ids = ids[: task.limit + 1]
    nll, n, prev, begin = 0.0, 0, 0, 0
    while prev < len(ids):
        end = min(begin + task.window, len(ids))
        x = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            lp = F.log_softmax(llama.model(x).logits[0].float(), -1)
        first = max(end - begin - (end - prev), 1)
        tgt = x[0, first:]
        nll -= float(lp[first - 1:-1].gather(-1, tgt[:, None]).sum())
        n += len(tgt)
        prev, begin = end, begin + task.stride
    assert out.metrics["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert 0 <= out.metrics["token_accuracy"] <= 1


def test_multiple_choice_picks_the_highest_loglikelihood(llama, task_files):
    task = _task(task_files, "mc")
    ex = kind("multiple-choice").examples(str(task_files / "mc.jsonl"), None, {})
    out = eval_multiple_choice(llama.model, llama.tokenizer, task, ex, batch_size=3, max_length=128)
    tok = llama.tokenizer
    for e, rec in zip(ex, out.records):
        # the tokenizer's BOS first (it asks for one), as lm-evaluation-harness encodes
        ctx = [tok.bos_token_id] + tok(task.template.format(**e), add_special_tokens=False)["input_ids"]
        lls = []
        for c in e["choices"]:
            cont = tok(" " + c, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp = F.log_softmax(llama.model(x).logits[0].float(), -1)
            lls.append(float(lp[len(ctx) - 1:-1].gather(-1, x[0, len(ctx):, None]).sum()))
        assert rec["pred"] == max(range(4), key=lambda i: lls[i])
        norm = [v / len(c) for v, c in zip(lls, e["choices"])]  # lm-eval 0.4.13: characters, no delimiter
        assert rec["pred_norm"] == max(range(4), key=lambda i: norm[i])
        per_byte = [v / len(c.encode()) for v, c in zip(lls, e["choices"])]
        assert rec["pred_bytes"] == max(range(4), key=lambda i: per_byte[i])
        assert rec["lls"] == pytest.approx(lls, abs=1e-4)
    assert out.metrics["acc"] == sum(r["pred"] == r["answer"] for r in out.records) / 3


def test_zero_shot_with_few_shot_and_field_mapping(llama, task_files):
    task = _task(task_files, "zs")
    ex = kind(task.kind).examples(str(task_files / "cls.jsonl"), None, {"text": "sentence", "label": "y"})
    shots = pick_shots(ex[:4], 1, seed=0)
    assert few_shot_prefix(task, shots).endswith("\n\n")
    out = eval_zero_shot(llama.model, llama.tokenizer, task, ex, 4, 128, shots)
    assert len(out.records) == len(ex) and {r["pred"] for r in out.records} <= {0, 1}
    assert 0 <= out.metrics["accuracy"] <= 1 and 0 <= out.metrics["macro_f1"] <= 1


def test_generation_greedy_with_stop_strings(llama, task_files):
    task = _task(task_files, "gen")
    ex = kind("generation").examples(str(task_files / "gen.jsonl"), None, {})
    out = eval_generation(llama.model, llama.tokenizer, task, ex, 2, 128)
    for e, r in zip(ex, out.records):
        prompt = llama.tokenizer(task.template.format(**e), return_tensors="pt")  # with the tokenizer's BOS
        with torch.no_grad():
            g = llama.model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
        text = llama.tokenizer.decode(g[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
        assert r["pred"] == text.split("\n")[0].strip()  # left-padded batch == unbatched greedy


def test_classification_on_a_sequence_classifier(tiny, task_files):
    bert = load_model(str(tiny("bert")))
    task = Profile.model_validate({"name": "c", "model_kind": "sequence-classification", "tasks": [
        {"name": "c", "kind": "classification", "data": {"source": str(task_files / "cls.jsonl"),
                                                        "fields": {"text": "sentence", "label": "y"}}}]}).tasks[0]
    ex = kind("classification").examples(str(task_files / "cls.jsonl"), None, {"text": "sentence", "label": "y"})
    out = eval_classification(bert.model, bert.tokenizer, task, ex, 3, 64)
    enc = bert.tokenizer([e["text"] for e in ex], padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = bert.model(**enc).logits.argmax(-1).tolist()
    assert [r["pred"] for r in out.records] == preds


def test_metric_helpers():
    recs = [{"pred": 1, "label": 1}, {"pred": 1, "label": 0}, {"pred": 0, "label": 0}, {"pred": 0, "label": 0}]
    m = cls_metrics(recs)
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert normalize("The Baker!") == "baker" and token_f1("a red car", "the red car") == 1.0
    assert kind("classification").agreement("accuracy", recs, [dict(r, pred=1) for r in recs]) == 0.5
    kinds = {"perplexity", "classification", "zero-shot-classification", "multiple-choice", "generation", "lm-eval"}
    assert kind("lm-eval") is KINDS["lm-eval"] and set(KINDS) == kinds  # one class per kind, found by name


# lfm2_moe and qwen3_5_text: hybrid caches (convolution / linear-attention states), repeated by row selection
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox", "phi3", "gemma3_text", "lfm2_moe", "qwen3_5_text"])
def test_shared_context_loglikelihoods_equal_full_sequences(arch, tiny):
    """The KV-cache shortcut (context once, choices on a copied cache) changes no number."""
    m = load_model(str(tiny(arch)))
    tok = m.tokenizer
    ctx = tok("Context: the ship sinks near Oslo.\nQuestion: where?\nAnswer:", add_special_tokens=False)["input_ids"]
    conts = [tok(c, add_special_tokens=False)["input_ids"] for c in [" Oslo", " in the port of Rome", " Lima", " x"]]
    single_ctx = tok("Review: fine\nSentiment:", add_special_tokens=False)["input_ids"]
    pairs = [(ctx, c) for c in conts] + [(single_ctx, [5]), (single_ctx, [9])]
    got = loglikelihoods(m.model, pairs, batch_size=4, max_length=256)
    for (c, cont), value in zip(pairs, got):
        x = torch.tensor([c + cont])
        with torch.no_grad():
            lp = F.log_softmax(m.model(x).logits[0].float(), -1)
        direct = float(lp[len(c) - 1:-1].gather(-1, x[0, len(c):, None]).sum())
        assert value == pytest.approx(direct, abs=1e-3, rel=1e-4)
    # a few-shot prefix run once, its cache repeated for every batch
    prefix = tok("Example: a calm sea.\n", add_special_tokens=False)["input_ids"]
    got = loglikelihoods(m.model, pairs, batch_size=4, max_length=256, prefix=prefix)
    for (c, cont), value in zip(pairs, got):
        x = torch.tensor([prefix + c + cont])
        with torch.no_grad():
            lp = F.log_softmax(m.model(x).logits[0].float(), -1)
        direct = float(lp[len(prefix) + len(c) - 1:-1].gather(-1, x[0, len(prefix) + len(c):, None]).sum())
        assert value == pytest.approx(direct, abs=1e-3, rel=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_shared_prefix_cache_equals_full_sequences(arch, tiny):
    m = load_model(str(tiny(arch)))
    tok = m.tokenizer
    prefix = tok("Review: great\nSentiment: positive\n\n", add_special_tokens=False)["input_ids"]
    ctxs = [tok(t, add_special_tokens=False)["input_ids"] for t in ["Review: dull and long\nSentiment:", "Review: ok\nSentiment:"]]
    pairs = [(c, [y]) for c in ctxs for y in (7, 11)] + [(ctxs[0], [7, 8, 9])]
    got = loglikelihoods(m.model, pairs, batch_size=2, max_length=256, prefix=prefix)
    for (c, cont), value in zip(pairs, got):
        x = torch.tensor([prefix + c + cont])
        with torch.no_grad():
            lp = F.log_softmax(m.model(x).logits[0].float(), -1)
        n = len(prefix) + len(c)
        assert value == pytest.approx(float(lp[n - 1:-1].gather(-1, x[0, n:, None]).sum()), abs=1e-3, rel=1e-4)


def test_generation_truncates_long_prompts_on_the_left(llama, task_files, monkeypatch):
    """A prompt longer than max_length keeps its "Answer:" ending (as the log-likelihood kinds do)."""
    task = _task(task_files, "gen")
    long_ctx = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)
    ex = [{"context": long_ctx, "question": "What does the fox do?", "answers": ["jumps"]}]
    seen = []
    real = llama.model.generate

    def spy(**kw):
        seen.append(kw["input_ids"])
        return real(**kw)

    monkeypatch.setattr(llama.model, "generate", spy)
    before = llama.tokenizer.truncation_side
    eval_generation(llama.model, llama.tokenizer, task, ex, 1, 64)
    ids = seen[0][0]
    assert len(ids) == 64 - task.max_new_tokens
    assert llama.tokenizer.decode(ids).endswith("Question: What does the fox do?\nAnswer:")
    assert llama.tokenizer.truncation_side == before  # restored
