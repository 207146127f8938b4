"""Every measured figure in the README and the hand-written docs is quoted from a page a benchmark wrote.

The generated pages are what the benchmarks write: `docs/results/<name>.md` for each
`ResultsPage("<name>", ...)` under `benchmarks/`, and `docs/RESULTS.md` / `docs/REPAIR.md`
(`make results`). Every other `.md` (README.md, docs/*.md) is hand-written and follows one rule:

- A **figure** is a number with a unit of measure (`0.44x`, `1.7×`, `13.8 min`, `867 s`, `6.63 ms/token`,
  `5.59 GB`, `13 %`, ...) or any number with a decimal point (`0.351`, `18.71`, `9.4e-5`).
- Each figure sits in a *block*: a paragraph, a list item, a table row or a code block's comments. A list
  item, a table row or a code block also counts the links of the paragraph just above it (its caption).
- The block links at least one generated page, and the figure is on one of the pages it links: verbatim
  with its unit (× read as x), as a table cell of the page whose column header names the unit, or, with
  no unit, as a number on its own.

Not figures (nothing measured): code (inline code spans; fenced blocks except their comments), link
targets, versions (`1.32.0`: three parts), arXiv ids, whole numbers without a unit (counts, layer
indices, dates), a number that follows ≤ ≥ < > in its clause (a goal or a threshold), a factor of a
product (`32 × 256`, `0.8·ε`), and the few CONSTANTS below: settings that the docs quote, each checked
against the file that defines it.

A limit: a number without a unit is looked for anywhere on its linked page, so the same digits in another
column of that page also satisfy it; link the page that states the figure, not just one that holds it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _generated_pages() -> set[Path]:
    """The pages the benchmarks write, read from the scripts themselves."""
    pages = set()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        pages |= {DOCS / "results" / f"{n}.md" for n in re.findall(r'ResultsPage\(\s*"([\w-]+)"', text)}
        pages |= {DOCS / n for n in re.findall(r'\bout / "(\w+\.md)"', text)}   # RESULTS.md, REPAIR.md
    return pages


GENERATED = _generated_pages()
HAND_WRITTEN = sorted(p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", *DOCS.rglob("*.md")]
                      if p not in GENERATED)

# settings the docs quote as numbers, each with the file and the text that defines it
CONSTANTS = {
    "0.90": ("profiles/default.yaml", "min_retention: 0.90", "the default profile's gate"),
    "90 %": ("profiles/default.yaml", "min_retention: 0.90", "the default profile's gate (and the paper's claim)"),
    "0.25": ("compressor/defaults.py", "RATIO = 0.25", "the default cut"),
    "25 %": ("compressor/defaults.py", "RATIO = 0.25", "the default cut (and the paper's claim)"),
    "1.21x": ("compressor/sources/memory.py", "LOAD_FACTOR = 1.21", "the load estimate's factor"),
    "2.4x": ("compressor/sources/memory.py", "EXPORT_FACTOR = 2.4", "the export estimate's factor"),
    "1 ms": ("export/_bench_worker.py", "PeakRSS(0.001", "the bench's RSS sampling interval"),
}

# unit as written -> its canonical form (synonyms match each other on the page)
UNITS = {"x": "x", "×": "x", "ms/token": "ms/token", "tokens/s": "tokens/s", "ms": "ms", "seconds": "s",
         "s": "s", "minutes": "min", "min": "min", "hours": "h", "h": "h", "GB": "GB", "GiB": "GiB",
         "MB": "MB", "MiB": "MiB", "KB": "KB", "%": "%"}
_SYNONYMS = {c: sorted({u for u, k in UNITS.items() if k == c and u != "×"}, key=len, reverse=True)
             for c in set(UNITS.values())}
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True) if u not in "x×")
FIGURE = re.compile(rf"(?<![\w.])(?P<num>{_NUM})(?:(?P<times>[x×])|\s?(?P<unit>{_UNIT}))?(?!\w)(?!\.\d)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Figure:
    number: str
    unit: str | None

    def __str__(self) -> str:
        if not self.unit:
            return self.number
        return f"{self.number}{self.unit}" if self.unit == "x" else f"{self.number} {self.unit}"


@dataclass
class Block:
    line: int
    kind: str            # paragraph, item, row, code, heading
    text: str
    links: list[str]


def _blocks(text: str) -> list[Block]:
    """Split a page into blocks; list items, table rows and code blocks get their caption's links too."""
    out: list[Block] = []
    lines = text.splitlines()
    i, caption = 0, None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        start = i
        if line.lstrip().startswith("```"):
            i += 1
            comments = []
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                m = re.search(r"(?:^|\s)(?:#|//)\s(.*)$", lines[i])
                comments.append(m.group(1) if m else "")
                i += 1
            i += 1
            out.append(Block(start + 1, "code", "\n".join(comments), list(caption or [])))
            caption = None
            continue
        if line.startswith("#"):
            out.append(Block(start + 1, "heading", line, []))
            i, caption = i + 1, None
            continue
        if line.lstrip().startswith("|"):
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                out.append(Block(i + 1, "row", lines[i], list(caption or [])))
                i += 1
            caption = None
            continue
        if re.match(r"\s*(?:[-*]|\d+\.) ", line):
            while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "```")):
                item = [lines[i]]
                i += 1
                while (i < len(lines) and lines[i].strip() and not re.match(r"\s*(?:[-*]|\d+\.) ", lines[i])
                       and not lines[i].lstrip().startswith(("|", "```"))):
                    item.append(lines[i])
                    i += 1
                out.append(Block(start + 1, "item", "\n".join(item), list(caption or [])))
                start = i
            caption = None
            continue
        para = []
        while (i < len(lines) and lines[i].strip() and not lines[i].startswith("#")
               and not lines[i].lstrip().startswith(("|", "```"))):
            para.append(lines[i])
            i += 1
        block = Block(start + 1, "paragraph", "\n".join(para), [])
        out.append(block)
        caption = LINK.findall(block.text)
    for b in out:
        b.links = LINK.findall(b.text) + b.links
    return out


