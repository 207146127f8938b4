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
