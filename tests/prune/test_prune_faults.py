"""Faults in `avss prune`: leftovers of a killed prune, Ctrl-C named for prune, disk errors, odd --out paths."""
import os
import subprocess
import sys

import pytest

from helpers import error_lines, run


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _prune(tiny, out, *extra):
    return ["prune", str(tiny("llama")), "--method", "random", "--num-layers", "1", "--out", str(out), *extra]


def test_leftovers_of_a_killed_prune_are_removed_by_the_next(tiny, tmp_path, capsys):
    out = tmp_path / "slim"
    stale = tmp_path / f".slim.tmp-{_dead_pid()}-0123abcd"  # as `kill -9` during the save leaves it
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    code, _, err = run(_prune(tiny, out), capsys)
    assert code == 0, err
    assert not stale.exists() and f"removed {stale.name}, left by an interrupted process" in err


def test_ctrl_c_in_prune_names_prune(tiny, tmp_path, capsys, monkeypatch):
    import compressor.prune.surgery as surgery

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(surgery, "save_checkpoint", interrupted)
    code, _, err = run(_prune(tiny, tmp_path / "slim"), capsys)
    assert code == 130
    (line,) = error_lines(err)
    assert line.startswith("error: avss prune interrupted (Ctrl-C)") and "avss run" not in line


@pytest.mark.parametrize("errno_,code_wanted,needle", [(28, 3, "no space left on the device while writing"),
                                                       (30, 2, "read-only file system")])
def test_disk_errors_while_saving_name_the_file_and_the_fix(errno_, code_wanted, needle, tiny, tmp_path, capsys,
                                                           monkeypatch):
    import transformers.modeling_utils as mu

    argv = _prune(tiny, tmp_path / "slim")  # the tiny model is saved before the disk "fails"

    def fail(*a, **kw):
        raise OSError(errno_, os.strerror(errno_), str(tmp_path / "x.safetensors"))

    monkeypatch.setattr(mu, "safe_save_file", fail)  # the disk fails under save_pretrained
    out = tmp_path / "slim"
    code, _, err = run(argv, capsys)
    assert code == code_wanted, err
    (line,) = error_lines(err)
    assert needle in line and "x.safetensors" in line and "unexpected" not in line
    assert not out.exists() and not list(tmp_path.glob(".slim.*"))


def test_a_dangling_symlink_out_is_named(tiny, tmp_path, capsys):
    out = tmp_path / "slim"
    out.symlink_to(tmp_path / "missing-disk" / "slim")
    code, _, err = run(_prune(tiny, out), capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "is a symbolic link to" in line and "does not exist" in line


def test_a_full_disk_while_the_tokenizer_is_saved_is_its_own_line(tiny, tmp_path, capsys, monkeypatch):
    """tokenizers raises a plain Exception ("No space left on device (os error 28)"): still the disk's line,
    exit 3, nothing left behind (it used to be "unexpected Exception ... report it")."""
    from transformers import PreTrainedTokenizerFast

    argv = _prune(tiny, tmp_path / "slim")

    def full(*a, **kw):
        raise Exception("No space left on device (os error 28)")  # noqa: TRY002 - what tokenizers raises

    monkeypatch.setattr(PreTrainedTokenizerFast, "_save_pretrained", full)
    code, _, err = run(argv, capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert "no space left on the device while writing" in line and "tokenizer.json" in line, line
    assert "unexpected" not in line and not (tmp_path / "slim").exists() and not list(tmp_path.glob(".slim.*"))


def test_a_plain_exception_naming_a_full_disk_is_the_disk_error():
    from compressor.errors import error_line_for, exit_code_for

    for exc in (Exception("No space left on device (os error 28)"), RuntimeError("IO error: Disk quota exceeded")):
        assert exit_code_for(exc) == 3 and error_line_for(exc).startswith("no space left on the device")
    assert error_line_for(Exception("something else")).startswith("unexpected Exception")


def test_an_out_path_that_is_not_utf8_is_refused_up_front(tiny, tmp_path, capsys):
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/slim\xff")
    code, _, err = run(_prune(tiny, out), capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "output " in line and "slim\\xff has a byte that is not UTF-8 text" in line, line
    assert list(tmp_path.iterdir()) == []
