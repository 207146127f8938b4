"""The CLI reference (docs/cli.md) stays in sync with the Typer app: every command has a section, every
flag of a command is documented inside that command's own section and every flag a section's table
names is the command's; the README's and the docs' relative links resolve, anchors included."""
import re
from pathlib import Path

import pytest
import typer.main

from compressor.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI_DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def _commands():
    return typer.main.get_command(app).commands


def _section(name: str) -> str:
    m = re.search(rf"^### `avss {name}\b.*?$(.*?)(?=^#{{2,3}} )", CLI_DOC, flags=re.S | re.M)
    assert m, f"docs/cli.md has no '### `avss {name} ...`' section"
    return m.group(1)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_flag_is_documented_in_its_section(name):
    text = _section(name)
    for param in _commands()[name].params:
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--") and opt != "--help":
                assert re.search(rf"(?:`|/ ){re.escape(opt)}(?![\w-])", text), \
                    f"avss {name}: {opt} is not documented in its docs/cli.md section"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_flag_a_section_documents_exists(name):
    """The reverse: a flag in the first column of a command's flag table is one of that command's flags
    (e.g. `--device-map` only where the command declares it)."""
    opts = {o for p in _commands()[name].params for o in p.opts + p.secondary_opts}
    for line in _section(name).splitlines():
        if line.startswith("| `"):
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line.split("|")[1]):
                assert flag in opts, f"docs/cli.md documents {flag} for avss {name}, which has no such flag"


def test_quickstart_commands_exist():
    assert "make demo" in README and "make test" in README


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    heads = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}
    return heads | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))])
def test_every_relative_link_resolves(doc):
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{doc}: link {target} points at a missing file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text(encoding="utf-8")), f"{doc}: link {target}: no such anchor"


def test_the_readme_stays_short():
    assert len(README.splitlines()) <= 350
