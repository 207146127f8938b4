"""Peak RSS, importing only the stdlib (psutil once sampling) because the processes using it are the ones measured."""
from __future__ import annotations

import atexit
import sys
import threading
from typing import Callable

MB = float(2**20)


class PeakRSS:
    """Peak RSS of this process (and, given ``device_mb``, of device memory in MB) while the ``with`` block runs.

    A thread samples every ``interval`` s (torch and ONNX Runtime release the GIL inside kernels, so it keeps
    up); ``baseline`` is the RSS on entry, so ``increment_mb`` is what the block itself needed. The thread
    competes with ONNX Runtime's spinning intra-op threads: the bench worker samples only in a separate pass.
    """

    def __init__(self, interval: float = 0.002, device_mb: Callable[[], float] | None = None):
        self.interval, self.device_mb = interval, device_mb
        self.baseline = self.peak = 0  # bytes
        self.device_peak: float | None = None  # MB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PeakRSS":
        import psutil

        self._proc = psutil.Process()
        self._sample()
        self.baseline = self.peak
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)
        if self.device_mb is not None:
            used = self.device_mb()
            self.device_peak = used if self.device_peak is None else max(self.device_peak, used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    @property
    def baseline_mb(self) -> float:
        return self.baseline / MB

    @property
    def increment_mb(self) -> float:
        return (self.peak - self.baseline) / MB


def lifetime_peak_mb() -> float:
    """This process's peak RSS since it started (``ru_maxrss``), imports included."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def high_water_kb() -> int | None:
    """This process's own peak RSS in kB, Linux's ``VmHWM`` (reset by exec, unlike the ``ru_maxrss`` a parent
    gets for its child, which carries the parent's mark across fork and exec); None without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def record_high_water_at_exit(path: str) -> None:
    """Write ``high_water_kb()`` to ``path`` as this process exits, however it exits (``recorded_high_water``)."""

    def write() -> None:
        kb = high_water_kb()
        if kb is not None:
            with open(path, "w", encoding="ascii") as fh:
                fh.write(str(kb))

    atexit.register(write)


def recorded_high_water(path: str) -> int | None:
    """The peak (bytes) a process recorded with ``record_high_water_at_exit``; None if it died before it could."""
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip()) * 1024
    except (OSError, ValueError):
        return None
