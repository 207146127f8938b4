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
