"""The README's CLI reference stays in sync with the Typer app: every command has a section and
every flag of a command is documented inside that command's own section."""
import re
from pathlib import Path

import pytest
import typer.main

from compressor.cli.app import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _commands():
    return typer.main.get_command(app).commands


def _section(name: str) -> str:
    m = re.search(rf"^### `avss {name}\b.*?$(.*?)(?=^#{{2,3}} )", README, flags=re.S | re.M)
    assert m, f"README has no '### `avss {name} ...`' section"
    return m.group(1)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_flag_is_documented_in_its_section(name):
    text = _section(name)
    for param in _commands()[name].params:
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--") and opt != "--help":
                assert re.search(rf"(?:`|/ ){re.escape(opt)}(?![\w-])", text), \
                    f"avss {name}: {opt} is not documented in its README section"


def test_quickstart_commands_exist():
    assert "make demo" in README and "make test" in README
