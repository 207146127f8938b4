"""Helpers shared by the tests (importable: tests/ is on sys.path through the root conftest)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml


def run(argv, capsys):
    """``avss ARGV`` in-process -> (exit code, stdout, stderr)."""
    from compressor.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of a command's stderr (a bad input must give exactly one)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def write_ppl_profile(folder: Path, min_retention: float, name: str = "profile.yaml") -> Path:
    """Calibration and a perplexity task over local text (``folder/text.txt``) with this gate threshold."""
    import pydoc_data.topics as t

    text = folder / "text.txt"
    if not text.exists():
        text.write_text("\n\n".join(t.topics[k] for k in sorted(t.topics)[40:46]), encoding="utf-8")
    prof = {"name": "tiny-ppl", "model_kind": "causal-lm",
            "calibration": {"source": str(text), "samples": 4, "seq_len": 64, "batch_size": 4},
            "tasks": [{"name": "ppl", "kind": "perplexity", "data": str(text), "limit": 255, "window": 256,
                       "stride": 256}],
            "gate": {"min_retention": min_retention}, "eval": {"batch_size": 4, "max_length": 256}}
    p = folder / name
    p.write_text(yaml.safe_dump(prof), encoding="utf-8")
    return p



def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every pytest-xdist worker of this run sees (the run's temp root), for fixtures that cost
    tens of seconds: the first worker builds into it under a lock (``compressor.files.build_once``), the
    other waits for the lock without using a core, then reuses the result."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def library_log():
    """What the library said on the ``avss`` logger while the block ran: [(level, message)], notes as
    "info" and warnings as "warning" (the CLI routes the same records into its output sink)."""
    import logging

    from compressor.diagnostics import LOGGER

    lines: list[tuple[str, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelname.lower(), record.getMessage()))

    handler, level = Keep(), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)


def grouped(*, cut: bool = False, **flags):
    """Flat flag values, as a user types them, grouped into the settings the library's one-call commands take
    by the CLI's own option groups (``compressor.cli.options``): ``scorer``, ``calibration``, ``repair``, ``load``
    and, with ``cut``, ``cut``. Flags that belong to no group (``scores``, ``out``, ``protect`` on score, ...)
    pass through."""
    from compressor.cli import options as o
    from compressor.score.select import CutSettings

    def take(group):
        return {p.name: flags.pop(p.name) for p in group.params()[0] if p.name in flags}

    if "mode" in flags:  # score_checkpoint's name for --avss-mode
        flags["avss_mode"] = flags.pop("mode")
    seed = flags.pop("seed", 0)
    out = {"scorer": o.SCORER.build(flags.pop("method", None if cut else "avss"), seed, **take(o.SCORER))}
    if cut:
        out["cut"] = CutSettings(**{n: flags.pop(n) for n in ("ratio", "num_layers", "mass", "mass_order", "protect")
                                    if n in flags})
    out["calibration"] = o.CALIBRATION.build(**take(o.CALIBRATION))
    knobs = take(o.REPAIR)
    if knobs or "repair" in flags:
        out["repair"] = o.REPAIR.build(flags.pop("repair", None), seed, **knobs)
    out["load"] = o.LOAD.build(**take(o.LOAD))
    return {**out, **flags}
