"""Every package folder ships: pyproject lists its packages explicitly (export/ is mapped to compressor.export)."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "compressor").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
    assert cfg["package-dir"] == {"compressor.export": "export"} and "compressor.export" in listed


def test_the_public_api_resolves_lazily():
    """`from compressor import X` for every name the README's library section uses; `import compressor`
    alone does not import torch (run in a fresh interpreter: other tests have imported it here)."""
    import subprocess
    import sys

    code = ("import sys, compressor\n"
            "assert 'torch' not in sys.modules\n"
            "missing = [n for n in compressor.__all__ if not callable(getattr(compressor, n)) and n != '__version__']\n"
            # again once every module is imported: a name a subpackage shadows (``verify``) is caught here
            "import importlib\n"
            "[importlib.import_module(m.split(':')[0]) for m in compressor._PUBLIC.values()]\n"
            "missing = [n for n in compressor.__all__ if not callable(getattr(compressor, n)) and n != '__version__']\n"
            "assert not missing, missing\n"
            "print(len(compressor.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    import compressor

    used = {n.strip() for line in readme.splitlines() if line.startswith("from compressor import ")
            for n in line.removeprefix("from compressor import ").split("#")[0].split(",")}
    assert used and used <= set(compressor.__all__), used - set(compressor.__all__)


def test_the_library_has_no_import_cycles():
    """Every import in compressor/ and export/ (module level and inside functions) points one way: a
    module never imports, directly or through others, a module that imports it. (Plugins that carry an
    optional dependency are loaded by name: verify.kinds.base.PLUGIN_KINDS, the built-in classifier.)"""
    import ast

    mods = {}
    for base, pkg in ((ROOT / "compressor", "compressor"), (ROOT / "export", "compressor.export")):
        for f in base.rglob("*.py"):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts]) if parts else pkg] = f
    edges: dict[str, set[str]] = {m: set() for m in mods if m != "compressor"}  # the root only re-exports names
    for m in edges:
        for node in ast.walk(ast.parse(mods[m].read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    target = f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                    if target in edges:
                        edges[m].add(target)
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in edges)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(edges[u]):
            assert state.get(v) != 1, "import cycle: " + " -> ".join(path[path.index(v):] + [v])
            if v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


# the library's floors, lowest first (docs/architecture.md): a module imports only from its own floor or below,
# so a reader can learn the pipeline bottom-up and a change to a floor cannot reach down
FLOORS = [
    ("base", ["compressor.errors", "compressor.defaults", "compressor.registry", "compressor.diagnostics", "compressor.compat",
              "compressor.files", "compressor.fingerprint"]),
    ("architectures", ["compressor.architectures"]),
    ("sources", ["compressor.sources"]),
    ("score", ["compressor.score"]),
    ("cut", ["compressor.prune"]),  # less prune.api, the command
    ("repair", ["compressor.repair"]),
    ("commands", ["compressor.prune.api", "compressor.repair.api"]),
    ("verify", ["compressor.profiles", "compressor.verify"]),
    ("export", ["compressor.export"]),
    ("run", ["compressor.run"]),
    ("cli", ["compressor.cli", "compressor.__main__"]),
]


def _floor(module: str) -> int | None:
    found = [(len(p), i) for i, (_, prefixes) in enumerate(FLOORS) for p in prefixes
             if module == p or module.startswith(p + ".")]
    return max(found)[1] if found else None


def test_imports_run_down_the_floors():
    """Every import in compressor/ and export/, at module level or inside a function, reaches the importer's
    floor or one below it; every module has a floor (a new package is placed on purpose)."""
    import ast

    up, homeless = [], []
    for base, pkg in ((ROOT / "compressor", "compressor"), (ROOT / "export", "compressor.export")):
        for f in sorted(base.rglob("*.py")):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            me = ".".join([pkg, *parts])
            if me == "compressor":
                continue  # the root only maps public names to their modules, lazily
            mine = _floor(me)
            if mine is None:
                homeless.append(me)
                continue
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else
                         [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for n in names:
                    theirs = _floor(n) if n.startswith("compressor.") else None
                    if theirs is not None and theirs > mine:
                        up.append(f"{me} ({FLOORS[mine][0]}) imports {n} ({FLOORS[theirs][0]})")
    assert not homeless, f"modules on no floor (add them to FLOORS and docs/architecture.md): {homeless}"
    assert not up, up


def test_a_floor_violation_is_seen():
    assert _floor("compressor.score.patch") == 3 and _floor("compressor.prune.api") == 6
    assert _floor("compressor.prune.surgery") == 4 < _floor("compressor.repair.linear") == 5
    assert _floor("compressor.export.bench") == 8 and _floor("compressor.verify.kinds.base") == 7


def test_no_code_outside_a_registry_compares_a_scorer_repair_or_exporter_name():
    """Callers ask the registries (scorers, repairs, exporters; task kinds have their own check in
    tests/verify/test_kinds.py): a comparison with a registered name outside its registry is dispatch
    by name, the thing the registries replace."""
    import ast

    from compressor.export.exporters import EXPORTERS
    from compressor.repair.methods import REPAIRS
    from compressor.score.methods import SCORERS

    registries = {
        "scorer": (set(SCORERS), {"compressor/score/methods.py"}),
        "repair": (set(REPAIRS), {"compressor/repair/api.py", "compressor/repair/linear.py", "compressor/repair/distill.py"}),
        "exporter": (set(EXPORTERS), {"export/exporters.py", "export/genai.py", "export/convert.py"}),
    }
    hits = []
    for folder in ("compressor", "export"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Compare):
                    continue
                consts = [c.value for part in [node.left, *node.comparators] for c in ast.walk(part)
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                for what, (names, owners) in registries.items():
                    if rel not in owners and set(consts) & names:
                        hits.append(f"{rel}:{node.lineno}: compares a {what} name {sorted(set(consts) & names)}")
    assert not hits, hits


def test_one_cache_default():
    """make, the scripts, CI and the tests use the CLI's own cache default (AVSS_CACHE, else
    ~/.cache/avss-compressor): a second default made the README's commands convert the built-in model again
    and miss every cached verify after `make demo`."""
    import re

    from compressor.sources.cache import cache_location

    setters = re.compile(r"AVSS_CACHE\s*(\?=|:=|=(?!=)|\})|setdefault\(\s*[\"']AVSS_CACHE")
    places = [ROOT / "Makefile", ROOT / ".ci" / "run", *(ROOT / "scripts").glob("*.sh"), ROOT / "tests" / "conftest.py"]
    assert [str(p.relative_to(ROOT)) for p in places if setters.search(p.read_text())] == []
    assert "~/.cache/avss-compressor" in (ROOT / "README.md").read_text()  # the CI example caches that folder
    import os

    saved = {k: os.environ.pop(k, None) for k in ("AVSS_CACHE", "XDG_CACHE_HOME")}
    try:
        assert cache_location() == (Path.home() / ".cache" / "avss-compressor", "HOME")
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
