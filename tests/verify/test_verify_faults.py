"""verify never gates on a silently wrong comparison: different tokenizers, damaged cache entries,
a corrupt compression.json, task data it cannot use (caught before any model loads)."""
import json
import math
import shutil

import pytest

from compressor.errors import BadInput
from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.api import check_task_data, verify
from helpers import run
from verify.conftest import causal_profile, write_profile

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "vocab.txt")


def mc_profile(files, **extra):
    """One small multiple-choice task (no perplexity): the cheapest profile that gates something."""
    data = causal_profile(files)
    data["tasks"] = [t for t in data["tasks"] if t["name"] == "mc"]
    data.update(extra)
    return Profile.model_validate(data)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def _with_tokenizer(src, dst, tokenizer):
    shutil.copytree(src, dst)
    for name in _TOKENIZER_FILES:
        (dst / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(str(dst))
    return dst


# --- different tokenizers -------------------------------------------------------------------------

def test_a_different_vocabulary_is_refused_naming_both_models(tiny, tmp_path, llama, task_files, encoder_tokenizer):
    cand = load_model(str(_with_tokenizer(tiny("llama"), tmp_path / "cand", encoder_tokenizer)))
    with pytest.raises(BadInput) as e:
        verify(llama, cand, mc_profile(task_files))
    msg = e.value.line()
    assert f"the base model {llama.spec} and the candidate {cand.spec} use different tokenizers" in msg
    assert "different vocabularies (49152 vs 30522 tokens)" in msg and "--allow-different-tokenizers" in msg


def test_the_same_vocabulary_with_a_different_tokenization_is_refused(tiny, tmp_path, llama, task_files):
    folder = tmp_path / "cand"
    shutil.copytree(tiny("llama"), folder)
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "Lowercase"}  # same vocabulary, different token ids for the same text
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    cand = load_model(str(folder))
    assert cand.tokenizer.get_vocab() == llama.tokenizer.get_vocab()
    with pytest.raises(BadInput, match="the same vocabulary but a different tokenization of the same text"):
        verify(llama, cand, mc_profile(task_files))


def test_opt_in_runs_accuracy_tasks_but_never_perplexity(tiny, tmp_path, llama, task_files, encoder_tokenizer):
    cand = load_model(str(_with_tokenizer(tiny("llama"), tmp_path / "cand", encoder_tokenizer)))
    rep = verify(llama, cand, mc_profile(task_files), allow_different_tokenizers=True)
    assert [t.name for t in rep.tasks] == ["mc"] and rep.tasks[0].n == 3
    assert any("use different tokenizers" in w and "allowed by --allow-different-tokenizers" in w for w in rep.warnings)
    with pytest.raises(BadInput) as e:
        verify(llama, cand, Profile.model_validate(causal_profile(task_files)), allow_different_tokenizers=True)
    msg = e.value.line()
    assert "has perplexity task(s) ppl" in msg and "over different tokenizations are not comparable" in msg


def test_the_same_tokenizer_after_a_prune_is_accepted(llama, tmp_path, task_files):
    from compressor.prune.surgery import prune_model

    prune_model(llama, [1], tmp_path / "slim")
    rep = verify(llama, load_model(str(tmp_path / "slim")), mc_profile(task_files))
    assert not any("tokenizer" in w for w in rep.warnings) and rep.candidate["cut"]["removed_layers"] == [1]


# --- task data is checked before any model loads ---------------------------------------------------

