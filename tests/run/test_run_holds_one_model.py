"""The run's verify step holds one model at a time: the base is freed before the candidate loads."""
import gc
import weakref


def test_the_runs_verify_step_frees_the_base_before_the_candidate_loads(tiny, tmp_path, ppl_profile, monkeypatch):
    from compressor.run import prepare
    from compressor.run.api import run_pipeline
    from compressor.run.config import RunConfig
    from compressor.run.context import RunContext

    bases: list[weakref.ref] = []
    seen: list[tuple[bool, bool]] = []
    real_load_base, real_load_candidate = prepare.load_base, RunContext.load_candidate

    def load_base(ctx):
        real_load_base(ctx)
        bases.append(weakref.ref(ctx.base.model))

    def load_candidate(self, folder):
        gc.collect()
        seen.append((self.base_held() is None, bases[0]() is None))
        return real_load_candidate(self, folder)

    monkeypatch.setattr(prepare, "load_base", load_base)
    monkeypatch.setattr(RunContext, "load_candidate", load_candidate)
    cfg = RunConfig(model=str(tiny("llama")), profile=str(ppl_profile(0.01)), out=str(tmp_path / "run"),
                    num_layers=1, skip_export=True)
    res = run_pipeline(cfg)
    assert res.exit_code == 0 and res.passed
    assert seen == [(True, True)]


def test_a_streamed_run_equals_the_in_memory_run(tiny, tmp_path, ppl_profile, monkeypatch):
    """``--stream``: score, linear patch, shard-by-shard cut and perplexity verify one block at a time give
    the same checkpoint and the same verdict as the run in memory."""
    import json

    from safetensors.torch import load_file

    from compressor.run.api import run_pipeline
    from compressor.run.config import RunConfig

    runs = {}
    for stream in (False, True):
        monkeypatch.setenv("AVSS_CACHE", str(tmp_path / f"cache-{stream}"))  # each run computes its verify
        cfg = RunConfig(model=str(tiny("llama")), profile=str(ppl_profile(0.01)), out=str(tmp_path / f"run-{stream}"),
                        num_layers=1, repair="linear", skip_export=True, stream=stream)
        res = run_pipeline(cfg)
        assert res.exit_code == 0 and res.passed
        runs[stream] = json.loads((tmp_path / f"run-{stream}" / "run.json").read_text())
    a, b = (load_file(str(tmp_path / f"run-{s}" / "model" / "model.safetensors")) for s in (False, True))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert runs[True]["repair"]["streamed"] is True and "streamed" not in runs[False]["repair"]
    assert runs[False]["removed"] == runs[True]["removed"]
    for ta, tb in zip(runs[False]["tasks"], runs[True]["tasks"]):
        for key in ("base", "candidate", "retention", "agreement"):
            assert abs(ta[key] - tb[key]) <= 1e-6 * abs(ta[key]), key


def test_run_stream_refuses_a_step_that_needs_the_whole_model(tiny, tmp_path, ppl_profile):
    import pytest

    from compressor.errors import BadInput
    from compressor.run.api import run_pipeline
    from compressor.run.config import RunConfig

    cfg = RunConfig(model=str(tiny("llama")), profile=str(ppl_profile(0.01)), out=str(tmp_path / "run"),
                    num_layers=1, repair="linear+distill", skip_export=True, stream=True)
    with pytest.raises(BadInput, match="--repair distill trains on the whole model"):
        run_pipeline(cfg)
