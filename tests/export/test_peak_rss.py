"""compressor.export.peak_rss: the one peak-RSS sampler (bench worker, benchmark scripts) and the high-water mark
a child records for its parent (benchmarks/scale.py)."""
import subprocess
import sys

import pytest

from compressor.export.peak_rss import high_water_kb, recorded_high_water

MB = 2**20


_SAMPLER = """
import json, time
from compressor.export.peak_rss import PeakRSS, lifetime_peak_mb
readings = []

def device_mb():  # rises with every reading: the peak is the last one
    readings.append(float(len(readings) + 1))
    return readings[-1]

with PeakRSS(0.001, device_mb=device_mb) as rss:
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # resident, not just reserved
    deadline = time.monotonic() + 30  # the sampler thread, not this one, must see it: wait for that, not a fixed time
    while rss.peak < rss.baseline + 60 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.001)
    del block
print(json.dumps({"increment": rss.increment_mb, "peak": rss.peak_mb, "baseline": rss.baseline_mb, "readings": readings,
                  "device_peak": rss.device_peak, "lifetime": lifetime_peak_mb()}))
"""


def test_sampler_sees_what_the_block_allocated_and_the_device_probe():
    """In a fresh process: in a test worker, memory that an earlier test frees while the block is allocated (a
    garbage collection it triggers) would lower the RSS under the baseline and hide the block."""
    import json

    done = subprocess.run([sys.executable, "-c", _SAMPLER], capture_output=True, text=True, check=True)
    r = json.loads(done.stdout)
    assert r["increment"] >= 60 and r["peak"] >= r["baseline"] + 60
    assert len(r["readings"]) >= 2 and r["device_peak"] == r["readings"][-1]  # read on entry and on exit at least
    assert r["lifetime"] >= r["peak"] * 0.99


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
