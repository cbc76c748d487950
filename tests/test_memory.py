"""Tests of edge_infer.memory: peak and current resident set size of this process."""

from __future__ import annotations

import subprocess
import sys

from edge_infer.memory import current_rss_bytes, peak_rss_mb, proc_status_mb


class TestMemory:
    def test_peak_is_at_least_current(self):
        assert peak_rss_mb() >= current_rss_bytes() / 2**20 * 0.99 > 0

    def test_touching_memory_raises_the_peak(self):
        """In a fresh process (this one's peak may be anything): 100 MB touched shows."""
        code = ("import numpy as np; from edge_infer.memory import peak_rss_mb as p; b = p(); "
                "a = np.ones(100 * 2**20 // 8); print(b, p())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        before, after = map(float, out.stdout.split())
        assert 90 <= after - before <= 130

    def test_status_fields(self):
        got = proc_status_mb("VmHWM", "VmRSS", "NoSuchField")
        assert set(got) == {"VmHWM", "VmRSS"} and got["VmHWM"] >= got["VmRSS"]