def _clean(text: str) -> str:
    """What is prose: no inline code, link targets, URLs, HTML tags or arXiv ids."""
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = LINK.sub("]", text)
    text = re.sub(r"https?://\S+|<[^>\n]*>", " ", text)
    return re.sub(r"arXiv \d{4}\.\d{4,5}", " ", text)


def figures(text: str) -> list[Figure]:
    """The figures in a block's prose (see the module docstring for what is not one)."""
    text = _clean(text)
    found = []
    for m in FIGURE.finditer(text):
        num, unit = m.group("num"), ("x" if m.group("times") else UNITS.get(m.group("unit") or "", None))
        if not unit and "." not in num:
            continue                                   # a count, an index, a date
        if not m.group("times") and (re.match(r"\s*[×·]", text[m.end():])
                                     or re.search(r"[×·]\s*$", text[:m.start()])):
            continue                                   # a factor of a product
        clause = re.split(r"[,;:()\[\]|\n]", text[:m.start()])[-1]
        if re.search(r"[≤≥<>]", clause):
            continue                                   # a goal or a threshold
        found.append(Figure(num, unit))
    return found


def _cells(page: str):
    """(cell, its column's header) for every cell of every table on a page."""
    header = None
    for line in page.splitlines():
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            yield from zip(cells, header)


def on_page(fig: Figure, page: str) -> bool:
    page = page.replace("×", "x")
    num = re.escape(fig.number)
    if not fig.unit:
        return bool(re.search(rf"(?<![\w.]){num}(?!\w)(?!\.\d)", page))
    units = _SYNONYMS[fig.unit]
    if re.search(rf"(?<![\w.]){num}\s?(?:{'|'.join(map(re.escape, units))})(?!\w)", page):
        return True
    return any(cell == fig.number and set(units) & set(re.findall(r"[\w/%]+", head))
               for cell, head in _cells(page))


