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
    from compressor.verify.kinds.perplexity import Perplexity

    def broken(self, *a, **k):
        raise RuntimeError("index 7 is out of bounds for dimension 0 with size 3")

    monkeypatch.setenv("AVSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Perplexity, "evaluate", broken)
    model = str(tiny("llama"))
    code, _, err = run(["verify", model, model, "--profile", str(write_ppl_profile(tmp_path, 0.5)),
                        "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert line.startswith("error: unexpected RuntimeError: index 7 is out of bounds") and "report it" in line
    assert "batch_size" not in line
    assert compute_error(RuntimeError("index 7 is out of bounds"), "x", "y") is None


def test_library_diagnostics_go_through_the_cli_sink_not_print(capsys):
    """The library logs to the ``avss`` logger (ruff's T20 keeps print() out of it); the CLI routes that
    logger into its one sink, on stderr, never stdout (which carries data)."""
    from compressor import diagnostics
    from compressor.cli.output import route_library_diagnostics

    route_library_diagnostics()
    route_library_diagnostics()  # idempotent: one handler, one line
    diagnostics.note("converting something once")
    diagnostics.warn("something to know")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("converting something once") == 1 and "warning: something to know" in captured.err
