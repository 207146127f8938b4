"""compressor.export.peak_rss: the one peak-RSS sampler (bench worker, benchmark scripts) and the high-water mark
a child records for its parent (benchmarks/scale.py)."""
import subprocess
import sys
import time

import pytest

from compressor.export.peak_rss import PeakRSS, high_water_kb, lifetime_peak_mb, recorded_high_water

MB = 2**20


def _touch(n_mb: int) -> bytearray:
    block = bytearray(n_mb * MB)
    block[::4096] = b"x" * len(block[::4096])  # resident, not just reserved
    return block


def test_sampler_sees_what_the_block_allocated_and_the_device_probe():
    readings: list[float] = []

    def device_mb() -> float:  # rises with every reading: the peak is the last one
        readings.append(float(len(readings) + 1))
        return readings[-1]

    with PeakRSS(0.001, device_mb=device_mb) as rss:
        block = _touch(64)
        deadline = time.monotonic() + 30  # the sampler thread, not this one, must see the block (a loaded machine
        while rss.peak < rss.baseline + 60 * 2**20 and time.monotonic() < deadline:  # may delay it: wait for it)
            time.sleep(0.001)
        del block
    assert rss.increment_mb >= 60 and rss.peak_mb >= rss.baseline_mb + 60
    assert len(readings) >= 2 and rss.device_peak == readings[-1]  # read on entry and on exit at least
    assert lifetime_peak_mb() >= rss.peak_mb * 0.99


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_records_its_own_high_water_mark(tmp_path):
    path = tmp_path / "peak.hwm"
    code = ("from compressor.export.peak_rss import record_high_water_at_exit\n"
            f"record_high_water_at_exit({str(path)!r})\n"
            "block = bytearray(96 * 2**20); block[::4096] = b'x' * len(block[::4096])\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert recorded_high_water(str(path)) >= 96 * MB
    assert high_water_kb() > 0
    assert recorded_high_water(str(tmp_path / "never-written")) is None
