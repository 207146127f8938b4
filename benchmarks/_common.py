"""Helpers shared by the benchmark scripts (not part of the library)."""
from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def eval_batches(tokenizer, tokens: int = 2048, window: int = 512, source: str = "builtin:python-docs"):
    """Held-out text (the evaluation split: disjoint from calibration) as packed windows."""
    from compressor.sources.data import CalibrationSpec, load_calibration

    spec = CalibrationSpec(source=source, samples=tokens // window, seq_len=window, batch_size=2, split="evaluation")
    return load_calibration(spec, tokenizer, "decoder")


def perplexity(loaded, data) -> float:
    """exp(mean next-token NLL) over real tokens, computed by the library's leave-one-out loss."""
    from compressor.score.passes import model_loss

    return math.exp(model_loss(loaded, data)[0])


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs.

    A thread samples RSS every 2 ms (torch releases the GIL inside kernels, so it keeps up); the
    increment over the RSS on entry is what the block itself needed (activations, logits).
    """

    MB = 1024 * 1024

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self) -> "PeakRSS":
        import threading

        import psutil

        self._proc = psutil.Process()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / self.MB

    @property
    def baseline_mb(self) -> float:
        return self.baseline / self.MB

    @property
    def increment_mb(self) -> float:
        return (self.peak - self.baseline) / self.MB


class ResultsPage:
    """Tee what a benchmark prints into ``docs/results/<name>.md``, headed by when, at which commit, on
    what and by which command it was measured; written only when the run completes.

    Why: a figure copied by hand into a document drifts from the code that measured it. A page is
    only ever this output, so re-running the script is the one way to change it.
    """

    def __init__(self, name: str, title: str, enabled: bool = True, folder: str | None = None):
        from pathlib import Path

        self.name, self.title, self.enabled = name, title, enabled
        self.folder = Path(folder) if folder else Path(__file__).resolve().parents[1] / "docs" / "results"

    def __enter__(self) -> "ResultsPage":
        import io
        import sys

        self._buffer, self._stdout = io.StringIO(), sys.stdout
        page = self

        class Tee(io.TextIOBase):
            def write(self, s: str) -> int:
                page._buffer.write(s)
                return page._stdout.write(s)

            def flush(self) -> None:
                page._stdout.flush()

        if self.enabled:
            sys.stdout = Tee()
        self._commit = self._revision()  # what was measured is the code at the start, not after a long run
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        import sys

        sys.stdout = self._stdout
        # a script that ends with sys.exit(0 or 1) completed its measurement (1: a goal not met, still a result)
        completed = exc_type is None or (exc_type is SystemExit and getattr(exc, "code", None) in (None, 0, 1))
        if self.enabled and completed:
            path = self.write(self._buffer.getvalue())
            print(f"\nwrote {path}")

    def _revision(self) -> tuple[str, str]:
        """(commit, " (with uncommitted code changes)" or ""): uncommitted edits to the code, not the docs, are said."""
        import subprocess

        root = self.folder.parents[1]

        def git(*args: str) -> str:
            try:
                return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
            except (OSError, subprocess.CalledProcessError):
                return ""

        code = ("compressor", "export", "benchmarks", "profiles", "pyproject.toml")
        dirty = " (with uncommitted code changes)" if git("status", "--porcelain", "--untracked-files=no", "--", *code) else ""
        return git("rev-parse", "--short=12", "HEAD") or "unknown", dirty

    def header(self) -> str:
        import platform
        import shlex
        import sys
        import time

        root = self.folder.parents[1]
        commit, dirty = getattr(self, "_commit", None) or self._revision()
        cmd = "python " + " ".join(shlex.quote(a) for a in [_relative(sys.argv[0], root), *sys.argv[1:]])
        return (f"# {self.title}\n\nGenerated by `{cmd}` on {time.strftime('%Y-%m-%d', time.gmtime())} at commit "
                f"`{commit}`{dirty}, on {os.cpu_count()} CPU cores ({platform.machine()}, Python "
                f"{platform.python_version()}). Never edited by hand: re-run the command to refresh it. "
                f"Back to [docs/benchmarks.md](../benchmarks.md).\n\n```text\n")

    def write(self, body: str) -> str:
        from compressor.files import atomic_write_text

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.name}.md"
        atomic_write_text(path, self.header() + body.strip("\n") + "\n```\n")
        return str(path)


def _relative(p: str, root) -> str:
    from pathlib import Path

    try:
        return Path(p).resolve().relative_to(root).as_posix()
    except ValueError:
        return p
