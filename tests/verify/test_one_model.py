"""verify holds one model at a time: the base's results first (computed or cached), then the base is
freed, and only then does the candidate load (issue 23 §3). Each test checks, at the moment the
candidate's loader is called, that the base model object is gone (a weak reference to it is dead)."""
import gc
import weakref

import pytest

from compressor.profiles import Profile
from compressor.sources.models import load_model
from compressor.verify.api import Deferred, verify
from helpers import run
from verify.conftest import causal_profile, write_profile


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))


def _mc(files):
    data = causal_profile(files)
    data["tasks"] = [t for t in data["tasks"] if t["name"] in ("ppl", "mc")]
    return data


def test_verify_frees_a_deferred_base_before_the_candidate_loads(tiny, task_files):
    folder = str(tiny("llama"))
    bases: list[weakref.ref] = []
    seen: list[bool] = []

    def load_base():
        b = load_model(folder)
        bases.append(weakref.ref(b.model))
        return b

    def load_candidate():
        gc.collect()
        seen.append(bases[0]() is None)
        return load_model(folder)

    rep = verify(Deferred(load_base), Deferred(load_candidate), Profile.model_validate(_mc(task_files)))
    assert seen == [True]
    assert [t.cached for t in rep.tasks] == [{"base": False, "candidate": True}] * 2  # same model: cached
    assert rep.base["spec"] == rep.candidate["spec"] == folder


def test_a_known_base_with_cached_results_never_loads(tiny, task_files):
    from compressor.verify.api import Identity

    base = load_model(str(tiny("llama")))
    profile = Profile.model_validate(_mc(task_files))
    verify(base, base, profile)  # fills the cache
    known = Identity.of(base)
    rep = verify(Deferred(lambda: pytest.fail("the base was loaded"), known), base, profile)
    assert all(t.cached == {"base": True, "candidate": True} for t in rep.tasks)


def test_cli_verify_frees_the_base_before_the_candidate_loads(tiny, task_files, tmp_path, capsys, monkeypatch):
    from compressor.cli import common

    real = common.load_for_eval
    bases: list[weakref.ref] = []
    seen: list[bool] = []

    def load_for_eval(model, *a, **k):
        if bases:
            gc.collect()
            seen.append(bases[0]() is None)
        loaded = real(model, *a, **k)
        if not bases:
            bases.append(weakref.ref(loaded.model))
        return loaded

    monkeypatch.setattr(common, "load_for_eval", load_for_eval)
    profile = write_profile(tmp_path / "p.yaml", _mc(task_files))
    m = str(tiny("llama"))
    code, _, err = run(["verify", m, m, "--profile", str(profile), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert seen == [True]


def test_cli_verify_names_a_missing_candidate_before_loading_the_base(tiny, task_files, tmp_path, capsys,
                                                                      monkeypatch):
    from compressor.cli import common

    monkeypatch.setattr(common, "load_for_eval", lambda *a, **k: pytest.fail("a model was loaded"))
    profile = write_profile(tmp_path / "p.yaml", _mc(task_files))
    code, _, err = run(["verify", str(tiny("llama")), str(tmp_path / "nope"), "--profile", str(profile),
                        "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err
