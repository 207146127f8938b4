"""The README's CLI reference stays in sync with the Typer app."""
from pathlib import Path

import pytest
import typer.main

from compressor.cli.app import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _commands():
    group = typer.main.get_command(app)
    return group.commands


@pytest.mark.parametrize("name", ["score", "prune", "verify"])
def test_every_flag_is_documented(name):
    cmd = _commands()[name]
    assert f"avss {name}" in README
    for param in cmd.params:
        for opt in param.opts:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in README or f"{opt} " in README or f"/ {opt}" in README, f"{name}: {opt} missing from README"


def test_every_command_is_documented():
    for name in _commands():
        assert f"### `avss {name}" in README
