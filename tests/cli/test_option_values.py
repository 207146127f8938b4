"""Every float option of every command refuses NaN and inf as it is parsed (exit 2, one line), before the
command reads or loads anything: click takes "nan" and "inf" as floats, and a range check written
``x < 0`` lets NaN through (``--ridge nan`` used to fail after the model loaded)."""
import pytest
import typer

from helpers import error_lines, run


def _float_options():
    from compressor.cli.app import app

    group = typer.main.get_command(app)
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        for param in command.params:
            if param.param_type_name == "option" and param.type_descriptor.annotation is float:
                yield name, param


FLOATS = [(name, p.opts[0]) for name, p in _float_options()]


def test_every_float_option_is_checked():
    assert len(FLOATS) >= 9  # ratio, mass, ridge, heal-lr, heal-minutes, min-retention on prune/run/verify/repair
    unchecked = [(name, p.opts[0]) for name, p in _float_options() if p.callback is None]
    assert unchecked == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("command,flag", FLOATS)
def test_nan_and_inf_are_refused_as_they_are_parsed(command, flag, value, tmp_path, capsys):
    code, _, err = run([command, flag, value], capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"{flag} must be a finite number (got {float(value)})" in line, line
    assert "Traceback" not in err and "loading" not in err


@pytest.mark.parametrize("argv,needle", [
    (["score", "{m}", "--method", "sleb", "--max-remove", "9"], "--max-remove 9 is out of range for a 4-layer model"),
    (["score", "{m}", "--method", "sleb", "--max-remove", "0"], "--max-remove 0 is out of range for a 4-layer model"),
    (["score", "{m}", "--method", "sleb", "--protect", "9"], "--protect layer 9 is out of range for a 4-layer model"),
    (["prune", "{m}", "--method", "last-k", "--num-layers", "0", "--out", "{o}"], "--num-layers must be at least 1"),
    (["prune", "{m}", "--method", "last-k", "--num-layers", "-1", "--out", "{o}"], "--num-layers must be at least 1"),
    (["prune", "{m}", "--method", "last-k", "--num-layers", "4", "--out", "{o}"], "cannot remove 4 of 4 layers"),
    (["prune", "{m}", "--method", "patch-residual-greedy", "--repair", "linear", "--num-layers", "1",
      "--max-remove", "4", "--out", "{o}"], "--max-remove 4 is out of range for a 4-layer model with 1 protected"),
])
def test_counts_are_checked_against_the_config_before_the_model_loads(argv, needle, tiny, tmp_path, capsys):
    argv = [a.format(m=tiny("llama"), o=tmp_path / "slim") for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    (line,) = error_lines(err)
    assert needle in line, line
    assert "loading" not in err and not (tmp_path / "slim").exists()
