"""Which failed computations get which advice: only a real out-of-memory error is told to lower the
batch size; a dtype the device has no kernel for is bad input; anything else is a bug to report."""
import pytest
import torch

from compressor.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, compute_error
from helpers import error_lines, run, write_ppl_profile


@pytest.mark.parametrize("exc,code,words", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), EXIT_RUNTIME, "ran out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), EXIT_RUNTIME,
     "ran out of memory"),
    (RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\''), EXIT_BAD_INPUT, "no float16 kernel"),
])
def test_known_failures_get_their_own_advice(exc, code, words):
    known = compute_error(exc, "scoring", "try a smaller --batch-size")
    assert known is not None and known.exit_code == code and words in known.line()
    assert ("--batch-size" in known.line()) == (code == EXIT_RUNTIME)


def test_any_other_runtime_error_is_not_answered_with_batch_size_advice(tiny, tmp_path, capsys, monkeypatch):
    from compressor.verify import tasks

    def broken(self, *a, **k):
        raise RuntimeError("index 7 is out of bounds for dimension 0 with size 3")

    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tasks.Perplexity, "evaluate", broken)
    model = str(tiny("llama"))
    code, _, err = run(["verify", model, model, "--profile", str(write_ppl_profile(tmp_path, 0.5)),
                        "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert line.startswith("error: unexpected RuntimeError: index 7 is out of bounds") and "report it" in line
    assert "batch_size" not in line
    assert compute_error(RuntimeError("index 7 is out of bounds"), "x", "y") is None