def test_cli_reports_a_missing_task_file_before_loading_models(task_files, tmp_path, capsys):
    data = causal_profile(task_files)
    data["tasks"][2]["data"] = str(tmp_path / "gone.jsonl")
    prof = write_profile(tmp_path / "p.yaml", data)
    code, _, err = run(["verify", str(tmp_path / "no-such-base"), str(tmp_path / "no-such-cand"), "--profile",
                        str(prof), "--report-dir", str(tmp_path / "r")], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert f"data file {tmp_path / 'gone.jsonl'} does not exist" in errors[0] and "no-such-base" not in err
    assert "loading" not in err


def test_empty_perplexity_data_is_named_as_task_data(task_files, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    data = causal_profile(task_files)
    data["tasks"][0]["data"] = str(tmp_path / "empty.txt")
    with pytest.raises(BadInput) as e:
        check_task_data(Profile.model_validate(data))
    assert e.value.line() == f"perplexity task data {tmp_path / 'empty.txt'} is empty; pass a file with text in it"
    from compressor.sources.data import read_documents

    with pytest.raises(BadInput, match=r"^calibration data .*empty\.txt is empty"):
        read_documents(str(tmp_path / "empty.txt"))


# --- damaged cache entries -------------------------------------------------------------------------

def _digest(records, metrics):
    from compressor.fingerprint import digest_json

    return digest_json({"records": records, "metrics": metrics})


def _damage(kind, good):
    r, m = good["records"], good["metrics"]
    signed = lambda rec, met: {"records": rec, "metrics": met, "digest": _digest(rec, met)}  # noqa: E731
    return {
        "not json": "{broken",
        "list": json.dumps([r, m]),
        "string": json.dumps("records"),
        "no keys": json.dumps({}),
        "no metrics": json.dumps({"records": r, "digest": good["digest"]}),
        "records not dicts": json.dumps(signed([1, 2, 3], m)),
        "records a dict": json.dumps(signed({"0": r[0]}, m)),
        "metrics a list": json.dumps(signed(r, [m["acc"]])),
        "metric missing": json.dumps(signed(r, {"f1": 0.5})),
        "metric nan": json.dumps(signed(r, {**m, "acc": float("nan")})),
        "metric infinite": json.dumps(signed(r, {**m, "acc": float("inf")})),
        "metric a string": json.dumps(signed(r, {**m, "acc": "0.9"})),
        "edited metric, old digest": json.dumps({**good, "metrics": {**m, "acc": 0.123}}),
        "no digest": json.dumps({"records": r, "metrics": m}),
    }[kind]


@pytest.mark.parametrize("kind", ["not json", "list", "string", "no keys", "no metrics", "records not dicts",
                                  "records a dict", "metrics a list", "metric missing", "metric nan",
                                  "metric infinite", "metric a string", "edited metric, old digest", "no digest"])
def test_a_damaged_cache_entry_is_recomputed(kind, llama, task_files, tmp_path):
    profile = mc_profile(task_files)
    fresh = verify(llama, llama, profile)  # same fingerprint for both roles: one cache entry
    assert fresh.tasks[0].cached == {"base": False, "candidate": True}
    [entry] = (tmp_path / "cache" / "verify").glob("*.json")
    good = json.loads(entry.read_text())
    assert good["digest"] == _digest(good["records"], good["metrics"]) and math.isfinite(good["metrics"]["acc"])
    entry.write_text(_damage(kind, good), encoding="utf-8")
    rep = verify(llama, llama, profile)
    assert rep.tasks[0].cached["base"] is False
    assert rep.tasks[0].base == rep.tasks[0].candidate == fresh.tasks[0].base
    assert rep.tasks[0].base_metrics == fresh.tasks[0].base_metrics
    assert json.loads(entry.read_text()) == good  # rewritten intact, and trusted again
    assert verify(llama, llama, profile).tasks[0].cached == {"base": True, "candidate": True}


# --- compression.json ------------------------------------------------------------------------------

@pytest.fixture
def slim(llama, tmp_path):
    from compressor.prune.surgery import prune_model

    prune_model(llama, [1], tmp_path / "slim")
    return tmp_path / "slim"


@pytest.mark.parametrize("text, problem", [('{"removed_layers": [1],\n  oops', "is not valid JSON (line 2)"),
                                           ("[1, 2]", "holds a JSON list, not an object")])
def test_corrupt_compression_json_is_bad_input_everywhere(text, problem, llama, slim, task_files, tmp_path):
    from compressor.export.bench import _compression
    from compressor.prune.surgery import read_compression
    from compressor.repair.api import repair_checkpoint
    from compressor.repair.settings import RepairSettings

    f = slim / "compression.json"
    assert read_compression(slim)["removed_layers"] == [1] and _compression(slim) == read_compression(slim)
    cand = load_model(str(slim))
    f.write_text(text, encoding="utf-8")
    want = f"{f} {problem}; re-create the model with avss prune, or delete the file"
    for call in (lambda: verify(llama, cand, mc_profile(task_files)), lambda: read_compression(slim),
                 lambda: _compression(slim),
                 lambda: repair_checkpoint(llama, str(slim), RepairSettings(method="linear"), None,
                                           str(tmp_path / "fixed"))):
        with pytest.raises(BadInput) as e:
            call()
        assert e.value.line() == want
    f.unlink()
    assert read_compression(slim) == {} and _compression(slim) == {}
