"""Where converted built-in models and cached results live (``$AVSS_CACHE``)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("AVSS_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "avss-compressor"
    root.mkdir(parents=True, exist_ok=True)
    return root
