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
            "assert not missing, missing\n"
            "print(len(compressor.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    import compressor

    used = {n.strip() for line in readme.splitlines() if line.startswith("from compressor import ")
            for n in line.removeprefix("from compressor import ").split("#")[0].split(",")}
    assert used and used <= set(compressor.__all__), used - set(compressor.__all__)