def problems(doc: Path, text: str) -> list[str]:
    """Each figure of a hand-written page that is not quoted from a generated page it links."""
    out = []
    for block in _blocks(text):
        pages = []
        for target in block.links:
            file = target.partition("#")[0]
            if file and not re.match(r"[a-z]+://", file) and (doc.parent / file).resolve() in GENERATED:
                pages.append((doc.parent / file).resolve())
        for fig in figures(block.text):
            if str(fig) in CONSTANTS:
                continue
            if not pages:
                out.append(f"{doc.name}:{block.line}: {fig} is quoted without a link to the generated page "
                           f"it comes from")
            elif not any(p.exists() and on_page(fig, p.read_text(encoding="utf-8")) for p in pages):
                names = ", ".join(p.relative_to(ROOT).as_posix() for p in pages)
                out.append(f"{doc.name}:{block.line}: {fig} is not on the page it links ({names})")
    return out


@pytest.mark.parametrize("doc", HAND_WRITTEN)
def test_every_figure_is_quoted_from_a_linked_generated_page(doc):
    path = ROOT / doc
    found = problems(path, path.read_text(encoding="utf-8"))
    assert not found, "figures must be copied from a generated page linked next to them:\n" + "\n".join(found)


def test_the_generated_pages_are_the_benchmarks_output():
    assert DOCS / "RESULTS.md" in GENERATED and DOCS / "REPAIR.md" in GENERATED
    for page in (DOCS / "results").glob("*.md"):
        assert page in GENERATED, f"{page.name} is under docs/results/ but no benchmark writes it"
    for page in GENERATED:
        if page.exists():
            assert "Generated by `python benchmarks/" in page.read_text(encoding="utf-8")[:2000], page.name


@pytest.mark.parametrize("figure", sorted(CONSTANTS))
def test_quoted_constants_match_their_source(figure):
    path, snippet, _why = CONSTANTS[figure]
    assert snippet in (ROOT / path).read_text(encoding="utf-8"), f"{figure}: {path} no longer says {snippet!r}"


# the rule itself, on small pages (the page linked is a real generated one)
SCALE = "results/scale.md"


def _check(text: str) -> list[str]:
    return problems(DOCS / "example.md", text)


def test_a_figure_without_a_page_is_caught():
    assert _check("Streamed scoring peaked at 2.44 GB.")
    assert _check("It keeps 0.351 of the perplexity.")
    assert _check("```bash\nmake test   # the suite, 5 min 26 s\n```")
    assert _check("Measured in [the CLI reference](cli.md): 0.44x.")          # a link, but not to a generated page


def test_a_figure_not_on_its_page_is_caught():
    assert _check(f"Streamed scoring peaked at 2.43 GB ([scale]({SCALE})).")
    assert _check(f"Streamed scoring peaked at 0.44 GB ([scale]({SCALE})).")   # the number is there, not in GB


def test_a_figure_on_its_page_passes():
    assert not _check(f"Streamed scoring peaked at 0.44x the checkpoint, 2.44 GB ([scale]({SCALE})).")
    assert not _check(f"In memory: 0.81× the checkpoint ([scale]({SCALE})).")   # a table cell, × read as x
    assert not _check(f"Measured ([scale]({SCALE})):\n\n| shape | streamed |\n|---|---|\n| 8 blocks | 0.68x |")
    assert not _check(f"Measured ([scale]({SCALE})):\n\n- importing torch: 0.51 GB\n- the 8 B shape: 5.59 GB")
    assert not _check(f"The export was refused in 4.4 s ([scale]({SCALE})).")   # a cell under 'wall s'


def test_what_is_not_a_figure():
    assert figures("torch 2.13.0, 32 × 256 tokens, 30 layers, 2026-12-07, arXiv 2411.02117, `--ratio 0.3`") == []
    assert figures("goal: ≤ 0.5× the checkpoint; score ≤ one block + embeddings + 1 GB; P ≈ 0.8·ε/σ") == []
    assert [str(f) for f in figures("kept 0.871 (13 %), 1.7× faster, 14.0 min, 9.4e-5, 6.63 ms/token.")] == \
        ["0.871", "13 %", "1.7x", "14.0 min", "9.4e-5", "6.63 ms/token"]
